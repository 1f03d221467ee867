//! `compact` and `vacuum`: merging a Delta table's small files, one partition per atomic
//! commit, and deleting the files they replaced once no reader needs them.

use std::io::Write;

use anyhow::Context;
use chrono::NaiveDate;
use tokio::runtime::Runtime;

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, unknown_source};
use crate::config::{Config, LakeFormat, MIN_RETAIN_HOURS, SAFE_RETAIN_HOURS};
use crate::lake::Lake;
use crate::lake::compact::{CompactOptions, Compacted};
use crate::lake::plain::NO_COMPACTION;
use crate::state::State;

/// What `compact` was asked.
#[derive(Debug, Clone, Default)]
pub struct CompactRequest {
    /// Only these sources (all configured ones when empty).
    pub sources: Vec<String>,
    /// Only partitions of these days (inclusive).
    pub dates: Option<(NaiveDate, NaiveDate)>,
    /// Target file size in MiB (`[compaction] target_file_mb` when unset).
    pub target_file_mb: Option<u64>,
    /// A partition is compacted from this many small files on.
    pub min_files: usize,
}

/// A plain lake's answer to `compact` and `vacuum`: the reason, and the usage exit code.
fn refuse_plain_lake(cfg: &Config, out: &mut dyn Write) -> anyhow::Result<Option<i32>> {
    if cfg.warehouse.format == LakeFormat::Delta {
        return Ok(None);
    }
    writeln!(out, "error: {NO_COMPACTION}")?;
    Ok(Some(EXIT_USAGE))
}

/// Compacts one source under its lock (after recovering an interrupted run of it).
pub fn compact_one(
    cfg: &Config,
    name: &str,
    lake: &Lake,
    opts: &CompactOptions,
) -> anyhow::Result<Compacted> {
    let scfg = cfg
        .sources
        .get(name)
        .with_context(|| format!("no source named {name:?}"))?;
    let _lock = crate::state::lock::SourceLock::try_acquire(&cfg.state.path, name)?;
    let state = State::open(&cfg.state.path)?;
    let row = state.source(name, scfg.kind())?;
    let rewind = |facts: &crate::shared::LakeFacts, c: Option<&crate::shared::Cursor>| {
        scfg.repair_cursor(facts, c)
    };
    lake.recover(&state, row.id, name, &rewind)?;
    Ok(lake
        .table()
        .compact(&lake.source(&state, row.id, name, &rewind), opts)?)
}

/// `callsync compact`: every qualifying partition of the named sources; one line per source.
pub fn compact(
    cfg: &Config,
    req: &CompactRequest,
    rt: &Runtime,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    if let Some(code) = refuse_plain_lake(cfg, out)? {
        return Ok(code);
    }
    if let Some(name) = req.sources.iter().find(|n| !cfg.sources.contains_key(*n)) {
        return unknown_source(cfg, name, out);
    }
    let lake = super::lake::open_lake(cfg, rt)?;
    let opts = CompactOptions {
        target_bytes: req.target_file_mb.unwrap_or(cfg.compaction.target_file_mb) << 20,
        min_files: req.min_files,
        dates: req.dates.map(|(a, b)| (a.to_string(), b.to_string())),
    };
    let mut code = EXIT_OK;
    for name in cfg.sources.keys() {
        if !req.sources.is_empty() && !req.sources.contains(name) {
            continue;
        }
        match compact_one(cfg, name, &lake, &opts) {
            Ok(c) if c.partitions == 0 && c.lost == 0 => {
                writeln!(out, "{name}: nothing to compact")?
            }
            Ok(c) if c.partitions == 0 => writeln!(
                out,
                "{name}: nothing compacted; {} partition{} left to a compaction that committed first",
                c.lost,
                if c.lost == 1 { "" } else { "s" }
            )?,
            Ok(c) => {
                writeln!(
                    out,
                    "{name}: compacted {} partition{}: {} files -> {}, {} rows{}",
                    c.partitions,
                    if c.partitions == 1 { "" } else { "s" },
                    c.files_before,
                    c.files_after,
                    c.rows,
                    if c.lost > 0 {
                        format!("; {} left to a compaction that committed first", c.lost)
                    } else {
                        String::new()
                    }
                )?;
            }
            Err(e) => {
                code = EXIT_FAILED;
                writeln!(out, "{name}: FAILED: {e:#}")?;
            }
        }
    }
    Ok(code)
}

/// `callsync vacuum`: deletes the files the tables removed more than `retain_hours` ago.
pub fn vacuum(
    cfg: &Config,
    retain_hours: Option<u64>,
    dry_run: bool,
    rt: &Runtime,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    if let Some(code) = refuse_plain_lake(cfg, out)? {
        return Ok(code);
    }
    let hours = retain_hours.unwrap_or(cfg.compaction.retain_hours);
    if hours < MIN_RETAIN_HOURS {
        writeln!(
            out,
            "error: --retain-hours must be at least {MIN_RETAIN_HOURS}: files a compaction removed moments ago are the ones queries in flight are reading"
        )?;
        return Ok(EXIT_USAGE);
    }
    if hours < SAFE_RETAIN_HOURS {
        tracing::warn!(
            retain_hours = hours,
            "Vacuum keeps removed files less than a day: a reader holding an older snapshot of the table (a long query, a BI extract) fails on the files deleted under it."
        );
    }
    let lake = super::lake::open_lake(cfg, rt)?;
    for (table, files) in lake.table().vacuum(hours, dry_run)? {
        writeln!(
            out,
            "{}: {} {} file{} removed from the table more than {hours} h ago",
            table,
            if dry_run { "would delete" } else { "deleted" },
            files.len(),
            if files.len() == 1 { "" } else { "s" }
        )?;
    }
    Ok(EXIT_OK)
}
