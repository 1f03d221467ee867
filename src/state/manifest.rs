//! The manifest as the lake's recovery and `verify` read and settle it: the files each commit
//! made, whether they are published, and the changes that make the state follow what the lake
//! really holds (files adopted from the table, files gone whose calls are fetched again).

use rusqlite::{OptionalExtension, params};

use super::{KEY_CHUNK, ManifestEntry, ManifestRow, State, StateError, insert_keys};
use crate::shared::Cursor;

/// Committed files that are gone from the lake, forgotten in one transaction: their manifest
/// rows go, the calls no remaining file holds are un-exported (the next run fetches them
/// again), and the cursor moves back to where it re-lists them.
#[derive(Debug, Default)]
pub struct Forget<'a> {
    /// Lake-relative final paths of the files.
    pub paths: &'a [String],
    /// Exported keys to forget.
    pub keys: &'a [String],
    /// `Some(c)`: store `c` as the source's cursor (`Some(None)` starts over); `None` keeps it.
    pub cursor: Option<Option<&'a Cursor>>,
}

/// A file found in the lake's table that the state did not name, adopted as published.
#[derive(Debug, Clone)]
pub struct Adopted<'a> {
    pub path: &'a str,
    pub rows: u64,
    pub bytes: u64,
    pub stats: Option<&'a str>,
}

/// How far a source has checked a Delta table's log against the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableCheck {
    /// The table version the state was last found to agree with.
    pub version: u64,
    /// The highest app transaction `callsync/<source>` seen in the log up to it.
    pub txn_seen: i64,
    /// The highest commit sequence whose files were published to the table.
    pub published_seq: i64,
}

