//! Exotel ExoVoiceAnalyze: `callsync exotel analyze` submits calls
//! (`POST {base}/v1/Accounts/<sid>/Calls/<CallSid>/ExoVoiceAnalyze.json`, Basic auth key:token,
//! our own `task_id`) and records each job; Exotel later POSTs the result to
//! `<callback_base_url>/webhooks/<source>/<token>`, where the daemon commits it to the inbox
//! before answering. Each run of the source exports the inbox into the `calls` table
//! (`call_id` = callSID, summary, sentiment, category, transcript lines as turns) and first
//! resubmits jobs whose result is overdue (a fresh task id), up to `max_submissions`.
//!
//! Assumptions where the vendor doc is silent: a result is keyed by `job_id` (a redelivery is
//! absorbed) and finds its job by task id, job id or call sid, whichever the job knows (a
//! result may arrive before the submission's answer); a `success: false` result writes no call
//! row and is kept on its job with its reason; the transcript has no speakers, so each line is
//! a turn with role `unknown`. A result carries no call time: it is joined with Exotel's
//! call-details API (`Calls.json?Sid=…`, 100 sids a request, times in `timezone`).

pub mod client;
pub mod model;

pub use client::{Analyzer, Submitted};

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::record::{CallBatchBuilder, CallRow, Turn};
use crate::settings::{HttpConfig, Problems, validate_secret};
use crate::sources::exotel_calls::normalize::optional_local;
use crate::sources::push::{InboxPages, reject};
use crate::sources::{
    BoxFuture, Cursor, JobResult, OpenContext, Page, Received, Source, SourceError,
};

use model::AnalyzeResult;

/// The `kind` of this source, also written to `source_kind`.
pub const KIND: &str = "exotel_analyze";

/// Insight tasks the vendor knows.
pub const TASKS: &[&str] = &["summarization", "categorise", "sentiment", "transcript"];

/// `[sources.<name>]` with `kind = "exotel_analyze"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExotelAnalyzeConfig {
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
    /// Insights to ask for: a subset of summarization, categorise, sentiment, transcript.
    #[serde(default = "default_tasks")]
    pub insight_tasks: Vec<String>,
    /// Business categories (required with `categorise`).
    #[serde(default)]
    pub categories: Vec<String>,
    /// The public URL of this daemon; results go to `<this>/webhooks/<source>/<token>`.
    pub callback_base_url: String,
    /// Environment variable / file that holds the webhook token.
    #[serde(default)]
    pub webhook_token_env: Option<String>,
    #[serde(default)]
    pub webhook_token_file: Option<PathBuf>,
    /// Largest result body accepted (bytes).
    #[serde(default = "super::default_webhook_max_body_bytes")]
    pub webhook_max_body_bytes: usize,
    /// A job with no result after this long is submitted again (a fresh task id).
    #[serde(default = "default_result_timeout_secs")]
    pub result_timeout_secs: u64,
    /// Submissions per call before its job is given up (`timed_out`).
    #[serde(default = "default_max_submissions")]
    pub max_submissions: u32,
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
    /// The account's time zone (IANA name): the call-details API's times carry no offset.
    #[serde(default = "super::push::default_timezone")]
    pub timezone: String,
    /// Timeouts and retries of the submissions and call-details requests.
    #[serde(default)]
    pub http: HttpConfig,
}

fn default_base_url() -> String {
    "https://api.exotel.com".into()
}
fn default_tasks() -> Vec<String> {
    ["summarization", "sentiment", "transcript"]
        .map(String::from)
        .to_vec()
}
fn default_result_timeout_secs() -> u64 {
    3600
}
fn default_max_submissions() -> u32 {
    3
}

