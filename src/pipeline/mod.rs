//! Runs one source: pages → exported-key skip → staged files → one commit → publish.
//! The only place that ties sources to the lake and the state.

mod source_state;
pub use source_state::SourceState;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow_array::BooleanArray;
use arrow_array::cast::AsArray;
use arrow_select::filter::filter_record_batch;
use chrono::{NaiveDate, NaiveTime};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use crate::config::WarehouseConfig;
use crate::lake::storage::Storage;
use crate::lake::writer::{CommitWriter, StagedFile};
use crate::lake::{self, LakeError, marker};
use crate::record::Reject;
use crate::sources::{Cursor, OpenContext, Page, SourceConfig, SourceError};
use crate::state::keys::CommitKeys;
use crate::state::lock::{LockError, SourceLock};
use crate::state::{Commit, KeySet, ManifestRow, State, StateError};

/// A batch is committed at least this often, so a long run keeps its progress.
const COMMIT_INTERVAL: Duration = Duration::from_secs(60);

/// Where runs write: the warehouse and the state database.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub warehouse: WarehouseConfig,
    pub state_path: PathBuf,
    /// Run records older than this many days are deleted after each run.
    pub runs_retention_days: u64,
}

impl RunContext {
    /// Where the runs of `cfg` write.
    pub fn of(cfg: &crate::config::Config) -> RunContext {
        RunContext {
            warehouse: cfg.warehouse.clone(),
            state_path: cfg.state.path.clone(),
            runs_retention_days: cfg.state.runs_retention_days,
        }
    }
}

/// Set when the process is asked to stop: runs commit the pages they have and end, without
/// waiting for the page being fetched.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<(AtomicBool, tokio::sync::Notify)>);

impl StopFlag {
    /// Asks every run to stop after the pages it has.
    pub fn stop(&self) {
        self.0.0.store(true, Ordering::SeqCst);
        self.0.1.notify_waiters();
    }
    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.0.load(Ordering::SeqCst)
    }
    /// Returns once a stop is asked for.
    pub async fn stopped(&self) {
        let notified = self.0.1.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_stopped() {
            return;
        }
        notified.await;
    }
}

/// Why a run failed. Work committed before the failure stays committed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(
        "source {source_name}: the lake {lake} and the state {state} disagree: {reason}. Exporting now could write calls the lake already holds a second time, so nothing was written; run `callsync repair --source {source_name}` to rebuild the state from the lake"
    )]
    Disagree {
        source_name: String,
        lake: String,
        state: String,
        reason: String,
    },
    #[error("source {0}: the page fetcher stopped unexpectedly")]
    FetcherGone(String),
}

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Calls written to the lake.
    pub rows: u64,
    /// Records written to the rejects area.
    pub rejects: u64,
    /// Calls skipped because they were already exported.
    pub skipped: u64,
    /// Commits made.
    pub commits: u64,
    /// Files published.
    pub files: u64,
    /// Calls staged for the next commit (not yet counted in `rows`).
    pub staged: u64,
    /// Pages received from the source.
    pub pages: u64,
}

/// A run's summary and, when it failed, why.
#[derive(Debug)]
pub struct RunReport {
    pub source: String,
    pub summary: RunSummary,
    pub error: Option<PipelineError>,
    /// A daemon tick found nothing due (a push source's inbox not due for export): nothing
    /// was run and nothing written, not even a run record.
    pub idle: bool,
}

/// Test hook: `CALLSYNC_FAILPOINT=after_stage|after_commit` aborts the process at that point
/// of the commit protocol, the way a crash or kill -9 would.
fn failpoint(name: &str) {
    static POINT: std::sync::LazyLock<Option<String>> =
        std::sync::LazyLock::new(|| std::env::var("CALLSYNC_FAILPOINT").ok());
    if POINT.as_deref() == Some(name) {
        eprintln!("callsync: failpoint {name} reached, aborting");
        std::process::abort();
    }
}

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

/// What a run does: an incremental sync, or a backfill of an explicit range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMode {
    /// An incremental run now (`sync`): a push source exports its inbox whatever its age.
    Sync,
    /// A daemon tick: as `Sync`, but a push source runs only when its inbox is due.
    Tick,
    /// The daemon drains: push sources export their inbox and start no new vendor work.
    Drain,
    /// Inclusive UTC days.
    Backfill { from: NaiveDate, to: NaiveDate },
}

impl RunMode {
    fn name(&self) -> &'static str {
        match self {
            RunMode::Sync | RunMode::Tick => "sync",
            RunMode::Drain => "drain",
            RunMode::Backfill { .. } => "backfill",
        }
    }
}

/// Called after every page with the run's totals so far and the page's cursor, if any.
pub type OnPage<'a> = &'a (dyn Fn(&RunSummary, Option<&Cursor>) + Sync);