impl State {
    /// How far the source has checked the table of `dataset` (`None`: never, or forgotten).
    pub fn table_check(
        &self,
        source_id: i64,
        dataset: &str,
    ) -> Result<Option<TableCheck>, StateError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT version, txn_seen, published_seq FROM table_checks WHERE source_id = ?1 AND dataset = ?2",
            )?
            .query_row(params![source_id, dataset], |r| {
                Ok(TableCheck {
                    version: r.get::<_, i64>(0)? as u64,
                    txn_seen: r.get(1)?,
                    published_seq: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// Records how far the source has checked the table of `dataset`.
    pub fn set_table_check(
        &self,
        source_id: i64,
        dataset: &str,
        check: &TableCheck,
    ) -> Result<(), StateError> {
        self.conn
            .prepare_cached(
                "INSERT INTO table_checks (source_id, dataset, version, txn_seen, published_seq) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(source_id, dataset) DO UPDATE SET version = excluded.version, txn_seen = excluded.txn_seen,
                   published_seq = max(published_seq, excluded.published_seq)",
            )?
            .execute(params![
                source_id,
                dataset,
                check.version as i64,
                check.txn_seen,
                check.published_seq
            ])?;
        Ok(())
    }

    /// Commit `seq` of the source was published to the table of `dataset`.
    pub fn note_published_seq(
        &self,
        source_id: i64,
        dataset: &str,
        seq: i64,
    ) -> Result<(), StateError> {
        self.conn
            .prepare_cached(
                "UPDATE table_checks SET published_seq = max(published_seq, ?3) WHERE source_id = ?1 AND dataset = ?2",
            )?
            .execute(params![source_id, dataset, seq])?;
        Ok(())
    }

    /// Forgets the source's table checks: the next run holds the whole table against the
    /// state again (after the state was rebuilt, or changed to follow the lake).
    pub fn clear_table_checks(&self, source_id: i64) -> Result<(), StateError> {
        self.conn
            .prepare_cached("DELETE FROM table_checks WHERE source_id = ?1")?
            .execute([source_id])?;
        Ok(())
    }

    /// Whether a manifest row of the source names `final_path`.
    pub fn names(&self, source_id: i64, final_path: &str) -> Result<bool, StateError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM manifest WHERE source_id = ?1 AND final_path = ?2 LIMIT 1",
            )?
            .query_row(params![source_id, final_path], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Whether the source has a published file below `dir/` (a dataset's folder).
    pub fn has_published_in(&self, source_id: i64, dir: &str) -> Result<bool, StateError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM manifest WHERE source_id = ?1 AND published = 1 AND final_path >= ?2 AND final_path < ?3 LIMIT 1",
            )?
            .query_row(params![source_id, format!("{dir}/"), format!("{dir}0")], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Every manifest row of a source, by final path.
    pub fn manifest(&self, source_id: i64) -> Result<Vec<ManifestEntry>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT staged, final_path, commit_id, rows, bytes, published, stats FROM manifest WHERE source_id = ?1 ORDER BY final_path",
        )?;
        let rows = stmt
            .query_map([source_id], |r| {
                Ok(ManifestEntry {
                    staged: r.get(0)?,
                    final_path: r.get(1)?,
                    commit_id: r.get(2)?,
                    rows: r.get::<_, i64>(3)? as u64,
                    bytes: r.get::<_, i64>(4)? as u64,
                    published: r.get::<_, i64>(5)? != 0,
                    stats: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Manifest rows of a source whose publish is not recorded yet.
    pub fn unpublished(&self, source_id: i64) -> Result<Vec<ManifestRow>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT m.staged, m.final_path, COALESCE(c.seq, 0), m.bytes, m.stats FROM manifest m
             LEFT JOIN commits c ON c.id = m.commit_id
             WHERE m.source_id = ?1 AND m.published = 0 ORDER BY m.staged",
        )?;
        let rows = stmt
            .query_map([source_id], |r| {
                Ok(ManifestRow {
                    staged: r.get(0)?,
                    final_path: r.get(1)?,
                    seq: r.get(2)?,
                    bytes: r.get::<_, i64>(3)? as u64,
                    stats: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Marks files as published.
    pub fn mark_published(&self, staged: &[&str]) -> Result<(), StateError> {
        if staged.is_empty() {
            return Ok(());
        }
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("UPDATE manifest SET published = 1 WHERE staged = ?1")?;
            for s in staged {
                stmt.execute([s])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The next sequence number of the source's commits (the counter moves on: a number is
    /// never given twice, also when what it numbers fails).
    pub fn next_seq(&self, source_id: i64) -> Result<i64, StateError> {
        Ok(self.conn.query_row(
            "UPDATE sources SET commit_seq = commit_seq + 1 WHERE id = ?1 RETURNING commit_seq",
            [source_id],
            |r| r.get(0),
        )?)
    }

    /// The source's exported keys whose partition day is `day`.
    pub fn keys_of_day(&self, source_id: i64, day: i32) -> Result<Vec<String>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT call_id FROM exported WHERE source_id = ?1 AND day = ?2")?;
        let keys = stmt
            .query_map(params![source_id, day], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(keys)
    }

    /// How many of the source's exported keys have no partition day (exported by a callsync
    /// that did not record it).
    pub fn keys_without_day(&self, source_id: i64) -> Result<u64, StateError> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM exported WHERE source_id = ?1 AND day IS NULL",
            [source_id],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Forgets committed files that are gone (see `Forget`), in one transaction.
    pub fn forget(&self, source_id: i64, f: &Forget<'_>) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut del =
                tx.prepare_cached("DELETE FROM manifest WHERE source_id = ?1 AND final_path = ?2")?;
            for p in f.paths {
                del.execute(params![source_id, p])?;
            }
            for chunk in f.keys.chunks(KEY_CHUNK) {
                let marks: Vec<String> = (2..chunk.len() + 2).map(|i| format!("?{i}")).collect();
                let sql = format!(
                    "DELETE FROM exported WHERE source_id = ?1 AND call_id IN ({})",
                    marks.join(",")
                );
                let mut stmt = tx.prepare_cached(&sql)?;
                let args = std::iter::once(rusqlite::types::Value::Integer(source_id)).chain(
                    chunk
                        .iter()
                        .map(|k| rusqlite::types::Value::Text(k.clone())),
                );
                stmt.execute(rusqlite::params_from_iter(args))?;
            }
        }
        if let Some(cursor) = f.cursor {
            tx.execute(
                "UPDATE sources SET cursor = ?2 WHERE id = ?1",
                params![source_id, cursor.map(|c| c.to_string())],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records files the table holds and the state did not name as published, with the keys
    /// they hold, in one transaction.
    pub fn adopt(
        &self,
        source_id: i64,
        files: &[Adopted<'_>],
        keys: &[(&str, Option<i32>)],
    ) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction()?;
        let commit = format!("adopted-{}", uuid::Uuid::now_v7().simple());
        {
            let mut ins = tx.prepare_cached(
                "INSERT OR REPLACE INTO manifest (staged, final_path, source_id, commit_id, rows, bytes, published, stats) VALUES (?1, ?1, ?2, ?3, ?4, ?5, 1, ?6)",
            )?;
            for f in files {
                ins.execute(params![
                    f.path,
                    source_id,
                    commit,
                    f.rows as i64,
                    f.bytes as i64,
                    f.stats
                ])?;
            }
        }
        insert_keys(&tx, source_id, keys)?;
        tx.commit()?;
        Ok(())
    }
}
