//! The exporter of one run: pages → exported-key and reject skip → staged files → one commit
//! → publish, in that order (the commit protocol's steps, with its test hooks).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow_array::BooleanArray;
use arrow_array::cast::AsArray;
use arrow_select::filter::filter_record_batch;
use tokio::runtime::Handle;
use tracing::{debug, info};

use super::{OnPage, PipelineError, RunSummary, StopFlag};
use crate::failpoint;
use crate::lake::writer::{CommitWriter, StagedFile, partition_days};
use crate::lake::{Lake, LakeError, marker};
use crate::record::Reject;
use crate::sources::{Cursor, Page, SourceError};
use crate::state::keys::CommitKeys;
use crate::state::{Commit, KeySet, ManifestRow, State};

/// A batch is committed at least this often, so a long run keeps its progress.
const COMMIT_INTERVAL: Duration = Duration::from_secs(60);

/// Test hook: `CALLSYNC_SLOW_COMMIT_MS=N` sleeps that long before each commit (a slow disk),
/// so a drain can be caught in the middle.
fn slow_commit() {
    static MS: std::sync::LazyLock<Option<u64>> = std::sync::LazyLock::new(|| {
        std::env::var("CALLSYNC_SLOW_COMMIT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(ms) = *MS {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// The records of one commit being staged.
struct Batch<'a> {
    writer: CommitWriter<'a>,
    keys: CommitKeys,
    /// The rejects staged: key → hash of the raw record (`Reject::identity`).
    rejected: HashMap<String, i64>,
    cursor: Option<Cursor>,
    started: Instant,
}

/// One run's export: what it writes through, where it stands, and what it counted.
pub(super) struct Exporter<'a> {
    pub(super) lake: &'a Lake,
    pub(super) state: &'a mut State,
    pub(super) source: &'a str,
    pub(super) source_id: i64,
    pub(super) run_id: i64,
    pub(super) backfill_id: Option<i64>,
    /// The cursor as last committed (a commit that would change nothing is not made).
    pub(super) stored: Option<Cursor>,
    /// The source's incremental cursor as committed (the lake marker carries it).
    pub(super) incremental: Option<Cursor>,
    pub(super) max_rows: usize,
    pub(super) rt: &'a Handle,
    pub(super) summary: &'a mut RunSummary,
    pub(super) on_page: OnPage<'a>,
}

impl<'a> Exporter<'a> {
    fn new_batch(&self) -> Batch<'a> {
        let commit_id = uuid::Uuid::now_v7().simple().to_string();
        Batch {
            writer: self.lake.table().stage(
                self.lake.storage(),
                self.source,
                &commit_id,
                chrono::Utc::now().timestamp_micros(),
            ),
            keys: CommitKeys::default(),
            rejected: HashMap::new(),
            cursor: None,
            started: Instant::now(),
        }
    }

    /// Consumes pages until the source ends, a stop is asked, or an error; commits every
    /// page received before an error, so its progress is kept.
    pub(super) fn export(
        &mut self,
        rx: &mut tokio::sync::mpsc::Receiver<Result<Page, SourceError>>,
        stop: &StopFlag,
    ) -> Result<(), PipelineError> {
        let mut batch = self.new_batch();
        let mut failure = None;
        loop {
            // The next page, or a stop: then the pages received are committed and the one
            // being fetched is dropped (its records are fetched again next time).
            let next = self.rt.block_on(async {
                tokio::select! {
                    biased;
                    m = rx.recv() => Some(m),
                    () = stop.stopped() => None,
                }
            });
            let Some(Some(msg)) = next else {
                if next.is_none() {
                    info!(source = %self.source, "Stop requested; committing what was read.");
                }
                break;
            };
            self.summary.pages += 1;
            let page = match msg {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let cursor = page.cursor.clone();
            if let Err(e) = self.add_page(&mut batch, page) {
                batch.writer.abort();
                return Err(e);
            }
            self.summary.staged = batch.writer.calls();
            (self.on_page)(self.summary, cursor.as_ref());
            let rows = (batch.writer.calls() + batch.writer.rejected()) as usize;
            if rows >= self.max_rows || (rows > 0 && batch.started.elapsed() >= COMMIT_INTERVAL) {
                let full = std::mem::replace(&mut batch, self.new_batch());
                self.commit(full)?;
            }
            if stop.is_stopped() {
                info!(source = %self.source, "Stop requested; committing what was read.");
                break;
            }
        }
        self.commit(batch)?;
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn add_page(&mut self, batch: &mut Batch<'a>, page: Page) -> Result<(), PipelineError> {
        self.summary.skipped += page.known;
        let mut written = KeySet::default();
        if let Some(calls) = page.calls {
            let key = page.dataset.key_column();
            let ids = calls
                .column_by_name(key)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| {
                    LakeError::from(std::io::Error::other(format!("batch has no {key} column")))
                })?;
            let exported = self
                .state
                .exported_among(self.source_id, ids.iter().flatten())?;
            // Skip calls already exported, and repeats inside this commit.
            let days = partition_days(page.dataset, &calls)?;
            let keep = batch.keys.add_page(ids, days, |id| !exported.contains(id));
            if !page.files.is_empty() {
                written.extend(
                    keep.iter()
                        .zip(ids.iter())
                        .filter_map(|(k, id)| id.filter(|_| *k).map(String::from)),
                );
            }
            let dropped = keep.iter().filter(|k| !**k).count();
            self.summary.skipped += dropped as u64;
            let calls = if dropped == 0 {
                calls
            } else {
                filter_record_batch(&calls, &BooleanArray::from(keep)).map_err(LakeError::from)?
            };
            if calls.num_rows() > 0 {
                batch.writer.add_rows(page.dataset, &calls)?;
            }
        }
        // Files travel with their call: committed with it, or deleted when it is not written
        // (already exported, or rejected).
        for f in page.files {
            if written.contains(&f.call_id) {
                let bytes = self
                    .lake
                    .storage()
                    .adopt_spooled(&f.staged)
                    .map_err(LakeError::from)?;
                batch.writer.add_file(StagedFile {
                    staged: f.staged,
                    final_path: f.final_path,
                    rows: 0,
                    bytes,
                    stats: None,
                });
            } else {
                self.lake
                    .storage()
                    .delete(&f.staged)
                    .map_err(LakeError::from)?;
            }
        }
        if !page.rejects.is_empty() {
            // A reject is written once: the same record listed again (the lookback, a repair,
            // a re-read inbox) writes and counts nothing; a changed one is judged again.
            let ids: Vec<(String, i64)> = page
                .rejects
                .iter()
                .map(|r| Reject::identity(r.call_id.as_deref(), &r.raw, r.fingerprint))
                .collect();
            let known = self
                .state
                .rejected_among(self.source_id, ids.iter().map(|(k, _)| k.as_str()))?;
            for (r, (key, hash)) in page.rejects.iter().zip(ids) {
                if known.get(&key) == Some(&hash) || batch.rejected.get(&key) == Some(&hash) {
                    self.summary.skipped += 1;
                    continue;
                }
                debug!(source = %self.source, call_id = ?r.call_id, error = %r.error, "Record rejected.");
                batch.writer.add_reject(r)?;
                batch.rejected.insert(key, hash);
            }
        }
        if page.cursor.is_some() {
            batch.cursor = page.cursor;
        }
        Ok(())
    }

    /// Stage → commit → publish, in that order.
    fn commit(&mut self, batch: Batch<'a>) -> Result<(), PipelineError> {
        let (rows, rejects) = (batch.writer.calls(), batch.writer.rejected());
        if rows == 0 && rejects == 0 && (batch.cursor.is_none() || batch.cursor == self.stored) {
            batch.writer.abort();
            return Ok(());
        }
        let commit_id = batch.writer.commit_id().to_string();
        let files = batch.writer.finish()?;
        failpoint::hit("after_stage");
        slow_commit();
        let keys: Vec<(&str, i32)> = batch.keys.iter().collect();
        let rejected: Vec<(String, i64)> = batch.rejected.into_iter().collect();
        let commit = Commit {
            commit_id: &commit_id,
            source_id: self.source_id,
            run_id: self.run_id,
            files: &files,
            keys: &keys,
            cursor: batch.cursor.as_ref(),
            backfill_id: self.backfill_id,
            rows,
            rejects,
            rejected: &rejected,
        };
        // An error here does not prove the transaction did not commit: the staged files stay
        // for recovery, which deletes them only if no manifest row names them.
        let seq = self.lake.table().commit(self.state, &commit)?;
        if batch.cursor.is_some() {
            self.stored = batch.cursor.clone();
            if self.backfill_id.is_none() {
                self.incremental = batch.cursor.clone();
            }
        }
        failpoint::hit("after_commit");
        let manifest: Vec<ManifestRow> = files
            .iter()
            .map(|f| ManifestRow {
                staged: f.staged.clone(),
                final_path: f.final_path.clone(),
                seq,
                bytes: f.bytes,
                stats: f.stats.clone(),
            })
            .collect();
        self.lake
            .publish(self.state, self.source_id, self.source, &manifest)?;
        marker::write(
            self.lake.storage(),
            self.source,
            &commit_id,
            self.incremental.as_ref(),
        )?;
        crate::telemetry::committed(self.source, rows, rejects);
        self.summary.rows += rows;
        self.summary.staged = 0;
        self.summary.rejects += rejects;
        self.summary.commits += 1;
        self.summary.files += files.len() as u64;
        info!(
            source = %self.source,
            commit = %commit_id,
            rows,
            rejects,
            files = files.len(),
            "Committed."
        );
        Ok(())
    }
}
