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
}

impl KnownKeys for SourceState {
    fn exported_among(&self, ids: &[&str]) -> Result<KeySet, String> {
        self.state()
            .exported_among(self.source_id, ids.iter().copied())
            .map_err(|e| e.to_string())
    }
}

impl Inbox for SourceState {
    fn after(&self, seq: i64, limit: usize) -> Result<Vec<Delivery>, String> {
        self.state()
            .inbox_after(self.source_id, seq, limit)
            .map_err(|e| e.to_string())
    }

    fn prune(&self, upto: i64, days: u64) -> Result<usize, String> {
        let before = chrono::Utc::now().timestamp_micros() - days as i64 * 86_400_000_000;
        self.state()
            .inbox_prune(self.source_id, upto, before)
            .map_err(|e| e.to_string())
    }
}

impl Jobs for SourceState {
    fn submitted(&self, call_sid: &str, task_id: &str, job_id: Option<&str>) -> Result<(), String> {
        self.state()
            .job_submitted(self.source_id, call_sid, task_id, job_id)
            .map_err(|e| e.to_string())
    }

    fn give_up(&self, call_sid: &str, reason: &str) -> Result<(), String> {
        self.state()
            .job_give_up(self.source_id, call_sid, reason)
            .map_err(|e| e.to_string())
    }

    fn list(&self, status: Option<&str>) -> Result<Vec<Job>, String> {
        self.state()
            .jobs(self.source_id, status)
            .map_err(|e| e.to_string())
    }
}
