//! Compaction's side of the Delta tables: the OPTIMIZE commit that swaps a partition's small
//! files for merged ones (made through `commit.rs`, so an error never hides that it landed,
//! and a second compaction of the same files cannot also commit), the question whether a
//! compaction recorded in the state landed, and `vacuum`.

use deltalake::kernel::{Add, Transaction};
use deltalake::operations::vacuum::{Clock, VacuumMode};
use deltalake::protocol::DeltaOperation;

use super::commit::{Guard, Outcome, added_paths, commit_id_of};
use super::{DeltaError, DeltaTables, partition_of};
use crate::schema::Dataset;

/// Test hook: `CALLSYNC_TEST_CLOCK_AHEAD_HOURS=N` runs vacuum's clock N hours ahead, so a
/// test sees files removed "hours ago" deleted without waiting hours.
#[derive(Debug)]
struct AheadClock(i64);

impl AheadClock {
    fn from_env() -> Option<AheadClock> {
        let hours: i64 = std::env::var("CALLSYNC_TEST_CLOCK_AHEAD_HOURS")
            .ok()?
            .parse()
            .ok()?;
        Some(AheadClock(hours * 3_600_000))
    }
}

impl Clock for AheadClock {
    fn current_timestamp_millis(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() + self.0
    }
}

/// What one compaction commit does.
pub struct Rewrite {
    /// The compaction's id (its new files are `part-<id>-<n>.parquet`; its log entry carries
    /// it as the callsync commit id).
    pub id: String,
    pub source: String,
    pub date: String,
    /// Lake-relative paths of the files replaced.
    pub removed: Vec<String>,
    /// The new files: lake-relative path, size, stats.
    pub added: Vec<(String, u64, String)>,
    pub target_size: i64,
}

impl DeltaTables {
    /// Commits a compaction of one partition: the removed files and the new ones, all with
    /// `dataChange = false`, operation OPTIMIZE, and the app transaction
    /// `compact/<source>/<date>`. `Lost` when a file it replaces is no longer in the table
    /// (another compaction won); `Landed` (or `Held`) when it is the table's.
    pub fn commit_rewrite(&self, ds: Dataset, rw: &Rewrite) -> Result<Outcome, DeltaError> {
        let now = chrono::Utc::now().timestamp_millis();
        let app = format!("compact/{}/{}", rw.source, rw.date);
        let version = self.txn_version(ds, &app)?.unwrap_or(0) + 1;
        let strip = |p: &str| p[ds.dir().len() + 1..].to_string();
        let adds: Vec<Add> = rw
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
        let removes: Vec<String> = rw.removed.iter().map(|p| strip(p)).collect();
        let operation = DeltaOperation::Optimize {
            predicate: Some(format!("source = '{}' AND date = '{}'", rw.source, rw.date)),
            target_size: rw.target_size,
        };
        self.block(self.commit(
            ds,
            Guard::Replace { removes: &removes },
            &adds,
            &operation,
            Transaction::new(&app, version),
            &rw.id,
        ))
    }

    /// Whether the compaction `id`, whose first new file is `first_added` (lake-relative),
    /// landed in the table: its file is active, or a log entry after `base` (the version it
    /// began from) carries its id. `None` when that cannot be read any more (log entries
    /// since `base` were cleaned, or `base` is unknown) and its file is not active.
    pub fn compaction_landed(
        &self,
        ds: Dataset,
        id: &str,
        first_added: &str,
        base: Option<u64>,
    ) -> Result<Option<bool>, DeltaError> {
        if self
            .active_files(ds, None)?
            .iter()
            .any(|f| f.path == first_added)
        {
            return Ok(Some(true));
        }
        let (Some(base), Some(latest)) = (base, self.version(ds)?) else {
            return Ok(None);
        };
        let rel = &first_added[ds.dir().len() + 1..];
        self.block(async {
            for v in base + 1..=latest {
                match self.read_commit(ds, v).await? {
                    Some(entry) => {
                        if commit_id_of(&entry).as_deref() == Some(id)
                            || added_paths(&entry).iter().any(|p| p == rel)
                        {
                            return Ok(Some(true));
                        }
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some(false))
        })
    }

    /// Deletes the files removed from a table more than `retain_hours` ago (compaction's
    /// replaced files): only files the log removed (delta-rs' "lite" mode), never one a writer
    /// has yet to commit, and only from a table whose protocol callsync honours. Returns the
    /// files deleted (or that would be, with `dry_run`).
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
            self.check(ds, guard.as_ref().expect("loaded"))?;
            let table = guard.take().expect("loaded");
            let mut builder = table.vacuum();
            if let Some(clock) = AheadClock::from_env() {
                builder = builder.with_clock(std::sync::Arc::new(clock));
            }
            let result = builder
                .with_mode(VacuumMode::Lite)
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
}
