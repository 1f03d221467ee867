//! The lake as Delta tables (`format = "delta"`): `<lake>/calls` and `<lake>/monitor_legs`,
//! partitioned by `source` and `date`, kept at reader/writer protocol (1, 2).
//!
//! Data files take the same path as on a plain lake (staged, committed in SQLite, moved into
//! their partition folder); publishing then adds them to the table in ONE Delta commit that
//! carries the app transaction `callsync/<source>` at the commit's sequence number. Readers
//! see nothing before that commit, and recovery asks the table whether sequence N landed.
//!
//! Every commit callsync makes (`commit.rs`) is written at an explicit log version, carries a
//! unique id in its `commitInfo`, and is checked against the table's protocol first
//! (`protocol.rs`). An error from the store does not mean the commit did not land: the
//! version is read back, and only the table says whether it is ours, another writer's, or
//! not there (then it is put again). Several processes may append at once: a lost race is
//! retried against the new version, after a backoff with jitter.

mod commit;
mod format;
pub mod protocol;
mod recover;
mod rewrite;
mod table;

pub use commit::Outcome;
pub use format::Delta;
pub use recover::{Settled, settle_compaction};
pub use rewrite::Rewrite;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use deltalake::kernel::Snapshot;
use deltalake::logstore::{LogStoreRef, StorageConfig, default_logstore};
use deltalake::{DeltaTable, DeltaTableError};
use futures_util::TryStreamExt;
use object_store::ObjectStore;
use tokio::runtime::Handle;
use tracing::{info, warn};
use url::Url;

use super::table::ActiveFile;
use crate::schema::Dataset;

/// Attempts of one Delta commit before it fails (each after a backoff with jitter).
const MAX_ATTEMPTS: u32 = 40;
/// The first backoff; it doubles per attempt up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Commits retried because another writer took the log version first (this process).
pub static COMMIT_RETRIES: AtomicU64 = AtomicU64::new(0);

/// The partition columns, in the tables' order.
pub const PARTITION_COLUMNS: [&str; 2] = ["source", "date"];

/// Both tables, in index order.
pub const DATASETS: [Dataset; 2] = [Dataset::Calls, Dataset::MonitorLegs];

/// A Delta operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("Delta table {table}: {message}")]
    Table { table: String, message: String },
    #[error("Delta table {table}: {reason}")]
    Unsupported { table: String, reason: String },
    #[error(
        "Delta table {table}: the outcome of the commit at version {version} is unknown ({message}); nothing it may reference was deleted, and the next run reads the table to settle it"
    )]
    Unknown {
        table: String,
        version: u64,
        message: String,
    },
}

/// The Delta tables of one lake.
pub struct DeltaTables {
    root_store: Arc<dyn ObjectStore>,
    /// The lake's URL, ending in `/`.
    base: Url,
    rt: Handle,
    checkpoint_interval: u64,
    log_retention_days: u64,
    /// Each table with its files (loaded only for questions about files).
    tables: [tokio::sync::Mutex<Option<DeltaTable>>; 2],
    /// Each table's latest snapshot without its files (version, protocol, schema): what an
    /// append and recovery's common case need, whatever the table's size.
    lean: [tokio::sync::Mutex<Option<Arc<Snapshot>>>; 2],
    /// Tables known to exist (a table never ceases to).
    known: [std::sync::atomic::AtomicBool; 2],
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
    DATASETS
        .into_iter()
        .find(|d| rel.starts_with(&format!("{}/", d.dir())))
}

