//! The state of push sources: the webhook inbox (deliveries committed before they are
//! acknowledged, group-committed) and analysis jobs submitted to a vendor.

use rusqlite::params;

use super::{Job, State, StateError};

/// Records a call as `submitting` with a task id (?3) at ?4: a new job, or the next
/// submission of its job.
const SUBMITTING: &str = "INSERT INTO jobs (source_id, call_sid, task_id, job_id, status, submissions, submitted_at, updated_at, first_submitted_at)
     VALUES (?1, ?2, ?3, NULL, 'submitting', 1, ?4, ?4, ?4)
     ON CONFLICT(source_id, call_sid) DO UPDATE SET task_id = ?3, job_id = NULL, status = 'submitting',
       submissions = submissions + 1, submitted_at = ?4, updated_at = ?4, reason = NULL,
       first_submitted_at = COALESCE(first_submitted_at, ?4)";

/// A webhook delivery to store in the inbox.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub source_id: i64,
    /// The vendor's delivery identity (unique per source), or a fresh one for an invalid body.
    pub key: String,
    pub received_at_us: i64,
    pub content_type: Option<String>,
    /// The request headers as JSON (credentials left out).
    pub headers: String,
    pub body: Vec<u8>,
    /// Why the body cannot be used (it becomes a reject), if so.
    pub invalid: Option<String>,
    /// The result of an analysis job this delivery carries.
    pub job: Option<crate::shared::JobResult>,
}

impl State {
    /// Stores deliveries in one transaction (a group commit: one fsync for all); per delivery,
    /// whether it was new (a redelivery of a stored key is absorbed).
    pub fn inbox_insert(&mut self, batch: &[NewDelivery]) -> Result<Vec<bool>, StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(batch.len());
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO inbox (source_id, delivery_key, received_at, content_type, headers, body, invalid) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            // A result finds its job by whichever id the job already has: our task id (known
            // before the submission is sent), the vendor's job id, or the call.
            let mut job = tx.prepare_cached(
                "UPDATE jobs SET status = ?5, reason = ?6, updated_at = ?7, job_id = COALESCE(job_id, ?2)
                 WHERE source_id = ?1 AND status IN ('submitting', 'queued', 'timed_out')
                   AND (job_id = ?2 OR task_id = ?3 OR call_sid = ?4)",
            )?;
            for d in batch {
                if let Some(r) = &d.job {
                    job.execute(params![
                        d.source_id,
                        r.job_id,
                        r.task_id,
                        r.call_sid,
                        if r.succeeded { "done" } else { "failed" },
                        r.reason,
                        d.received_at_us
                    ])?;
                }
                let n = stmt.execute(params![
                    d.source_id,
                    d.key,
                    d.received_at_us,
                    d.content_type,
                    d.headers,
                    d.body,
                    d.invalid
                ])?;
                out.push(n == 1);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Records a submission about to be sent (a call's first or a fresh one): status
    /// `submitting`, one more submission, the new task id.
    pub fn job_submitting(
        &self,
        source_id: i64,
        call_sid: &str,
        task_id: &str,
    ) -> Result<(), StateError> {
        let now = chrono::Utc::now().timestamp_micros();
        self.conn
            .execute(SUBMITTING, params![source_id, call_sid, task_id, now])?;
        Ok(())
    }

    /// Records calls to submit when the daily cap allows (`waiting`, never submitted yet); a
    /// call that already has a job keeps it. Returns how many were new.
    pub fn jobs_wait(&self, source_id: i64, call_sids: &[&str]) -> Result<usize, StateError> {
        let now = chrono::Utc::now().timestamp_micros();
        let tx = self.conn.unchecked_transaction()?;
        let mut added = 0;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO jobs (source_id, call_sid, task_id, job_id, status, submissions, submitted_at, updated_at)
                 VALUES (?1, ?2, '', NULL, 'waiting', 0, ?3, ?3)",
            )?;
            for sid in call_sids {
                added += stmt.execute(params![source_id, sid, now])?;
            }
        }
        tx.commit()?;
        Ok(added)
    }

