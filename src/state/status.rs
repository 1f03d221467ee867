//! What `status` shows of each source: cursor, totals, last run and error, unfinished
//! backfills, a push source's inbox backlog and failed analysis jobs.

use rusqlite::OptionalExtension;
use serde::Serialize;

use super::{Job, State, StateError};

/// The last run of a source, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub kind: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub outcome: String,
    pub rows: i64,
    pub rejects: i64,
    pub error: Option<String>,
}

/// Per-source status.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub name: String,
    pub kind: String,
    pub cursor: Option<serde_json::Value>,
    pub rows_total: i64,
    pub rejects_total: i64,
    pub last_run: Option<RunInfo>,
    /// The most recent error of any run (it may be older than the last run).
    pub last_error: Option<String>,
    /// Backfills not finished (running, interrupted or failed).
    pub backfills: Vec<BackfillInfo>,
    /// A push source's webhook inbox: deliveries not exported yet, and when the oldest of
    /// them arrived (RFC 3339).
    pub inbox: Option<InboxStatus>,
    /// Analysis jobs that failed (the vendor's result said so) or were given up.
    pub failed_jobs: Vec<Job>,
    /// Analysed calls the call-details API did not return: their rows have no call time.
    pub calls_without_details: Vec<String>,
    /// Calls recorded for analysis and not submitted yet (a daily cap held them back).
    pub waiting_jobs: u64,
}

/// The backlog of a push source's inbox, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct InboxStatus {
    pub depth: u64,
    pub oldest_unexported_at: Option<String>,
}

/// A backfill not finished yet, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillInfo {
    pub from_day: String,
    pub to_day: String,
    pub status: String,
    pub cursor: Option<serde_json::Value>,
    pub rows: i64,
    pub started_at: String,
    pub updated_at: String,
}

impl State {
    /// Status of every source the state knows.
    pub fn status(&self) -> Result<Vec<SourceStatus>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, name, kind, cursor, rows_total, rejects_total FROM sources ORDER BY name",
        )?;
        let sources = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        for (id, name, kind, cursor, rows_total, rejects_total) in sources {
            let last_run = self
                .conn
                .query_row(
                    "SELECT kind, started_at, ended_at, outcome, rows, rejects, error FROM runs WHERE source_id = ?1 ORDER BY id DESC LIMIT 1",
                    [id],
                    |r| {
                        Ok(RunInfo {
                            kind: r.get(0)?,
                            started_at: r.get(1)?,
                            ended_at: r.get(2)?,
                            outcome: r.get(3)?,
                            rows: r.get(4)?,
                            rejects: r.get(5)?,
                            error: r.get(6)?,
                        })
                    },
                )
                .optional()?;
            let last_error = self
                .conn
                .query_row(
                    "SELECT error FROM runs WHERE source_id = ?1 AND error IS NOT NULL ORDER BY id DESC LIMIT 1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?;
            let mut stmt = self.conn.prepare_cached(
                "SELECT from_day, to_day, status, cursor, rows, started_at, updated_at FROM backfills
                 WHERE source_id = ?1 AND status <> 'done' ORDER BY id",
            )?;
            let backfills = stmt
                .query_map([id], |r| {
                    Ok(BackfillInfo {
                        from_day: r.get(0)?,
                        to_day: r.get(1)?,
                        status: r.get(2)?,
                        cursor: r
                            .get::<_, Option<String>>(3)?
                            .and_then(|c| serde_json::from_str(&c).ok()),
                        rows: r.get(4)?,
                        started_at: r.get(5)?,
                        updated_at: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let cursor: Option<serde_json::Value> =
                cursor.and_then(|c| serde_json::from_str(&c).ok());
            let seq = cursor
                .as_ref()
                .and_then(|c| c.get("seq"))
                .and_then(|v| v.as_i64());
            let has_inbox = seq.is_some()
                || self
                    .conn
                    .query_row(
                        "SELECT 1 FROM inbox WHERE source_id = ?1 LIMIT 1",
                        [id],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
            let inbox = if has_inbox {
                let (depth, oldest) = self.inbox_backlog(id, seq.unwrap_or(0))?;
                Some(InboxStatus {
                    depth,
                    oldest_unexported_at: oldest
                        .and_then(chrono::DateTime::from_timestamp_micros)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                })
            } else {
                None
            };
            let mut failed_jobs = self.jobs(id, Some("failed"))?;
            failed_jobs.extend(self.jobs(id, Some("timed_out"))?);
            let calls_without_details = self
                .jobs(id, Some("done"))?
                .into_iter()
                .filter(|j| j.no_call_details)
                .map(|j| j.call_sid)
                .collect();
            let waiting_jobs = self.jobs_count(id, "waiting")?;
            out.push(SourceStatus {
                waiting_jobs,
                calls_without_details,
                backfills,
                inbox,
                failed_jobs,
                name,
                kind,
                cursor,
                rows_total,
                rejects_total,
                last_run,
                last_error,
            });
        }
        Ok(out)
    }
}
