//! Simulated voice-calls API: list without transcripts (envelope and page cap configurable),
//! detail with transcript, EPA inline or at `/epa-results` (404 = no survey), calls that are
//! still in progress and finish later.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::Shared;
use super::faults::{apply, dropped_body};

/// How the list wraps its array (the vendor does not document it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    Bare,
    Items,
    Data,
    Results,
    VoiceCalls,
}

/// One simulated voice call.
#[derive(Debug, Clone, PartialEq)]
pub struct VcCall {
    pub id: String,
    pub start_secs: i64,
    pub duration_secs: u32,
    /// `Inbound` / `Outbound`, as the vendor spells it.
    pub direction: String,
    /// `Completed`, `NoAnswer`, … or `InProgress` while unfinished.
    pub state: String,
    pub campaign_id: String,
    /// (role, text, offset seconds)
    pub turns: Vec<(String, String, u32)>,
    pub epa_score: Option<f64>,
    /// Whether the EPA results come inline in the detail (else at `/epa-results`).
    pub epa_inline: bool,
    /// Whether the call has a recording.
    pub has_recording: bool,
}

/// The audio bytes of a call's recording (deterministic, so tests can compare them).
pub fn recording_bytes(id: &str) -> Vec<u8> {
    let seed = id
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
    out.extend((0..20_000 + rng.usize(0..20_000)).map(|_| rng.u8(..)));
    out
}

