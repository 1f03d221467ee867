//! Exotel call records, pulled from the v1 Bulk Call Details API window by window:
//! `GET {base}/v1/Accounts/<sid>/Calls.json?DateCreated=gte:…;lte:…&SortBy=DateCreated:asc`,
//! `PageSize` ≤ 100, the next page by the cursor in `Metadata`. Optionally, new calls are
//! handed to an `exotel_analyze` source for ExoVoiceAnalyze (`analyze_with`).
//!
//! Assumptions where the vendor's documentation is silent: windows are cut on `DateCreated`
//! (what the filter compares), sent in the account's `timezone` to the second with both
//! bounds inclusive, so a window `[from, to)` asks up to the second before `to`; a call is
//! listed only once it has ended, so the re-listed lookback (default one day) catches a call
//! created before a sync passed it and ended after; calls longer than `lookback_secs` plus
//! `settle_secs` are left to `backfill`. The API keeps six calendar months: a `start_date` or
//! backfill older than that is refused before any request, and a stored cursor that fell
//! behind it (a daemon stopped for months) starts at the limit with a warning.

pub mod analysis;
pub mod client;
pub mod model;
pub mod normalize;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use tracing::warn;

use crate::settings::{HttpConfig, Problems};
use crate::sources::exotel_analyze::ExotelAnalyzeConfig;
use crate::sources::records::JsonRecords;
use crate::sources::window::{WindowClock, WindowSettings, parse_day, rfc3339, whole_second};
use crate::sources::{BoxFuture, Cursor, OpenContext, Page, Source, SourceConfig, SourceError};

/// Parts of a call record Exotel re-issues on every listing: `RecordingUrl` is signed afresh
/// (its query carries the signature and expiry), so a reject is known by the rest.
const VOLATILE: &[crate::record::Volatile] = &[crate::record::Volatile::SignedUrl("RecordingUrl")];

use analysis::AutoAnalysis;
use client::CallsClient;
use model::Call;

/// The `kind` of this source, also written to `source_kind`.
pub const KIND: &str = "exotel_calls";

/// The API lists calls created at most this many calendar months ago.
pub const MAX_AGE_MONTHS: u32 = 6;

/// At most this many days per query.
pub const MAX_WINDOW_DAYS: u32 = 31;

/// `[sources.<name>]` with `kind = "exotel_calls"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExotelCallsConfig {
    /// The Exotel account SID.
    pub account_sid: String,
    /// Environment variable / file that holds the API key (Basic auth user).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Environment variable / file that holds the API token (Basic auth password).
    #[serde(default)]
    pub api_token_env: Option<String>,
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// `https://api.exotel.com` (Singapore, the default) or `https://api.in.exotel.com` (Mumbai).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// First UTC day (`YYYY-MM-DD`) an incremental sync exports; at most six months back.
    pub start_date: String,
    /// Days per window, 1..=31 (the API's limit per query).
    #[serde(default = "default_window_days")]
    pub window_days: u32,
    /// Calls per page, 1..=100 (the API's limit).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Windows end this many seconds before now, so a window is closed before it is read.
    #[serde(default = "default_settle_secs")]
    pub settle_secs: u64,
    /// Each sync re-lists this many seconds before `now - settle_secs`: a call is listed only
    /// once it has ended, after a sync may have passed its creation time.
    #[serde(default = "super::window::default_lookback_secs")]
    pub lookback_secs: u64,
    /// The account's time zone (IANA name): the API's times carry no offset.
    #[serde(default = "super::push::default_timezone")]
    pub timezone: String,
    /// Whether `callsync run` runs this source once at start-up, before its first tick.
    #[serde(default = "super::default_run_on_start")]
    pub run_on_start: bool,
    /// Cron expression (with seconds) the daemon runs this source on.
    #[serde(default = "super::voicegain::default_schedule")]
    pub schedule: String,
    /// An `exotel_analyze` source that new calls passing the filter are submitted to
    /// (ExoVoiceAnalyze, charged per analysis). Unset: nothing is submitted.
    #[serde(default)]
    pub analyze_with: Option<String>,
    /// Statuses of the calls to analyse (a call also needs a recording).
    #[serde(default = "default_analyze_statuses")]
    pub analyze_statuses: Vec<String>,
    /// Calls shorter than this (seconds) are not analysed.
    #[serde(default)]
    pub analyze_min_duration_secs: u64,
    /// At most this many calls first submitted to the analyze source per UTC day (by hand
    /// or automatically); the rest wait, the longest waiting first, for the next days.
    #[serde(default = "default_analyze_max_per_day")]
    pub analyze_max_per_day: u64,
    /// Timeouts and retries.
    #[serde(default)]
    pub http: HttpConfig,
    /// The `analyze_with` source's name and config, linked once every table is read.
    #[serde(skip)]
    pub analyzer: Option<Box<(String, ExotelAnalyzeConfig)>>,
}

