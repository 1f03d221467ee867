//! What every push source shares: its webhook (what the intake needs: `WebhookSpec`), its
//! inbox and jobs as the pipeline lends them (`Inbox`, `Jobs`), reading the inbox page by page
//! after its cursor (the inbox sequence number), pruning what is exported and old, and the
//! reject of an unusable delivery.

use super::{Cursor, OpenContext, SourceError, decode_cursor};
use crate::record::Reject;
use crate::secret::SecretRef;
use crate::settings::Problems;
pub use crate::shared::{Delivery, Job, JobResult};

/// What a push source reads its pages from: the webhook inbox (SQLite, behind the pipeline).
pub trait Inbox: Send + Sync {
    /// Up to `limit` deliveries after `seq`, in order.
    fn after(&self, seq: i64, limit: usize) -> Result<Vec<Delivery>, String>;
    /// Deletes exported deliveries (`seq <= upto`) older than `days`.
    fn prune(&self, upto: i64, days: u64) -> Result<usize, String>;
    /// Deliveries after `seq` (not exported yet) and when the oldest of them arrived (µs).
    fn backlog(&self, seq: i64) -> Result<(u64, Option<i64>), String>;
}

/// When a push source's inbox goes to the lake: once it holds `max_rows` unexported
/// deliveries or its oldest one is `interval_secs` old (and always when the daemon drains).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    pub max_rows: u64,
    pub interval_secs: u64,
}

/// How often the daemon asks a push source whether its inbox is due, at most.
pub const FLUSH_CHECK_SECS: u64 = 5;

impl FlushPolicy {
    /// Whether the inbox after `cursor` is due for export now.
    pub fn inbox_due(
        &self,
        source_name: &str,
        cursor: Option<&Cursor>,
        ctx: &OpenContext,
    ) -> Result<bool, SourceError> {
        let c: InboxCursor = decode_cursor(source_name, cursor)?.unwrap_or_default();
        let (depth, oldest) =
            ctx.inbox
                .backlog(c.seq)
                .map_err(|reason| SourceError::KnownKeys {
                    source_name: source_name.to_string(),
                    reason: format!("reading the inbox: {reason}"),
                })?;
        let now = chrono::Utc::now().timestamp_micros();
        Ok(depth >= self.max_rows
            || oldest.is_some_and(|t| now - t >= self.interval_secs as i64 * 1_000_000))
    }
}

/// A source's analysis jobs, kept by the state (behind the pipeline).
pub trait Jobs: Send + Sync {
    /// A call is about to be submitted (again) with `task_id`: recorded first, so a result
    /// that arrives before the vendor's answer finds its job.
    fn submitting(&self, call_sid: &str, task_id: &str) -> Result<(), String>;
    /// The vendor queued the submission `task_id` as `job_id` (a job already done stays done).
    fn queued(&self, task_id: &str, job_id: &str) -> Result<(), String>;
    /// A job ends without a result: `failed` (the vendor refused it) or `timed_out`.
    fn give_up(&self, call_sid: &str, status: &str, reason: &str) -> Result<(), String>;
    /// The jobs, all or in one status.
    fn list(&self, status: Option<&str>) -> Result<Vec<Job>, String>;
    /// These calls' results were exported without call details.
    fn no_call_details(&self, call_sids: &[&str]) -> Result<(), String>;
    /// Records calls to submit once a daily cap allows (`waiting`); a call that already has a
    /// job keeps it. Returns how many were new.
    fn wait(&self, call_sids: &[&str]) -> Result<usize, String>;
    /// Up to `limit` waiting calls, the longest waiting first.
    fn waiting(&self, limit: usize) -> Result<Vec<String>, String>;
    /// Takes up to `limit` waiting calls within the day's budget, atomically (see
    /// `State::jobs_claim_waiting`): (call sid, task id) pairs, each now `submitting`.
    fn claim_waiting(
        &self,
        max_per_day: u64,
        day_start_us: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, String>;
    /// Takes one call for submission by hand, atomically (`State::job_claim`): its task id,
    /// or the status that kept it.
    fn claim(&self, call_sid: &str, again: &[&str]) -> Result<Result<String, String>, String>;
}

/// The stored cursor of a push source: the last inbox sequence number exported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InboxCursor {
    pub seq: i64,
}