/// Runs one incremental sync of one source. Blocking: call it from a blocking thread; the
/// source's HTTP runs on `rt`.
pub fn run_sync(
    ctx: &RunContext,
    name: &str,
    cfg: &SourceConfig,
    rt: &Handle,
    stop: &StopFlag,
) -> RunReport {
    run(ctx, name, cfg, rt, stop, &RunMode::Sync, &|_, _| {})
}

/// Runs a sync or a backfill of one source (blocking, like `run_sync`).
pub fn run(
    ctx: &RunContext,
    name: &str,
    cfg: &SourceConfig,
    rt: &Handle,
    stop: &StopFlag,
    mode: &RunMode,
    on_page: OnPage<'_>,
) -> RunReport {
    let mut summary = RunSummary::default();
    let (idle, error) = match run_inner(ctx, name, cfg, rt, stop, mode, on_page, &mut summary) {
        Ok(ran) => (!ran, None),
        Err(e) => (false, Some(e)),
    };
    RunReport {
        source: name.to_string(),
        summary,
        error,
        idle,
    }
}

#[allow(clippy::too_many_arguments)]
fn run_inner(
    ctx: &RunContext,
    name: &str,
    cfg: &SourceConfig,
    rt: &Handle,
    stop: &StopFlag,
    mode: &RunMode,
    on_page: OnPage<'_>,
    summary: &mut RunSummary,
) -> Result<bool, PipelineError> {
    let _lock = SourceLock::try_acquire(&ctx.state_path, name)?;
    let mut state = State::open(&ctx.state_path)?;
    let row = state.source(name, cfg.kind())?;
    // One connection of its own for what the source asks (it runs on the async runtime, the
    // exporter on its thread): exported keys, its inbox, its jobs.
    let asked = Arc::new(SourceState::open(&ctx.state_path, row.id)?);
    let storage =
        crate::lake::storage::open(&ctx.warehouse, &ctx.state_path, rt).map_err(LakeError::from)?;
    let storage = storage.as_ref();
    let open_ctx = OpenContext {
        warehouse_root: storage.spool_root(),
        known: asked.clone(),
        inbox: asked.clone(),
        jobs: asked,
        draining: *mode == RunMode::Drain,
    };
    // A daemon tick (or the drain) of a push source whose inbox is not due writes nothing.
    if matches!(mode, RunMode::Tick | RunMode::Drain)
        && !cfg.due(name, row.cursor.as_ref(), &open_ctx)?
    {
        return Ok(false);
    }
    let started = Instant::now();
    let run_id = state.start_run(row.id, mode.name())?;
    if let Err(e) = prepare(ctx, storage, &state, row.id, name) {
        state.finish_run(run_id, "failed", Some(&e.to_string()))?;
        warn!(source = %name, mode = mode.name(), error = %e, "Run refused.");
        return Err(e);
    }
    info!(source = %name, kind = cfg.kind(), mode = mode.name(), "Run started.");
    let (opened, backfill_id, stored) = match mode {
        RunMode::Sync | RunMode::Tick | RunMode::Drain => (
            cfg.open(name, row.cursor.as_ref(), &open_ctx),
            None,
            row.cursor.clone(),
        ),
        RunMode::Backfill { from, to } => {
            let (id, cursor) = state.backfill_start(row.id, &from.to_string(), &to.to_string())?;
            let start = from.and_time(NaiveTime::MIN).and_utc();
            let end = to.and_time(NaiveTime::MIN).and_utc() + chrono::Duration::days(1);
            (
                cfg.open_range(name, start, end, cursor.as_ref(), &open_ctx),
                Some(id),
                cursor,
            )
        }
    };
    let result = match opened {
        Ok(source) => {
            let mut exporter = Exporter {
                storage,
                state: &mut state,
                source: name,
                source_id: row.id,
                run_id,
                backfill_id,
                stored,
                incremental: row.cursor.clone(),
                max_rows: ctx.warehouse.max_rows_per_file,
                rt,
                summary,
                on_page,
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Page, SourceError>>(1);
            let fetcher = rt.spawn(async move {
                let mut source = source;
                loop {
                    let next = source.next_page().await;
                    let last = !matches!(next, Ok(Some(_)));
                    if let Some(msg) = next.transpose()
                        && tx.send(msg).await.is_err()
                    {
                        break;
                    }
                    if last {
                        break;
                    }
                }
            });
            let r = exporter.export(&mut rx, stop);
            fetcher.abort();
            r
        }
        Err(e) => Err(e.into()),
    };
    let err_text = result.as_ref().err().map(|e| e.to_string());
    state.finish_run(
        run_id,
        if result.is_ok() { "ok" } else { "failed" },
        err_text.as_deref(),
    )?;
    if let Err(e) = state.prune_runs(ctx.runs_retention_days) {
        warn!(source = %name, error = %e, "Old run records could not be pruned.");
    }
    if let Some(id) = backfill_id {
        // A stopped backfill stays `running` and a failed one `failed`: both resume.
        let status = match (&result, stop.is_stopped()) {
            (Ok(()), false) => "done",
            (Ok(()), true) => "running",
            (Err(_), _) => "failed",
        };
        state.backfill_finish(id, status)?;
    }
    // One summary line per run.
    let show = |c: Option<&Cursor>| c.map_or_else(|| "-".to_string(), |c| c.to_string());
    let cursor_after = state.cursor(row.id).ok().flatten();
    let duration_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(()) => info!(
            source = %name,
            mode = mode.name(),
            rows = summary.rows,
            rejects = summary.rejects,
            skipped = summary.skipped,
            pages = summary.pages,
            commits = summary.commits,
            duration_ms,
            cursor_before = %show(row.cursor.as_ref()),
            cursor_after = %show(cursor_after.as_ref()),
            "Run finished."
        ),
        Err(e) => warn!(
            source = %name,
            mode = mode.name(),
            rows = summary.rows,
            rejects = summary.rejects,
            skipped = summary.skipped,
            pages = summary.pages,
            duration_ms,
            cursor_before = %show(row.cursor.as_ref()),
            cursor_after = %show(cursor_after.as_ref()),
            error = %e,
            "Run failed."
        ),
    }
    result.map(|()| true)
}