fn default_base_url() -> String {
    "https://api.exotel.com".into()
}
fn default_window_days() -> u32 {
    1
}
fn default_page_size() -> u32 {
    100
}
fn default_settle_secs() -> u64 {
    300
}
fn default_analyze_statuses() -> Vec<String> {
    vec!["completed".into()]
}
fn default_analyze_max_per_day() -> u64 {
    500
}

/// The oldest creation time the API lists now: six calendar months back, plus an hour so a
/// run that takes a while stays inside it.
pub fn oldest_listed(now: DateTime<Utc>) -> DateTime<Utc> {
    now.checked_sub_months(chrono::Months::new(MAX_AGE_MONTHS))
        .unwrap_or(now)
        + chrono::Duration::hours(1)
}

/// The first whole UTC day at or after `t`.
fn first_day_from(t: DateTime<Utc>) -> String {
    let day = t.date_naive();
    let day = if t.time() == chrono::NaiveTime::MIN {
        day
    } else {
        day.succ_opt().unwrap_or(day)
    };
    day.format("%Y-%m-%d").to_string()
}

impl ExotelCallsConfig {
    /// The window timing of this source. A listed call has ended, so nothing holds the
    /// cursor; a state rebuilt from the lake re-lists `lookback_secs` before its latest call.
    pub fn window_settings(&self) -> WindowSettings {
        WindowSettings {
            window_days: self.window_days,
            settle_secs: self.settle_secs,
            lookback_secs: self.lookback_secs,
            max_open_age_secs: self.lookback_secs,
        }
    }

    fn tz(&self) -> Tz {
        self.timezone.parse().unwrap_or(chrono_tz::Asia::Kolkata)
    }

    /// Reports every problem of this table.
    pub fn validate(&self, table: &str, problems: &mut Problems) {
        client::validate_account(
            table,
            &self.account_sid,
            &self.base_url,
            (&self.api_key_env, &self.api_key_file),
            (&self.api_token_env, &self.api_token_file),
            problems,
        );
        if parse_day(&self.start_date).is_none() {
            problems.push(table, Some("start_date"), "must be a day as YYYY-MM-DD");
        }
        if !(1..=MAX_WINDOW_DAYS).contains(&self.window_days) {
            problems.push(
                table,
                Some("window_days"),
                "must be between 1 and 31 (the API's limit per query)",
            );
        }
        if !(1..=100).contains(&self.page_size) {
            problems.push(
                table,
                Some("page_size"),
                "must be between 1 and 100 (the API's limit)",
            );
        }
        super::push::validate_timezone(table, &self.timezone, problems);
        if self.analyze_with.is_some() && self.analyze_statuses.is_empty() {
            problems.push(
                table,
                Some("analyze_statuses"),
                "must name at least one status (e.g. [\"completed\"])",
            );
        }
        self.http.validate(table, problems);
    }

