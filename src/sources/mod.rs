//! The `Source` trait every vendor extractor implements, and the config enum with one
//! variant per kind. A source knows nothing of Parquet or SQLite: it yields pages of
//! normalized records and the opaque cursor they advance to.

mod check;
pub mod exotel_analyze;
pub mod exotel_calls;
pub mod exotel_monitor;
pub mod push;
pub mod records;

pub use push::{
    Delivery, FLUSH_CHECK_SECS, FlushPolicy, Inbox, InboxCursor, Job, JobResult, Jobs, Received,
    WebhookSpec, default_flush_interval_secs, default_flush_max_rows, default_inbox_retention_days,
    default_webhook_max_body_bytes, validate_push,
};
pub mod voice_calls;
pub mod voicegain;
pub mod vonage_insights;
pub mod window;

use crate::settings::validate_schedule;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use crate::http::HttpError;
use crate::settings::{Problems, typed};
use arrow_array::RecordBatch;

use crate::record::{KeySet, Reject};
use crate::secret::{Secret, SecretError, SecretRef};

pub use crate::shared::{Cursor, LakeFacts};

/// A boxed future, so `Source` can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One page: its calls (a batch of the call schema), its rejects, and the cursor that is
/// safe to store once they are committed.
#[derive(Debug, Default)]
pub struct Page {
    /// The table `calls` belongs to (its schema, key and partition column).
    pub dataset: crate::schema::Dataset,
    /// The rows: a batch of `dataset`'s schema (the call schema for pull sources).
    pub calls: Option<RecordBatch>,
    pub rejects: Vec<Reject>,
    /// Files (recordings) the source already wrote, synced, under the staging area; they
    /// are committed with the calls they belong to, or deleted.
    pub files: Vec<Attachment>,
    /// The cursor after this page; `None` leaves the stored cursor as it is.
    pub cursor: Option<Cursor>,
    /// Listed records the source dropped because they were already exported.
    pub known: u64,
}

/// A file a source downloaded for a call, spooled in the staging area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The call it belongs to: kept only if that call is written.
    pub call_id: String,
    /// Lake-relative path of the spooled, synced file (under `_staging/<source>/`).
    pub staged: String,
    /// Lake-relative final path (what the row's `recording_ref` says).
    pub final_path: String,
    pub bytes: u64,
}

/// What a source may use from its surroundings: where to spool downloads, and which ids
/// are already exported.
#[derive(Clone)]
pub struct OpenContext {
    /// The warehouse root (spooled files go under `_staging/<source>/`).
    pub warehouse_root: PathBuf,
    /// Answers "which of these ids are already exported?" before any per-call work.
    pub known: Arc<dyn KnownKeys>,
    /// The webhook inbox of this source (push sources read their pages from it).
    pub inbox: Arc<dyn Inbox>,
    /// The source's analysis jobs (kinds that submit work to a vendor).
    pub jobs: Arc<dyn Jobs>,
    /// The jobs of the source this one hands calls to for analysis (`analyze_with`).
    pub analysis_jobs: Option<Arc<dyn Jobs>>,
    /// The daemon is draining: export what is there, start no new vendor work (no
    /// resubmissions).
    pub draining: bool,
}

/// What the pipeline tells a source about its exported keys, so that a re-listed call costs
/// no detail, survey or recording request and no normalizing. The answer covers committed
/// exports; the pipeline still skips repeats inside the run being staged.
pub trait KnownKeys: Send + Sync {
    /// The ids among `ids` that are already exported; the `Err` says why it cannot tell.
    fn exported_among(&self, ids: &[&str]) -> Result<KeySet, String>;
}

/// Knows no exported key: every id is new (tests, benchmarks).
pub struct NothingKnown;

impl KnownKeys for NothingKnown {
    fn exported_among(&self, _ids: &[&str]) -> Result<KeySet, String> {
        Ok(KeySet::default())
    }
}

