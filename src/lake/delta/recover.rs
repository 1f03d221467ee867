//! Recovery of a Delta lake's source, and the plan it shares with `verify`: the state's
//! published data files held against the table's active files of the source, both ways.

use std::collections::{BTreeMap, HashSet};

use tracing::{info, warn};

use super::{DATASETS, DeltaTables, dataset_named, dataset_of};
use crate::lake::LakeError;
use crate::lake::files::{date_of, day_number, scan_keys};
use crate::lake::recover::{clear_staging, finish_moves, forget, mark_done};
use crate::lake::table::{ActiveFile, Recovered, SourceCx};
use crate::state::compaction::PendingCompaction;
use crate::state::{ManifestEntry, TableCheck};

/// How the state and the table of one source differ, and what recovery does about it.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Files the table holds that the state does not name (a commit or compaction by another
    /// process with this source's name): adopted, with their calls.
    pub adopt: Vec<ActiveFile>,
    /// Published files the table lacks that are in the lake with their size: added again.
    pub readd: Vec<ManifestEntry>,
    /// Published files the table lacks whose rows are in files it adopts (another process's
    /// compaction replaced them): the state follows the table.
    pub replaced: Vec<ManifestEntry>,
    /// Published files in neither the table nor the lake: forgotten, their calls fetched
    /// again.
    pub gone: Vec<ManifestEntry>,
    /// The table's active files of the source (after nothing was changed).
    pub active: Vec<ActiveFile>,
}

/// Holds the state's published data files of the source against the table's; files of
/// compactions still in flight (`skip`) are left to their settling.
pub(super) fn plan(
    tables: &DeltaTables,
    cx: &SourceCx<'_>,
    skip: &HashSet<String>,
) -> Result<Plan, LakeError> {
    let mut active = Vec::new();
    for ds in DATASETS {
        active.extend(tables.active_files(ds, Some(cx.source))?);
    }
    let manifest = cx.state.manifest(cx.source_id)?;
    let named: HashSet<&str> = manifest.iter().map(|m| m.final_path.as_str()).collect();
    let in_table: HashSet<&str> = active.iter().map(|f| f.path.as_str()).collect();
    // A file the table references that is gone from the lake is no file to adopt: `verify`
    // names it, and `repair` removes it from the table and fetches its calls again.
    let mut adopt = Vec::new();
    for f in &active {
        if !named.contains(f.path.as_str())
            && !skip.contains(&f.path)
            && cx.storage.size(&f.path)? == Some(f.size)
        {
            adopt.push(f.clone());
        }
    }
    let mut plan = Plan {
        adopt,
        ..Plan::default()
    };
    // Per partition, the keys of the files to adopt (read only where a question needs them).
    let mut foreign_keys: BTreeMap<(String, String), HashSet<String>> = BTreeMap::new();
    for m in manifest {
        if !m.published
            || dataset_of(&m.final_path).is_none()
            || in_table.contains(m.final_path.as_str())
            || skip.contains(&m.final_path)
        {
            continue;
        }
        if cx.storage.size(&m.final_path)? != Some(m.bytes) {
            plan.gone.push(m);
            continue;
        }
        let dir = m.final_path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let foreign: Vec<&ActiveFile> = plan
            .adopt
            .iter()
            .filter(|f| f.path.rsplit_once('/').map(|(d, _)| d) == Some(dir))
            .collect();
        if foreign.is_empty() {
            plan.readd.push(m);
            continue;
        }
        let key = (dir.to_string(), String::new());
        if !foreign_keys.contains_key(&key) {
            let mut keys = HashSet::new();
            for f in &foreign {
                scan_keys(cx.storage, &f.path, |k| {
                    keys.extend(k.iter().flatten().map(str::to_string));
                    Ok(())
                })?;
            }
            foreign_keys.insert(key.clone(), keys);
        }
        let theirs = &foreign_keys[&key];
        let mut overlap = false;
        scan_keys(cx.storage, &m.final_path, |k| {
            overlap |= k.iter().flatten().any(|id| theirs.contains(id));
            Ok(())
        })?;
        if overlap {
            plan.replaced.push(m);
        } else {
            plan.readd.push(m);
        }
    }
    plan.active = active;
    Ok(plan)
}

/// How a compaction in flight was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Its commit landed: the state now names its new files.
    Finished,
    /// Its commit never landed: its new files, which no table version references, are gone.
    Undone,
    /// Whether it landed cannot be read any more (the log entries since it began were
    /// cleaned): its files are kept, and the state follows the table.
    Kept,
}

