//! Runs one source: pages → exported-key skip → staged files → one commit → publish.
//! The only place that ties sources to the lake and the state.

mod exporter;
mod source_state;
use exporter::Exporter;
pub use source_state::SourceState;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chrono::{NaiveDate, NaiveTime};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::config::WarehouseConfig;
use crate::lake::{Lake, LakeError, StoreLayer, marker};
use crate::sources::{Cursor, OpenContext, Page, SourceConfig, SourceError};
use crate::state::lock::{LockError, SourceLock};
use crate::state::{State, StateError};

/// Where runs write: the warehouse and the state database.
#[derive(Clone)]
pub struct RunContext {
    pub warehouse: WarehouseConfig,
    pub state_path: PathBuf,
    /// Run records older than this many days are deleted after each run.
    pub runs_retention_days: u64,
    /// Wraps the lake's stores (tests inject faults so); `None` in production.
    pub layer: Option<Arc<dyn StoreLayer>>,
    /// A lake opened already and kept between runs (the daemon's); `None` opens one per run.
    pub lake: Option<Arc<Lake>>,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("warehouse", &self.warehouse)
            .field("state_path", &self.state_path)
            .field("layer", &self.layer.is_some())
            .finish()
    }
}

impl RunContext {
    /// Where the runs of `cfg` write.
    pub fn of(cfg: &crate::config::Config) -> RunContext {
        RunContext {
            warehouse: cfg.warehouse.clone(),
            state_path: cfg.state.path.clone(),
            runs_retention_days: cfg.state.runs_retention_days,
            layer: None,
            lake: None,
        }
    }

    /// Opens the lake these runs write.
    pub fn open_lake(&self, rt: &Handle) -> Result<Lake, LakeError> {
        Lake::open_with(&self.warehouse, &self.state_path, rt, self.layer.as_deref())
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
    let lake = match &ctx.lake {
        Some(l) => l.clone(),
        None => Arc::new(ctx.open_lake(rt)?),
    };
    let storage = lake.storage();
    // A source that hands calls to another for analysis records them in that one's jobs.
    let analysis_jobs = match cfg.analysis_target() {
        Some((target, kind)) => {
            let id = state.source(target, kind)?.id;
            Some(Arc::new(SourceState::open(&ctx.state_path, id)?) as Arc<dyn crate::sources::Jobs>)
        }
        None => None,
    };
    let open_ctx = OpenContext {
        warehouse_root: storage.spool_root(),
        known: asked.clone(),
        inbox: asked.clone(),
        jobs: asked,
        analysis_jobs,
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
    if let Err(e) = prepare(ctx, &lake, &state, row.id, name, cfg) {
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
                lake: &lake,
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
    lake: &Lake,
    state: &State,
    source_id: i64,
    name: &str,
    cfg: &SourceConfig,
) -> Result<(), PipelineError> {
    let storage = lake.storage();
    // One read of the marker, whatever the lake's size.
    let current = marker::read(storage, name)?;
    if let Some(reason) = marker::disagreement_with(current.as_ref(), lake, state, source_id, name)?
    {
        return Err(PipelineError::Disagree {
            source_name: name.to_string(),
            lake: ctx.warehouse.display(),
            state: ctx.state_path.display().to_string(),
            reason,
        });
    }
    lake.recover(state, source_id, name, &|facts, cursor| {
        cfg.repair_cursor(facts, cursor)
    })?;
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
