//! ExoVoiceAnalyze and the call-details API as callsync calls them: submissions (recorded as
//! jobs before they are sent), resubmission of overdue jobs, and call details by sid.

use std::collections::HashMap;

use super::model::{self, SubmitAnswer};
use super::{ExotelAnalyzeConfig, jobs_error, overdue_jobs};
use crate::http::HttpClient;
use crate::sources::exotel_calls::client::basic_auth;
use crate::sources::{SourceError, secret_from};

/// Calls per call-details request (the API's limit on `Sid=`).
const DETAILS_PER_REQUEST: usize = 100;

/// Submits calls for analysis.
pub struct Analyzer {
    http: HttpClient,
    cfg: ExotelAnalyzeConfig,
    callback_url: String,
    source_name: String,
}

/// How one submission went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Queued with this job id.
    Queued { task_id: String, job_id: String },
    /// The vendor refused it (400): its message.
    Refused(String),
}

impl Analyzer {
    /// Resolves the API key, token and webhook token.
    pub fn new(source_name: &str, cfg: &ExotelAnalyzeConfig) -> Result<Analyzer, SourceError> {
        let auth = basic_auth(
            source_name,
            (&cfg.api_key_env, &cfg.api_key_file),
            (&cfg.api_token_env, &cfg.api_token_file),
        )?;
        let hook = secret_from(source_name, &cfg.webhook_token_env, &cfg.webhook_token_file)?;
        Ok(Analyzer {
            http: HttpClient::new(source_name, &cfg.http, Some(auth))?,
            callback_url: format!(
                "{}/webhooks/{source_name}/{}",
                cfg.callback_base_url.trim_end_matches('/'),
                hook.expose()
            ),
            cfg: cfg.clone(),
            source_name: source_name.to_string(),
        })
    }

    /// Submits one call with a fresh task id, recorded in `jobs` before it is sent (so a
    /// result that arrives before the vendor's answer finds its job); a refusal (400) marks the
    /// job `failed` with the vendor's message.
    pub async fn submit(
        &self,
        call_sid: &str,
        jobs: &dyn crate::sources::Jobs,
    ) -> Result<Submitted, SourceError> {
        let task_id = uuid::Uuid::now_v7().simple().to_string();
        jobs.submitting(call_sid, &task_id)
            .map_err(|e| jobs_error(&self.source_name, e))?;
        self.send(call_sid, &task_id, jobs).await
    }

    /// Sends a call already recorded `submitting` with `task_id` (a claim took it).
    pub async fn send(
        &self,
        call_sid: &str,
        task_id: &str,
        jobs: &dyn crate::sources::Jobs,
    ) -> Result<Submitted, SourceError> {
        let path = format!(
            "/v1/Accounts/{}/Calls/{}/ExoVoiceAnalyze.json",
            self.cfg.account_sid, call_sid
        );
        let url = self.http.url(&self.cfg.base_url, &path)?;
        let err = |e| jobs_error(&self.source_name, e);
        let mut body = serde_json::json!({
            "callback_url": self.callback_url,
            "insight_tasks": self.cfg.insight_tasks,
            "task_id": task_id,
        });
        if !self.cfg.categories.is_empty() {
            body["categories"] = serde_json::json!(self.cfg.categories);
        }
        let r = self.http.post_json(&url, &body).await?;
        let answer: Option<SubmitAnswer> = serde_json::from_slice(&r.body).ok();
        if r.status.as_u16() == 400 {
            let msg = answer
                .and_then(|a| a.error)
                .map(|e| {
                    [e.message, e.description]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(": ")
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&r.body).chars().take(200).collect());
            jobs.give_up(
                call_sid,
                "failed",
                &format!("refused by ExoVoiceAnalyze (HTTP 400): {msg}"),
            )
            .map_err(err)?;
            return Ok(Submitted::Refused(msg));
        }
        if !r.status.is_success() {
            return Err(SourceError::Protocol {
                source_name: self.source_name.clone(),
                reason: format!(
                    "ExoVoiceAnalyze answered HTTP {} for call {call_sid}",
                    r.status
                ),
            });
        }
        let job_id = answer
            .and_then(|a| a.job)
            .and_then(|j| j.job_id)
            .ok_or_else(|| SourceError::Protocol {
                source_name: self.source_name.clone(),
                reason: format!("ExoVoiceAnalyze queued call {call_sid} without a job_id"),
            })?;
        jobs.queued(task_id, &job_id).map_err(err)?;
        Ok(Submitted::Queued {
            task_id: task_id.to_string(),
            job_id,
        })
    }

