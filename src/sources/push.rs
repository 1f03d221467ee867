//! What every push source shares: its webhook (what the intake needs: `WebhookSpec`), its
//! inbox and jobs as the pipeline lends them (`Inbox`, `Jobs`), reading the inbox page by page
//! after its cursor (the inbox sequence number), pruning what is exported and old, and the
//! reject of an unusable delivery.

use super::{Cursor, OpenContext, SourceError, decode_cursor};
use crate::config::Problems;
use crate::record::Reject;
use crate::secret::SecretRef;

/// One webhook delivery as the inbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its place in the inbox: a push source's cursor.
    pub seq: i64,
    pub key: String,
    pub received_at_us: i64,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// Why it could not be parsed when it arrived (it goes to the rejects area).
    pub invalid: Option<String>,
}

/// What a push source reads its pages from: the webhook inbox (SQLite, behind the pipeline).
pub trait Inbox: Send + Sync {
    /// Up to `limit` deliveries after `seq`, in order.
    fn after(&self, seq: i64, limit: usize) -> Result<Vec<Delivery>, String>;
    /// Deletes exported deliveries (`seq <= upto`) older than `days`.
    fn prune(&self, upto: i64, days: u64) -> Result<usize, String>;
}

/// An analysis job submitted to a vendor (Exotel ExoVoiceAnalyze), one per call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Job {
    pub call_sid: String,
    pub task_id: String,
    pub job_id: Option<String>,
    /// `queued`, `done`, `failed` (the vendor's result said so) or `timed_out`.
    pub status: String,
    pub submissions: i64,
    pub submitted_at_us: i64,
    pub reason: Option<String>,
}

/// A source's analysis jobs, kept by the state (behind the pipeline).
pub trait Jobs: Send + Sync {
    /// A call was submitted (again): `queued`, one more submission.
    fn submitted(&self, call_sid: &str, task_id: &str, job_id: Option<&str>) -> Result<(), String>;
    /// A job is given up (`timed_out`).
    fn give_up(&self, call_sid: &str, reason: &str) -> Result<(), String>;
    /// The jobs, all or in one status.
    fn list(&self, status: Option<&str>) -> Result<Vec<Job>, String>;
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
    /// The analysis job it reports on: (job id, succeeded, reason).
    pub job: Option<(String, bool, Option<String>)>,
}

/// 1 MiB.
pub fn default_webhook_max_body_bytes() -> usize {
    1 << 20
}
/// 5 s.
pub fn default_flush_interval_secs() -> u64 {
    5
}
/// A week.
pub fn default_inbox_retention_days() -> u64 {
    7
}

/// Checks the keys every push kind has.
pub fn validate_push(table: &str, max_body: usize, flush_secs: u64, problems: &mut Problems) {
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
        call_id: id,
        error,
        raw: String::from_utf8_lossy(&d.body).into_owned(),
    }
}
