//! Exotel Listen/Whisper/Barge monitor legs, pushed by webhook: each leg's StatusCallback
//! arrives at the daemon (`POST /webhooks/<source>/<token>`), is committed to the inbox before
//! it is acknowledged, and is exported from there, page by page, into the `monitor_legs`
//! table (`<root>/monitor_legs/source=<name>/date=<UTC day of StartTime>/`).
//!
//! Assumptions where the vendor doc is silent: a callback without `LegSid` is unusable (400,
//! kept as a reject); `EventType` may be absent (the key is then `LegSid:`); times are
//! `YYYY-MM-DD HH:MM:SS` in the account's time zone.

pub mod model;
pub mod normalize;
pub mod webhook;

use std::path::PathBuf;

use chrono_tz::Tz;
use serde::Deserialize;

use crate::schema::Dataset;
use crate::settings::{Problems, validate_secret};
use crate::sources::push::{InboxPages, reject};
use crate::sources::{BoxFuture, Cursor, OpenContext, Page, Source, SourceError};

use model::LegCallback;
use normalize::LegBatch;

/// The `kind` of this source.
pub const KIND: &str = "exotel_monitor";

/// `[sources.<name>]` with `kind = "exotel_monitor"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExotelMonitorConfig {
    /// Environment variable that holds the webhook token (the secret last segment of the
    /// StatusCallback URL `<public base>/webhooks/<source>/<token>`).
    #[serde(default)]
    pub webhook_token_env: Option<String>,
    /// File that holds the webhook token.
    #[serde(default)]
    pub webhook_token_file: Option<PathBuf>,
    /// Largest callback body accepted (bytes); larger ones are answered 413.
    #[serde(default = "super::default_webhook_max_body_bytes")]
    pub webhook_max_body_bytes: usize,
    /// The account's time zone (IANA name): Exotel's times carry no offset.
    #[serde(default = "super::push::default_timezone")]
    pub timezone: String,
    /// The inbox is exported to the lake once its oldest unexported delivery is this old
    /// (seconds), or it holds `flush_max_rows`, and when the daemon drains.
    #[serde(default = "super::default_flush_interval_secs")]
    pub flush_interval_secs: u64,
    /// Unexported deliveries that make the inbox export at once, whatever their age.
    #[serde(default = "super::default_flush_max_rows")]
    pub flush_max_rows: u64,
    /// Exported deliveries are deleted from the inbox after this many days.
    #[serde(default = "super::default_inbox_retention_days")]
    pub inbox_retention_days: u64,
}

impl ExotelMonitorConfig {
    /// Reports every problem of this table.
    pub fn validate(&self, table: &str, problems: &mut Problems) {
        validate_secret(
            table,
            "webhook_token",
            &self.webhook_token_env,
            &self.webhook_token_file,
            problems,
        );
        super::push::validate_timezone(table, &self.timezone, problems);
        super::validate_push(
            table,
            self.webhook_max_body_bytes,
            self.flush_interval_secs,
            self.flush_max_rows,
            problems,
        );
    }

    /// The time zone (validated).
    pub fn tz(&self) -> Tz {
        self.timezone.parse().unwrap_or(chrono_tz::Asia::Kolkata)
    }
}

/// One export of the inbox.
pub struct ExotelMonitorSource {
    ctx: OpenContext,
    source_name: String,
    tz: Tz,
    pages: InboxPages,
}

impl ExotelMonitorSource {
    pub fn new(
        source_name: &str,
        cfg: &ExotelMonitorConfig,
        cursor: Option<&Cursor>,
        ctx: &OpenContext,
    ) -> Result<Self, SourceError> {
        Ok(ExotelMonitorSource {
            ctx: ctx.clone(),
            source_name: source_name.to_string(),
            tz: cfg.tz(),
            pages: InboxPages::new(source_name, cursor, cfg.inbox_retention_days)?,
        })
    }

    fn read_page(&mut self) -> Result<Option<Page>, SourceError> {
        let Some(deliveries) = self.pages.next(&self.ctx)? else {
            return Ok(None);
        };
        let mut batch = LegBatch::new(self.tz);
        let mut rejects = Vec::new();
        for d in &deliveries {
            let parsed = match &d.invalid {
                Some(reason) => Err(reason.clone()),
                None => LegCallback::parse(d.content_type.as_deref(), &d.body)
                    .and_then(|cb| batch.append(&cb, &d.key, &raw_json(&cb), d.received_at_us)),
            };
            if let Err(error) = parsed {
                let id = d
                    .key
                    .split(':')
                    .next()
                    .filter(|k| !k.starts_with("invalid-"));
                rejects.push(reject(d, error, id.map(str::to_string)));
            }
        }
        let calls = if batch.is_empty() {
            None
        } else {
            Some(batch.finish().map_err(|e| SourceError::Protocol {
                source_name: self.source_name.clone(),
                reason: format!("building the batch: {e}"),
            })?)
        };
        Ok(Some(Page {
            dataset: Dataset::MonitorLegs,
            calls,
            rejects,
            files: Vec::new(),
            cursor: Some(self.pages.cursor()),
            known: 0,
        }))
    }
}

/// The callback as a JSON object of its fields (a form body becomes the same object).
fn raw_json(cb: &LegCallback) -> String {
    serde_json::to_string(&cb.0).unwrap_or_default()
}

impl Source for ExotelMonitorSource {
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        let r = self.read_page();
        Box::pin(async move { r })
    }
}
