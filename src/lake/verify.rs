//! `verify`: the lake held against the state for one source, in three directions (the
//! state's files against what readers see, what readers see against the state, and that
//! against the storage: every file present with its recorded size). Each finding says what
//! the next run will really do about it, or which command settles it.

use std::collections::BTreeSet;

use super::delta::dataset_of;
use super::storage::Storage;
use super::table::{Finding, keep_cursor};
use super::{Lake, LakeError, marker};
use crate::state::{ManifestEntry, State};

/// A committed file that is missing from the storage or of another size than its commit
/// recorded, or `None`; `hint` follows the text of a missing one.
pub(super) fn size_finding(
    storage: &dyn Storage,
    m: &ManifestEntry,
    hint: &str,
) -> Result<Option<Finding>, LakeError> {
    Ok(match storage.size(&m.final_path)? {
        None => Some(Finding::problem(
            &m.final_path,
            format!(
                "missing: {} (committed in {}, {} bytes){hint}",
                m.final_path, m.commit_id, m.bytes
            ),
        )),
        Some(n) if n != m.bytes => Some(Finding::problem(
            &m.final_path,
            format!(
                "wrong size: {} is {n} bytes, its commit {} recorded {}",
                m.final_path, m.commit_id, m.bytes
            ),
        )),
        Some(_) => None,
    })
}

/// Holds the lake against the state for one source (`source_id` is `None` when the state
/// does not know it: every file is then foreign). `idle`: the caller holds the source's lock,
/// so staging can be judged too.
pub(super) fn verify(
    lake: &Lake,
    state: &State,
    source_id: Option<i64>,
    source: &str,
    idle: bool,
) -> Result<Vec<Finding>, LakeError> {
    let storage = lake.storage();
    // Listed before the state is read: a run publishing meanwhile shows up as committed but
    // not yet published, never as foreign.
    let recordings = storage.walk(&format!("recordings/source={source}"))?;
    let staged_now = storage.list(&format!("_staging/{source}"))?;
    let Some(id) = source_id else {
        let mut out = Vec::new();
        for f in lake.table().active_files(storage, source)? {
            out.push(Finding::problem(
                &f.path,
                format!(
                    "foreign: {} is in the lake but no commit of {source} names it",
                    f.path
                ),
            ));
        }
        for (path, _) in recordings {
            out.push(Finding::problem(
                &path,
                format!("foreign: {path} is in the lake but no commit of {source} names it"),
            ));
        }
        return Ok(out);
    };
    let keep = keep_cursor;
    let cx = lake.source(state, id, source, &keep);
    let mut out = Vec::new();
    if let Some(reason) = marker::disagreement(lake, state, id, source)? {
        out.push(Finding::problem(
            &marker::path(source),
            format!("{reason}; run `callsync repair --source {source}`"),
        ));
    }
    out.extend(lake.table().verify(&cx, idle)?);
    let manifest = state.manifest(id)?;
    let mut pending_staged = BTreeSet::new();
    for m in &manifest {
        let data = dataset_of(&m.final_path).is_some();
        if !m.published {
            if storage.exists(&m.final_path)? || storage.exists(&m.staged)? {
                pending_staged.insert(m.staged.clone());
                out.push(Finding::note(
                    &m.final_path,
                    format!(
                        "not yet published: {} (committed; the next run of {source} publishes it)",
                        m.final_path
                    ),
                ));
            } else {
                out.push(Finding::problem(
                    &m.final_path,
                    format!(
                        "lost: {} was committed in {} but is neither staged ({}) nor in the lake{}",
                        m.final_path,
                        m.commit_id,
                        m.staged,
                        if data {
                            format!("; the next run of {source} fetches its calls again")
                        } else {
                            String::new()
                        }
                    ),
                ));
            }
        } else if !data {
            // Rejects and recordings: plain files beside the tables, whatever the format.
            out.extend(size_finding(storage, m, "")?);
        }
    }
    let named: BTreeSet<&str> = manifest.iter().map(|m| m.final_path.as_str()).collect();
    for (path, _) in &recordings {
        if !named.contains(path.as_str()) {
            out.push(Finding::problem(
                path,
                format!("foreign: {path} is in the lake but no commit of {source} names it"),
            ));
        }
    }
    if idle {
        for name in staged_now {
            let rel = format!("_staging/{source}/{name}");
            if !pending_staged.contains(&rel) {
                out.push(Finding::note(
                    &rel,
                    format!(
                        "left by an interrupted run: {rel} (no commit names it; the next run of {source} deletes it)"
                    ),
                ));
            }
        }
    }
    Ok(out)
}
