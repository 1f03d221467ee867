//! The voice-calls API (AI voice bot calls): time windows over `GET /api/v1/voice-calls`,
//! then each final call's detail (transcript) and EPA survey, fetched concurrently.
//!
//! Assumptions where the vendor doc is silent (written down per DESIGN.md):
//! - `dateFrom`/`dateTo` filter on `startTime`; callsync treats a window as `[from, to)` and
//!   tolerates an inclusive `dateTo` (a call on the boundary is seen twice and skipped by key).
//! - The list order is unspecified, so the cursor moves only when a whole window is read.
//! - `pageSize` may be capped by the API: a page shorter than asked ends the window only when
//!   it is also shorter than an earlier page of the same window (or empty); otherwise the next
//!   page is asked for.

pub mod client;
pub mod model;
pub mod normalize;

use std::path::PathBuf;

use futures_util::StreamExt;
use serde::Deserialize;
use tracing::debug;

use crate::http::{Download, HttpClient};
use crate::record::{CallBatchBuilder, Reject};
use crate::settings::{HttpConfig, Problems, validate_base_url, validate_secret};
use crate::sources::window::{WindowClock, WindowSettings, parse_day, parse_time, rfc3339};
use crate::sources::{
    Attachment, BoxFuture, Cursor, OpenContext, Page, Source, SourceError, secret_from,
};

use client::VoiceCallsClient;
use model::VoiceCall;
use normalize::Fetched;

/// The `kind` of this source, also written to `source_kind`.
pub const KIND: &str = "voice_calls";

/// `[sources.<name>]` with `kind = "voice_calls"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceCallsConfig {
    /// API base URL (the part before `/api/v1`). Required: the vendor has no single host.
    pub base_url: String,
    /// Environment variable that holds the Bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File that holds the Bearer token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// First UTC day (`YYYY-MM-DD`) an incremental sync exports.
    pub start_date: String,
    /// Calls per list page (the API may cap it), 1..=1000.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Days per list window, 1..=60.
    #[serde(default = "default_window_days")]
    pub window_days: u32,
    /// Windows end this many seconds before now, so a window is closed before it is read.
    #[serde(default = "default_settle_secs")]
    pub settle_secs: u64,
    /// Each sync re-lists this many seconds before `now - settle_secs`, so calls the vendor
    /// lists late (indexing lag, a backlog) are still exported; 0 turns it off.
    #[serde(default = "super::window::default_lookback_secs")]
    pub lookback_secs: u64,
    /// An unfinished call older than this is exported as it is.
    #[serde(default = "default_max_open_age_secs")]
    pub max_open_age_secs: u64,
    /// Detail and EPA requests in flight at once, 1..=64.
    #[serde(default = "default_detail_concurrency")]
    pub detail_concurrency: usize,
    /// States in which a call is final (exported); any other state is still in progress.
    #[serde(default = "default_final_states")]
    pub final_states: Vec<String>,
    /// Download each exported call's recording into `recordings/` (through the commit path);
    /// `recording_ref` then holds its lake-relative path.
    #[serde(default)]
    pub download_recordings: bool,
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

