//! Vonage AI Studio insights: sessions read window by window from `GET /insights/sessions`
//! (Elasticsearch behind it). A window never spans more than 60 days; a window that holds more
//! than 10,000 sessions is split in halves, recursively, never paged past the 10,000th result.
//! Session times have no offset and are read as UTC.

pub mod client;
pub mod model;
pub mod normalize;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tracing::{debug, warn};

use crate::settings::{HttpConfig, Problems, validate_base_url, validate_secret};
use crate::sources::records::JsonRecords;
use crate::sources::window::{WindowClock, WindowSettings, parse_day, parse_time};
use crate::sources::{BoxFuture, Cursor, OpenContext, Page, Source, SourceError, secret_from};

/// Parts of a session Vonage may re-issue on every search: the recording link
/// (`channel_data.audio_url`), when the account serves it signed (assumed: the docs do not
/// say; a query on it is taken as a signature). A reject is known by the rest.
const VOLATILE: &[crate::record::Volatile] =
    &[crate::record::Volatile::SignedUrl("channel_data.audio_url")];

use client::VonageClient;
use model::Session;

/// The `kind` of this source, also written to `source_kind`.
pub const KIND: &str = "vonage_insights";

/// The search refuses to page past this many results.
pub const MAX_RESULT_WINDOW: u64 = 10_000;

/// `[sources.<name>]` with `kind = "vonage_insights"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VonageInsightsConfig {
    /// API base URL: `https://studio-api-eu.ai.vonage.com` (default) or the `-us` host.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Environment variable that holds the API key (sent as `X-Vgai-Key`).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// File that holds the API key.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// First UTC day (`YYYY-MM-DD`) an incremental sync exports.
    pub start_date: String,
    /// Sessions per page, 1..=10000.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Days per window, 1..=60 (the vendor's limit).
    #[serde(default = "default_window_days")]
    pub window_days: u32,
    /// Smallest window (seconds) a dense window is split into; a window this small that still
    /// holds more than 10,000 sessions fails the run.
    #[serde(default = "default_min_window_secs")]
    pub min_window_secs: u64,
    /// Windows end this many seconds before now, so a window is closed before it is read.
    #[serde(default = "default_settle_secs")]
    pub settle_secs: u64,
    /// Each sync re-lists this many seconds before `now - settle_secs`, so calls the vendor
    /// lists late (indexing lag, a backlog) are still exported; 0 turns it off.
    #[serde(default = "super::window::default_lookback_secs")]
    pub lookback_secs: u64,
    /// A session still `in_progress` after this long is exported as it is.
    #[serde(default = "default_max_open_age_secs")]
    pub max_open_age_secs: u64,
    /// Whether `callsync run` runs this source once at start-up, before its first tick.
    #[serde(default = "super::default_run_on_start")]
    pub run_on_start: bool,
    /// Cron expression (with seconds) the daemon runs this source on.
    #[serde(default = "super::voicegain::default_schedule")]
    pub schedule: String,
    /// Timeouts and retries.
    #[serde(default)]
    pub http: HttpConfig,
}

fn default_base_url() -> String {
    "https://studio-api-eu.ai.vonage.com".into()
}
fn default_page_size() -> u32 {
    100
}
fn default_window_days() -> u32 {
    7
}
fn default_min_window_secs() -> u64 {
    60
}
fn default_settle_secs() -> u64 {
    300
}
fn default_max_open_age_secs() -> u64 {
    86_400
}

impl VonageInsightsConfig {
    /// The window timing of this source.
    pub fn window_settings(&self) -> WindowSettings {
        WindowSettings {
            window_days: self.window_days,
            settle_secs: self.settle_secs,
            lookback_secs: self.lookback_secs,
            max_open_age_secs: self.max_open_age_secs,
        }
    }

    /// Reports every problem of this table.
    pub fn validate(&self, table: &str, problems: &mut Problems) {
        validate_base_url(table, &self.base_url, problems);
        validate_secret(
            table,
            "api_key",
            &self.api_key_env,
            &self.api_key_file,
            problems,
        );
        if parse_day(&self.start_date).is_none() {
            problems.push(table, Some("start_date"), "must be a day as YYYY-MM-DD");
        }
        if !(1..=10_000).contains(&self.page_size) {
            problems.push(table, Some("page_size"), "must be between 1 and 10000");
        }
        if !(1..=60).contains(&self.window_days) {
            problems.push(
                table,
                Some("window_days"),
                "must be between 1 and 60 (the vendor's limit)",
            );
        }
        if self.min_window_secs == 0 {
            problems.push(table, Some("min_window_secs"), "must be at least 1");
        }
        self.http.validate(table, problems);
    }
}