    /// Finds the `analyze_with` source among `sources`: it must be an `exotel_analyze`
    /// source of the same account.
    pub fn link(
        &mut self,
        table: &str,
        sources: &BTreeMap<String, SourceConfig>,
        problems: &mut Problems,
    ) {
        let Some(target) = &self.analyze_with else {
            return;
        };
        match sources.get(target) {
            Some(SourceConfig::ExotelAnalyze(a)) if a.account_sid == self.account_sid => {
                self.analyzer = Some(Box::new((target.clone(), a.clone())));
            }
            Some(SourceConfig::ExotelAnalyze(a)) => problems.push(
                table,
                Some("analyze_with"),
                format!(
                    "source {target} analyses account {:?}, not this source's {:?}",
                    a.account_sid, self.account_sid
                ),
            ),
            Some(other) => problems.push(
                table,
                Some("analyze_with"),
                format!(
                    "source {target} is of kind {}, not exotel_analyze",
                    other.kind()
                ),
            ),
            None => problems.push(
                table,
                Some("analyze_with"),
                format!("no source named {target:?} (configure an exotel_analyze source)"),
            ),
        }
    }

    fn client(&self, source_name: &str) -> Result<CallsClient, SourceError> {
        let auth = client::basic_auth(
            source_name,
            (&self.api_key_env, &self.api_key_file),
            (&self.api_token_env, &self.api_token_file),
        )?;
        CallsClient::new(
            source_name,
            &self.base_url,
            &self.account_sid,
            &self.http,
            auth,
            self.tz(),
        )
    }

    /// `check`: one authenticated list request (the last hour, one call).
    pub async fn check(&self, source_name: &str) -> Result<(), SourceError> {
        let client = self.client(source_name)?;
        let to = whole_second(Utc::now());
        client
            .page(&client.first_query(to - chrono::Duration::hours(1), to, 1))
            .await?;
        Ok(())
    }
}

fn too_old(source_name: &str, what: String, oldest: DateTime<Utc>) -> SourceError {
    SourceError::Protocol {
        source_name: source_name.to_string(),
        reason: format!(
            "{what} is older than the {MAX_AGE_MONTHS} months Exotel's call-details API lists \
             (calls created before {} cannot be read); the earliest day possible now is {}",
            rfc3339(oldest),
            first_day_from(oldest)
        ),
    }
}

/// One run of an `exotel_calls` source.
pub struct ExotelCallsSource {
    client: CallsClient,
    ctx: OpenContext,
    page_size: u32,
    tz: Tz,
    clock: WindowClock,
    /// The query of the current window's next page (empty: the window is not started; the
    /// clock's window stays current until it is finished), and the queries it has sent.
    query: Vec<(String, String)>,
    sent: HashSet<Vec<(String, String)>>,
    analysis: Option<AutoAnalysis>,
    waiting_sent: bool,
}

impl ExotelCallsSource {
    /// An incremental run from the stored cursor (or `start_date`).
    pub fn new(
        source_name: &str,
        cfg: &ExotelCallsConfig,
        cursor: Option<&Cursor>,
        ctx: &OpenContext,
    ) -> Result<Self, SourceError> {
        let mut clock =
            WindowClock::incremental(source_name, &cfg.start_date, cursor, cfg.window_settings())?;
        let oldest = oldest_listed(Utc::now());
        if clock.pos < oldest {
            if cursor.is_none() {
                return Err(too_old(
                    source_name,
                    format!("start_date {}", cfg.start_date),
                    oldest,
                ));
            }
            warn!(source = %source_name, cursor = %rfc3339(clock.pos), oldest = %rfc3339(oldest), "The stored position is older than the API lists; calls created before the limit can no longer be read.");
            clock.pos = whole_second(oldest);
        }
        Self::with_clock(source_name, cfg, clock, ctx)
    }

    /// A run over `[from, to)` (backfill). A new one older than the API lists is refused. A
    /// resumed one whose position has since fallen past the limit (it was interrupted, and
    /// time went on) continues from the oldest time still listed, and says which calls it
    /// could not fetch: a backfill is never refused for good for what it already began.
    pub fn range(
        source_name: &str,
        cfg: &ExotelCallsConfig,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cursor: Option<&Cursor>,
        ctx: &OpenContext,
    ) -> Result<Self, SourceError> {
        let oldest = oldest_listed(Utc::now());
        let mut clock = WindowClock::range(source_name, from, to, cursor, cfg.window_settings())?;
        if clock.pos < oldest {
            if cursor.is_none() {
                return Err(too_old(
                    source_name,
                    format!("the backfill from {}", from.format("%Y-%m-%d")),
                    oldest,
                ));
            }
            let resume = whole_second(oldest).min(to);
            warn!(
                source = %source_name,
                lost_from = %rfc3339(clock.pos),
                lost_to = %rfc3339(resume),
                "The resumed backfill's position is older than the {MAX_AGE_MONTHS} months Exotel lists; calls created in that span cannot be fetched any more. Continuing from the oldest time still listed."
            );
            clock.pos = resume;
        }
        Self::with_clock(source_name, cfg, clock, ctx)
    }