fn default_page_size() -> u32 {
    100
}
fn default_window_days() -> u32 {
    7
}
fn default_settle_secs() -> u64 {
    300
}
fn default_max_open_age_secs() -> u64 {
    86_400
}
fn default_detail_concurrency() -> usize {
    8
}
fn default_final_states() -> Vec<String> {
    [
        "Completed",
        "Busy",
        "NoAnswer",
        "Failed",
        "Canceled",
        "Cancelled",
        "Rejected",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl VoiceCallsConfig {
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
        validate_secret(table, "token", &self.token_env, &self.token_file, problems);
        if parse_day(&self.start_date).is_none() {
            problems.push(table, Some("start_date"), "must be a day as YYYY-MM-DD");
        }
        if !(1..=1000).contains(&self.page_size) {
            problems.push(table, Some("page_size"), "must be between 1 and 1000");
        }
        if !(1..=60).contains(&self.window_days) {
            problems.push(table, Some("window_days"), "must be between 1 and 60");
        }
        if !(1..=64).contains(&self.detail_concurrency) {
            problems.push(
                table,
                Some("detail_concurrency"),
                "must be between 1 and 64",
            );
        }
        if self.final_states.is_empty() {
            problems.push(table, Some("final_states"), "must name at least one state");
        }
        self.http.validate(table, problems);
    }
}

/// One incremental run of a voice-calls source.
pub struct VoiceCallsSource {
    client: VoiceCallsClient,
    ctx: OpenContext,
    recorder: Option<Recorder>,
    cfg: VoiceCallsConfig,
    clock: WindowClock,
    page: u32,
    longest_page: usize,
}

impl VoiceCallsSource {
    /// Resolves the token and resumes at the stored cursor (or `start_date`).
    pub fn new(
        source_name: &str,
        cfg: &VoiceCallsConfig,
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
        cfg: &VoiceCallsConfig,
        clock: WindowClock,
        ctx: &OpenContext,
    ) -> Result<Self, SourceError> {
        let token = secret_from(source_name, &cfg.token_env, &cfg.token_file)?;
        let client = VoiceCallsClient::new(source_name, &cfg.base_url, &cfg.http, &token)?;
        let recorder = if cfg.download_recordings {
            Some(Recorder {
                api: client.clone(),
                // The signed URL is its own credential: the API token is never sent to it.
                blob: HttpClient::new(source_name, &cfg.http, None)?,
                root: ctx.warehouse_root.clone(),
                source: source_name.to_string(),
            })
        } else {
            None
        };
        Ok(VoiceCallsSource {
            ctx: ctx.clone(),
            recorder,
            client,
            cfg: cfg.clone(),
            clock,
            page: 1,
            longest_page: 0,
        })
    }

    fn is_final(&self, state: Option<&str>) -> bool {
        state.is_some_and(|s| {
            self.cfg
                .final_states
                .iter()
                .any(|f| f.eq_ignore_ascii_case(s.trim()))
        })
    }

    /// Fetches a call's detail, and its EPA results when they are not inline.
    async fn fetch(
        client: VoiceCallsClient,
        recorder: Option<Recorder>,
        item: serde_json::Value,
    ) -> Result<Result<Fetched, Reject>, SourceError> {
        let id = item
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let Some(body) = client.detail(&id).await? else {
            return Ok(Err(Reject {
                fingerprint: None,
                call_id: Some(id),
                error: "the call is listed but its detail answers 404".into(),
                raw: item.to_string(),
            }));
        };
        let raw = String::from_utf8_lossy(&body).into_owned();
        let call: VoiceCall = match serde_json::from_str(&raw) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Err(Reject {
                    fingerprint: None,
                    call_id: Some(id),
                    error: format!("the call detail is not a voice call object: {e}"),
                    raw,
                }));
            }
        };
        let epa = if call.epa_results.is_none() {
            client.epa_results(&id).await?
        } else {
            None
        };
        let started = call.start_time.as_deref().and_then(parse_time);
        let recording = match (recorder, started) {
            (Some(r), Some(started)) => r.download(&id, started).await?,
            _ => None,
        };
        Ok(Ok(Fetched {
            call,
            raw,
            epa,
            recording,
        }))
    }

    async fn read_page(&mut self) -> Result<Option<Page>, SourceError> {
        let Some((from, end)) = self.clock.current() else {
            return Ok(None);
        };
        let items = self
            .client
            .list(&rfc3339(from), &rfc3339(end), self.page, self.cfg.page_size)
            .await?;
        let (from_us, end_us) = (from.timestamp_micros(), end.timestamp_micros());
        let mut rejects = Vec::new();
        let mut wanted = Vec::new();
        for item in &items {
            let id = item
                .get("id")
                .and_then(|v| v.as_str())
                .filter(|s| !s.trim().is_empty());
            let start = item
                .get("startTime")
                .and_then(|v| v.as_str())
                .and_then(parse_time);
            let (Some(_), Some(start)) = (id, start) else {
                rejects.push(Reject {
                    fingerprint: None,
                    call_id: id.map(str::to_string),
                    error: "list item without an id or a valid startTime".into(),
                    raw: item.to_string(),
                });
                continue;
            };
            if start < from_us || start >= end_us {
                continue; // another window's call (an inclusive dateTo, or a lax filter)
            }
            let state = item.get("state").and_then(|v| v.as_str());
            if self.is_final(state) || self.clock.expired(start) {
                wanted.push(item.clone());
            } else {
                self.clock.hold_at(start);
            }
        }
        // Calls already exported (a re-listed lookback) cost no detail, survey or recording
        // request.
        let ids: Vec<&str> = wanted
            .iter()
            .filter_map(|i| i.get("id").and_then(|v| v.as_str()))
            .collect();
        let known = self.ctx.known_among(self.client.source_name(), &ids)?;
        let before = wanted.len();
        wanted.retain(|i| {
            !i.get("id")
                .and_then(|v| v.as_str())
                .is_some_and(|id| known.contains(id))
        });
        let dropped = (before - wanted.len()) as u64;
        let client = self.client.clone();
        let fetched: Vec<Result<Result<Fetched, Reject>, SourceError>> =
            futures_util::stream::iter(wanted)
                .map(|item| Self::fetch(client.clone(), self.recorder.clone(), item))
                .buffer_unordered(self.cfg.detail_concurrency)
                .collect()
                .await;
        let mut builder = CallBatchBuilder::new();
        let mut fetched_files = Vec::new();
        for f in fetched {
            match f? {
                Ok(f) => {
                    // Attached even when the row is rejected below: the pipeline then
                    // deletes it with the other files of calls it does not write.
                    fetched_files.extend(f.recording.clone());
                    if let Err(error) = normalize::append(&mut builder, &f) {
                        rejects.push(Reject {
                            fingerprint: None,
                            call_id: f.call.id.clone(),
                            error,
                            raw: f.raw,
                        });
                    }
                }
                Err(r) => rejects.push(r),
            }
        }
        let window_done = items.is_empty()
            || (items.len() < self.cfg.page_size as usize
                && self.longest_page > 0
                && items.len() < self.longest_page);
        self.longest_page = self.longest_page.max(items.len());
        let cursor = if window_done {
            self.page = 1;
            self.longest_page = 0;
            Some(self.clock.finish_window(end))
        } else {
            self.page += 1;
            None
        };
        let calls = super::records::finish_batch(self.client.source_name(), builder)?;
        Ok(Some(Page {
            dataset: Default::default(),
            known: dropped,
            files: fetched_files,
            calls,
            rejects,
            cursor,
        }))
    }
}

