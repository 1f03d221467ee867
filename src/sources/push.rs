//! What every push source shares: reading its webhook inbox page by page after its cursor (the
//! inbox sequence number), pruning what is exported and old, and the reject of an unusable
//! delivery.

use super::{Cursor, Delivery, InboxCursor, OpenContext, SourceError, decode_cursor};
use crate::record::Reject;

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