impl OpenContext {
    /// Which of `ids` are already exported, as a `SourceError` naming the source on failure.
    pub fn known_among(&self, source_name: &str, ids: &[&str]) -> Result<KeySet, SourceError> {
        if ids.is_empty() {
            return Ok(KeySet::default());
        }
        self.known
            .exported_among(ids)
            .map_err(|reason| SourceError::KnownKeys {
                source_name: source_name.to_string(),
                reason,
            })
    }
}

/// A vendor extractor. `next_page` is called until it returns `Ok(None)`.
pub trait Source: Send {
    /// The next page, or `None` when the vendor has nothing more for now.
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, SourceError>>;
}

/// Why a source could not run.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("source {source_name}: cannot read its credential: {error}")]
    Secret {
        source_name: String,
        #[source]
        error: SecretError,
    },
    #[error("source {source_name}: stored cursor is not valid for this kind: {reason}")]
    Cursor { source_name: String, reason: String },
    #[error("source {source_name}: cannot look up which calls are exported: {reason}")]
    KnownKeys { source_name: String, reason: String },
    #[error("source {source_name}: unexpected answer from the vendor: {reason}")]
    Protocol { source_name: String, reason: String },
}

impl SourceError {
    /// The HTTP status behind this error, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            SourceError::Http(e) => e.status(),
            _ => None,
        }
    }
}

/// Reads the secret of `source_name`, mapping a failure to a `SourceError`.
pub fn resolve_secret(source_name: &str, r: &SecretRef) -> Result<Secret, SourceError> {
    r.resolve().map_err(|error| SourceError::Secret {
        source_name: source_name.to_string(),
        error,
    })
}

/// Reads the secret configured as `<name>_env` / `<name>_file` (validation made sure exactly
/// one is set).
pub fn secret_from(
    source_name: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Secret, SourceError> {
    let r = SecretRef::from_pair(env, file).ok_or_else(|| SourceError::Protocol {
        source_name: source_name.to_string(),
        reason: "no credential configured".into(),
    })?;
    resolve_secret(source_name, &r)
}

/// Decodes a stored cursor into a source's own type (`None` when nothing is stored yet).
pub fn decode_cursor<T: serde::de::DeserializeOwned>(
    source_name: &str,
    cursor: Option<&Cursor>,
) -> Result<Option<T>, SourceError> {
    match cursor {
        None => Ok(None),
        Some(c) => serde_json::from_value(c.clone())
            .map(Some)
            .map_err(|e| SourceError::Cursor {
                source_name: source_name.to_string(),
                reason: e.to_string(),
            }),
    }
}

/// `[sources.<name>]`: the `kind` key picks the variant.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// Voicegain speech analytics: consecutive `afterCallId` CSV export.
    Voicegain(voicegain::VoicegainConfig),
    /// Voice-calls API: time windows, per-call detail with transcript and EPA survey.
    VoiceCalls(voice_calls::VoiceCallsConfig),
    /// Vonage AI Studio insights: sessions in windows of at most 60 days.
    VonageInsights(vonage_insights::VonageInsightsConfig),
    /// Exotel Listen/Whisper/Barge monitor legs, pushed by webhook.
    ExotelMonitor(exotel_monitor::ExotelMonitorConfig),
    /// Exotel ExoVoiceAnalyze: submitted by `exotel analyze`, results pushed by webhook.
    ExotelAnalyze(exotel_analyze::ExotelAnalyzeConfig),
    /// Exotel call records: the Bulk Call Details API in windows of at most 31 days.
    ExotelCalls(exotel_calls::ExotelCallsConfig),
}

/// When the daemon runs a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger<'a> {
    /// On a cron schedule (pull kinds).
    Cron(&'a str),
    /// Every so many seconds (push kinds flush their inbox).
    Every(u64),
}

impl std::fmt::Display for Trigger<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Cron(c) => write!(f, "{c}"),
            Trigger::Every(s) => write!(f, "every {s} s"),
        }
    }
}

/// Every `kind` this build knows.
pub const KINDS: &[&str] = &[
    voicegain::KIND,
    vonage_insights::KIND,
    voice_calls::KIND,
    exotel_monitor::KIND,
    exotel_analyze::KIND,
    exotel_calls::KIND,
];

