//! `repair` and `verify`: the lake and the state held against each other.

use std::io::Write;

use anyhow::Context;

use super::{EXIT_FAILED, EXIT_OK, unknown_source};
use tokio::runtime::Runtime;

use crate::config::Config;
use crate::lake::Lake;
use crate::state::State;

/// The configured lake (a directory or an object store).
pub(super) fn open_lake(cfg: &Config, rt: &Runtime) -> anyhow::Result<Lake> {
    Lake::open(&cfg.warehouse, &cfg.state.path, rt.handle())
        .with_context(|| format!("opening the lake {}", cfg.warehouse.display()))
}

/// Rebuilds the state of the named sources (all configured ones when `only` is empty) from
/// their lake, each under its lock. A source whose state agrees with the lake is left alone
/// unless `force`.
pub fn repair(
    cfg: &Config,
    only: &[String],
    force: bool,
    rt: &Runtime,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    if let Some(name) = only.iter().find(|n| !cfg.sources.contains_key(*n)) {
        return unknown_source(cfg, name, out);
    }
    State::open(&cfg.state.path)
        .with_context(|| format!("opening state {}", cfg.state.path.display()))?;
    let lake = open_lake(cfg, rt)?;
    repair_lake(cfg, &lake, only, force, out)
}

/// `repair` of an opened lake (tests open it with a store layer).
pub fn repair_lake(
    cfg: &Config,
    lake: &Lake,
    only: &[String],
    force: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let mut code = EXIT_OK;
    for (name, scfg) in &cfg.sources {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        match repair_one(cfg, lake, name, scfg, force) {
            Ok(line) => writeln!(out, "{name}: {line}")?,
            Err(e) => {
                code = EXIT_FAILED;
                writeln!(out, "{name}: FAILED: {e:#}")?;
            }
        }
    }
    Ok(code)
}

fn repair_one(
    cfg: &Config,
    lake: &Lake,
    name: &str,
    scfg: &crate::sources::SourceConfig,
    force: bool,
) -> anyhow::Result<String> {
    use crate::lake::{marker, repair};
    let _lock = crate::state::lock::SourceLock::try_acquire(&cfg.state.path, name)?;
    let mut state = State::open(&cfg.state.path)?;
    let row = state.source(name, scfg.kind())?;
    let rewind = |facts: &crate::shared::LakeFacts, c: Option<&crate::shared::Cursor>| {
        scfg.repair_cursor(facts, c)
    };
    let disagreement = marker::disagreement(lake, &state, row.id, name)?;
    if disagreement.is_none() {
        // The state is right: finish its interrupted publishes, then forget committed files
        // that are gone (their calls are fetched again).
        lake.recover(&state, row.id, name, &rewind)?;
        let gone = lake
            .table()
            .forget_missing(&lake.source(&state, row.id, name, &rewind))?;
        if !force {
            return Ok(if gone.forgotten > 0 {
                format!(
                    "{} committed file{} gone from the lake forgotten: {} call{} un-exported, the next run fetches them again",
                    gone.forgotten,
                    if gone.forgotten == 1 {
                        " was"
                    } else {
                        "s were"
                    },
                    gone.unexported,
                    if gone.unexported == 1 { " is" } else { "s are" },
                )
            } else if state.last_commit(row.id)?.is_none() {
                "nothing to repair: the state has no commit of it and the lake no file".into()
            } else {
                "the state agrees with the lake; left alone (--force rebuilds it anyway)".into()
            });
        }
    }
    let r = repair::rebuild(lake, &mut state, row.id, name, rewind)?;
    tracing::info!(source = %name, rows = r.rows, rejects = r.rejects, files = r.data_files, "State rebuilt from the lake.");
    Ok(format!(
        "rebuilt from the lake: {} data files, {} calls, {} rejects, {} other files; cursor {}; {} staged files deleted",
        r.data_files,
        r.rows,
        r.rejects,
        r.other_files,
        r.cursor
            .map(|c| c.to_string())
            .unwrap_or_else(|| "(start)".into()),
        r.staged_deleted
    ))
}

/// Holds the lake against the state: prints one line per problem (naming the file) and per
/// note; exit 0 when there is no problem. Sources: the named ones, or every source that is
/// configured, in the state or in the lake.
pub fn verify(
    cfg: &Config,
    only: &[String],
    rt: &Runtime,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let state = State::open(&cfg.state.path)
        .with_context(|| format!("opening state {}", cfg.state.path.display()))?;
    let lake = open_lake(cfg, rt)?;
    verify_lake(cfg, &lake, &state, only, out)
}

/// `verify` of an opened lake (tests open it with a store layer).
pub fn verify_lake(
    cfg: &Config,
    lake: &Lake,
    state: &State,
    only: &[String],
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    use crate::lake::repair;
    let storage = lake.storage();
    let mut names: std::collections::BTreeSet<String> = only.iter().cloned().collect();
    if only.is_empty() {
        names.extend(cfg.sources.keys().cloned());
        names.extend(state.source_names()?);
        names.extend(repair::lake_sources(storage)?);
    }
    let (mut problems, mut files) = (0usize, 0usize);
    for name in &names {
        let id = state.source_id(name)?;
        // With the lock held nothing is in flight, so staging can be judged too.
        let lock = crate::state::lock::SourceLock::try_acquire(&cfg.state.path, name).ok();
        let found = lake.verify(state, id, name, lock.is_some())?;
        if lock.is_none() {
            writeln!(
                out,
                "{name}: note: a run is in progress; staging not checked"
            )?;
        }
        if let Some(id) = id {
            files += state.manifest(id)?.len();
        }
        for f in found {
            if f.problem {
                problems += 1;
                writeln!(out, "{name}: {}", f.text)?;
            } else {
                writeln!(out, "{name}: note: {}", f.text)?;
            }
        }
    }
    if problems == 0 {
        writeln!(
            out,
            "verify: clean: {} sources, {files} committed files, lake {}",
            names.len(),
            cfg.warehouse.display()
        )?;
        Ok(EXIT_OK)
    } else {
        writeln!(
            out,
            "verify: {problems} problem{} in lake {} against state {}",
            if problems == 1 { "" } else { "s" },
            cfg.warehouse.display(),
            cfg.state.path.display()
        )?;
        Ok(EXIT_FAILED)
    }
}
