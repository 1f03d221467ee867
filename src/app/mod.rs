//! The CLI commands (`sync`, `status`, `demo`) as library functions that return exit codes.

use std::io::Write;

use anyhow::Context;
use tokio::runtime::Runtime;

use crate::config::Config;
use crate::progress;
use chrono::NaiveDate;

use crate::pipeline::{RunContext, RunMode, RunReport, RunSummary, StopFlag, run, run_sync};
use crate::sources::Cursor;
use crate::state::State;

mod compact;
mod demo;
mod lake;
mod ops;

pub use compact::{CompactRequest, compact, compact_one, vacuum};
pub use demo::demo;
pub use lake::{repair, repair_lake, verify, verify_lake};
pub use ops::{Resubmit, check, exotel_analyze, health};

/// Exit code: every source succeeded.
pub const EXIT_OK: i32 = 0;
/// Exit code: at least one source failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: usage or config error.
pub const EXIT_USAGE: i32 = 2;

/// Reports a `--source` that the config does not have (a usage error).
fn unknown_source(cfg: &Config, name: &str, out: &mut dyn Write) -> anyhow::Result<i32> {
    let known: Vec<&str> = cfg.sources.keys().map(String::as_str).collect();
    writeln!(
        out,
        "error: no source named {name:?} in {} (configured: {})",
        cfg.file.display(),
        known.join(", ")
    )?;
    Ok(EXIT_USAGE)
}

/// Runs one incremental pass over the named sources (all when `only` is empty), each
/// independently and concurrently; prints one line per source.
pub fn sync(
    cfg: &Config,
    only: &[String],
    rt: &Runtime,
    stop: &StopFlag,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    if let Some(name) = only.iter().find(|n| !cfg.sources.contains_key(*n)) {
        return unknown_source(cfg, name, out);
    }
    // Create and migrate the state once, before the sources open it concurrently.
    State::open(&cfg.state.path)
        .with_context(|| format!("opening state {}", cfg.state.path.display()))?;
    let ctx = RunContext::of(cfg);
    let mut handles = Vec::new();
    for (name, scfg) in &cfg.sources {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        let (ctx, name, scfg, stop) = (ctx.clone(), name.clone(), scfg.clone(), stop.clone());
        let handle = rt.handle().clone();
        handles.push(rt.spawn_blocking(move || run_sync(&ctx, &name, &scfg, &handle, &stop)));
    }
    let mut reports: Vec<RunReport> = Vec::new();
    for h in handles {
        reports.push(rt.block_on(h).context("a source's run panicked")?);
    }
    let mut code = EXIT_OK;
    for r in &reports {
        let s = &r.summary;
        match &r.error {
            None => writeln!(
                out,
                "{}: ok: {} calls written, {} rejected, {} already exported, {} files",
                r.source, s.rows, s.rejects, s.skipped, s.files
            )?,
            Some(e) if s.rows == 0 => {
                code = EXIT_FAILED;
                writeln!(out, "{}: FAILED: {e}", r.source)?;
            }
            Some(e) => {
                code = EXIT_FAILED;
                writeln!(
                    out,
                    "{}: FAILED: {e} ({} calls written before the failure are kept)",
                    r.source, s.rows
                )?;
            }
        }
    }
    Ok(code)
}