/// Before a run exports anything: refuses a state that disagrees with the lake (nothing is
/// touched then), recovers an interrupted run, and brings the lake marker up to date.
fn prepare(
    ctx: &RunContext,
    storage: &dyn Storage,
    state: &State,
    source_id: i64,
    name: &str,
) -> Result<(), PipelineError> {
    // One read of the marker, whatever the lake's size.
    let current = marker::read(storage, name)?;
    if let Some(reason) =
        marker::disagreement_with(current.as_ref(), storage, state, source_id, name)?
    {
        return Err(PipelineError::Disagree {
            source_name: name.to_string(),
            lake: ctx.warehouse.display(),
            state: ctx.state_path.display().to_string(),
            reason,
        });
    }
    lake::recover(storage, state, source_id, name)?;
    marker::refresh(
        current.as_ref(),
        storage,
        state,
        source_id,
        name,
        state.cursor(source_id)?.as_ref(),
    )?;
    Ok(())
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

struct Exporter<'a> {
    storage: &'a dyn Storage,
    state: &'a mut State,
    source: &'a str,
    source_id: i64,
    run_id: i64,
    backfill_id: Option<i64>,
    /// The cursor as last committed (a commit that would change nothing is not made).
    stored: Option<Cursor>,
    /// The source's incremental cursor as committed (the lake marker carries it).
    incremental: Option<Cursor>,
    max_rows: usize,
    rt: &'a Handle,
    summary: &'a mut RunSummary,
    on_page: OnPage<'a>,
}

impl<'a> Exporter<'a> {
    fn new_batch(&self) -> Batch<'a> {
        let commit_id = uuid::Uuid::now_v7().simple().to_string();
        Batch {
            writer: CommitWriter::new(
                self.storage,
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
    fn export(
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
            let keep = batch.keys.add_page(ids, |id| !exported.contains(id));
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
                    .storage
                    .adopt_spooled(&f.staged)
                    .map_err(LakeError::from)?;
                batch.writer.add_file(StagedFile {
                    staged: f.staged,
                    final_path: f.final_path,
                    rows: 0,
                    bytes,
                });
            } else {
                self.storage.delete(&f.staged).map_err(LakeError::from)?;
            }
        }
        if !page.rejects.is_empty() {
            // A reject is written once: the same record listed again (the lookback, a repair,
            // a re-read inbox) writes and counts nothing; a changed one is judged again.
            let ids: Vec<(String, i64)> = page
                .rejects
                .iter()
                .map(|r| Reject::identity(r.call_id.as_deref(), &r.raw))
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
        failpoint("after_stage");
        slow_commit();
        let keys: Vec<&str> = batch.keys.iter().collect();
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
        if let Err(e) = self.state.commit(&commit) {
            for f in &files {
                let _ = self.storage.delete(&f.staged);
            }
            return Err(e.into());
        }
        if batch.cursor.is_some() {
            self.stored = batch.cursor.clone();
            if self.backfill_id.is_none() {
                self.incremental = batch.cursor.clone();
            }
        }
        failpoint("after_commit");
        let manifest: Vec<ManifestRow> = files
            .iter()
            .map(|f| ManifestRow {
                staged: f.staged.clone(),
                final_path: f.final_path.clone(),
            })
            .collect();
        lake::publish(self.storage, self.state, &manifest)?;
        marker::write(
            self.storage,
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
