//! The lake as Delta tables (`format = "delta"`): `<lake>/calls` and `<lake>/monitor_legs`,
//! partitioned by `source` and `date`, kept at reader/writer protocol (1, 2).
//!
//! Data files take the same path as on a plain lake (staged, committed in SQLite, moved into
//! their partition folder); publishing then adds them to the table in ONE Delta commit that
//! carries the app transaction `callsync/<source>` at the commit's sequence number. Readers
//! see nothing before that commit, and recovery asks the table whether sequence N landed.
//! Several processes may append at once: a commit that loses the race for the next log
//! version is retried against the new version, after a backoff with jitter.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitData, TransactionError};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::logstore::{CommitOrBytes, LogStoreRef, StorageConfig, default_logstore};
use deltalake::protocol::{DeltaOperation, SaveMode};
use futures_util::TryStreamExt;
use object_store::ObjectStore;
use tokio::runtime::Handle;
use tracing::{info, warn};
use url::Url;

use crate::schema::Dataset;
use crate::state::ManifestRow;

/// Attempts of one Delta commit before it fails (each after a backoff with jitter).
const MAX_ATTEMPTS: u32 = 40;
/// The first backoff; it doubles per attempt up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Commits retried because another writer took the log version first (this process).
pub static COMMIT_RETRIES: AtomicU64 = AtomicU64::new(0);

/// The partition columns, in the tables' order.
pub const PARTITION_COLUMNS: [&str; 2] = ["source", "date"];

/// A Delta operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("Delta table {table}: {message}")]
    Table { table: String, message: String },
    #[error(
        "Delta table {table}: another compaction of source={source_name}, date={date} committed first; nothing was changed"
    )]
    CompactionLost {
        table: String,
        source_name: String,
        date: String,
    },
}

/// A file of a table: its lake-relative path, size and partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveFile {
    /// Lake-relative path (`calls/source=…/date=…/part-….parquet`).
    pub path: String,
    pub size: u64,
    pub source: String,
    pub date: String,
    /// Rows, from the file's statistics.
    pub rows: Option<u64>,
}

mod rewrite;
mod table;
pub use rewrite::Rewrite;

/// The Delta tables of one lake.
pub struct DeltaTables {
    root_store: Arc<dyn ObjectStore>,
    /// The lake's URL, ending in `/`.
    base: Url,
    rt: Handle,
    checkpoint_interval: u64,
    log_retention_days: u64,
    tables: [tokio::sync::Mutex<Option<DeltaTable>>; 2],
    /// The newest log version this process knows of, per table (where listing starts).
    known: [AtomicU64; 2],
}

fn index(ds: Dataset) -> usize {
    match ds {
        Dataset::Calls => 0,
        Dataset::MonitorLegs => 1,
    }
}

/// The dataset whose table holds a lake-relative data file, if any.
pub fn dataset_of(rel: &str) -> Option<Dataset> {
    if !rel.ends_with(".parquet") {
        return None;
    }
    [Dataset::Calls, Dataset::MonitorLegs]
        .into_iter()
        .find(|d| rel.starts_with(&format!("{}/", d.dir())))
}

/// `source` and `date` of a table-relative path `source=…/date=…/name`.
fn partition_of(table_rel: &str) -> HashMap<String, Option<String>> {
    let mut out = HashMap::new();
    for seg in table_rel.split('/') {
        if let Some((k, v)) = seg.split_once('=')
            && PARTITION_COLUMNS.contains(&k)
        {
            out.insert(k.to_string(), Some(v.to_string()));
        }
    }
    out
}

/// The backoff before attempt `n` (1-based retry count): doubling, capped, with full jitter
/// between half and all of it, so writers that collided do not collide again in step.
fn backoff(n: u32) -> Duration {
    let cap = FIRST_BACKOFF
        .saturating_mul(1 << n.min(10))
        .min(MAX_BACKOFF);
    cap.mul_f64(0.5 + fastrand::f64() / 2.0)
}