impl SourceConfig {
    /// Reads one `[sources.<name>]` table: `kind` picks the variant, whose own
    /// (`deny_unknown_fields`) struct takes the other keys.
    pub fn from_toml(
        table: &str,
        value: toml::Value,
        problems: &mut Problems,
    ) -> Option<SourceConfig> {
        let toml::Value::Table(mut t) = value else {
            problems.push(table, None, "must be a table");
            return None;
        };
        let kind = match t.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(_) => {
                problems.push(table, Some("kind"), "must be a string");
                return None;
            }
            None => {
                problems.push(
                    table,
                    Some("kind"),
                    format!("missing (one of: {})", KINDS.join(", ")),
                );
                return None;
            }
        };
        let rest = toml::Value::Table(t);
        match kind.as_str() {
            voicegain::KIND => typed(table, rest, problems).map(SourceConfig::Voicegain),
            voice_calls::KIND => typed(table, rest, problems).map(SourceConfig::VoiceCalls),
            vonage_insights::KIND => typed(table, rest, problems).map(SourceConfig::VonageInsights),
            exotel_monitor::KIND => typed(table, rest, problems).map(SourceConfig::ExotelMonitor),
            exotel_analyze::KIND => typed(table, rest, problems).map(SourceConfig::ExotelAnalyze),
            exotel_calls::KIND => typed(table, rest, problems).map(SourceConfig::ExotelCalls),
            other => {
                problems.push(
                    table,
                    Some("kind"),
                    format!("unknown kind {other:?} (one of: {})", KINDS.join(", ")),
                );
                None
            }
        }
    }

    /// The `kind` key's value.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Voicegain(_) => voicegain::KIND,
            SourceConfig::VoiceCalls(_) => voice_calls::KIND,
            SourceConfig::VonageInsights(_) => vonage_insights::KIND,
            SourceConfig::ExotelMonitor(_) => exotel_monitor::KIND,
            SourceConfig::ExotelAnalyze(_) => exotel_analyze::KIND,
            SourceConfig::ExotelCalls(_) => exotel_calls::KIND,
        }
    }

    /// The cron expression the daemon runs this source on.
    pub fn trigger(&self) -> Trigger<'_> {
        match self {
            SourceConfig::Voicegain(c) => Trigger::Cron(&c.schedule),
            SourceConfig::VoiceCalls(c) => Trigger::Cron(&c.schedule),
            SourceConfig::VonageInsights(c) => Trigger::Cron(&c.schedule),
            SourceConfig::ExotelCalls(c) => Trigger::Cron(&c.schedule),
            // A push source is asked whether its inbox is due at least every few seconds.
            SourceConfig::ExotelMonitor(_) | SourceConfig::ExotelAnalyze(_) => Trigger::Every(
                self.flush_policy()
                    .map_or(FLUSH_CHECK_SECS, |p| p.interval_secs.min(FLUSH_CHECK_SECS)),
            ),
        }
    }

    /// When a push source's inbox goes to the lake (`None` for pull kinds).
    pub fn flush_policy(&self) -> Option<FlushPolicy> {
        match self {
            SourceConfig::ExotelMonitor(c) => Some(FlushPolicy {
                max_rows: c.flush_max_rows,
                interval_secs: c.flush_interval_secs,
            }),
            SourceConfig::ExotelAnalyze(c) => Some(FlushPolicy {
                max_rows: c.flush_max_rows,
                interval_secs: c.flush_interval_secs,
            }),
            _ => None,
        }
    }

    /// Whether a run now would do anything: always for pull kinds; for push kinds, when the
    /// inbox is due (`flush_policy`; while draining, when it holds anything) or, for analysis,
    /// an overdue job waits for resubmission. An idle push source is not run, so it writes
    /// nothing, not even a run record.
    pub fn due(
        &self,
        source_name: &str,
        cursor: Option<&Cursor>,
        ctx: &OpenContext,
    ) -> Result<bool, SourceError> {
        let Some(mut policy) = self.flush_policy() else {
            return Ok(true);
        };
        if ctx.draining {
            // At drain every waiting delivery goes, whatever its age; none: nothing runs.
            policy = FlushPolicy {
                max_rows: 1,
                interval_secs: 0,
            };
        }
        if policy.inbox_due(source_name, cursor, ctx)? {
            return Ok(true);
        }
        match self {
            SourceConfig::ExotelAnalyze(c) => exotel_analyze::jobs_overdue(source_name, c, ctx),
            _ => Ok(false),
        }
    }

    /// The webhook of a push source (`None` for pull kinds).
    pub fn webhook(&self) -> Option<WebhookSpec> {
        match self {
            SourceConfig::ExotelMonitor(c) => Some(WebhookSpec {
                token: SecretRef::from_pair(&c.webhook_token_env, &c.webhook_token_file)?,
                max_body_bytes: c.webhook_max_body_bytes,
                receive: exotel_monitor::webhook::receive,
            }),
            SourceConfig::ExotelAnalyze(c) => Some(WebhookSpec {
                token: SecretRef::from_pair(&c.webhook_token_env, &c.webhook_token_file)?,
                max_body_bytes: c.webhook_max_body_bytes,
                receive: exotel_analyze::receive,
            }),
            _ => None,
        }
    }

    /// A cursor that loses nothing, for a state rebuilt from the lake: from what the lake
    /// holds and the cursor the lake's marker recorded (the lesser when both are known;
    /// re-listing more is harmless, exported keys skip it). `None` starts from the beginning.
    pub fn repair_cursor(&self, facts: &LakeFacts, marker: Option<&Cursor>) -> Option<Cursor> {
        match self {
            SourceConfig::Voicegain(_) => voicegain::repair_cursor(facts, marker),
            SourceConfig::VoiceCalls(c) => {
                window::repair_cursor(facts, marker, c.window_settings())
            }
            SourceConfig::VonageInsights(c) => {
                window::repair_cursor(facts, marker, c.window_settings())
            }
            SourceConfig::ExotelCalls(c) => {
                window::repair_cursor(facts, marker, c.window_settings())
            }
            // The inbox lives in the state: with the state lost, so is the inbox; start over.
            SourceConfig::ExotelMonitor(_) | SourceConfig::ExotelAnalyze(_) => None,
        }
    }

    /// Where a stored cursor stands in time (µs since the epoch), for kinds whose cursor is a
    /// time (the windowed ones); `None` for the others.
    pub fn cursor_time(&self, cursor: &Cursor) -> Option<i64> {
        match self {
            SourceConfig::Voicegain(_)
            | SourceConfig::ExotelMonitor(_)
            | SourceConfig::ExotelAnalyze(_) => None,
            SourceConfig::VoiceCalls(_)
            | SourceConfig::VonageInsights(_)
            | SourceConfig::ExotelCalls(_) => {
                serde_json::from_value::<window::WindowCursor>(cursor.clone())
                    .ok()
                    .and_then(|c| window::parse_time(&c.from))
            }
        }
    }

    /// The source this one hands calls to for analysis, and its kind (`analyze_with`).
    pub fn analysis_target(&self) -> Option<(&str, &'static str)> {
        match self {
            SourceConfig::ExotelCalls(c) => {
                c.analyze_with.as_deref().map(|t| (t, exotel_analyze::KIND))
            }
            _ => None,
        }
    }

    /// Resolves what sources say of each other (`analyze_with`), once every table is read,
    /// reporting a name that is missing or of the wrong kind.
    pub fn link_all(sources: &mut BTreeMap<String, SourceConfig>, problems: &mut Problems) {
        let all = sources.clone();
        for (name, s) in sources.iter_mut() {
            if let SourceConfig::ExotelCalls(c) = s {
                c.link(&format!("sources.{name}"), &all, problems);
            }
        }
    }

    /// Whether the daemon runs this source at start-up.
    pub fn run_on_start(&self) -> bool {
        match self {
            SourceConfig::Voicegain(c) => c.run_on_start,
            SourceConfig::VoiceCalls(c) => c.run_on_start,
            SourceConfig::VonageInsights(c) => c.run_on_start,
            SourceConfig::ExotelCalls(c) => c.run_on_start,
            SourceConfig::ExotelMonitor(_) | SourceConfig::ExotelAnalyze(_) => true,
        }
    }

    /// Reports every problem of this table.
    pub fn validate(&self, table: &str, problems: &mut Problems) {
        if let Trigger::Cron(c) = self.trigger() {
            validate_schedule(table, c, problems);
        }
        match self {
            SourceConfig::Voicegain(c) => c.validate(table, problems),
            SourceConfig::VoiceCalls(c) => c.validate(table, problems),
            SourceConfig::VonageInsights(c) => c.validate(table, problems),
            SourceConfig::ExotelMonitor(c) => c.validate(table, problems),
            SourceConfig::ExotelAnalyze(c) => c.validate(table, problems),
            SourceConfig::ExotelCalls(c) => c.validate(table, problems),
        }
    }

    /// Opens the extractor for a backfill of `[from, to)` (UTC), resuming at `cursor` (the
    /// backfill's own, never the incremental one).
    pub fn open_range(
        &self,
        source_name: &str,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        cursor: Option<&Cursor>,
        ctx: &OpenContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        let clock = |w| window::WindowClock::range(source_name, from, to, cursor, w);
        Ok(match self {
            SourceConfig::ExotelMonitor(_) | SourceConfig::ExotelAnalyze(_) => {
                return Err(SourceError::Protocol {
                    source_name: source_name.to_string(),
                    reason: "a push source has no history to backfill: its calls arrive by webhook"
                        .into(),
                });
            }
            SourceConfig::Voicegain(c) => Box::new(voicegain::VoicegainRangeSource::new(
                source_name,
                c,
                from,
                to,
                cursor,
            )?),
            SourceConfig::VoiceCalls(c) => {
                let clock = clock(c.window_settings())?;
                Box::new(voice_calls::VoiceCallsSource::with_clock(
                    source_name,
                    c,
                    clock,
                    ctx,
                )?)
            }
            SourceConfig::VonageInsights(c) => {
                let clock = clock(c.window_settings())?;
                Box::new(vonage_insights::VonageInsightsSource::with_clock(
                    source_name,
                    c,
                    clock,
                    ctx,
                )?)
            }
            SourceConfig::ExotelCalls(c) => Box::new(exotel_calls::ExotelCallsSource::range(
                source_name,
                c,
                from,
                to,
                cursor,
                ctx,
            )?),
        })
    }

    /// Opens the extractor for one incremental run, resuming from `cursor`.
    pub fn open(
        &self,
        source_name: &str,
        cursor: Option<&Cursor>,
        ctx: &OpenContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        match self {
            SourceConfig::Voicegain(c) => Ok(Box::new(voicegain::VoicegainSource::new(
                source_name,
                c,
                cursor,
            )?)),
            SourceConfig::VoiceCalls(c) => Ok(Box::new(voice_calls::VoiceCallsSource::new(
                source_name,
                c,
                cursor,
                ctx,
            )?)),
            SourceConfig::VonageInsights(c) => Ok(Box::new(
                vonage_insights::VonageInsightsSource::new(source_name, c, cursor, ctx)?,
            )),
            SourceConfig::ExotelMonitor(c) => Ok(Box::new(
                exotel_monitor::ExotelMonitorSource::new(source_name, c, cursor, ctx)?,
            )),
            SourceConfig::ExotelAnalyze(c) => Ok(Box::new(
                exotel_analyze::ExotelAnalyzeSource::new(source_name, c, cursor, ctx)?,
            )),
            SourceConfig::ExotelCalls(c) => Ok(Box::new(exotel_calls::ExotelCallsSource::new(
                source_name,
                c,
                cursor,
                ctx,
            )?)),
        }
    }
}

/// `run_on_start` defaults to true.
pub fn default_run_on_start() -> bool {
    true
}