impl ExotelAnalyzeConfig {
    /// Reports every problem of this table.
    pub fn validate(&self, table: &str, problems: &mut Problems) {
        crate::sources::exotel_calls::client::validate_account(
            table,
            &self.account_sid,
            &self.base_url,
            (&self.api_key_env, &self.api_key_file),
            (&self.api_token_env, &self.api_token_file),
            problems,
        );
        validate_secret(
            table,
            "webhook_token",
            &self.webhook_token_env,
            &self.webhook_token_file,
            problems,
        );
        if let Err(e) = reqwest::Url::parse(&self.callback_base_url) {
            problems.push(table, Some("callback_base_url"), format!("not a URL: {e}"));
        }
        if self.insight_tasks.is_empty() {
            problems.push(table, Some("insight_tasks"), "must name at least one task");
        }
        for t in &self.insight_tasks {
            if !TASKS.contains(&t.as_str()) {
                problems.push(
                    table,
                    Some("insight_tasks"),
                    format!("unknown task {t:?} (one of: {})", TASKS.join(", ")),
                );
            }
        }
        if self.insight_tasks.iter().any(|t| t == "categorise") && self.categories.is_empty() {
            problems.push(
                table,
                Some("categories"),
                "required with the categorise task",
            );
        }
        super::push::validate_timezone(table, &self.timezone, problems);
        if self.max_submissions == 0 {
            problems.push(table, Some("max_submissions"), "must be at least 1");
        }
        super::validate_push(
            table,
            self.webhook_max_body_bytes,
            self.flush_interval_secs,
            self.flush_max_rows,
            problems,
        );
        self.http.validate(table, problems);
    }
}

/// What the intake learns from a result: its key (`job_id`) and the job's outcome.
pub fn receive(_content_type: Option<&str>, body: &[u8]) -> Result<Received, String> {
    let r = AnalyzeResult::parse(body)?;
    if r.job_id.trim().is_empty() {
        return Err("the result has no job_id".into());
    }
    let reason = r.reason.filter(|s| !s.trim().is_empty());
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    Ok(Received {
        key: r.job_id.clone(),
        job: Some(JobResult {
            job_id: r.job_id,
            task_id: nonempty(r.task_id),
            call_sid: nonempty(r.call_sid),
            succeeded: r.success,
            reason,
        }),
    })
}

/// The jobs waiting for resubmission: no result `result_timeout_secs` after their last
/// submission (`submitting` too: the vendor's answer never came).
pub(crate) fn overdue_jobs(
    source_name: &str,
    cfg: &ExotelAnalyzeConfig,
    jobs: &dyn super::Jobs,
) -> Result<Vec<super::Job>, SourceError> {
    let err = |e| jobs_error(source_name, e);
    let cutoff = chrono::Utc::now().timestamp_micros() - cfg.result_timeout_secs as i64 * 1_000_000;
    let mut due = jobs.list(Some("queued")).map_err(err)?;
    due.extend(jobs.list(Some("submitting")).map_err(err)?);
    due.retain(|j| j.submitted_at_us <= cutoff);
    Ok(due)
}

/// Whether any job is overdue (the flush then runs to resubmit it, even with an idle inbox).
pub fn jobs_overdue(
    source_name: &str,
    cfg: &ExotelAnalyzeConfig,
    ctx: &OpenContext,
) -> Result<bool, SourceError> {
    Ok(!ctx.draining && !overdue_jobs(source_name, cfg, ctx.jobs.as_ref())?.is_empty())
}

pub(crate) fn jobs_error(source_name: &str, reason: String) -> SourceError {
    SourceError::KnownKeys {
        source_name: source_name.to_string(),
        reason: format!("reading the jobs: {reason}"),
    }
}

/// One export of the results in the inbox (after resubmitting overdue jobs).
pub struct ExotelAnalyzeSource {
    ctx: OpenContext,
    source_name: String,
    cfg: ExotelAnalyzeConfig,
    pages: InboxPages,
    resubmitted: bool,
    tz: chrono_tz::Tz,
}

impl ExotelAnalyzeSource {
    pub fn new(
        source_name: &str,
        cfg: &ExotelAnalyzeConfig,
        cursor: Option<&Cursor>,
        ctx: &OpenContext,
    ) -> Result<Self, SourceError> {
        Ok(ExotelAnalyzeSource {
            ctx: ctx.clone(),
            source_name: source_name.to_string(),
            cfg: cfg.clone(),
            pages: InboxPages::new(source_name, cursor, cfg.inbox_retention_days)?,
            resubmitted: false,
            tz: cfg.timezone.parse().unwrap_or(chrono_tz::Asia::Kolkata),
        })
    }