/// Settles a compaction recorded in the state: finished when its commit landed (its first
/// new file is active, or a log entry since it began carries its id), otherwise its new
/// files are deleted (no table version references them) and it is forgotten.
pub fn settle_compaction(
    tables: &DeltaTables,
    cx: &SourceCx<'_>,
    c: &PendingCompaction,
) -> Result<Settled, LakeError> {
    let Some(ds) = dataset_named(&c.dataset) else {
        cx.state.drop_compaction(&c.id)?;
        return Ok(Settled::Undone);
    };
    let dir = format!("{}/source={}/date={}", c.dataset, cx.source, c.date);
    let landed = match &c.added {
        // Still writing its files: no commit was tried.
        None => Some(false),
        Some(added) if added.is_empty() => Some(false),
        Some(added) => tables.compaction_landed(ds, &c.id, &added[0].path, c.base_version)?,
    };
    match landed {
        Some(true) => {
            cx.state.finish_compaction(cx.source_id, c)?;
            info!(source = %cx.source, date = %c.date, "Finished recording a compaction whose commit had landed.");
            Ok(Settled::Finished)
        }
        Some(false) => {
            let prefix = format!("part-{}-", c.id);
            for name in cx.storage.list(&dir)? {
                if name.starts_with(&prefix) {
                    cx.storage.delete(&format!("{dir}/{name}"))?;
                }
            }
            cx.state.drop_compaction(&c.id)?;
            info!(source = %cx.source, date = %c.date, "Undid a compaction whose commit never landed.");
            Ok(Settled::Undone)
        }
        None => {
            cx.state.drop_compaction(&c.id)?;
            warn!(source = %cx.source, date = %c.date, "Whether an old compaction's commit landed can no longer be read from the log; its files are kept and the state follows the table.");
            Ok(Settled::Kept)
        }
    }
}

/// Recovery of a Delta lake's source, under its lock. In order:
/// 1. A committed file whose move was not recorded is finished (in place with its size:
///    done; staged: moved; neither: lost).
/// 2. Each commit of those files is added to its table, one Delta commit per (table,
///    sequence number), unless the table's app transaction `callsync/<source>` already holds
///    it; then the files are marked published.
/// 3. Compactions in flight are settled from the table: finished when their commit landed,
///    undone (their new files deleted) when it never did.
/// 4. The state and the table are held against each other (`plan`): files the table holds
///    that the state does not name are adopted with their calls; published files the table
///    lacks are added again when they are in the lake with their size, dropped when their
///    rows are in adopted files (another process compacted them), and forgotten when gone
///    (their calls un-exported and the cursor rewound, so the next run fetches them again),
///    as are the lost files of step 1.
/// 5. The commit counter rises above what the table holds (after a rebuilt state).
/// 6. Staged files no manifest row names are deleted.
pub(super) fn recover(tables: &DeltaTables, cx: &SourceCx<'_>) -> Result<Recovered, LakeError> {
    let mut rec = Recovered::default();
    let moves = finish_moves(cx, cx.state.unpublished(cx.source_id)?)?;
    rec.rolled_forward = moves.rolled_forward;
    tables.append(cx.source, &moves.done, false)?;
    let gone = mark_done(cx, &moves)?;
    for c in cx.state.pending_compactions(cx.source_id)? {
        rec.compactions += 1;
        if settle_compaction(tables, cx, &c)? == Settled::Undone {
            rec.deleted += c.added.as_ref().map_or(0, Vec::len);
        }
    }
    let checked = if gone.is_empty() {
        unchanged_since_checked(tables, cx)?
    } else {
        None
    };
    match checked {
        // The log since the last check holds nothing of this source the state does not
        // know: the tables' files need not be read.
        Some(checks) => {
            for (ds, check) in checks {
                cx.state.set_table_check(cx.source_id, ds.dir(), &check)?;
            }
        }
        None => reconcile(tables, cx, &mut rec, gone)?,
    }
    rec.deleted += clear_staging(cx)?;
    Ok(rec)
}