/// What the webhook intake needs from a push source.
#[derive(Debug, Clone)]
pub struct WebhookSpec {
    pub token: SecretRef,
    pub max_body_bytes: usize,
    /// What a body is (`Err`: why it is unusable: 400 and a reject).
    pub receive: fn(Option<&str>, &[u8]) -> Result<Received, String>,
}

/// What the intake learns from a delivery before it stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The vendor's delivery identity (unique per source: a redelivery is absorbed).
    pub key: String,
    /// The analysis job it reports on.
    pub job: Option<JobResult>,
}

/// 1 MiB.
pub fn default_webhook_max_body_bytes() -> usize {
    1 << 20
}
/// 5 minutes: every flush writes a file per partition that readers open until compaction.
pub fn default_flush_interval_secs() -> u64 {
    300
}
/// 100,000 deliveries.
pub fn default_flush_max_rows() -> u64 {
    100_000
}
/// A week.
pub fn default_inbox_retention_days() -> u64 {
    7
}

/// Exotel's default account time zone.
pub fn default_timezone() -> String {
    "Asia/Kolkata".into()
}

/// Checks a `timezone` key: an IANA name (the vendor's times carry no offset).
pub fn validate_timezone(table: &str, tz: &str, problems: &mut Problems) {
    if tz.parse::<chrono_tz::Tz>().is_err() {
        problems.push(
            table,
            Some("timezone"),
            format!("{tz:?} is not an IANA time zone (e.g. \"Asia/Kolkata\")"),
        );
    }
}

/// Checks the keys every push kind has.
pub fn validate_push(
    table: &str,
    max_body: usize,
    flush_secs: u64,
    flush_rows: u64,
    problems: &mut Problems,
) {
    if flush_rows == 0 {
        problems.push(table, Some("flush_max_rows"), "must be at least 1");
    }
    if !(1024..=64 << 20).contains(&max_body) {
        problems.push(
            table,
            Some("webhook_max_body_bytes"),
            "must be between 1024 and 67108864",
        );
    }
    if flush_secs == 0 {
        problems.push(table, Some("flush_interval_secs"), "must be at least 1");
    }
}

/// Deliveries read from the inbox per page.
pub const PAGE: usize = 1000;

/// A push source's walk through its inbox during one run.
pub struct InboxPages {
    source_name: String,
    seq: i64,
    retention_days: u64,
    started: bool,
    done: bool,
}

impl InboxPages {
    pub fn new(
        source_name: &str,
        cursor: Option<&Cursor>,
        retention_days: u64,
    ) -> Result<InboxPages, SourceError> {
        let c: InboxCursor = decode_cursor(source_name, cursor)?.unwrap_or_default();
        Ok(InboxPages {
            source_name: source_name.to_string(),
            seq: c.seq,
            retention_days,
            started: false,
            done: false,
        })
    }

    fn error(&self, reason: String) -> SourceError {
        SourceError::KnownKeys {
            source_name: self.source_name.clone(),
            reason: format!("reading the inbox: {reason}"),
        }
    }

    /// The next deliveries after the cursor, or `None` when the inbox has no more. The first
    /// call prunes exported deliveries older than the retention.
    pub fn next(&mut self, ctx: &OpenContext) -> Result<Option<Vec<Delivery>>, SourceError> {
        if self.done {
            return Ok(None);
        }
        if !self.started {
            self.started = true;
            // Everything up to the stored cursor is committed to the lake.
            ctx.inbox
                .prune(self.seq, self.retention_days)
                .map_err(|e| self.error(e))?;
        }
        let page = ctx.inbox.after(self.seq, PAGE).map_err(|e| self.error(e))?;
        if page.is_empty() {
            self.done = true;
            return Ok(None);
        }
        self.done = page.len() < PAGE;
        if let Some(last) = page.last() {
            self.seq = self.seq.max(last.seq);
        }
        Ok(Some(page))
    }

    /// The cursor after the deliveries read so far.
    pub fn cursor(&self) -> Cursor {
        serde_json::json!({ "seq": self.seq })
    }
}

/// A delivery that could not be used, as a reject (its body as raw text).
pub fn reject(d: &Delivery, error: String, id: Option<String>) -> Reject {
    Reject {
        fingerprint: None,
        call_id: id,
        error,
        raw: String::from_utf8_lossy(&d.body).into_owned(),
    }
}