    /// Takes up to `limit` waiting calls for submission, the longest waiting first, within the
    /// UTC day's budget: in one write transaction that first counts the calls first submitted
    /// since `day_start_us` (by any source or process, by hand or not), at most `max_per_day`
    /// less that many are taken. A taken call is `submitting` with a new task id; a claim by
    /// another process finds it no longer waiting, so no call is submitted twice and the cap
    /// holds. Returns (call sid, task id) pairs.
    pub fn jobs_claim_waiting(
        &self,
        source_id: i64,
        max_per_day: u64,
        day_start_us: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StateError> {
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        let spent: i64 = tx.query_row(
            "SELECT count(*) FROM jobs WHERE source_id = ?1 AND first_submitted_at >= ?2",
            params![source_id, day_start_us],
            |r| r.get(0),
        )?;
        let budget = (max_per_day as i64 - spent).clamp(0, limit as i64);
        let now = chrono::Utc::now().timestamp_micros();
        let taken = {
            let mut stmt = tx.prepare_cached(
                "UPDATE jobs SET status = 'submitting', task_id = lower(hex(randomblob(16))),
                   job_id = NULL, submissions = submissions + 1, submitted_at = ?3,
                   updated_at = ?3, reason = NULL, first_submitted_at = COALESCE(first_submitted_at, ?3)
                 WHERE source_id = ?1 AND status = 'waiting' AND call_sid IN (
                   SELECT call_sid FROM jobs WHERE source_id = ?1 AND status = 'waiting'
                   ORDER BY submitted_at, call_sid LIMIT ?2)
                 RETURNING call_sid, task_id",
            )?;
            stmt.query_map(params![source_id, budget, now], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(taken)
    }

    /// Takes one call for submission by hand: recorded `submitting` with a new task id only
    /// when it has no job yet, is waiting, or is in one of `again` (statuses an operator asked
    /// to submit again), checked and written in one write transaction, so a concurrent claim
    /// (another process, the automatic submission) takes it once. `None`: not taken, with the
    /// job's status.
    pub fn job_claim(
        &self,
        source_id: i64,
        call_sid: &str,
        again: &[&str],
    ) -> Result<Result<String, String>, StateError> {
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        let status: Option<String> = tx
            .query_row(
                "SELECT status FROM jobs WHERE source_id = ?1 AND call_sid = ?2",
                params![source_id, call_sid],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        if let Some(st) = status.as_deref()
            && st != "waiting"
            && !again.contains(&st)
        {
            return Ok(Err(st.to_string()));
        }
        let task_id = uuid::Uuid::now_v7().simple().to_string();
        let now = chrono::Utc::now().timestamp_micros();
        tx.execute(SUBMITTING, params![source_id, call_sid, task_id, now])?;
        tx.commit()?;
        Ok(Ok(task_id))
    }

    /// Up to `limit` waiting calls, the longest waiting first.
    pub fn jobs_waiting(&self, source_id: i64, limit: usize) -> Result<Vec<String>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT call_sid FROM jobs WHERE source_id = ?1 AND status = 'waiting'
             ORDER BY submitted_at, call_sid LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![source_id, limit as i64], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(rows)
    }

    /// How many jobs of a source are in `status`.
    pub fn jobs_count(&self, source_id: i64, status: &str) -> Result<u64, StateError> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM jobs WHERE source_id = ?1 AND status = ?2",
            params![source_id, status],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// The vendor queued submission `task_id` as `job_id`; a job whose result already came
    /// keeps its status.
    pub fn job_queued(
        &self,
        source_id: i64,
        task_id: &str,
        job_id: &str,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE jobs SET job_id = ?3, updated_at = ?4,
               status = CASE WHEN status = 'submitting' THEN 'queued' ELSE status END
             WHERE source_id = ?1 AND task_id = ?2",
            params![
                source_id,
                task_id,
                job_id,
                chrono::Utc::now().timestamp_micros()
            ],
        )?;
        Ok(())
    }

    /// Ends a job without a result (`failed`: refused; `timed_out`: no result in time).
    pub fn job_give_up(
        &self,
        source_id: i64,
        call_sid: &str,
        status: &str,
        reason: &str,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE jobs SET status = ?3, reason = ?4, updated_at = ?5 WHERE source_id = ?1 AND call_sid = ?2",
            params![source_id, call_sid, status, reason, chrono::Utc::now().timestamp_micros()],
        )?;
        Ok(())
    }

    /// Marks calls whose result was exported without call details.
    pub fn jobs_no_call_details(
        &self,
        source_id: i64,
        call_sids: &[&str],
    ) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE jobs SET no_call_details = 1 WHERE source_id = ?1 AND call_sid = ?2",
            )?;
            for sid in call_sids {
                stmt.execute(params![source_id, sid])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The jobs of a source (all, or only those in `status`).
    pub fn jobs(&self, source_id: i64, status: Option<&str>) -> Result<Vec<Job>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT call_sid, task_id, job_id, status, submissions, submitted_at, reason, no_call_details FROM jobs
             WHERE source_id = ?1 AND (?2 IS NULL OR status = ?2) ORDER BY call_sid",
        )?;
        let rows = stmt
            .query_map(params![source_id, status], |r| {
                Ok(Job {
                    call_sid: r.get(0)?,
                    task_id: r.get(1)?,
                    job_id: r.get(2)?,
                    status: r.get(3)?,
                    submissions: r.get(4)?,
                    submitted_at_us: r.get(5)?,
                    reason: r.get(6)?,
                    no_call_details: r.get::<_, i64>(7)? != 0,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Up to `limit` deliveries of a source after `seq`, in order.
    pub fn inbox_after(
        &self,
        source_id: i64,
        seq: i64,
        limit: usize,
    ) -> Result<Vec<crate::shared::Delivery>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, delivery_key, received_at, content_type, body, invalid FROM inbox WHERE source_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![source_id, seq, limit as i64], |r| {
                Ok(crate::shared::Delivery {
                    seq: r.get(0)?,
                    key: r.get(1)?,
                    received_at_us: r.get(2)?,
                    content_type: r.get(3)?,
                    body: r.get(4)?,
                    invalid: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Deletes exported deliveries (`seq <= upto`) received before `before_us`.
    pub fn inbox_prune(
        &self,
        source_id: i64,
        upto: i64,
        before_us: i64,
    ) -> Result<usize, StateError> {
        Ok(self.conn.execute(
            "DELETE FROM inbox WHERE source_id = ?1 AND seq <= ?2 AND received_at < ?3",
            params![source_id, upto, before_us],
        )?)
    }

    /// Deliveries not exported yet (`seq > after`) and the oldest one's receipt time (µs).
    pub fn inbox_backlog(
        &self,
        source_id: i64,
        after: i64,
    ) -> Result<(u64, Option<i64>), StateError> {
        Ok(self.conn.query_row(
            "SELECT count(*), min(received_at) FROM inbox WHERE source_id = ?1 AND seq > ?2",
            params![source_id, after],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        )?)
    }
}
