//! What a source may ask of the state, behind the traits it knows (`KnownKeys`, `Inbox`,
//! `Jobs`): one connection of its own per run, shared by the three.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::record::KeySet;
use crate::sources::{Delivery, Inbox, Job, Jobs, KnownKeys};
use crate::state::{State, StateError};

/// One source's view of the state.
pub struct SourceState {
    state: Mutex<State>,
    source_id: i64,
}

impl SourceState {
    /// Opens its own connection to the state at `path`.
    pub fn open(path: &Path, source_id: i64) -> Result<SourceState, StateError> {
        Ok(SourceState {
            state: Mutex::new(State::open(path)?),
            source_id,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one question. Sources ask from the async runtime: the question is moved off its
    /// worker threads (`block_in_place`), so a state held by a writer (SQLite waits up to its
    /// busy timeout) never stalls the tasks that acknowledge webhooks.
    fn ask<T>(&self, f: impl FnOnce(&State) -> Result<T, StateError>) -> Result<T, String> {
        let run = || f(&self.state()).map_err(|e| e.to_string());
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        }
    }
}

impl KnownKeys for SourceState {
    fn exported_among(&self, ids: &[&str]) -> Result<KeySet, String> {
        self.ask(|s| s.exported_among(self.source_id, ids.iter().copied()))
    }
}

impl Inbox for SourceState {
    fn after(&self, seq: i64, limit: usize) -> Result<Vec<Delivery>, String> {
        self.ask(|s| s.inbox_after(self.source_id, seq, limit))
    }

    fn backlog(&self, seq: i64) -> Result<(u64, Option<i64>), String> {
        self.ask(|s| s.inbox_backlog(self.source_id, seq))
    }

    fn prune(&self, upto: i64, days: u64) -> Result<usize, String> {
        let before = chrono::Utc::now().timestamp_micros() - days as i64 * 86_400_000_000;
        self.ask(|s| s.inbox_prune(self.source_id, upto, before))
    }
}

impl Jobs for SourceState {
    fn submitting(&self, call_sid: &str, task_id: &str) -> Result<(), String> {
        self.ask(|s| s.job_submitting(self.source_id, call_sid, task_id))
    }

    fn queued(&self, task_id: &str, job_id: &str) -> Result<(), String> {
        self.ask(|s| s.job_queued(self.source_id, task_id, job_id))
    }

    fn give_up(&self, call_sid: &str, status: &str, reason: &str) -> Result<(), String> {
        self.ask(|s| s.job_give_up(self.source_id, call_sid, status, reason))
    }

    fn list(&self, status: Option<&str>) -> Result<Vec<Job>, String> {
        self.ask(|s| s.jobs(self.source_id, status))
    }

    fn no_call_details(&self, call_sids: &[&str]) -> Result<(), String> {
        self.ask(|s| s.jobs_no_call_details(self.source_id, call_sids))
    }

    fn wait(&self, call_sids: &[&str]) -> Result<usize, String> {
        self.ask(|s| s.jobs_wait(self.source_id, call_sids))
    }

    fn waiting(&self, limit: usize) -> Result<Vec<String>, String> {
        self.ask(|s| s.jobs_waiting(self.source_id, limit))
    }

    fn claim_waiting(
        &self,
        max_per_day: u64,
        day_start_us: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, String> {
        self.ask(|s| s.jobs_claim_waiting(self.source_id, max_per_day, day_start_us, limit))
    }

    fn claim(&self, call_sid: &str, again: &[&str]) -> Result<Result<String, String>, String> {
        self.ask(|s| s.job_claim(self.source_id, call_sid, again))
    }
}