impl Source for VoiceCallsSource {
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        Box::pin(self.read_page())
    }
}

/// Downloads recordings into the staging area: a fresh signed URL right before each
/// download (they expire after 15 minutes), and another one if the first is refused.
#[derive(Clone)]
struct Recorder {
    api: VoiceCallsClient,
    blob: HttpClient,
    root: std::path::PathBuf,
    source: String,
}

impl Recorder {
    /// Signed URLs asked for per recording before giving up.
    const URL_ATTEMPTS: u32 = 3;

    async fn download(&self, id: &str, started_at: i64) -> Result<Option<Attachment>, SourceError> {
        let protocol = |reason: String| SourceError::Protocol {
            source_name: self.source.clone(),
            reason,
        };
        let staged = format!(
            "_staging/{}/rec-{}.tmp",
            self.source,
            uuid::Uuid::now_v7().simple()
        );
        let path = self.root.join(&staged);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| protocol(format!("cannot create {}: {e}", dir.display())))?;
        }
        for _ in 0..Self::URL_ATTEMPTS {
            let Some(signed) = self.api.recording_url(id).await? else {
                return Ok(None);
            };
            let url = reqwest::Url::parse(&signed)
                .map_err(|e| protocol(format!("the recording URL of {id} is not a URL: {e}")))?;
            match self.blob.download(&url, &path).await? {
                Download::Done { bytes } => {
                    // The file is synced; sync its directory entry too, so a commit that
                    // names it never outlives it.
                    if let Some(dir) = path.parent() {
                        std::fs::File::open(dir)
                            .and_then(|d| d.sync_all())
                            .map_err(|e| protocol(format!("cannot sync {}: {e}", dir.display())))?;
                    }
                    let ext = url.path().rsplit_once('.').map(|(_, e)| e).unwrap_or("");
                    return Ok(Some(Attachment {
                        call_id: id.to_string(),
                        staged,
                        final_path: crate::record::recording_path(
                            &self.source,
                            started_at,
                            id,
                            ext,
                        ),
                        bytes,
                    }));
                }
                // Expired (or otherwise refused) signature: ask for a new URL.
                Download::Refused { status: 401 | 403 } => {
                    debug!(source = %self.source, call_id = %id, "Signed recording URL refused; asking for a new one.");
                }
                Download::Refused { status: 404 } => {
                    let _ = tokio::fs::remove_file(&path).await;
                    return Ok(None);
                }
                Download::Refused { status } => {
                    let _ = tokio::fs::remove_file(&path).await;
                    return Err(protocol(format!(
                        "the recording of {id} was refused with HTTP {status}"
                    )));
                }
            }
        }
        let _ = tokio::fs::remove_file(&path).await;
        Err(protocol(format!(
            "the recording of {id} was refused {} times, each with a fresh signed URL",
            Self::URL_ATTEMPTS
        )))
    }
}