/// One run of a Vonage insights source.
pub struct VonageInsightsSource {
    client: VonageClient,
    ctx: OpenContext,
    cfg: VonageInsightsConfig,
    clock: WindowClock,
    /// The clock window being read and its pending sub-windows (last = current).
    window_end: Option<DateTime<Utc>>,
    stack: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    page: u32,
    total: Option<u64>,
}

impl VonageInsightsSource {
    /// Resolves the key and resumes at the stored cursor (or `start_date`).
    pub fn new(
        source_name: &str,
        cfg: &VonageInsightsConfig,
        cursor: Option<&Cursor>,
        ctx: &OpenContext,
    ) -> Result<Self, SourceError> {
        let clock =
            WindowClock::incremental(source_name, &cfg.start_date, cursor, cfg.window_settings())?;
        Self::with_clock(source_name, cfg, clock, ctx)
    }

    /// A run over an explicit clock (backfill).
    pub fn with_clock(
        source_name: &str,
        cfg: &VonageInsightsConfig,
        clock: WindowClock,
        ctx: &OpenContext,
    ) -> Result<Self, SourceError> {
        let key = secret_from(source_name, &cfg.api_key_env, &cfg.api_key_file)?;
        Ok(VonageInsightsSource {
            ctx: ctx.clone(),
            client: VonageClient::new(source_name, &cfg.base_url, &cfg.http, key)?,
            cfg: cfg.clone(),
            clock,
            window_end: None,
            stack: Vec::new(),
            page: 0,
            total: None,
        })
    }

    fn protocol(&self, reason: String) -> SourceError {
        SourceError::Protocol {
            source_name: self.client.source_name().to_string(),
            reason,
        }
    }

    async fn read_page(&mut self) -> Result<Option<Page>, SourceError> {
        loop {
            let (from, to) = match self.stack.last() {
                Some(w) => *w,
                None => match self.clock.current() {
                    Some(w) => {
                        self.window_end = Some(w.1);
                        self.stack.push(w);
                        w
                    }
                    None => return Ok(None),
                },
            };
            let size = self.cfg.page_size;
            let answer = self.client.search(from, to, self.page, size).await?;
            if self.page == 0 && answer.total > MAX_RESULT_WINDOW {
                let span = to - from;
                if span.num_seconds() <= self.cfg.min_window_secs as i64 {
                    return Err(self.protocol(format!(
                        "{} sessions start between {from} and {to}, more than the {MAX_RESULT_WINDOW} the search pages to, \
                         even in a window of min_window_secs ({}); lower min_window_secs",
                        answer.total, self.cfg.min_window_secs
                    )));
                }
                // Split on a whole second: the query parameters carry no fraction.
                let mid = from + chrono::Duration::seconds(span.num_seconds() / 2);
                debug!(source = %self.client.source_name(), total = answer.total, %from, %to, "Window too dense, splitting.");
                self.stack.pop();
                self.stack.push((mid, to));
                self.stack.push((from, mid));
                continue;
            }
            if self.page > 0 && self.total != Some(answer.total) {
                // Membership changed under the pager (it should not, since windows are
                // settled): read the window again from its first page; repeats are skipped.
                warn!(source = %self.client.source_name(), %from, %to, "Window changed while paging; reading it again.");
                self.page = 0;
                self.total = None;
                continue;
            }
            self.total = Some(answer.total);
            let (from_us, to_us) = (from.timestamp_micros(), to.timestamp_micros());
            // Sessions already exported (a re-listed lookback, a window read again) are
            // dropped before they are parsed or normalized.
            let clock = &mut self.clock;
            let rows = JsonRecords::read(
                &self.ctx,
                self.client.source_name(),
                &answer.hits,
                "id",
                "session",
                VOLATILE,
                |builder, session: &Session, raw| {
                    let start = session.session_start_time.as_deref().and_then(parse_time);
                    if let Some(start) = start {
                        if start < from_us || start >= to_us {
                            return Ok(()); // the neighbouring window's (an inclusive to_date)
                        }
                        if session.in_progress() && !clock.expired(start) {
                            clock.hold_at(start);
                            return Ok(());
                        }
                    }
                    normalize::append(builder, session, raw)
                },
            )?;
            let read = (self.page as u64 + 1) * size as u64;
            let mut cursor = None;
            if answer.hits.is_empty() || read >= answer.total {
                self.stack.pop();
                self.page = 0;
                self.total = None;
                if self.stack.is_empty() {
                    let end = self.window_end.take().unwrap_or(to);
                    cursor = Some(self.clock.finish_window(end));
                }
            } else {
                self.page += 1;
            }
            return rows.into_page(self.client.source_name(), cursor).map(Some);
        }
    }
}

impl Source for VonageInsightsSource {
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        Box::pin(self.read_page())
    }
}