fn signature(file: &str, expires: i64) -> String {
    let h = file
        .bytes()
        .chain(expires.to_string().into_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
    format!("{h:016x}")
}

impl VcCall {
    /// Whether the call is in a final state.
    pub fn is_final(&self) -> bool {
        self.state != "InProgress"
    }

    fn object(&self, detail: bool) -> Value {
        let t = |s: i64| {
            chrono::DateTime::from_timestamp(s, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default()
        };
        let mut o = json!({
            "id": self.id,
            "campaignId": self.campaign_id,
            "direction": self.direction,
            "state": self.state,
            "startTime": t(self.start_secs),
            "endTime": if self.is_final() { json!(t(self.start_secs + self.duration_secs as i64)) } else { Value::Null },
            "durationSeconds": self.duration_secs,
            "talkTimeSeconds": self.duration_secs.saturating_sub(5),
            "outcome": if self.state == "Completed" { "Successful" } else { "Unsuccessful" },
            "createdAt": t(self.start_secs),
        });
        if detail {
            o["transcript"] = Value::Array(
                self.turns
                    .iter()
                    .map(|(role, text, off)| {
                        json!({"role": role, "text": text,
                               "timestamp": format!("{:02}:{:02}:{:02}", off / 3600, off / 60 % 60, off % 60)})
                    })
                    .collect(),
            );
            if let Some(e) = self.epa().filter(|_| self.epa_inline) {
                o["epaResults"] = e;
            }
        }
        o
    }

    fn epa(&self) -> Option<Value> {
        self.epa_score.map(|s| {
            json!({"state": "Completed", "completionReason": "AllAnswered", "totalQuestions": 3,
                   "questionsAnswered": 3, "calculatedScore": s,
                   "responses": [{"question": "How satisfied are you?", "answer": "Very satisfied", "score": 5}]})
        })
    }
}

/// The simulated tenant.
pub struct VoiceCallsSim {
    pub token: String,
    calls: Vec<VcCall>,
    rng: fastrand::Rng,
    next: u64,
    /// The list's envelope.
    pub envelope: Envelope,
    /// Largest page the list returns, whatever `pageSize` asks.
    pub page_cap: usize,
    /// Lifetime of a signed recording URL.
    pub url_ttl_secs: i64,
    /// The first URL issued for each call is already expired (its download answers 403).
    pub expire_first_url: bool,
    issued: HashMap<String, u32>,
    /// Blob downloads that carried an `Authorization` header (must stay 0).
    pub blob_requests_with_auth: u64,
    /// Blob downloads answered 403 (expired or bad signature).
    pub blob_refusals: u64,
    /// List requests answered.
    pub list_requests: u64,
    /// Per-call requests (detail, EPA results, recording URL) asked, by call id.
    pub per_call_requests: HashMap<String, u64>,
}

impl Default for VoiceCallsSim {
    fn default() -> Self {
        VoiceCallsSim::new(1)
    }
}

const LINES: &[(&str, &str)] = &[
    (
        "agent",
        "Hello, this is the clinic calling about your appointment.",
    ),
    ("customer", "Hi, yes, I can talk now."),
    ("agent", "Can you confirm Tuesday at 10?"),
    ("customer", "Tuesday works, thanks."),
];

impl VoiceCallsSim {
    /// An empty tenant with a fixed seed.
    pub fn new(seed: u64) -> VoiceCallsSim {
        VoiceCallsSim {
            token: "sim-voice-calls-token".into(),
            calls: Vec::new(),
            rng: fastrand::Rng::with_seed(seed),
            next: 0,
            envelope: Envelope::Items,
            page_cap: 1000,
            url_ttl_secs: 900,
            expire_first_url: false,
            issued: HashMap::new(),
            blob_requests_with_auth: 0,
            blob_refusals: 0,
            list_requests: 0,
            per_call_requests: HashMap::new(),
        }
    }

    /// Adds `n` calls starting between `from_secs` and `to_secs`; a fraction `open` of them
    /// still in progress.
    pub fn add_calls(&mut self, n: usize, from_secs: i64, to_secs: i64, open: f64) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..n {
            self.next += 1;
            let id = format!("vc_{:06}", self.next);
            let states = [
                "Completed",
                "Completed",
                "Completed",
                "NoAnswer",
                "Busy",
                "Failed",
            ];
            let state = if self.rng.f64() < open {
                "InProgress"
            } else {
                states[self.rng.usize(0..states.len())]
            };
            let nturns = if state == "Completed" {
                self.rng.usize(1..=LINES.len())
            } else {
                0
            };
            let turns = LINES[..nturns]
                .iter()
                .enumerate()
                .map(|(i, (r, t))| (r.to_string(), t.to_string(), (i as u32) * 4 + 1))
                .collect();
            let call = VcCall {
                id: id.clone(),
                start_secs: self.rng.i64(from_secs..to_secs),
                duration_secs: 10 + self.rng.u32(0..600),
                direction: if self.rng.bool() {
                    "Inbound"
                } else {
                    "Outbound"
                }
                .into(),
                state: state.into(),
                campaign_id: format!("camp_{}", self.rng.u8(1..4)),
                turns,
                epa_score: (self.rng.u8(0..3) > 0).then(|| self.rng.u8(0..=100) as f64 + 0.5),
                epa_inline: self.rng.bool(),
                has_recording: state == "Completed",
            };
            self.calls.push(call);
            ids.push(id);
        }
        self.calls
            .sort_by(|a, b| (a.start_secs, &a.id).cmp(&(b.start_secs, &b.id)));
        ids
    }

    /// Finishes every call in progress (Completed); returns their ids.
    pub fn finish_open(&mut self) -> Vec<String> {
        let mut ids = Vec::new();
        for c in &mut self.calls {
            if !c.is_final() {
                c.state = "Completed".into();
                ids.push(c.id.clone());
            }
        }
        ids
    }

    /// Every call.
    pub fn calls(&self) -> &[VcCall] {
        &self.calls
    }
}

/// The voice-calls routes, under `/voicecalls`.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/voicecalls/api/v1/voice-calls", get(list))
        .route("/voicecalls/api/v1/voice-calls/{id}", get(detail))
        .route("/voicecalls/api/v1/voice-calls/{id}/epa-results", get(epa))
        .route(
            "/voicecalls/api/v1/voice-calls/{id}/recording-url",
            get(recording_url),
        )
        .route("/voicecalls/blob/{file}", get(blob))
}

/// Faults and auth shared by every route: `Err` is the answer to send instead.
async fn gate(shared: &Shared, headers: &HeaderMap) -> Result<bool, Response> {
    let cut = apply(shared).await?;
    let expected = format!("Bearer {}", super::lock(&shared.voice_calls).token);
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        return Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid token"})),
        )
            .into_response());
    }
    Ok(cut)
}

fn answer(drop: bool, v: Value) -> Response {
    if drop {
        return dropped_body("application/json", v.to_string());
    }
    Json(v).into_response()
}

