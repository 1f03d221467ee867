//! Run records (each sync, backfill or flush, its outcome and error), each source's last
//! success, and resumable backfills.

use rusqlite::params;

use super::{State, StateError, now};
use crate::shared::Cursor;

impl State {
    /// Starts a run record (`sync` or `backfill`).
    pub fn start_run(&self, source_id: i64, kind: &str) -> Result<i64, StateError> {
        self.conn.execute(
            "INSERT INTO runs (source_id, kind, started_at) VALUES (?1, ?2, ?3)",
            params![source_id, kind, now()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Ends a run record with its outcome (`ok` or `failed`) and error text.
    pub fn finish_run(
        &self,
        run_id: i64,
        outcome: &str,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE runs SET ended_at = ?2, outcome = ?3, error = ?4 WHERE id = ?1",
            params![run_id, now(), outcome, error],
        )?;
        if outcome == "ok" {
            self.conn.execute(
                "UPDATE sources SET last_success_at = ?2 WHERE id = (SELECT source_id FROM runs WHERE id = ?1)",
                params![run_id, chrono::Utc::now().timestamp_micros()],
            )?;
        }
        Ok(())
    }

    /// Marks a source's last success now without a run record (a push source's flush that
    /// found nothing to export: healthy, and nothing written but this).
    pub fn touch_success(&self, source_id: i64) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE sources SET last_success_at = ?2 WHERE id = ?1",
            params![source_id, chrono::Utc::now().timestamp_micros()],
        )?;
        Ok(())
    }

    /// Each source's last success (µs since the epoch), by name.
    pub fn last_successes(&self) -> Result<Vec<(String, Option<i64>)>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, last_success_at FROM sources ORDER BY name")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Deletes run records that started more than `days` ago (`[state] runs_retention_days`).
    pub fn prune_runs(&self, days: u64) -> Result<usize, StateError> {
        let before = (chrono::Utc::now() - chrono::Duration::days(days as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        Ok(self.conn.execute(
            "DELETE FROM runs WHERE started_at < ?1 AND ended_at IS NOT NULL",
            [before],
        )?)
    }

    /// The backfill of `source_id` over `[from_day, to_day]`: created, resumed where it
    /// stopped, or (when it had finished) started again from the beginning.
    pub fn backfill_start(
        &self,
        source_id: i64,
        from_day: &str,
        to_day: &str,
    ) -> Result<(i64, Option<Cursor>), StateError> {
        self.conn.execute(
            "INSERT INTO backfills (source_id, from_day, to_day, started_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT(source_id, from_day, to_day) DO UPDATE SET
               cursor = CASE WHEN status = 'done' THEN NULL ELSE cursor END,
               rows = CASE WHEN status = 'done' THEN 0 ELSE rows END,
               started_at = CASE WHEN status = 'done' THEN ?4 ELSE started_at END,
               status = 'running', updated_at = ?4",
            params![source_id, from_day, to_day, now()],
        )?;
        let (id, cursor): (i64, Option<String>) = self.conn.query_row(
            "SELECT id, cursor FROM backfills WHERE source_id = ?1 AND from_day = ?2 AND to_day = ?3",
            params![source_id, from_day, to_day],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let cursor = cursor
            .map(|c| {
                serde_json::from_str(&c)
                    .map_err(|e| StateError::Cursor(format!("backfill {id}"), e.to_string()))
            })
            .transpose()?;
        Ok((id, cursor))
    }

    /// Marks a backfill `done` (or `failed`, kept resumable).
    pub fn backfill_finish(&self, id: i64, status: &str) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE backfills SET status = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, status, now()],
        )?;
        Ok(())
    }
}
