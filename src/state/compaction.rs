//! Compactions in the state: recorded before their files are written and before their Delta
//! commit, so recovery can finish one whose commit landed (the manifest then names the new
//! files instead of the old) or undo one whose commit did not (its new files deleted).

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{State, StateError, now};

/// A file a compaction wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewFile {
    /// Lake-relative path.
    pub path: String,
    pub bytes: u64,
    pub rows: u64,
    /// Delta statistics JSON.
    pub stats: String,
}

/// A compaction that has not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCompaction {
    pub id: String,
    /// The dataset's directory (`calls`, `monitor_legs`).
    pub dataset: String,
    pub date: String,
    /// Lake-relative paths of the files it replaces.
    pub removed: Vec<String>,
    /// Its new files, once all are written (`None`: it was still writing them).
    pub added: Option<Vec<NewFile>>,
    /// The table's version when it began: its commit, if it landed, is a later one.
    pub base_version: Option<u64>,
}

fn json_err(e: serde_json::Error) -> StateError {
    StateError::Cursor("compaction".into(), e.to_string())
}

impl State {
    /// Records a compaction about to write its files.
    pub fn begin_compaction(
        &self,
        id: &str,
        source_id: i64,
        dataset: &str,
        date: &str,
        removed: &[String],
        base_version: u64,
    ) -> Result<(), StateError> {
        let removed = serde_json::to_string(removed).map_err(json_err)?;
        self.conn.execute(
            "INSERT INTO compactions (id, source_id, dataset, date, removed, started_at, base_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, source_id, dataset, date, removed, now(), base_version as i64],
        )?;
        Ok(())
    }

    /// Records a compaction's files, all written and durable, and the files they replace,
    /// before its Delta commit.
    pub fn compaction_written(
        &self,
        id: &str,
        removed: &[String],
        added: &[NewFile],
    ) -> Result<(), StateError> {
        let added = serde_json::to_string(added).map_err(json_err)?;
        let removed = serde_json::to_string(removed).map_err(json_err)?;
        self.conn.execute(
            "UPDATE compactions SET added = ?2, removed = ?3 WHERE id = ?1",
            params![id, added, removed],
        )?;
        Ok(())
    }

    /// The compactions of a source that have not finished.
    pub fn pending_compactions(
        &self,
        source_id: i64,
    ) -> Result<Vec<PendingCompaction>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, dataset, date, removed, added, base_version FROM compactions WHERE source_id = ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map([source_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, dataset, date, removed, added, base)| {
                Ok(PendingCompaction {
                    id,
                    dataset,
                    date,
                    removed: serde_json::from_str(&removed).map_err(json_err)?,
                    added: added
                        .map(|a| serde_json::from_str(&a))
                        .transpose()
                        .map_err(json_err)?,
                    base_version: base.map(|v| v as u64),
                })
            })
            .collect()
    }

    /// A compaction whose Delta commit landed: the manifest names its new files (published)
    /// instead of the ones it replaced, and it is no longer pending; one transaction.
    pub fn finish_compaction(
        &self,
        source_id: i64,
        c: &PendingCompaction,
    ) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut del =
                tx.prepare_cached("DELETE FROM manifest WHERE source_id = ?1 AND final_path = ?2")?;
            for p in &c.removed {
                del.execute(params![source_id, p])?;
            }
            let mut ins = tx.prepare_cached(
                "INSERT OR REPLACE INTO manifest (staged, final_path, source_id, commit_id, rows, bytes, published, stats) VALUES (?1, ?1, ?2, ?3, ?4, ?5, 1, ?6)",
            )?;
            for f in c.added.iter().flatten() {
                ins.execute(params![
                    f.path,
                    source_id,
                    c.id,
                    f.rows as i64,
                    f.bytes as i64,
                    f.stats
                ])?;
            }
        }
        tx.execute("DELETE FROM compactions WHERE id = ?1", [&c.id])?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets a compaction that did not commit (its files are deleted by the caller first).
    pub fn drop_compaction(&self, id: &str) -> Result<(), StateError> {
        self.conn
            .execute("DELETE FROM compactions WHERE id = ?1", [id])?;
        Ok(())
    }
}
