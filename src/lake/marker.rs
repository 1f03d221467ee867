//! The lake marker, `<root>/_callsync/<source>.json`: the source's last published commit (and
//! its incremental cursor then), written after each publish and read before every run, so a
//! state that is missing, older than the lake or another lake's is refused before it exports
//! anything twice.

use serde::{Deserialize, Serialize};

use super::LakeError;
use super::storage::Storage;
use crate::shared::Cursor;
use crate::state::State;

/// What the marker file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// The source name (also the file name).
    pub source: String,
    /// The last commit whose files were published.
    pub commit_id: String,
    /// The source's incremental cursor after that commit (`repair` starts from it).
    #[serde(default)]
    pub cursor: Option<Cursor>,
    /// When it was written (RFC 3339, UTC).
    pub written_at: String,
}

/// The lake-relative path of a source's marker.
pub fn path(source: &str) -> String {
    format!("_callsync/{source}.json")
}

/// Reads a source's marker; `None` when the lake has none. A marker that cannot be parsed is
/// an error naming it (it is never silently ignored: it guards against duplicates).
pub fn read(storage: &dyn Storage, source: &str) -> Result<Option<Marker>, LakeError> {
    let rel = path(source);
    match storage.read(&rel)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            LakeError::Io(std::io::Error::other(format!(
                "the lake marker {rel} is not valid: {e}"
            )))
        }),
    }
}

/// Writes a source's marker (atomically, durably).
pub fn write(
    storage: &dyn Storage,
    source: &str,
    commit_id: &str,
    cursor: Option<&Cursor>,
) -> Result<(), LakeError> {
    let m = Marker {
        source: source.to_string(),
        commit_id: commit_id.to_string(),
        cursor: cursor.cloned(),
        written_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    let mut bytes = serde_json::to_vec_pretty(&m).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    storage.put(&path(source), &bytes)?;
    Ok(())
}

/// The datasets a source may have files in (Hive layout `<dataset>/source=<name>/…`).
pub const DATASETS: &[&str] = &["calls", "monitor_legs"];

/// Why the lake and the state of one source disagree, or `None` when they agree: the marker
/// names a commit the state does not know, or the lake holds data files of a source the state
/// has no commit of. One read of the marker, and a listing only when the state knows no commit.
pub fn disagreement(
    lake: &super::Lake,
    state: &State,
    source_id: i64,
    source: &str,
) -> Result<Option<String>, LakeError> {
    disagreement_with(
        read(lake.storage(), source)?.as_ref(),
        lake,
        state,
        source_id,
        source,
    )
}

/// `disagreement`, with the marker already read.
pub fn disagreement_with(
    marker: Option<&Marker>,
    lake: &super::Lake,
    state: &State,
    source_id: i64,
    source: &str,
) -> Result<Option<String>, LakeError> {
    if let Some(m) = marker {
        if !state.knows_commit(source_id, &m.commit_id)? {
            return Ok(Some(format!(
                "the lake's marker {} names commit {}, which the state does not know (the state is missing, older than the lake, or another lake's)",
                path(source),
                m.commit_id
            )));
        }
        return Ok(None);
    }
    if state.last_commit(source_id)?.is_none()
        && let Some(f) = lake.table().first_file(lake.storage(), source)?
    {
        return Ok(Some(format!(
            "the lake holds files of this source ({f}) but the state has no commit of it (the state is missing or new)"
        )));
    }
    Ok(None)
}

/// Writes the marker when it does not name the state's last commit of the source (after
/// recovery finished a publish, or for a lake written before markers existed).
pub fn refresh(
    marker: Option<&Marker>,
    storage: &dyn Storage,
    state: &State,
    source_id: i64,
    source: &str,
    cursor: Option<&Cursor>,
) -> Result<(), LakeError> {
    let Some(last) = state.last_commit(source_id)? else {
        return Ok(());
    };
    if marker.is_none_or(|m| m.commit_id != last) {
        write(storage, source, &last, cursor)?;
    }
    Ok(())
}