    fn with_clock(
        source_name: &str,
        cfg: &ExotelCallsConfig,
        clock: WindowClock,
        ctx: &OpenContext,
    ) -> Result<Self, SourceError> {
        let target = cfg.analyzer.as_ref().map(|t| (t.0.as_str(), &t.1));
        Ok(ExotelCallsSource {
            client: cfg.client(source_name)?,
            ctx: ctx.clone(),
            page_size: cfg.page_size,
            tz: cfg.tz(),
            clock,
            query: Vec::new(),
            sent: HashSet::new(),
            analysis: AutoAnalysis::new(
                source_name,
                cfg,
                target,
                ctx.analysis_jobs.clone(),
                ctx.draining,
            )?,
            waiting_sent: false,
        })
    }

    fn protocol(&self, reason: String) -> SourceError {
        SourceError::Protocol {
            source_name: self.client.source_name().to_string(),
            reason,
        }
    }

    async fn read_page(&mut self) -> Result<Option<Page>, SourceError> {
        // Calls left waiting by earlier runs (the daily cap, a failed submission) go first.
        if !self.waiting_sent {
            self.waiting_sent = true;
            if let Some(a) = &mut self.analysis {
                a.submit_waiting().await?;
            }
        }
        let Some((from, to)) = self.clock.current() else {
            return Ok(None);
        };
        if self.query.is_empty() {
            self.query = self.client.first_query(from, to, self.page_size);
            self.sent.clear();
            self.sent.insert(self.query.clone());
        }
        let answer = self.client.page(&self.query).await?;
        let mut cursor = None;
        match self.client.next_query(&self.query, &answer) {
            Some(next) => {
                if answer.calls.is_empty() || !self.sent.insert(next.clone()) {
                    return Err(self.protocol(format!(
                        "the page cursor of the window {} .. {} stopped advancing after {} pages \
                         (the vendor sent the next page {next:?} again{}); the window is not exported",
                        rfc3339(from),
                        rfc3339(to),
                        self.sent.len(),
                        if answer.calls.is_empty() { ", with an empty page" } else { "" }
                    )));
                }
                self.query = next;
            }
            None => {
                self.query.clear();
                cursor = Some(self.clock.finish_window(to));
            }
        }
        // Calls already exported (a re-listed lookback) are dropped before anything else.
        let (tz, analysis) = (self.tz, &self.analysis);
        let mut wanted: Vec<String> = Vec::new();
        let rows = JsonRecords::read(
            &self.ctx,
            self.client.source_name(),
            &answer.calls,
            "Sid",
            "call",
            VOLATILE,
            |builder, call: &Call, raw| {
                normalize::append(builder, tz, call, raw)?;
                if analysis.as_ref().is_some_and(|a| a.wanted(call)) {
                    wanted.push(call.sid.trim().to_string());
                }
                Ok(())
            },
        )?;
        if let Some(a) = &mut self.analysis {
            let sids: Vec<&str> = wanted.iter().map(String::as_str).collect();
            a.record_and_submit(&sids).await?;
        }
        rows.into_page(self.client.source_name(), cursor).map(Some)
    }
}

impl Source for ExotelCallsSource {
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        Box::pin(self.read_page())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_six_month_limit_names_the_first_day_possible() {
        let now = parse_day("2026-11-30").unwrap() + chrono::Duration::hours(16);
        let oldest = oldest_listed(now);
        assert_eq!(rfc3339(oldest), "2026-05-30T17:00:00Z");
        assert_eq!(first_day_from(oldest), "2026-05-31");
        let e = too_old("ex", "start_date 2026-01-01".into(), oldest).to_string();
        assert!(e.contains("6 months") && e.contains("2026-05-31"), "{e}");
    }
}