/// Backfills `[from, to]` (inclusive UTC days) of one source through the same commit path
/// as `sync`, without moving its incremental cursor; resumes where an interrupted run of the
/// same range stopped. Shows a progress bar on a terminal, log lines otherwise.
#[allow(clippy::too_many_arguments)]
pub fn backfill(
    cfg: &Config,
    source: &str,
    from: NaiveDate,
    to: NaiveDate,
    rt: &Runtime,
    stop: &StopFlag,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let Some(scfg) = cfg.sources.get(source).cloned() else {
        return unknown_source(cfg, source, out);
    };
    if from > to {
        writeln!(out, "error: --from {from} is after --to {to}")?;
        return Ok(EXIT_USAGE);
    }
    State::open(&cfg.state.path)
        .with_context(|| format!("opening state {}", cfg.state.path.display()))?;
    let ctx = RunContext::of(cfg);
    let (name, stop2, handle) = (source.to_string(), stop.clone(), rt.handle().clone());
    let mode = RunMode::Backfill { from, to };
    let report = rt
        .block_on(rt.spawn_blocking(move || {
            let progress = progress::Progress::new(&name, from, to);
            let on_page = |s: &RunSummary, c: Option<&Cursor>| progress.update(s, c);
            let r = run(&ctx, &name, &scfg, &handle, &stop2, &mode, &on_page);
            progress.finish();
            r
        }))
        .context("the backfill panicked")?;
    let s = &report.summary;
    match &report.error {
        None if stop.is_stopped() => {
            writeln!(
                out,
                "{source}: backfill {from}..{to} stopped: {} calls written; run the same command to resume",
                s.rows
            )?;
            Ok(EXIT_FAILED)
        }
        None => {
            writeln!(
                out,
                "{source}: backfill {from}..{to} ok: {} calls written, {} rejected, {} already exported, {} files",
                s.rows, s.rejects, s.skipped, s.files
            )?;
            Ok(EXIT_OK)
        }
        Some(e) => {
            writeln!(
                out,
                "{source}: backfill {from}..{to} FAILED: {e} ({} calls written are kept; run the same command to resume)",
                s.rows
            )?;
            Ok(EXIT_FAILED)
        }
    }
}

/// Prints per-source status from the state database.
pub fn status(cfg: &Config, json: bool, out: &mut dyn Write) -> anyhow::Result<i32> {
    let state = State::open(&cfg.state.path)
        .with_context(|| format!("opening state {}", cfg.state.path.display()))?;
    let rows = state.status()?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(EXIT_OK);
    }
    if rows.is_empty() {
        writeln!(
            out,
            "no source has run yet (state: {})",
            cfg.state.path.display()
        )?;
    }
    for s in rows {
        let configured = if cfg.sources.contains_key(&s.name) {
            ""
        } else {
            " (not in config)"
        };
        writeln!(out, "{} [{}]{configured}", s.name, s.kind)?;
        writeln!(
            out,
            "  cursor: {}",
            s.cursor
                .map(|c| c.to_string())
                .unwrap_or_else(|| "(none)".into())
        )?;
        writeln!(
            out,
            "  exported: {} calls, {} rejects in total",
            s.rows_total, s.rejects_total
        )?;
        for j in &s.failed_jobs {
            writeln!(
                out,
                "  analysis {} of call {}: {} (after {} submission{})",
                j.status,
                j.call_sid,
                j.reason.as_deref().unwrap_or("no reason given"),
                j.submissions,
                if j.submissions == 1 { "" } else { "s" }
            )?;
        }
        if s.waiting_jobs > 0 {
            writeln!(
                out,
                "  {} call(s) waiting for analysis (the daily cap analyze_max_per_day held them back; the longest waiting go first)",
                s.waiting_jobs
            )?;
        }
        if !s.calls_without_details.is_empty() {
            writeln!(
                out,
                "  {} analysed call(s) not returned by the call-details API (no started_at; partitioned by extraction day): {}",
                s.calls_without_details.len(),
                s.calls_without_details.join(", ")
            )?;
        }
        if let Some(i) = &s.inbox {
            writeln!(
                out,
                "  inbox: {} deliveries not yet exported{}",
                i.depth,
                i.oldest_unexported_at
                    .as_ref()
                    .map(|t| format!(", oldest received {t}"))
                    .unwrap_or_default()
            )?;
        }
        match s.last_run {
            Some(r) => writeln!(
                out,
                "  last run: {} {} → {} {}: {} calls, {} rejects",
                r.kind,
                r.started_at,
                r.ended_at
                    .unwrap_or_else(|| "(running or interrupted)".into()),
                r.outcome,
                r.rows,
                r.rejects
            )?,
            None => writeln!(out, "  last run: (none)")?,
        }
        if let Some(e) = s.last_error {
            writeln!(out, "  last error: {e}")?;
        }
        for b in s.backfills {
            writeln!(
                out,
                "  backfill {}..{} {}: {} calls so far, at {}, updated {}",
                b.from_day,
                b.to_day,
                b.status,
                b.rows,
                b.cursor
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "(start)".into()),
                b.updated_at
            )?;
        }
    }
    Ok(EXIT_OK)
}
