//! Webhook intake: `POST /webhooks/<source>/<token>`. A delivery is committed to the SQLite
//! inbox before it is answered 2xx; concurrent deliveries share one transaction (a group
//! commit: one fsync per batch). The token is compared in constant time; an unknown source or
//! a wrong token is 404 with no detail; a body over the limit 413; an unusable body 400 (kept,
//! and exported as a reject); while draining 503. Neither the token nor the URL is logged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use super::Shared;
use crate::config::Config;
use crate::secret::Secret;
use crate::state::{NewDelivery, State};

/// Deliveries persisted per transaction at most.
const MAX_BATCH: usize = 2048;

/// The webhook endpoints of a config, by source name (made off the scheduler's thread).
pub struct Endpoints(HashMap<String, Arc<Endpoint>>);

/// One push source's endpoint.
struct Endpoint {
    source_id: i64,
    token: Secret,
    max_body_bytes: usize,
    receive: fn(Option<&str>, &[u8]) -> Result<crate::sources::Received, String>,
}

/// A delivery waiting for the group commit, and where to say how it went.
struct Job {
    delivery: NewDelivery,
    reply: oneshot::Sender<Result<bool, String>>,
}

/// The push sources' endpoints and the inbox writer.
pub struct Intake {
    endpoints: RwLock<HashMap<String, Arc<Endpoint>>>,
    tx: mpsc::Sender<Job>,
}

impl Intake {
    /// Starts the inbox writer (its own thread and SQLite connection) on `state_path`.
    pub fn start(state_path: &Path) -> Result<Arc<Intake>, crate::state::StateError> {
        let mut state = State::open(state_path)?;
        let (tx, mut rx) = mpsc::channel::<Job>(MAX_BATCH * 4);
        std::thread::Builder::new()
            .name("callsync-inbox".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    let batch: Vec<NewDelivery> = jobs.iter().map(|j| j.delivery.clone()).collect();
                    match state.inbox_insert(&batch) {
                        Ok(new) => {
                            for (j, n) in jobs.into_iter().zip(new) {
                                let _ = j.reply.send(Ok(n));
                            }
                        }
                        Err(e) => {
                            error!(error = %e, deliveries = batch.len(), "Inbox commit failed; answering 503.");
                            for j in jobs {
                                let _ = j.reply.send(Err(e.to_string()));
                            }
                        }
                    }
                }
            })
            .map_err(|e| crate::state::StateError::Dir {
                path: "inbox writer thread".into(),
                error: e,
            })?;
        Ok(Arc::new(Intake {
            endpoints: RwLock::new(HashMap::new()),
            tx,
        }))
    }

    /// Takes the push sources of `cfg` (at start and on reload). A source whose token cannot
    /// be read has no endpoint (404) and is logged.
    pub fn configure(&self, cfg: &Config) {
        match Self::endpoints_for(cfg, false) {
            Ok(map) => self.set_endpoints(map),
            Err(e) => error!(error = %e, "Cannot open the state for the webhook endpoints."),
        }
    }

    /// The endpoints of `cfg`'s push sources, each registered in the state (the state work of
    /// `configure`, which a reload runs off the scheduler's thread). A source whose token or
    /// registration fails is left out (its webhook answers 404) and logged; `Err`: the state
    /// did not open, or, when `all_or_none` (a reload, which keeps the running endpoints
    /// rather than drop one), a source could not be registered.
    pub fn endpoints_for(cfg: &Config, all_or_none: bool) -> Result<Endpoints, String> {
        let mut map = HashMap::new();
        let state = State::open(&cfg.state.path).map_err(|e| e.to_string())?;
        for (name, scfg) in &cfg.sources {
            let Some(spec) = scfg.webhook() else {
                continue;
            };
            let token = match spec.token.resolve() {
                Ok(t) => t,
                Err(e) => {
                    error!(source = %name, error = %e, "Cannot read the webhook token; the source's webhook answers 404.");
                    continue;
                }
            };
            let source_id = match state.source(name, scfg.kind()) {
                Ok(r) => r.id,
                Err(e) if all_or_none => {
                    return Err(format!("registering the push source {name}: {e}"));
                }
                Err(e) => {
                    error!(source = %name, error = %e, "Cannot register the push source.");
                    continue;
                }
            };
            map.insert(
                name.clone(),
                Arc::new(Endpoint {
                    source_id,
                    token,
                    max_body_bytes: spec.max_body_bytes,
                    receive: spec.receive,
                }),
            );
        }
        Ok(Endpoints(map))
    }

    /// Serves these endpoints from now on.
    pub fn set_endpoints(&self, map: Endpoints) {
        *self.endpoints.write().unwrap_or_else(|p| p.into_inner()) = map.0;
    }

    /// Push sources and their ids (for the inbox gauges).
    pub fn sources(&self) -> Vec<(String, i64)> {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, e)| (n.clone(), e.source_id))
            .collect()
    }

    fn endpoint(&self, name: &str) -> Option<Arc<Endpoint>> {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

fn status(code: StatusCode, text: &'static str) -> Response {
    (code, text).into_response()
}

/// Request headers kept with a delivery, by allowlist: what tells a delivery apart or where it
/// came from. Never credentials or cookies, and never a header that can carry the request path
/// (`X-Original-URI`, `X-Forwarded-Uri`, `X-Envoy-Original-Path`, …): the path holds the token.
const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "user-agent",
    "x-request-id",
    "x-correlation-id",
    "x-delivery-id",
    "x-webhook-id",
];

