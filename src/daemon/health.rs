//! What the scheduler shares with the HTTP server: each source's health as `/healthz` shows
//! it, the drain flag, the heartbeat, the metrics and the webhook intake.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::{server, webhook};
use crate::telemetry::Metrics;

/// One source as `/healthz` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceHealth {
    pub kind: String,
    pub schedule: String,
    /// A run is going now.
    pub running: bool,
    /// Due, waiting for a free slot (`max_concurrent_sources`).
    pub waiting: bool,
    pub last_run_started_at: Option<String>,
    pub last_run_ended_at: Option<String>,
    /// `ok` or `failed` (of the last run that ended).
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub last_success_at: Option<String>,
    pub consecutive_failures: u64,
    /// Calls the last run committed.
    pub last_rows: u64,
    pub next_tick: Option<String>,
    /// Ticks skipped because the previous run was still going.
    pub skipped_ticks: u64,
}

/// State the scheduler shares with the HTTP server.
pub struct Shared {
    pub draining: AtomicBool,
    pub sources: Mutex<BTreeMap<String, SourceHealth>>,
    /// Unix seconds of the scheduler loop's last turn.
    pub heartbeat: AtomicI64,
    /// Longest the loop sleeps between turns (health calls it stuck past a few of these).
    pub max_sleep: Duration,
    /// The server's connections to the state (health probe, metrics reads).
    pub state: Arc<server::StateProbe>,
    pub metrics: Arc<Metrics>,
    /// The webhook intake, when a push source is configured.
    pub intake: Option<Arc<webhook::Intake>>,
}

impl Shared {
    pub(super) fn health(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SourceHealth>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }
}
