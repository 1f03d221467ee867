//! `repair`'s side of the state: a source's manifest, exported keys, commits and cursor
//! rebuilt from its lake in one transaction.

use rusqlite::params;

use super::{State, StateError, insert_keys, now};
use crate::shared::Cursor;

impl State {
    /// Starts rebuilding a source's state from its lake (`repair`): one transaction that
    /// first forgets the source's manifest, exported keys and commits (its backfills' progress
    /// is kept: re-reading is skipped by key).
    pub fn rebuild(&mut self, source_id: i64) -> Result<Rebuild<'_>, StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM exported WHERE source_id = ?1", [source_id])?;
        tx.execute("DELETE FROM manifest WHERE source_id = ?1", [source_id])?;
        tx.execute("DELETE FROM commits WHERE source_id = ?1", [source_id])?;
        tx.execute("DELETE FROM rejected WHERE source_id = ?1", [source_id])?;
        tx.execute("DELETE FROM compactions WHERE source_id = ?1", [source_id])?;
        tx.execute("DELETE FROM table_checks WHERE source_id = ?1", [source_id])?;
        tx.execute(
            "INSERT INTO runs (source_id, kind, started_at) VALUES (?1, 'repair', ?2)",
            params![source_id, now()],
        )?;
        let run_id = tx.last_insert_rowid();
        Ok(Rebuild {
            tx,
            source_id,
            run_id,
        })
    }
}

/// A source's state being rebuilt from its lake; nothing is visible until `finish`.
pub struct Rebuild<'a> {
    tx: rusqlite::Transaction<'a>,
    source_id: i64,
    run_id: i64,
}

impl Rebuild<'_> {
    /// Records a file present in the lake as published by `commit_id`.
    pub fn add_file(
        &self,
        final_path: &str,
        commit_id: &str,
        rows: u64,
        bytes: u64,
    ) -> Result<(), StateError> {
        self.tx.execute(
            "INSERT INTO manifest (staged, final_path, source_id, commit_id, rows, bytes, published) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
            params![
                format!("repaired:{final_path}"),
                final_path,
                self.source_id,
                commit_id,
                rows as i64,
                bytes as i64
            ],
        )?;
        Ok(())
    }

    /// Records exported keys, all of the partition day `day` (UTC days since the epoch).
    pub fn add_keys(&self, keys: &[&str], day: Option<i32>) -> Result<(), StateError> {
        let pairs: Vec<(&str, Option<i32>)> = keys.iter().map(|k| (*k, day)).collect();
        insert_keys(&self.tx, self.source_id, &pairs)
    }

    /// Records a reject found in the lake (`Reject::identity`), so it is not written again.
    pub fn add_rejected(&self, key: &str, hash: i64) -> Result<(), StateError> {
        self.tx
            .prepare_cached(
                "INSERT INTO rejected (source_id, reject_key, hash) VALUES (?1, ?2, ?3)
                 ON CONFLICT(source_id, reject_key) DO UPDATE SET hash = excluded.hash",
            )?
            .execute(params![self.source_id, key, hash])?;
        Ok(())
    }

    /// Records a commit found in the lake (or the repair's own, with the cursor).
    pub fn add_commit(
        &self,
        commit_id: &str,
        rows: u64,
        rejects: u64,
        cursor: Option<&Cursor>,
    ) -> Result<(), StateError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO commits (id, source_id, run_id, committed_at, rows, rejects, cursor) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                commit_id,
                self.source_id,
                self.run_id,
                now(),
                rows as i64,
                rejects as i64,
                cursor.map(|c| c.to_string())
            ],
        )?;
        Ok(())
    }

    /// Stores the cursor and totals, closes the repair's run record and commits.
    pub fn finish(
        self,
        cursor: Option<&Cursor>,
        rows: u64,
        rejects: u64,
    ) -> Result<(), StateError> {
        self.tx.execute(
            "UPDATE sources SET cursor = ?2, rows_total = ?3, rejects_total = ?4 WHERE id = ?1",
            params![
                self.source_id,
                cursor.map(|c| c.to_string()),
                rows as i64,
                rejects as i64
            ],
        )?;
        self.tx.execute(
            "UPDATE runs SET ended_at = ?2, outcome = 'ok', rows = ?3, rejects = ?4 WHERE id = ?1",
            params![self.run_id, now(), rows as i64, rejects as i64],
        )?;
        self.tx.commit()?;
        Ok(())
    }
}