async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let drop = match gate(&shared, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let time = |k: &str| {
        q.get(k)
            .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.timestamp())
    };
    let (from, to) = (
        time("dateFrom").unwrap_or(i64::MIN),
        time("dateTo").unwrap_or(i64::MAX),
    );
    let page: usize = q
        .get("page")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p >= 1)
        .unwrap_or(1);
    let mut sim = super::lock(&shared.voice_calls);
    sim.list_requests += 1;
    let size: usize = q
        .get("pageSize")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50)
        .clamp(1, sim.page_cap);
    // dateTo is inclusive here, as many APIs are: callsync must cope with the overlap.
    let items: Vec<Value> = sim
        .calls
        .iter()
        .filter(|c| c.start_secs >= from && c.start_secs <= to)
        .skip((page - 1) * size)
        .take(size)
        .map(|c| c.object(false))
        .collect();
    let body = match sim.envelope {
        Envelope::Bare => Value::Array(items),
        Envelope::Items => json!({"items": items, "page": page, "pageSize": size}),
        Envelope::Data => json!({"data": items}),
        Envelope::Results => json!({"results": items, "page": page}),
        Envelope::VoiceCalls => json!({"voiceCalls": items}),
    };
    std::mem::drop(sim);
    answer(drop, body)
}

fn find<'a>(sim: &'a VoiceCallsSim, id: &str) -> Option<&'a VcCall> {
    sim.calls.iter().find(|c| c.id == id)
}

fn not_found(msg: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": msg }))).into_response()
}

/// Answers a per-call route with what `pick` makes of the call, or 404 with `missing`.
async fn per_call(
    shared: &Shared,
    headers: &HeaderMap,
    id: &str,
    missing: &str,
    pick: impl Fn(&VcCall) -> Option<Value>,
) -> Response {
    let drop = match gate(shared, headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let body = {
        let mut sim = super::lock(&shared.voice_calls);
        *sim.per_call_requests.entry(id.to_string()).or_default() += 1;
        find(&sim, id).and_then(pick)
    };
    match body {
        Some(b) => answer(drop, b),
        None => not_found(missing),
    }
}

async fn detail(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    per_call(&shared, &headers, &id, "not found", |c| {
        Some(c.object(true))
    })
    .await
}

async fn epa(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    per_call(&shared, &headers, &id, "no survey", |c| {
        if c.epa_inline { None } else { c.epa() }
    })
    .await
}

async fn recording_url(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let drop = match gate(&shared, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let body = {
        let mut sim = super::lock(&shared.voice_calls);
        *sim.per_call_requests.entry(id.clone()).or_default() += 1;
        if !find(&sim, &id).is_some_and(|c| c.has_recording) {
            return not_found("no recording");
        }
        let n = {
            let n = sim.issued.entry(id.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let now = chrono::Utc::now().timestamp();
        let expires = if sim.expire_first_url && n == 1 {
            now - 1
        } else {
            now + sim.url_ttl_secs
        };
        let file = format!("{id}.wav");
        let url = format!(
            "http://{host}/voicecalls/blob/{file}?sv=2024-01-01&se={expires}&sig={}",
            signature(&file, expires)
        );
        let at = chrono::DateTime::from_timestamp(expires, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        json!({"recordingUrl": url, "expiresAt": at})
    };
    answer(drop, body)
}

/// The pre-signed download: no API token, the signature and expiry are the credential.
async fn blob(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(file): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let cut = match apply(&shared).await {
        Ok(cut) => cut,
        Err(r) => return r,
    };
    let mut sim = super::lock(&shared.voice_calls);
    if headers.contains_key(header::AUTHORIZATION) {
        sim.blob_requests_with_auth += 1;
    }
    let expires: i64 = q.get("se").and_then(|v| v.parse().ok()).unwrap_or(0);
    let valid = q.get("sig").map(String::as_str) == Some(signature(&file, expires).as_str())
        && expires >= chrono::Utc::now().timestamp();
    if !valid {
        sim.blob_refusals += 1;
        return (
            StatusCode::FORBIDDEN,
            "<Error><Code>AuthenticationFailed</Code></Error>",
        )
            .into_response();
    }
    let id = file.trim_end_matches(".wav").to_string();
    std::mem::drop(sim);
    let bytes = recording_bytes(&id);
    if cut {
        return dropped_body("audio/wav", String::from_utf8_lossy(&bytes).into_owned());
    }
    ([(header::CONTENT_TYPE, "audio/wav")], bytes).into_response()
}