    /// Resubmits the jobs whose result is overdue; gives up on those submitted
    /// `max_submissions` times. A resubmission that fails (5xx, timeout) is logged and counted
    /// and tried again at the next flush: it never stops the export. Returns (resubmitted,
    /// given up, failed).
    pub async fn resubmit_overdue(
        &self,
        jobs: &dyn crate::sources::Jobs,
    ) -> Result<(usize, usize, usize), SourceError> {
        let err = |e| jobs_error(&self.source_name, e);
        let (mut again, mut gave_up, mut failed) = (0, 0, 0);
        for job in overdue_jobs(&self.source_name, &self.cfg, jobs)? {
            if job.submissions >= self.cfg.max_submissions as i64 {
                let reason = format!(
                    "no result after {} submissions, {} s each",
                    job.submissions, self.cfg.result_timeout_secs
                );
                jobs.give_up(&job.call_sid, "timed_out", &reason)
                    .map_err(err)?;
                gave_up += 1;
                continue;
            }
            match self.submit(&job.call_sid, jobs).await {
                Ok(Submitted::Queued { .. }) => again += 1,
                Ok(Submitted::Refused(_)) => gave_up += 1,
                Err(e) => {
                    failed += 1;
                    crate::telemetry::resubmit_failed(&self.source_name);
                    tracing::warn!(source = %self.source_name, call_sid = %job.call_sid, error = %e, "Resubmission failed; trying again at the next flush.");
                }
            }
        }
        Ok((again, gave_up, failed))
    }

    /// The calls' details (time, duration, direction, numbers) by call sid, 100 per request;
    /// a call the API does not return is absent.
    pub async fn call_details(
        &self,
        call_sids: &[&str],
    ) -> Result<HashMap<String, model::ExoCall>, SourceError> {
        let mut out = HashMap::new();
        for chunk in call_sids.chunks(DETAILS_PER_REQUEST) {
            let path = format!("/v1/Accounts/{}/Calls.json", self.cfg.account_sid);
            let mut url = self.http.url(&self.cfg.base_url, &path)?;
            url.query_pairs_mut().append_pair("Sid", &chunk.join(","));
            let r = self.http.get_ok(&url).await?;
            let answer: model::CallsAnswer =
                serde_json::from_slice(&r.body).map_err(|e| SourceError::Protocol {
                    source_name: self.source_name.clone(),
                    reason: format!("the call-details answer is not {{\"Calls\": [...]}}: {e}"),
                })?;
            // A call that does not parse counts as not returned (its row has no call time).
            for c in answer.calls {
                if let Ok(c) = serde_json::from_value::<model::ExoCall>(c) {
                    out.insert(c.sid.clone(), c);
                }
            }
        }
        Ok(out)
    }

    /// `check`: one authenticated GET of the call-details API (`PageSize=1`).
    pub async fn check(&self) -> Result<(), SourceError> {
        let path = format!("/v1/Accounts/{}/Calls.json", self.cfg.account_sid);
        let mut url = self.http.url(&self.cfg.base_url, &path)?;
        url.query_pairs_mut().append_pair("PageSize", "1");
        self.http.get_ok(&url).await?;
        Ok(())
    }
}
