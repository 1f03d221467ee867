//! Compaction's side of the Delta tables: the OPTIMIZE commit that swaps a partition's
//! small files for merged ones (checked against the table before each attempt, so a second
//! compaction of the same files cannot also commit), and `vacuum`.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use deltalake::DeltaTableError;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, Remove, Transaction};
use deltalake::protocol::DeltaOperation;
use futures_util::TryStreamExt;
use tracing::warn;

use super::{COMMIT_RETRIES, DeltaError, DeltaTables, MAX_ATTEMPTS, backoff, partition_of};
use crate::schema::Dataset;

/// What one compaction commit does.
pub struct Rewrite {
    pub source: String,
    pub date: String,
    /// Lake-relative paths of the files replaced.
    pub removed: Vec<String>,
    /// The new files: lake-relative path, size, stats.
    pub added: Vec<(String, u64, String)>,
    pub target_size: i64,
}

/// Whether an error is a lost race for the next log version (worth retrying).
fn is_conflict(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::Transaction {
            source: TransactionError::VersionAlreadyExists(_)
                | TransactionError::MaxCommitAttempts(_)
                | TransactionError::CommitConflict(_)
        } | DeltaTableError::VersionAlreadyExists(_)
    )
}

/// A compaction commit being made (table-relative paths).
struct Compaction {
    app: String,
    version: i64,
    removes: Vec<String>,
    adds: Vec<Add>,
    target_size: i64,
    source: String,
    date: String,
}

impl DeltaTables {
    /// Commits a compaction of one partition: the removed files and the new ones, all with
    /// `dataChange = false`, operation OPTIMIZE, and the app transaction
    /// `compact/<source>/<date>`. Fails with `CompactionLost` when any removed file is no
    /// longer in the table (another compaction won).
    pub fn commit_rewrite(&self, ds: Dataset, rw: Rewrite) -> Result<u64, DeltaError> {
        let now = chrono::Utc::now().timestamp_millis();
        let app = format!("compact/{}/{}", rw.source, rw.date);
        let version = self.txn_version(ds, &app)?.unwrap_or(0) + 1;
        let strip = |p: &str| p[ds.dir().len() + 1..].to_string();
        let adds = rw
            .added
            .iter()
            .map(|(path, size, stats)| {
                let rel = strip(path);
                Add {
                    partition_values: partition_of(&rel),
                    path: rel,
                    size: *size as i64,
                    modification_time: now,
                    data_change: false,
                    stats: Some(stats.clone()),
                    ..Default::default()
                }
            })
            .collect();
        let c = Compaction {
            app,
            version,
            removes: rw.removed.iter().map(|p| strip(p)).collect(),
            adds,
            target_size: rw.target_size,
            source: rw.source,
            date: rw.date,
        };
        self.block(self.commit_compaction(ds, c))
    }

    /// Deletes the files removed from a table more than `retain_hours` ago (compaction's
    /// replaced files); only files the log removed, never one a writer has yet to commit.
    /// Returns the files deleted (or that would be, with `dry_run`).
    pub fn vacuum(
        &self,
        ds: Dataset,
        retain_hours: u64,
        dry_run: bool,
    ) -> Result<Vec<String>, DeltaError> {
        if !self.exists(ds)? {
            return Ok(Vec::new());
        }
        self.block(async {
            let mut guard = self.latest(ds).await?;
            let table = guard.take().expect("loaded");
            let result = table
                .vacuum()
                .with_retention_period(chrono::Duration::hours(retain_hours as i64))
                .with_enforce_retention_duration(false)
                .with_dry_run(dry_run)
                .await;
            match result {
                Ok((table, metrics)) => {
                    *guard = Some(table);
                    Ok(metrics
                        .files_deleted
                        .into_iter()
                        .map(|f| format!("{}/{f}", ds.dir()))
                        .collect())
                }
                Err(e) => Err(self.err(ds, e)),
            }
        })
    }

    /// Makes a compaction's commit, retrying a lost race with backoff and jitter, its files
    /// checked against the table before each attempt.
    async fn commit_compaction(&self, ds: Dataset, c: Compaction) -> Result<u64, DeltaError> {
        let Compaction {
            app,
            version,
            removes,
            adds,
            target_size,
            source,
            date,
        } = &c;
        let mut attempt = 0u32;
        loop {
            let mut guard = self.latest(ds).await?;
            let t = guard.as_mut().expect("loaded");
            let log_store = t.log_store();
            let snap = t.snapshot().map_err(|e| self.err(ds, e))?;
            let lost = || DeltaError::CompactionLost {
                table: self.table_url(ds).to_string(),
                source_name: source.clone(),
                date: date.clone(),
            };
            let held = snap
                .transaction_version(log_store.as_ref(), app)
                .await
                .map_err(|e| self.err(ds, e))?;
            if held.is_some_and(|v| v >= *version) {
                return Err(lost());
            }
            let wanted: HashSet<&str> = removes.iter().map(String::as_str).collect();
            let views: Vec<_> = snap
                .snapshot()
                .file_views(log_store.as_ref(), None)
                .try_collect()
                .await
                .map_err(|e| self.err(ds, e))?;
            let found: Vec<Remove> = views
                .iter()
                .filter(|v| wanted.contains(v.path().as_ref()))
                .map(|v| v.remove_action(false))
                .collect();
            if found.len() != wanted.len() {
                return Err(lost());
            }
            let mut actions: Vec<Action> = found.into_iter().map(Action::Remove).collect();
            actions.extend(adds.iter().cloned().map(Action::Add));
            let operation = DeltaOperation::Optimize {
                predicate: Some(format!("source = '{source}' AND date = '{date}'")),
                target_size: *target_size,
            };
            let txn = Transaction::new(app, *version);
            let props = CommitProperties::default()
                .with_application_transaction(txn)
                .with_max_retries(0)
                .with_create_checkpoint(false)
                .with_cleanup_expired_logs(Some(false));
            let result = CommitBuilder::from(props)
                .with_actions(actions)
                .build(Some(snap), log_store.clone(), operation)
                .await;
            match result {
                Ok(done) => {
                    let version = done.version;
                    // The commit's own snapshot is the table at this version: no re-read.
                    t.state = Some(done.snapshot);
                    if (version + 1).is_multiple_of(self.checkpoint_interval) {
                        self.after_commit(ds, t, version).await;
                    }
                    return Ok(version);
                }
                Err(e) if is_conflict(&e) && attempt + 1 < MAX_ATTEMPTS => {
                    attempt += 1;
                    COMMIT_RETRIES.fetch_add(1, Ordering::Relaxed);
                    drop(guard);
                    let wait = backoff(attempt);
                    warn!(table = %self.table_url(ds), attempt, wait_ms = wait.as_millis() as u64, "Another writer committed first; retrying the Delta commit.");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(self.err(ds, e)),
            }
        }
    }
}
