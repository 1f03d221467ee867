//! Recovery steps both formats share: finishing the moves of committed files, forgetting
//! committed data files that are gone (their calls are fetched again), clearing staging.
//! Each format's own recovery (`plain::recover`, `delta::recover`) puts them in order.
//!
//! Nothing here deletes a file that the state names as committed or that a table may
//! reference: a staged copy goes only once its file is in place with its recorded size, and a
//! staged file only when no manifest row names it (its commit never happened).

use std::collections::HashSet;

use tracing::warn;

use super::LakeError;
use super::delta::dataset_of;
use super::files::{date_of, day_number, scan_keys};
use super::table::SourceCx;
use crate::schema::Dataset;
use crate::shared::LakeFacts;
use crate::state::{Forget, ManifestRow};

/// What finishing the moves found.
#[derive(Debug, Default)]
pub(super) struct Moves {
    /// Rows whose file is in place now.
    pub done: Vec<ManifestRow>,
    /// Rows whose file is neither staged nor in place.
    pub lost: Vec<ManifestRow>,
    /// Files moved now.
    pub rolled_forward: usize,
}

/// Finishes the move of each committed file not recorded as published: a file in place with
/// its recorded size is done (a staged copy left by a publish cut between copy and delete
/// goes); a staged one is moved (again); one that is neither is lost.
pub(super) fn finish_moves(
    cx: &SourceCx<'_>,
    pending: Vec<ManifestRow>,
) -> Result<Moves, LakeError> {
    let s = cx.storage;
    let mut out = Moves::default();
    for row in pending {
        let in_place = s.size(&row.final_path)?;
        if in_place == Some(row.bytes) {
            if s.exists(&row.staged)? {
                s.delete(&row.staged)?;
            }
            out.done.push(row);
        } else if s.exists(&row.staged)? {
            s.publish(&row.staged, &row.final_path)?;
            out.rolled_forward += 1;
            out.done.push(row);
        } else {
            if let Some(n) = in_place {
                warn!(source = %cx.source, file = %row.final_path, bytes = n, recorded = row.bytes, "A file of another size stands where a committed file belongs; it is not the committed file.");
            }
            out.lost.push(row);
        }
    }
    Ok(out)
}

/// Lists the data files of a partition (dataset, date) that are still there.
pub(super) type Present<'a> = dyn Fn(Dataset, &str) -> Result<Vec<String>, LakeError> + 'a;

/// Forgets committed data files that are gone, one transaction each: the calls of the file's
/// partition day that no file still there holds (`present(dataset, date)` lists those files)
/// are un-exported, the cursor is rewound by the source kind's rule so the next run fetches
/// them again, and the file's manifest row goes. Other files (rejects, recordings) lost are
/// only logged: they keep their rows and `verify` keeps naming them. `replaced`: the files
/// are not lost but were replaced in the table by another process's compaction (their calls
/// are in the files that replaced them; any that are not are fetched again). Returns (files,
/// calls).
pub(super) fn forget(
    cx: &SourceCx<'_>,
    gone: &[String],
    replaced: bool,
    present: &Present<'_>,
) -> Result<(usize, usize), LakeError> {
    let (mut files, mut calls) = (0, 0);
    for path in gone {
        let (Some(ds), Some(date)) = (dataset_of(path), date_of(path)) else {
            warn!(source = %cx.source, file = %path, "A committed file is gone from the lake; `verify` names it until it is put back.");
            continue;
        };
        let Some(day) = day_number(date) else {
            continue;
        };
        let mut keys: HashSet<String> = cx
            .state
            .keys_of_day(cx.source_id, day)?
            .into_iter()
            .collect();
        if !keys.is_empty() {
            for f in present(ds, date)? {
                if f != *path {
                    scan_keys(cx.storage, &f, |k| {
                        for id in k.iter().flatten() {
                            keys.remove(id);
                        }
                        Ok(())
                    })?;
                }
            }
        }
        let mut keys: Vec<String> = keys.into_iter().collect();
        keys.sort();
        let cursor = if keys.is_empty() {
            None
        } else {
            let least = keys
                .iter()
                .filter_map(|k| k.trim().parse::<u64>().ok())
                .min();
            let facts = LakeFacts {
                max_numeric_id: least.map(|m| m.saturating_sub(1)),
                max_started_at: Some(day as i64 * 86_400_000_000),
            };
            let stored = cx.state.cursor(cx.source_id)?;
            Some((cx.rewind)(&facts, stored.as_ref()))
        };
        cx.state.forget(
            cx.source_id,
            &Forget {
                paths: std::slice::from_ref(path),
                keys: &keys,
                cursor: cursor.as_ref().map(Option::as_ref),
            },
        )?;
        if replaced {
            warn!(source = %cx.source, file = %path, calls_missing = keys.len(), "A committed file was replaced in the table by another process's compaction; the state follows the table (calls it did not keep are fetched again).");
        } else {
            warn!(source = %cx.source, file = %path, calls = keys.len(), "A committed file is gone from the lake; its calls are un-exported and the next run fetches them again.");
        }
        if !replaced && keys.is_empty() && cx.state.keys_without_day(cx.source_id)? > 0 {
            warn!(source = %cx.source, date = %date, "The calls of a gone file cannot be named: they were exported before callsync recorded each call's day; `callsync backfill --source {} --from {date} --to {date}` fetches them again.", cx.source);
        }
        files += 1;
        calls += keys.len();
    }
    Ok((files, calls))
}

/// Deletes the source's staged files that no unpublished manifest row names (their commit
/// never happened: their calls are fetched again) and what an interrupted run left in the
/// local spool. Returns the files deleted.
pub(super) fn clear_staging(cx: &SourceCx<'_>) -> Result<usize, LakeError> {
    let named: HashSet<String> = cx
        .state
        .unpublished(cx.source_id)?
        .into_iter()
        .map(|r| r.staged)
        .collect();
    let dir = format!("_staging/{}", cx.source);
    let mut deleted = 0;
    for name in cx.storage.list(&dir)? {
        let rel = format!("{dir}/{name}");
        if !named.contains(&rel) {
            cx.storage.delete(&rel)?;
            deleted += 1;
        }
    }
    deleted += cx.storage.clear_spool(cx.source)?;
    Ok(deleted)
}

/// Marks recovered rows published; lost rows that are no data files too (`verify` names them
/// as missing).
pub(super) fn mark_done(cx: &SourceCx<'_>, moves: &Moves) -> Result<Vec<String>, LakeError> {
    let mut names: Vec<&str> = moves.done.iter().map(|r| r.staged.as_str()).collect();
    let mut gone = Vec::new();
    for r in &moves.lost {
        if dataset_of(&r.final_path).is_some() {
            gone.push(r.final_path.clone());
        } else {
            names.push(r.staged.as_str());
        }
    }
    cx.state.mark_published(&names)?;
    Ok(gone)
}
