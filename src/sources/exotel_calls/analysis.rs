//! `analyze_with`: new calls that pass the filter are handed to an `exotel_analyze` source's
//! ExoVoiceAnalyze through that source's job table. Each call is recorded there (`waiting`)
//! before anything is sent, so it is never submitted twice whatever crashes; then waiting
//! calls are submitted, the longest waiting first, while the day's budget
//! (`analyze_max_per_day`, first submissions per UTC day, by hand or automatically) lasts.
//! The rest wait for the next runs and the next days.

use std::sync::Arc;

use tracing::{info, warn};

use crate::sources::exotel_analyze::{Analyzer, ExotelAnalyzeConfig, Submitted, jobs_error};
use crate::sources::{Jobs, SourceError};

use super::ExotelCallsConfig;
use super::model::Call;

/// Automatic analysis for one run of an `exotel_calls` source.
pub struct AutoAnalysis {
    analyzer: Analyzer,
    jobs: Arc<dyn Jobs>,
    source_name: String,
    target: String,
    statuses: Vec<String>,
    min_duration_secs: f64,
    max_per_day: u64,
    /// Draining, or a submission failed: nothing more is sent in this run.
    stopped: bool,
    /// The day's budget was spent (logged once per run).
    capped: bool,
}

impl AutoAnalysis {
    /// `None` without `analyze_with`; `jobs` are the target source's.
    pub fn new(
        source_name: &str,
        cfg: &ExotelCallsConfig,
        target: Option<(&str, &ExotelAnalyzeConfig)>,
        jobs: Option<Arc<dyn Jobs>>,
        draining: bool,
    ) -> Result<Option<AutoAnalysis>, SourceError> {
        let Some((target, acfg)) = target else {
            return Ok(None);
        };
        let jobs = jobs.ok_or_else(|| SourceError::Protocol {
            source_name: source_name.to_string(),
            reason: format!("analyze_with = {target:?}: that source's jobs are not available"),
        })?;
        Ok(Some(AutoAnalysis {
            // Submissions are that source's: its credentials, callback and task list.
            analyzer: Analyzer::new(target, acfg)?,
            jobs,
            source_name: source_name.to_string(),
            target: target.to_string(),
            statuses: cfg
                .analyze_statuses
                .iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect(),
            min_duration_secs: cfg.analyze_min_duration_secs as f64,
            max_per_day: cfg.analyze_max_per_day,
            stopped: draining,
            capped: false,
        }))
    }

    /// Whether a call is analysed: its status is one of `analyze_statuses`, it has a
    /// recording, and it lasted at least `analyze_min_duration_secs`.
    pub fn wanted(&self, c: &Call) -> bool {
        let status = c
            .status
            .as_deref()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.statuses.contains(&status)
            && c.recording_ref().is_some()
            && c.duration_secs().ok().flatten().unwrap_or(0.0) >= self.min_duration_secs
    }

    fn jobs_error(&self, reason: String) -> SourceError {
        jobs_error(
            &self.source_name,
            format!("{reason} (the jobs of {})", self.target),
        )
    }

    /// Records `call_sids` as waiting (a call that has a job keeps it), then submits what the
    /// day's budget allows.
    pub async fn record_and_submit(&mut self, call_sids: &[&str]) -> Result<(), SourceError> {
        if !call_sids.is_empty() {
            let added = self.jobs.wait(call_sids).map_err(|e| self.jobs_error(e))?;
            if added > 0 {
                info!(source = %self.source_name, analyze_with = %self.target, calls = added, "Calls recorded for analysis.");
            }
        }
        self.submit_waiting().await
    }

    /// Submits waiting calls while the budget of the UTC day lasts. A submission that fails
    /// (the vendor down, a timeout) stops this run's submissions and never the export: that
    /// job was recorded as `submitting`, so the analysis source sends it again after its
    /// `result_timeout_secs`, and the waiting ones go at the next run.
    pub async fn submit_waiting(&mut self) -> Result<(), SourceError> {
        if self.stopped {
            return Ok(());
        }
        let day_start = chrono::Utc::now()
            .date_naive()
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_micros();
        // Each call is taken with the day's budget in one state transaction: two sources
        // sharing this analyzer, or a hand `exotel analyze`, never take a call twice nor
        // together pass the cap. One at a time, so a failed send leaves the rest waiting.
        let (mut queued, mut refused) = (0, 0);
        loop {
            let claimed = self
                .jobs
                .claim_waiting(self.max_per_day, day_start, 1)
                .map_err(|e| self.jobs_error(e))?;
            let Some((call, task_id)) = claimed.into_iter().next() else {
                let any = !self
                    .jobs
                    .waiting(1)
                    .map_err(|e| self.jobs_error(e))?
                    .is_empty();
                if any && !self.capped {
                    self.capped = true;
                    warn!(source = %self.source_name, analyze_with = %self.target, max_per_day = self.max_per_day, "Daily analysis cap reached; waiting calls go on the next UTC day.");
                }
                break;
            };
            match self
                .analyzer
                .send(&call, &task_id, self.jobs.as_ref())
                .await
            {
                Ok(Submitted::Queued { .. }) => queued += 1,
                Ok(Submitted::Refused(msg)) => {
                    refused += 1;
                    warn!(source = %self.source_name, analyze_with = %self.target, call_sid = %call, reason = %msg, "Analysis refused by the vendor.");
                }
                Err(e) => {
                    self.stopped = true;
                    warn!(source = %self.source_name, analyze_with = %self.target, call_sid = %call, error = %e, "Submission failed; the rest wait for the next run.");
                    break;
                }
            }
        }
        if queued + refused > 0 {
            info!(source = %self.source_name, analyze_with = %self.target, submitted = queued, refused, "Calls submitted for analysis.");
        }
        Ok(())
    }
}