/// The dataset whose folder is `dir`.
pub fn dataset_named(dir: &str) -> Option<Dataset> {
    DATASETS.into_iter().find(|d| d.dir() == dir)
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
            lean: [tokio::sync::Mutex::new(None), tokio::sync::Mutex::new(None)],
            known: [
                std::sync::atomic::AtomicBool::new(false),
                std::sync::atomic::AtomicBool::new(false),
            ],
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
        Ok(guard)
    }

    /// The table's latest snapshot without its files, brought up to date from the version it
    /// was last read at (the table is created, or evolved to this schema version, first).
    async fn lean(&self, ds: Dataset) -> Result<Arc<Snapshot>, DeltaError> {
        let mut guard = self.lean[index(ds)].lock().await;
        let log_store = self.log_store(ds)?;
        let snap = match guard.take() {
            Some(s) => s
                .update(log_store.engine(None), None)
                .await
                .map_err(|e| self.err(ds, e))?,
            None => {
                // Asked first: the kernel logs an ERROR when asked for a table with no log.
                let present = self.known[index(ds)].load(std::sync::atomic::Ordering::Relaxed)
                    || log_store
                        .is_delta_table_location()
                        .await
                        .map_err(|e| self.err(ds, e))?;
                let loaded = if !present {
                    None
                } else {
                    match Snapshot::try_new(log_store.as_ref(), None).await {
                        Ok(s) => Some(Arc::new(s)),
                        Err(DeltaTableError::NotATable(_)) => None,
                        Err(e) => return Err(self.err(ds, e)),
                    }
                };
                let fits = loaded
                    .as_ref()
                    .is_some_and(|s| self.fits_schema(ds, s.schema().as_ref()));
                match loaded {
                    Some(s) if fits => s,
                    // No table yet, or one of an older schema version: create or evolve it
                    // through the table with its files, once.
                    _ => {
                        drop(self.latest(ds).await?);
                        Arc::new(
                            Snapshot::try_new(log_store.as_ref(), None)
                                .await
                                .map_err(|e| self.err(ds, e))?,
                        )
                    }
                }
            }
        };
        self.known[index(ds)].store(true, std::sync::atomic::Ordering::Relaxed);
        *guard = Some(snap.clone());
        Ok(snap)
    }

    /// The table's latest version, read without its files (`None`: no table yet).
    pub fn latest_version(&self, ds: Dataset) -> Result<Option<u64>, DeltaError> {
        if !self.exists(ds)? {
            return Ok(None);
        }
        self.block(async { Ok(Some(self.lean(ds).await?.version())) })
    }

    /// Refuses a table whose protocol or schema callsync does not fully honour.
    fn check(&self, ds: Dataset, t: &DeltaTable) -> Result<(), DeltaError> {
        let snap = t.snapshot().map_err(|e| self.err(ds, e))?;
        self.check_protocol(ds, snap.protocol(), snap.schema().as_ref())
    }

    /// Refuses a protocol and schema callsync does not fully honour.
    fn check_protocol(
        &self,
        ds: Dataset,
        protocol: &deltalake::kernel::Protocol,
        schema: &deltalake::kernel::StructType,
    ) -> Result<(), DeltaError> {
        match protocol::unsupported(protocol, schema) {
            None => Ok(()),
            Some(reason) => Err(DeltaError::Unsupported {
                table: self.table_url(ds).to_string(),
                reason,
            }),
        }
    }

    /// Refuses the table (its latest version) when callsync does not honour its protocol.
    pub fn check_latest(&self, ds: Dataset) -> Result<(), DeltaError> {
        self.block(async {
            let guard = self.latest(ds).await?;
            self.check(ds, guard.as_ref().expect("loaded"))
        })
    }

    /// The app transaction version of `app` in a table (`None`: never committed).
    pub fn txn_version(&self, ds: Dataset, app: &str) -> Result<Option<i64>, DeltaError> {
        if !self.exists(ds)? {
            return Ok(None);
        }
        self.block(async {
            let guard = self.latest(ds).await?;
            let t = guard.as_ref().expect("loaded");
            let snap = t.snapshot().map_err(|e| self.err(ds, e))?;
            snap.transaction_version(t.log_store().as_ref(), app)
                .await
                .map_err(|e| self.err(ds, e))
        })
    }

    /// The table's latest version (`None`: no table yet).
    pub fn version(&self, ds: Dataset) -> Result<Option<u64>, DeltaError> {
        if !self.exists(ds)? {
            return Ok(None);
        }
        self.block(async {
            let guard = self.latest(ds).await?;
            Ok(guard.as_ref().and_then(DeltaTable::version))
        })
    }

    /// Whether the table exists yet (nothing is created).
    pub fn exists(&self, ds: Dataset) -> Result<bool, DeltaError> {
        if self.known[index(ds)].load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(true);
        }
        let log_store = self.log_store(ds)?;
        let exists = self
            .block(log_store.is_delta_table_location())
            .map_err(|e| self.err(ds, e))?;
        if exists {
            self.known[index(ds)].store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(exists)
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

    /// The active files of one partition (`source`, `date`) of a table.
    pub fn partition_files(
        &self,
        ds: Dataset,
        source: &str,
        date: &str,
    ) -> Result<Vec<String>, DeltaError> {
        Ok(self
            .active_files(ds, Some(source))?
            .into_iter()
            .filter(|f| f.date == date)
            .map(|f| f.path)
            .collect())
    }

    /// The bytes of the log entry at `version` (`None`: there is none), a failed read tried
    /// again a few times.
    async fn read_commit(&self, ds: Dataset, version: u64) -> Result<Option<Vec<u8>>, DeltaError> {
        let log_store = self.log_store(ds)?;
        let mut last = None;
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            match log_store.read_commit_entry(version).await {
                Ok(b) => return Ok(b.map(|b| b.to_vec())),
                Err(e) => last = Some(e),
            }
        }
        Err(self.err(
            ds,
            format!(
                "reading log version {version}: {}",
                last.map(|e| e.to_string()).unwrap_or_default()
            ),
        ))
    }

    /// The checkpoint due at `version` (every `checkpoint_interval` versions), and log files
    /// past the retention cleaned once a newer checkpoint covers them. Failures are logged:
    /// the commit stands.
    async fn after_commit(&self, ds: Dataset, t: &DeltaTable, version: u64) {
        if let Err(e) = deltalake::checkpoints::create_checkpoint(t, None).await {
            crate::telemetry::upkeep("checkpoint", false);
            warn!(table = %self.table_url(ds), version, error = %e, "Checkpoint failed; the next one will cover it.");
            return;
        }
        crate::telemetry::upkeep("checkpoint", true);
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