impl DeltaTables {
    /// The tables of the lake at `base` (its URL) in `root_store` (the bucket's root, or `/`
    /// for a local lake).
    pub fn new(
        root_store: Arc<dyn ObjectStore>,
        base: Url,
        rt: Handle,
        checkpoint_interval: u64,
        log_retention_days: u64,
    ) -> DeltaTables {
        let mut base = base;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        DeltaTables {
            root_store,
            base,
            rt,
            checkpoint_interval: checkpoint_interval.max(1),
            log_retention_days,
            tables: [tokio::sync::Mutex::new(None), tokio::sync::Mutex::new(None)],
            known: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// A table's URL.
    pub fn table_url(&self, ds: Dataset) -> Url {
        self.base
            .join(ds.dir())
            .unwrap_or_else(|_| self.base.clone())
    }

    fn err(&self, ds: Dataset, e: impl std::fmt::Display) -> DeltaError {
        DeltaError::Table {
            table: self.table_url(ds).to_string(),
            message: e.to_string(),
        }
    }

    fn log_store(&self, ds: Dataset) -> Result<LogStoreRef, DeltaError> {
        let url = self.table_url(ds);
        let config = StorageConfig::default();
        let prefixed = config
            .decorate_store(self.root_store.clone(), &url)
            .map_err(|e| self.err(ds, e))?;
        Ok(default_logstore(
            Arc::from(prefixed),
            self.root_store.clone(),
            &url,
            &config,
        ))
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        super::object::block_on(&self.rt, f)
    }

    /// The table, loaded (created on first use) and brought up to its latest version.
    async fn latest(
        &self,
        ds: Dataset,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<DeltaTable>>, DeltaError> {
        let mut guard = self.tables[index(ds)].lock().await;
        match guard.as_mut() {
            Some(t) => t
                .update_incremental(None)
                .await
                .map_err(|e| self.err(ds, e))?,
            None => *guard = Some(self.open_or_create(ds).await?),
        }
        if let Some(v) = guard.as_ref().and_then(DeltaTable::version) {
            self.known[index(ds)].fetch_max(v, Ordering::Relaxed);
        }
        Ok(guard)
    }

    /// The table's log store, the table opened (or created) once; its state is not read.
    async fn log_store_of(&self, ds: Dataset) -> Result<LogStoreRef, DeltaError> {
        let mut guard = self.tables[index(ds)].lock().await;
        if guard.is_none() {
            let t = self.open_or_create(ds).await?;
            if let Some(v) = t.version() {
                self.known[index(ds)].fetch_max(v, Ordering::Relaxed);
            }
            *guard = Some(t);
        }
        Ok(guard.as_ref().expect("opened above").log_store())
    }

    /// Appends a commit's files straight to the log: delta-rs' own commit JSON (commitInfo,
    /// the adds, the app transaction) put at the next version with `If-None-Match`. No list
    /// of the table's files is held or rebuilt, so a commit costs one listing of the newest
    /// log entries and one conditional put, whatever the table's size. (Appends with their
    /// own app ids cannot conflict with one another; a schema change is made only by a
    /// callsync that writes the new columns, before its first append.) A lost race is
    /// retried after a backoff; then, and in recovery, the table is first asked whether it
    /// holds the commit already.
    async fn append_direct(
        &self,
        ds: Dataset,
        app: &str,
        seq: i64,
        adds: &[Add],
        fresh: bool,
    ) -> Result<Option<u64>, DeltaError> {
        let log_store = self.log_store_of(ds).await?;
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(PARTITION_COLUMNS.iter().map(|c| c.to_string()).collect()),
            predicate: None,
        };
        let mut attempt = 0u32;
        loop {
            if !(fresh && attempt == 0) {
                let guard = self.latest(ds).await?;
                let t = guard.as_ref().expect("loaded");
                let snap = t.snapshot().map_err(|e| self.err(ds, e))?;
                let held = snap
                    .transaction_version(log_store.as_ref(), app)
                    .await
                    .map_err(|e| self.err(ds, e))?;
                if held.is_some_and(|v| v >= seq) {
                    return Ok(None);
                }
            }
            let known = self.known[index(ds)].load(Ordering::Relaxed);
            let latest = match log_store.get_latest_version(known).await {
                Ok(v) => v,
                // The version this process knew was cleaned from the log meanwhile.
                Err(_) => {
                    let guard = self.latest(ds).await?;
                    guard
                        .as_ref()
                        .and_then(DeltaTable::version)
                        .unwrap_or(known)
                }
            };
            let version = latest + 1;
            let data = CommitData::new(
                adds.iter().cloned().map(Action::Add).collect(),
                operation.clone(),
                HashMap::from([(
                    "clientVersion".to_string(),
                    serde_json::Value::from(concat!("callsync-", env!("CARGO_PKG_VERSION"))),
                )]),
                vec![Transaction::new(app, seq)],
            );
            let bytes = data.get_bytes().map_err(|e| self.err(ds, e))?;
            match log_store
                .write_commit_entry(
                    version,
                    CommitOrBytes::LogBytes(bytes),
                    uuid::Uuid::new_v4(),
                )
                .await
            {
                Ok(()) => {
                    self.known[index(ds)].fetch_max(version, Ordering::Relaxed);
                    if (version + 1).is_multiple_of(self.checkpoint_interval) {
                        let mut guard = self.tables[index(ds)].lock().await;
                        if let Some(t) = guard.as_mut() {
                            match t.update_incremental(Some(version)).await {
                                Ok(()) => self.after_commit(ds, t, version).await,
                                Err(e) => {
                                    warn!(table = %self.table_url(ds), version, error = %e, "Checkpoint skipped; the next one will cover it.")
                                }
                            }
                        }
                    }
                    return Ok(Some(version));
                }
                Err(TransactionError::VersionAlreadyExists(_)) if attempt + 1 < MAX_ATTEMPTS => {
                    attempt += 1;
                    COMMIT_RETRIES.fetch_add(1, Ordering::Relaxed);
                    self.known[index(ds)].fetch_max(version, Ordering::Relaxed);
                    let wait = backoff(attempt);
                    warn!(table = %self.table_url(ds), attempt, wait_ms = wait.as_millis() as u64, "Another writer committed first; retrying the Delta commit.");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(self.err(ds, e)),
            }
        }
    }

    /// Adds committed data files to their tables, one Delta commit per (table, callsync
    /// commit), each with the app transaction `callsync/<source>` = the commit's sequence
    /// number; a commit the table already holds is skipped. Returns the highest sequence
    /// number each table holds for the source afterwards. `fresh`: the rows' commit was
    /// never added before (publish right after the state commit, not recovery).
    pub fn append(
        &self,
        source: &str,
        rows: &[ManifestRow],
        fresh: bool,
    ) -> Result<(), DeltaError> {
        let mut by_table: BTreeMap<(usize, i64), Vec<Add>> = BTreeMap::new();
        let now = chrono::Utc::now().timestamp_millis();
        for r in rows {
            let Some(ds) = dataset_of(&r.final_path) else {
                continue;
            };
            let rel = r.final_path[ds.dir().len() + 1..].to_string();
            by_table.entry((index(ds), r.seq)).or_default().push(Add {
                partition_values: partition_of(&rel),
                path: rel,
                size: r.bytes as i64,
                modification_time: now,
                data_change: true,
                stats: r.stats.clone(),
                ..Default::default()
            });
        }
        for ((i, seq), adds) in by_table {
            let ds = [Dataset::Calls, Dataset::MonitorLegs][i];
            let app = format!("callsync/{source}");
            self.block(self.append_direct(ds, &app, seq, &adds, fresh))?;
        }
        Ok(())
    }

    /// The app transaction version of `app` in a table (`None`: never committed).
    pub fn txn_version(&self, ds: Dataset, app: &str) -> Result<Option<i64>, DeltaError> {
        self.block(async {
            let guard = self.latest(ds).await?;
            let t = guard.as_ref().expect("loaded");
            let snap = t.snapshot().map_err(|e| self.err(ds, e))?;
            snap.transaction_version(t.log_store().as_ref(), app)
                .await
                .map_err(|e| self.err(ds, e))
        })
    }

    /// Whether the table exists yet (nothing is created).
    pub fn exists(&self, ds: Dataset) -> Result<bool, DeltaError> {
        let log_store = self.log_store(ds)?;
        self.block(log_store.is_delta_table_location())
            .map_err(|e| self.err(ds, e))
    }

    /// The files of the table's latest version, of one source or all.
    pub fn active_files(
        &self,
        ds: Dataset,
        source: Option<&str>,
    ) -> Result<Vec<ActiveFile>, DeltaError> {
        if !self.exists(ds)? {
            return Ok(Vec::new());
        }
        self.block(async {
            let guard = self.latest(ds).await?;
            let t = guard.as_ref().expect("loaded");
            let snap = t.snapshot().map_err(|e| self.err(ds, e))?;
            let views: Vec<_> = snap
                .snapshot()
                .file_views(t.log_store().as_ref(), None)
                .try_collect()
                .await
                .map_err(|e| self.err(ds, e))?;
            let mut out = Vec::new();
            for v in views {
                let parts = v.partition_values_map();
                let get = |k: &str| parts.get(k).cloned().flatten().unwrap_or_default();
                let file_source = get("source");
                if source.is_some_and(|s| s != file_source) {
                    continue;
                }
                out.push(ActiveFile {
                    path: format!("{}/{}", ds.dir(), v.path()),
                    size: v.size().max(0) as u64,
                    source: file_source,
                    date: get("date"),
                    rows: v.num_records().map(|n| n as u64),
                });
            }
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        })
    }

    /// The checkpoint due at `version` (every `checkpoint_interval` versions), and log files
    /// past the retention cleaned once a newer checkpoint covers them. Failures are logged:
    /// the commit stands.
    async fn after_commit(&self, ds: Dataset, t: &DeltaTable, version: u64) {
        if let Err(e) = deltalake::checkpoints::create_checkpoint(t, None).await {
            warn!(table = %self.table_url(ds), version, error = %e, "Checkpoint failed; the next one will cover it.");
            return;
        }
        let cutoff =
            chrono::Utc::now().timestamp_millis() - (self.log_retention_days as i64) * 86_400_000;
        match deltalake::checkpoints::cleanup_expired_logs_for(
            version,
            t.log_store().as_ref(),
            cutoff,
            None,
        )
        .await
        {
            Ok(n) if n > 0 => {
                info!(table = %self.table_url(ds), removed = n, "Cleaned expired Delta log files.")
            }
            Ok(_) => {}
            Err(e) => {
                warn!(table = %self.table_url(ds), error = %e, "Log cleanup failed; it is retried at the next checkpoint.")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_files_belong_to_their_dataset_table_and_partition() {
        assert_eq!(
            dataset_of("calls/source=a/date=2024-01-02/part-x-1.parquet"),
            Some(Dataset::Calls)
        );
        assert_eq!(
            dataset_of("monitor_legs/source=a/date=2024-01-02/part-x-1.parquet"),
            Some(Dataset::MonitorLegs)
        );
        assert_eq!(
            dataset_of("_rejects/source=a/date=2024-01-02/x.jsonl"),
            None
        );
        assert_eq!(
            dataset_of("recordings/source=a/date=2024-01-02/x.wav"),
            None
        );
        let p = partition_of("source=a/date=2024-01-02/part-x-1.parquet");
        assert_eq!(p["source"].as_deref(), Some("a"));
        assert_eq!(p["date"].as_deref(), Some("2024-01-02"));
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        for n in 1..30 {
            let b = backoff(n);
            assert!(b <= MAX_BACKOFF, "{b:?}");
            assert!(b >= FIRST_BACKOFF / 2, "{b:?}");
        }
    }
}
