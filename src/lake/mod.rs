//! The lake: Parquet writing, the publish step of the commit protocol, and recovery at start.
//!
//! Order of a commit (see DESIGN.md): stage files under `_staging/<source>/` (durable), record
//! them in ONE SQLite transaction with the cursor, then publish by renaming into the Hive
//! partitions. Recovery, under the source's lock, finishes publishes whose commit happened and
//! deletes staged files no commit names.

pub mod compact;
pub mod delta;
pub mod marker;
pub mod object;
pub mod repair;
pub mod stats;
pub mod storage;
pub mod writer;

use std::collections::HashSet;

use tracing::{info, warn};

use crate::state::{ManifestRow, State, StateError};
use storage::Storage;

/// A lake operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("lake I/O: {}", describe_io(.0))]
    Io(#[from] std::io::Error),
    #[error("Parquet: {}", describe(.0))]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Delta(#[from] delta::DeltaError),
}

/// An I/O error, saying in plain words when the disk is full.
fn describe_io(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::StorageFull {
        format!("the disk holding the lake is full ({e}); free space or grow it, then run again")
    } else {
        e.to_string()
    }
}

/// Any error whose text shows a full disk (Parquet wraps the writer's I/O error).
fn describe(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    if text.contains("No space left on device") || text.contains("os error 28") {
        format!("the disk holding the lake is full ({text}); free space or grow it, then run again")
    } else {
        text
    }
}

/// The lake-relative path of a call's recording: the call id when it is a safe file name
/// (`[A-Za-z0-9_-]{1,128}`), otherwise a hash of it; `ext` is reduced to `[a-z0-9]{1,8}`.
pub fn recording_path(source: &str, started_at_us: i64, call_id: &str, ext: &str) -> String {
    let safe = (1..=128).contains(&call_id.len())
        && call_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let name = if safe {
        call_id.to_string()
    } else {
        // FNV-1a, 64 bit: stable across versions and platforms, unlike std's hasher.
        let h = call_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("id-{h:016x}")
    };
    let ext: String = ext
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(8)
        .collect();
    let ext = if ext.is_empty() {
        "bin".to_string()
    } else {
        ext
    };
    format!(
        "recordings/source={source}/date={}/{name}.{ext}",
        crate::record::utc_day(started_at_us)
    )
}

/// Publishes committed files (rename staged → final; with Delta tables, then one table
/// commit per callsync commit) and marks them published.
pub fn publish(
    storage: &dyn Storage,
    state: &State,
    source: &str,
    rows: &[ManifestRow],
) -> Result<(), LakeError> {
    for row in rows {
        storage.publish(&row.staged, &row.final_path)?;
    }
    if let Some(delta) = storage.delta() {
        delta.append(source, rows, true)?;
    }
    let names: Vec<&str> = rows.iter().map(|r| r.staged.as_str()).collect();
    state.mark_published(&names)?;
    Ok(())
}

/// What recovery did for one source.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Committed files whose publish was finished now.
    pub rolled_forward: usize,
    /// Staged files of commits that never happened, deleted.
    pub deleted: usize,
}

/// Recovery for one source; the caller holds the source's lock.
pub fn recover(
    storage: &dyn Storage,
    state: &State,
    source_id: i64,
    source: &str,
) -> Result<Recovered, LakeError> {
    let mut rec = Recovered::default();
    let pending = state.unpublished(source_id)?;
    let mut done = Vec::new();
    let mut present = Vec::new();
    for row in &pending {
        if storage.exists(&row.final_path)? {
            // Published before the crash, not yet marked. On object storage a publish is a
            // copy then a delete: a staged copy left behind goes now.
            storage.delete(&row.staged)?;
            done.push(row.staged.as_str());
            present.push(row.clone());
        } else if storage.exists(&row.staged)? {
            storage.publish(&row.staged, &row.final_path)?;
            done.push(row.staged.as_str());
            present.push(row.clone());
            rec.rolled_forward += 1;
        } else {
            warn!(
                source = %source,
                staged = %row.staged,
                final_path = %row.final_path,
                "Committed file is missing from both staging and the lake; it was removed by hand."
            );
            done.push(row.staged.as_str());
        }
    }
    if let Some(delta) = storage.delta() {
        // A commit the table lacks is added now (one it holds is skipped by its app
        // transaction); the next commit numbers above anything the table holds, also when
        // the state was rebuilt.
        delta.append(source, &present, false)?;
        rec.deleted += compact::recover_compactions(storage, state, source_id, source)?;
        compact::reconcile(storage, state, source_id, source)?;
        for ds in [
            crate::schema::Dataset::Calls,
            crate::schema::Dataset::MonitorLegs,
        ] {
            if delta.exists(ds)?
                && let Some(v) = delta.txn_version(ds, &format!("callsync/{source}"))?
            {
                state.raise_commit_seq(source_id, v)?;
            }
        }
    }
    state.mark_published(&done)?;
    let named: HashSet<String> = pending.into_iter().map(|r| r.staged).collect();
    let dir = format!("_staging/{source}");
    for name in storage.list(&dir)? {
        let rel = format!("{dir}/{name}");
        if !named.contains(&rel) {
            storage.delete(&rel)?;
            rec.deleted += 1;
        }
    }
    rec.deleted += storage.clear_spool(source)?;
    if rec != Recovered::default() {
        info!(
            source = %source,
            rolled_forward = rec.rolled_forward,
            deleted = rec.deleted,
            "Recovered from an interrupted run."
        );
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_names_are_the_call_id_only_when_safe() {
        assert_eq!(
            recording_path("vc", 0, "vc_abc-123", "WAV"),
            "recordings/source=vc/date=1970-01-01/vc_abc-123.wav"
        );
        let p = recording_path("vc", 0, "../../etc/passwd", "mp3?x");
        assert!(
            p.starts_with("recordings/source=vc/date=1970-01-01/id-"),
            "{p}"
        );
        assert!(p.ends_with(".mp3x") && !p.contains(".."), "{p}");
        assert_ne!(p, recording_path("vc", 0, "../../etc/passwe", "mp3"));
        assert!(recording_path("vc", 0, "a", "").ends_with("/a.bin"));
    }
}
