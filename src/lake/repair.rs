//! `repair`: rebuilds one source's state from the files in its lake (manifest, exported keys,
//! totals, a safe cursor) and writes the marker, under the source's lock; and the reading of a
//! data file's keys that recovery shares.

use std::collections::{BTreeMap, BTreeSet};

use super::LakeError;
use super::files::scan_keys;
use super::marker;
use super::storage::Storage;
use crate::shared::{Cursor, LakeFacts};
use crate::state::State;

/// What a repair found and recorded.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Repaired {
    /// Data files (calls, monitor legs) recorded.
    pub data_files: usize,
    /// Rejects and recordings files recorded.
    pub other_files: usize,
    /// Exported keys recorded.
    pub rows: u64,
    /// Reject lines found.
    pub rejects: u64,
    /// Staged files deleted (no commit the rebuilt state knows names them).
    pub staged_deleted: usize,
    /// The rebuilt cursor.
    pub cursor: Option<Cursor>,
    /// The repair's own commit id (the marker names it).
    pub commit_id: String,
}

/// The commit id in a file name `part-<commit>-<n>.<ext>`.
fn commit_of(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    let stem = name.strip_prefix("part-")?;
    let stem = &stem[..stem.find('.')?];
    let (commit, n) = stem.rsplit_once('-')?;
    (!commit.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(commit)
}

/// Rebuilds the state of `source` from its lake. `cursor_of` is the source kind's rule for a
/// safe cursor. The caller holds the source's lock.
pub fn rebuild(
    lake: &super::Lake,
    state: &mut State,
    source_id: i64,
    source: &str,
    cursor_of: impl Fn(&LakeFacts, Option<&Cursor>) -> Option<Cursor>,
) -> Result<Repaired, LakeError> {
    let storage = lake.storage();
    // A marker that cannot be read is replaced; its cursor is then not used.
    let old_marker = marker::read(storage, source).ok().flatten();
    let marker_cursor = old_marker.as_ref().and_then(|m| m.cursor.clone());
    let commit_id = uuid::Uuid::now_v7().simple().to_string();
    let mut facts = LakeFacts::default();
    let mut note_id = |id: &str| {
        if let Ok(n) = id.trim().parse::<u64>() {
            facts.max_numeric_id = Some(facts.max_numeric_id.map_or(n, |m| m.max(n)));
        }
    };
    let mut out = Repaired {
        commit_id: commit_id.clone(),
        ..Repaired::default()
    };
    // Per commit: (rows, rejects).
    let mut commits: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut latest: Option<i64> = None;
    // With Delta tables the files of their latest versions (files a compaction replaced, or a
    // crash left behind, are no data; a source's files from before the lake was switched to
    // Delta are), otherwise every file in its partition folders.
    let data: Vec<(String, u64)> = lake
        .table()
        .data_files(storage, source)?
        .into_iter()
        .map(|f| (f.path, f.size))
        .collect();
    let rebuild = state.rebuild(source_id)?;
    {
        for (path, bytes) in data {
            if !path.ends_with(".parquet") {
                continue;
            }
            let day = super::files::date_of(&path).and_then(super::files::day_number);
            let (rows, last) = scan_keys(storage, &path, |keys| {
                let ids: Vec<&str> = keys.iter().flatten().collect();
                ids.iter().for_each(|id| note_id(id));
                rebuild.add_keys(&ids, day)
            })?;
            if let Some(l) = last {
                latest = Some(latest.map_or(l, |x| x.max(l)));
            }
            let commit = commit_of(&path).unwrap_or(&commit_id).to_string();
            rebuild.add_file(&path, &commit, rows, bytes)?;
            commits.entry(commit).or_default().0 += rows;
            out.rows += rows;
            out.data_files += 1;
        }
    }
    for (path, bytes) in storage.walk(&format!("_rejects/source={source}"))? {
        let text = storage.read(&path)?.unwrap_or_default();
        let mut lines = 0u64;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            lines += 1;
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
                let id = v.get("call_id").and_then(|c| c.as_str());
                if let Some(id) = id {
                    note_id(id);
                }
                if let Some(raw) = v.get("raw").and_then(|r| r.as_str()) {
                    // A record with volatile parts carries its fingerprint in the line.
                    let fingerprint = v
                        .get("fingerprint")
                        .and_then(|f| f.as_str())
                        .and_then(|f| u64::from_str_radix(f, 16).ok());
                    let (key, hash) = crate::record::Reject::identity(id, raw, fingerprint);
                    rebuild.add_rejected(&key, hash)?;
                }
            }
        }
        let commit = commit_of(&path).unwrap_or(&commit_id).to_string();
        rebuild.add_file(&path, &commit, lines, bytes)?;
        commits.entry(commit).or_default().1 += lines;
        out.rejects += lines;
        out.other_files += 1;
    }
    for (path, bytes) in storage.walk(&format!("recordings/source={source}"))? {
        rebuild.add_file(&path, &commit_id, 0, bytes)?;
        out.other_files += 1;
    }
    facts.max_started_at = latest;
    let cursor = cursor_of(&facts, marker_cursor.as_ref());
    // The commit the lake's marker names is known to the rebuilt state (which holds what the
    // lake holds): if writing the new marker fails, the old one still agrees with the state
    // and runs are not refused.
    if let Some(m) = &old_marker
        && !commits.contains_key(&m.commit_id)
    {
        rebuild.add_commit(&m.commit_id, 0, 0, None)?;
    }
    for (commit, (rows, rejects)) in &commits {
        if *commit != commit_id {
            rebuild.add_commit(commit, *rows, *rejects, None)?;
        }
    }
    let (own_rows, own_rejects) = commits.get(&commit_id).copied().unwrap_or_default();
    // The repair's own commit is recorded last: it is the one the marker names.
    rebuild.add_commit(&commit_id, own_rows, own_rejects, cursor.as_ref())?;
    rebuild.finish(cursor.as_ref(), out.rows, out.rejects)?;
    // Staged files: no commit of the rebuilt state names them, and their calls lie past the
    // rebuilt cursor, so they are fetched again.
    let dir = format!("_staging/{source}");
    for name in storage.list(&dir)? {
        storage.delete(&format!("{dir}/{name}"))?;
        out.staged_deleted += 1;
    }
    marker::write(storage, source, &commit_id, cursor.as_ref())?;
    out.cursor = cursor;
    Ok(out)
}

/// Source names that have a directory in the lake (`<dataset>/source=<name>`).
pub fn lake_sources(storage: &dyn Storage) -> Result<BTreeSet<String>, LakeError> {
    let mut out = BTreeSet::new();
    for dataset in marker::DATASETS.iter().chain(&["recordings", "_rejects"]) {
        for d in storage.list_dirs(dataset)? {
            if let Some(name) = d.strip_prefix("source=") {
                out.insert(name.to_string());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids_are_read_from_part_names() {
        assert_eq!(
            commit_of("calls/source=vg/date=2024-01-01/part-0192abc-3.parquet"),
            Some("0192abc")
        );
        assert_eq!(
            commit_of("_rejects/source=vg/date=x/part-c1-12.jsonl"),
            Some("c1")
        );
        assert_eq!(commit_of("calls/source=vg/date=x/mine.parquet"), None);
        assert_eq!(commit_of("calls/source=vg/date=x/part-abc.parquet"), None);
    }
}
