//! The daemon's HTTP server (axum): `GET /healthz` (200 with a JSON body per source while the
//! scheduler runs and the state can be written; 503 with the reason while draining or when it
//! cannot) and `GET /metrics` (Prometheus/OpenMetrics text from `prometheus-client`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::task::JoinHandle;

use super::Shared;

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

/// Whether the state database takes a write: `BEGIN IMMEDIATE` then roll back. A writer
/// holding the lock (a commit in progress) counts as writable.
fn state_writable(path: &std::path::Path) -> Result<(), String> {
    let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    conn.busy_timeout(std::time::Duration::from_millis(500))
        .map_err(|e| e.to_string())?;
    match conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
        Ok(()) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
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
    let path = shared
        .state_path
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let checked = tokio::task::spawn_blocking(move || state_writable(&path))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = checked {
        return unhealthy(format!("the state database cannot be written: {e}"));
    }
    (
        StatusCode::OK,
        axum::Json(json!({"status": "ok", "sources": sources})),
    )
        .into_response()
}

/// Each push source's inbox backlog, for the gauges.
fn inbox_backlog(path: &std::path::Path, sources: &[(String, i64)]) -> Vec<(String, u64, f64)> {
    let Ok(state) = crate::state::State::open(path) else {
        return Vec::new();
    };
    let now = chrono::Utc::now().timestamp_micros();
    sources
        .iter()
        .filter_map(|(name, id)| {
            let seq = state
                .cursor(*id)
                .ok()
                .flatten()
                .and_then(|c| serde_json::from_value::<crate::sources::InboxCursor>(c).ok())
                .unwrap_or_default()
                .seq;
            let (depth, oldest) = state.inbox_backlog(*id, seq).ok()?;
            let age = oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
            Some((name.clone(), depth, age))
        })
        .collect()
}

async fn metrics(AxState(shared): AxState<Arc<Shared>>) -> Response {
    if let Some(intake) = &shared.intake {
        let sources = intake.sources();
        let path = shared
            .state_path
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Ok(rows) = tokio::task::spawn_blocking(move || inbox_backlog(&path, &sources)).await
        {
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
