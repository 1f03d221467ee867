//! The daemon's HTTP server (axum): `GET /healthz` (200 with a JSON body per source while the
//! scheduler runs and the state can be written; 503 with the reason while draining or when it
//! cannot) and `GET /metrics` (Prometheus/OpenMetrics text from `prometheus-client`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::task::JoinHandle;

use super::Shared;
use crate::state::{State, StateError};

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn start(
    addr: &str,
    shared: Arc<Shared>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/webhooks/{source}/{token}",
            axum::routing::post(super::webhook::receive),
        )
        .with_state(shared);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "Server stopped.");
        }
    });
    Ok((bound, handle))
}

/// The server's own connections to the state, opened once and reused: one read-only (metrics),
/// one for the write probe of `/healthz`. Used only on blocking threads, never on the async
/// workers that acknowledge webhooks.
pub struct StateProbe {
    path: PathBuf,
    read: Mutex<Option<State>>,
    write: Mutex<Option<State>>,
}

/// How long `/healthz` and `/metrics` wait for the state before answering without it.
const STATE_ANSWER: Duration = Duration::from_millis(900);

impl StateProbe {
    pub fn new(path: &Path) -> StateProbe {
        StateProbe {
            path: path.to_path_buf(),
            read: Mutex::new(None),
            write: Mutex::new(None),
        }
    }

    fn with<T>(
        &self,
        read_only: bool,
        f: impl FnOnce(&State) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let slot = if read_only { &self.read } else { &self.write };
        let mut conn = slot.lock().unwrap_or_else(|p| p.into_inner());
        if conn.is_none() {
            *conn = Some(State::open_for_server(&self.path, read_only)?);
        }
        let r = f(conn.as_ref().expect("opened above"));
        if r.is_err() {
            // A broken connection is opened afresh next time.
            *conn = None;
        }
        r
    }

    /// Whether the state takes a write (`BEGIN IMMEDIATE`, rolled back).
    fn writable(&self) -> Result<(), String> {
        self.with(false, |s| s.probe_write()).map_err(|e| match e {
            StateError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                "it is locked by another writer (no write lock within 500 ms)".to_string()
            }
            e => e.to_string(),
        })
    }
}

/// Runs `f` on a blocking thread; `None` when it did not answer within `STATE_ANSWER`.
async fn off_the_workers<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::time::timeout(STATE_ANSWER, tokio::task::spawn_blocking(f))
        .await
        .ok()?
        .ok()
}

async fn healthz(AxState(shared): AxState<Arc<Shared>>) -> Response {
    let sources = serde_json::to_value(&*shared.health()).unwrap_or_default();
    let unhealthy = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                json!({"status": "unavailable", "reason": reason, "sources": sources.clone()}),
            ),
        )
            .into_response()
    };
    if shared.draining.load(Ordering::SeqCst) {
        return unhealthy("draining: the daemon is stopping".into());
    }
    let age = chrono::Utc::now().timestamp() - shared.heartbeat.load(Ordering::SeqCst);
    let stuck_after = (shared.max_sleep.as_secs() as i64 * 10).max(30);
    if age > stuck_after {
        return unhealthy(format!("the scheduler has not run for {age} s"));
    }
    let probe = shared.state.clone();
    match off_the_workers(move || probe.writable()).await {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            return unhealthy(format!("the state database cannot be written: {e}"));
        }
        None => {
            return unhealthy(format!(
                "the state database did not answer within {} ms",
                STATE_ANSWER.as_millis()
            ));
        }
    }
    (
        StatusCode::OK,
        axum::Json(json!({"status": "ok", "sources": sources})),
    )
        .into_response()
}

/// Each push source's inbox backlog, for the gauges (on the read-only connection).
fn inbox_backlog(probe: &StateProbe, sources: &[(String, i64)]) -> Vec<(String, u64, f64)> {
    let now = chrono::Utc::now().timestamp_micros();
    probe
        .with(true, |state| {
            let mut out = Vec::new();
            for (name, id) in sources {
                let seq = state
                    .cursor(*id)?
                    .and_then(|c| serde_json::from_value::<crate::sources::InboxCursor>(c).ok())
                    .unwrap_or_default()
                    .seq;
                let (depth, oldest) = state.inbox_backlog(*id, seq)?;
                let age = oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
                out.push((name.clone(), depth, age));
            }
            Ok(out)
        })
        .unwrap_or_default()
}

async fn metrics(AxState(shared): AxState<Arc<Shared>>) -> Response {
    if let Some(intake) = &shared.intake {
        let sources = intake.sources();
        let probe = shared.state.clone();
        // A state that does not answer in time leaves the gauges at their last values.
        if let Some(rows) = off_the_workers(move || inbox_backlog(&probe, &sources)).await {
            for (name, depth, age) in rows {
                shared.metrics.inbox(&name, depth, age);
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}
