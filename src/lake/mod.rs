//! The lake: Parquet writing, the publish step of the commit protocol, and recovery at start.
//!
//! Order of a commit (see DESIGN.md): stage files under `_staging/<source>/` (durable), record
//! them in ONE SQLite transaction with the cursor, then publish by renaming into the Hive
//! partitions. Recovery, under the source's lock, finishes publishes whose commit happened and
//! deletes staged files no commit names.

pub mod storage;
pub mod writer;

use std::collections::HashSet;

use tracing::{info, warn};

use crate::state::{ManifestRow, State, StateError};
use storage::Storage;

/// A lake operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("lake I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Publishes committed files (rename staged → final) and marks them published.
pub fn publish(
    storage: &dyn Storage,
    state: &State,
    rows: &[ManifestRow],
) -> Result<(), LakeError> {
    for row in rows {
        storage.publish(&row.staged, &row.final_path)?;
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
    for row in &pending {
        if storage.exists(&row.final_path)? {
            // Renamed before the crash, not yet marked.
            done.push(row.staged.as_str());
        } else if storage.exists(&row.staged)? {
            storage.publish(&row.staged, &row.final_path)?;
            done.push(row.staged.as_str());
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
