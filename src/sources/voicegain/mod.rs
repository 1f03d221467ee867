//! Voicegain speech analytics: the consecutive `afterCallId` CSV export.
//!
//! Each request asks for the calls after the highest exported callId
//! (`consecutive=true&afterCallId=N&page=1`): keyset paging, so a page is never skipped or
//! repeated even when calls finish between requests. The export stops at the first call that
//! is not DONE or ERROR; a short or header-only page ends the run.

pub mod client;
pub mod model;
pub mod normalize;

use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::{HttpConfig, Problems, validate_base_url, validate_secret};
use crate::sources::{
    BoxFuture, Cursor, LakeFacts, Page, Source, SourceError, decode_cursor, secret_from,
};

use chrono::{DateTime, Utc};

use crate::sources::window::{WindowClock, WindowSettings, rfc3339};
use client::VoicegainClient;
use model::VgCursor;

/// The `kind` of this source, also written to `source_kind`.
pub const KIND: &str = "voicegain";

/// `[sources.<name>]` with `kind = "voicegain"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoicegainConfig {
    /// API base URL (the vendor's production host by default); point it at a proxy,
    /// a regional endpoint or the simulator.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Environment variable that holds the JWT.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File that holds the JWT (systemd credentials, container secrets).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Rows per page, 1..=10000 (the vendor's own `per_page`).
    #[serde(default = "default_per_page")]
    pub per_page: u32,
    /// Whether `callsync run` runs this source once at start-up, before its first tick.
    #[serde(default = "super::default_run_on_start")]
    pub run_on_start: bool,
    /// Cron expression (with seconds) the daemon runs this source on.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// Timeouts and retries.
    #[serde(default)]
    pub http: HttpConfig,
}

fn default_base_url() -> String {
    "https://api.voicegain.ai/v1".to_string()
}
fn default_per_page() -> u32 {
    1000
}
/// Every 15 minutes.
pub fn default_schedule() -> String {
    "0 */15 * * * *".to_string()
}

impl VoicegainConfig {
    /// Reports every problem of this table.
    pub fn validate(&self, table: &str, problems: &mut Problems) {
        validate_base_url(table, &self.base_url, problems);
        validate_secret(table, "token", &self.token_env, &self.token_file, problems);
        if !(1..=10_000).contains(&self.per_page) {
            problems.push(table, Some("per_page"), "must be between 1 and 10000");
        }
        self.http.validate(table, problems);
    }
}

/// A safe `afterCallId` for a state rebuilt from the lake: the highest callId in its files
/// and rejects (everything up to it was final when the consecutive export passed it), or the
/// marker's cursor when it is lower (calls a backfill exported past unfinished ones).
pub fn repair_cursor(facts: &LakeFacts, marker: Option<&Cursor>) -> Option<Cursor> {
    let from_marker = marker
        .and_then(|m| serde_json::from_value::<VgCursor>(m.clone()).ok())
        .map(|c| c.after_call_id);
    let after = match (facts.max_numeric_id, from_marker) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    serde_json::to_value(VgCursor {
        after_call_id: after,
    })
    .ok()
}

/// One incremental run of a Voicegain source.
pub struct VoicegainSource {
    client: VoicegainClient,
    after: u64,
    per_page: u32,
    done: bool,
}

fn client(source_name: &str, cfg: &VoicegainConfig) -> Result<VoicegainClient, SourceError> {
    let token = secret_from(source_name, &cfg.token_env, &cfg.token_file)?;
    VoicegainClient::new(source_name, cfg, &token)
}

impl VoicegainSource {
    /// Resolves the token and resumes after the stored cursor.
    pub fn new(
        source_name: &str,
        cfg: &VoicegainConfig,
        cursor: Option<&Cursor>,
    ) -> Result<Self, SourceError> {
        let cursor: VgCursor = decode_cursor(source_name, cursor)?.unwrap_or_default();
        Ok(VoicegainSource {
            client: client(source_name, cfg)?,
            after: cursor.after_call_id,
            per_page: cfg.per_page,
            done: false,
        })
    }
}

impl Source for VoicegainSource {
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        Box::pin(async move {
            if self.done {
                return Ok(None);
            }
            let body = self.client.consecutive_page(self.after).await?;
            let parsed = normalize::parse_page(self.client.source_name(), &body, false)?;
            if parsed.rows == 0 {
                self.done = true;
                return Ok(None);
            }
            let advanced = parsed.max_call_id.is_some_and(|m| m > self.after);
            if let Some(m) = parsed.max_call_id {
                self.after = self.after.max(m);
            }
            // A short page, an unfinished call or a page that did not move the cursor (only
            // unreadable callIds) ends the run: asking again would return the same rows.
            if parsed.rows < self.per_page as usize || parsed.stopped_at_open || !advanced {
                self.done = true;
            }
            Ok(Some(Page {
                dataset: Default::default(),
                known: 0,
                files: Vec::new(),
                calls: parsed.calls,
                rejects: parsed.rejects,
                cursor: Some(
                    serde_json::to_value(VgCursor {
                        after_call_id: self.after,
                    })
                    .map_err(|e| SourceError::Cursor {
                        source_name: self.client.source_name().to_string(),
                        reason: e.to_string(),
                    })?,
                ),
            }))
        })
    }
}

/// A backfill of a Voicegain source: `fromTime`/`toTime` (no `consecutive`) one UTC day at a
/// time, paged by page number. Unfinished calls are passed over (the incremental export takes
/// them once they finish); the incremental `afterCallId` cursor is not touched.
pub struct VoicegainRangeSource {
    client: VoicegainClient,
    clock: WindowClock,
    page: u32,
    per_page: u32,
}

impl VoicegainRangeSource {
    /// A backfill over `[from, to)`, resumed at `cursor` (a window cursor).
    pub fn new(
        source_name: &str,
        cfg: &VoicegainConfig,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cursor: Option<&Cursor>,
    ) -> Result<Self, SourceError> {
        Ok(VoicegainRangeSource {
            client: client(source_name, cfg)?,
            clock: WindowClock::range(
                source_name,
                from,
                to,
                cursor,
                WindowSettings {
                    window_days: 1,
                    settle_secs: 0,
                    lookback_secs: 0,
                    max_open_age_secs: 86_400,
                },
            )?,
            page: 1,
            per_page: cfg.per_page,
        })
    }

    async fn read_page(&mut self) -> Result<Option<Page>, SourceError> {
        let Some((from, to)) = self.clock.current() else {
            return Ok(None);
        };
        // toTime is inclusive at the vendor: a call starting exactly at `to` is read again by
        // the next window and skipped there by its key.
        let body = self
            .client
            .range_page(&rfc3339(from), &rfc3339(to), self.page)
            .await?;
        let parsed = normalize::parse_page(self.client.source_name(), &body, true)?;
        let cursor = if parsed.rows < self.per_page as usize {
            self.page = 1;
            Some(self.clock.finish_window(to))
        } else {
            self.page += 1;
            None
        };
        Ok(Some(Page {
            dataset: Default::default(),
            known: 0,
            files: Vec::new(),
            calls: parsed.calls,
            rejects: parsed.rejects,
            cursor,
        }))
    }
}

impl Source for VoicegainRangeSource {
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        Box::pin(self.read_page())
    }
}