    async fn read_page(&mut self) -> Result<Option<Page>, SourceError> {
        let analyzer = Analyzer::new(&self.source_name, &self.cfg)?;
        // The drain starts no new vendor work: resubmissions wait for the next start.
        if !self.resubmitted && !self.ctx.draining {
            self.resubmitted = true;
            let (again, gave_up, failed) =
                analyzer.resubmit_overdue(self.ctx.jobs.as_ref()).await?;
            if again + gave_up + failed > 0 {
                tracing::info!(source = %self.source_name, resubmitted = again, given_up = gave_up, failed, "Overdue analysis jobs handled.");
            }
        }
        let Some(deliveries) = self.pages.next(&self.ctx)? else {
            return Ok(None);
        };
        let mut results = Vec::with_capacity(deliveries.len());
        let mut rejects = Vec::new();
        for d in &deliveries {
            if let Some(reason) = &d.invalid {
                rejects.push(reject(d, reason.clone(), None));
                continue;
            }
            let r = match AnalyzeResult::parse(&d.body) {
                Ok(r) => r,
                Err(e) => {
                    rejects.push(reject(d, e, None));
                    continue;
                }
            };
            // A failed analysis is kept on its job (status shows it); it is not a call row.
            if !r.success {
                continue;
            }
            if r.call_sid.as_deref().is_none_or(|s| s.trim().is_empty()) {
                rejects.push(reject(d, "the result has no callSID".into(), None));
                continue;
            }
            results.push((d, r));
        }
        // The call's own time, numbers and direction, from the call-details API. A failure
        // there fails the flush: the results wait in the inbox for the next one.
        let sids: Vec<&str> = results
            .iter()
            .filter_map(|(_, r)| r.call_sid.as_deref())
            .collect();
        let details = if sids.is_empty() {
            HashMap::new()
        } else {
            analyzer.call_details(&sids).await?
        };
        let missing: Vec<&str> = sids
            .iter()
            .copied()
            .filter(|s| !details.contains_key(*s))
            .collect();
        if !missing.is_empty() {
            tracing::warn!(source = %self.source_name, calls = missing.len(), "The call-details API did not return some analysed calls; their rows have no call time.");
            self.ctx
                .jobs
                .no_call_details(&missing)
                .map_err(|e| jobs_error(&self.source_name, e))?;
        }
        let mut builder = CallBatchBuilder::new();
        for (d, r) in &results {
            let call_sid = r.call_sid.as_deref().unwrap_or_default();
            let call = details.get(call_sid);
            let time =
                |field: &str, v: Option<&str>| optional_local(self.tz, field, v).ok().flatten();
            let started_at = call.and_then(|c| time("StartTime", c.start_time.as_deref()));
            let ended_at = call.and_then(|c| time("EndTime", c.end_time.as_deref()));
            let duration_ms = call
                .and_then(|c| c.duration_secs().ok().flatten())
                .map(|secs| (secs * 1000.0).round() as i64);
            let turns: Vec<Turn> = r
                .transcript
                .as_deref()
                .unwrap_or("")
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| Turn {
                    role: Some("unknown".into()),
                    speaker: None,
                    text: Some(l.to_string()),
                    offset_ms: None,
                })
                .collect();
            let raw = String::from_utf8_lossy(&d.body);
            let value = |i: &Option<model::Insight>| i.as_ref().and_then(|i| i.value.clone());
            let (summary, sentiment, category) =
                (value(&r.summary), value(&r.sentiment), value(&r.category));
            builder.append(&CallRow {
                call_id: call_sid,
                source_kind: KIND,
                started_at,
                ended_at,
                duration_ms,
                direction: call
                    .and_then(|c| c.direction.as_deref())
                    .and_then(crate::sources::exotel_calls::model::direction),
                from_number: call.and_then(|c| c.from.as_deref()),
                to_number: call.and_then(|c| c.to.as_deref()),
                summary: summary.as_deref(),
                sentiment_label: sentiment.as_deref(),
                category: category.as_deref(),
                transcript: (!turns.is_empty()).then_some(turns.as_slice()),
                // A call the details API did not return keeps an empty `started_at`: its row
                // lands in the partition of the day it was extracted (`status` lists it).
                raw: &raw,
                ..CallRow::default()
            });
        }
        let calls = super::records::finish_batch(&self.source_name, builder)?;
        Ok(Some(Page {
            dataset: crate::schema::Dataset::Calls,
            calls,
            rejects,
            files: Vec::new(),
            cursor: Some(self.pages.cursor()),
            known: 0,
        }))
    }
}

impl Source for ExotelAnalyzeSource {
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        Box::pin(self.read_page())
    }
}