/// Step 4 in full: the state's published files held against the tables' (see `plan`), and
/// each table's check recorded at its version after.
fn reconcile(
    tables: &DeltaTables,
    cx: &SourceCx<'_>,
    rec: &mut Recovered,
    mut gone: Vec<String>,
) -> Result<(), LakeError> {
    let plan = plan(tables, cx, &HashSet::new())?;
    if !plan.adopt.is_empty() {
        adopt(cx, &plan.adopt)?;
        rec.adopted = plan.adopt.len();
        warn!(source = %cx.source, files = rec.adopted, "The table holds files of this source that the state did not name (written by another process with this source's name); the state adopted them and their calls.");
    }
    if !plan.readd.is_empty() {
        crate::failpoint::hit("readd_before_commit");
        rec.readded = tables.readd(cx, &plan.readd)?;
        warn!(source = %cx.source, files = rec.readded, "Committed files the table lacked were added to it again.");
    }
    let present = |ds: crate::schema::Dataset, date: &str| -> Result<Vec<String>, LakeError> {
        Ok(tables.partition_files(ds, cx.source, date)?)
    };
    if !plan.replaced.is_empty() {
        let paths: Vec<String> = plan.replaced.iter().map(|m| m.final_path.clone()).collect();
        let (files, calls) = forget(cx, &paths, true, &present)?;
        rec.replaced = files;
        rec.unexported += calls;
    }
    gone.extend(plan.gone.into_iter().map(|m| m.final_path));
    let (forgotten, unexported) = forget(cx, &gone, false, &present)?;
    rec.forgotten = forgotten;
    rec.unexported += unexported;
    let app = format!("callsync/{}", cx.source);
    for ds in DATASETS {
        let Some(version) = tables.latest_version(ds)? else {
            continue;
        };
        let txn = tables.txn_version(ds, &app)?;
        if let Some(v) = txn {
            cx.state.raise_commit_seq(cx.source_id, v)?;
        }
        cx.state.set_table_check(
            cx.source_id,
            ds.dir(),
            &TableCheck {
                version,
                txn_seen: txn.unwrap_or(0),
                published_seq: 0,
            },
        )?;
    }
    Ok(())
}

/// Whether the tables changed under this source since the state last checked them: reads
/// the log entries after the version each check recorded, and answers the new checks when
/// nothing in them touches the source's files in a way the state does not know. `None` asks
/// for the full reconciliation: no check yet (a new, rebuilt or converted state), a gap or an
/// emptied entry in the log, an entry adding a file the state does not name or removing one
/// it still names (another process), or a commit the state published that no entry shows
/// (a log entry lost after the state marked it published).
fn unchanged_since_checked(
    tables: &DeltaTables,
    cx: &SourceCx<'_>,
) -> Result<Option<Vec<(crate::schema::Dataset, TableCheck)>>, LakeError> {
    let app = format!("callsync/{}", cx.source);
    let ours = format!("source={}/", cx.source);
    let mut checks = Vec::new();
    for ds in DATASETS {
        let published = cx.state.has_published_in(cx.source_id, ds.dir())?;
        let Some(latest) = tables.latest_version(ds)? else {
            if published {
                return Ok(None);
            }
            continue;
        };
        let Some(check) = cx.state.table_check(cx.source_id, ds.dir())? else {
            return Ok(None);
        };
        if check.version > latest {
            return Ok(None);
        }
        let mut txn_seen = check.txn_seen;
        for v in check.version + 1..=latest {
            let Some(entry) = tables.block(tables.read_commit(ds, v))? else {
                return Ok(None);
            };
            let mut actions = 0;
            for line in entry.split(|b| *b == b'\n') {
                let Ok(a) = serde_json::from_slice::<serde_json::Value>(line) else {
                    continue;
                };
                actions += 1;
                if let Some(t) = a.get("txn")
                    && t["appId"].as_str() == Some(app.as_str())
                {
                    txn_seen = txn_seen.max(t["version"].as_i64().unwrap_or(0));
                }
                for (kind, named) in [("add", true), ("remove", false)] {
                    let Some(path) = a.get(kind).and_then(|x| x["path"].as_str()) else {
                        continue;
                    };
                    if !path.starts_with(&ours) {
                        continue;
                    }
                    let path = format!("{}/{path}", ds.dir());
                    if cx.state.names(cx.source_id, &path)? != named {
                        return Ok(None);
                    }
                }
            }
            if actions == 0 {
                return Ok(None);
            }
        }
        if check.published_seq > txn_seen {
            return Ok(None);
        }
        checks.push((
            ds,
            TableCheck {
                version: latest,
                txn_seen,
                published_seq: check.published_seq,
            },
        ));
    }
    Ok(Some(checks))
}

/// Records adopted files and the keys they hold (each with its partition day).
fn adopt(cx: &SourceCx<'_>, files: &[ActiveFile]) -> Result<(), LakeError> {
    let mut keys: Vec<(String, Option<i32>)> = Vec::new();
    for f in files {
        let day = date_of(&f.path).and_then(day_number);
        scan_keys(cx.storage, &f.path, |k| {
            keys.extend(k.iter().flatten().map(|id| (id.to_string(), day)));
            Ok(())
        })?;
    }
    let refs: Vec<(&str, Option<i32>)> = keys.iter().map(|(k, d)| (k.as_str(), *d)).collect();
    let adopted: Vec<crate::state::Adopted<'_>> = files
        .iter()
        .map(|f| crate::state::Adopted {
            path: &f.path,
            rows: f.rows.unwrap_or_default(),
            bytes: f.size,
            stats: None,
        })
        .collect();
    cx.state.adopt(cx.source_id, &adopted, &refs)?;
    Ok(())
}