/// The allowlisted request headers as JSON.
fn headers_json(h: &HeaderMap) -> String {
    let kept: serde_json::Map<String, serde_json::Value> = h
        .iter()
        .filter(|(k, _)| KEPT_HEADERS.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.into())))
        .collect();
    serde_json::Value::Object(kept).to_string()
}

/// `POST /webhooks/{source}/{token}`
pub async fn receive(
    AxState(shared): AxState<Arc<Shared>>,
    UrlPath((source, token)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let metrics = &shared.metrics;
    let Some(intake) = shared.intake.as_ref() else {
        metrics.webhook(None, "not_found");
        return status(StatusCode::NOT_FOUND, "not found");
    };
    let Some(ep) = intake.endpoint(&source) else {
        metrics.webhook(None, "not_found");
        return status(StatusCode::NOT_FOUND, "not found");
    };
    if !bool::from(ep.token.expose().as_bytes().ct_eq(token.as_bytes())) {
        warn!(source = %source, "Webhook with a wrong token refused.");
        metrics.webhook(Some(&source), "wrong_token");
        return status(StatusCode::NOT_FOUND, "not found");
    }
    if shared.draining.load(std::sync::atomic::Ordering::SeqCst) {
        metrics.webhook(Some(&source), "unavailable");
        return status(StatusCode::SERVICE_UNAVAILABLE, "draining; retry later");
    }
    let bytes = match axum::body::to_bytes(body, ep.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            metrics.webhook(Some(&source), "too_large");
            return status(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (key, job, invalid) = match (ep.receive)(content_type.as_deref(), &bytes) {
        Ok(r) => (r.key, r.job, None),
        Err(reason) => (
            format!("invalid-{}", uuid::Uuid::now_v7().simple()),
            None,
            Some(reason),
        ),
    };
    let (reply, answer) = oneshot::channel();
    let job = Job {
        delivery: NewDelivery {
            source_id: ep.source_id,
            key,
            received_at_us: chrono::Utc::now().timestamp_micros(),
            content_type,
            headers: headers_json(&headers),
            body: bytes.to_vec(),
            invalid: invalid.clone(),
            job,
        },
        reply,
    };
    if intake.tx.send(job).await.is_err() {
        metrics.webhook(Some(&source), "unavailable");
        return status(StatusCode::SERVICE_UNAVAILABLE, "inbox unavailable");
    }
    match answer.await {
        Ok(Ok(new)) => match invalid {
            Some(reason) => {
                debug!(source = %source, reason = %reason, "Unusable webhook body kept as a reject.");
                metrics.webhook(Some(&source), "invalid");
                (StatusCode::BAD_REQUEST, format!("unusable body: {reason}")).into_response()
            }
            None => {
                debug!(source = %source, new, "Webhook delivery persisted.");
                metrics.webhook(Some(&source), if new { "accepted" } else { "duplicate" });
                status(StatusCode::OK, "ok")
            }
        },
        _ => {
            metrics.webhook(Some(&source), "unavailable");
            status(
                StatusCode::SERVICE_UNAVAILABLE,
                "inbox unavailable; retry later",
            )
        }
    }
}
