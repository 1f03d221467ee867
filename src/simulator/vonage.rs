//! Simulated Vonage AI Studio insights search: `X-Vgai-Key`, windows of at most 60 days
//! (answered 401, as the vendor does), `page_number` from 0, string `page_size`/`page_number`
//! in the answer, sorting, refusal past the 10,000th result, sessions in progress that end
//! later and sessions that arrive while a client pages.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::Shared;
use super::faults::{apply, dropped_body};

/// One simulated session.
#[derive(Debug, Clone, PartialEq)]
pub struct VnSession {
    pub id: String,
    /// Start, µs since the epoch (UTC; rendered without an offset).
    pub start_us: i64,
    pub duration_ms: i64,
    /// `ended` or `in_progress`.
    pub status: String,
    pub source: String,
    pub destination: String,
    pub agent_id: String,
    pub agent_name: String,
    pub language: String,
    pub tags: Vec<String>,
    /// (key, text): `user` for the caller, the agent's id otherwise.
    pub transcript: Vec<(String, String)>,
    pub audio_url: String,
    /// Renders `channel_data.duration` as text (`"27 s"`): a record the source must reject.
    pub malformed_duration: bool,
}

impl VnSession {
    /// Whether the session has ended.
    pub fn is_final(&self) -> bool {
        self.status == "ended"
    }

    fn hit(&self) -> Value {
        let t = |us: i64| {
            chrono::DateTime::from_timestamp_micros(us)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string())
                .unwrap_or_default()
        };
        let ended = self.is_final();
        json!({
            "id": self.id,
            "account_id": "5f7f277cf090a7001116fabe",
            "api_key": "N/A",
            "status": self.status,
            "language": self.language,
            "source": self.source,
            "destination": self.destination.parse::<u64>().map(Value::from).unwrap_or(Value::from(self.destination.clone())),
            "channel": "voice",
            "session_start_time": t(self.start_us),
            "session_end_time": if ended { Value::from(t(self.start_us + self.duration_ms * 1000)) } else { Value::Null },
            "agent_information": {"id": self.agent_id, "name": self.agent_name, "voice": "Salli",
                                  "language": self.language, "version_id": "5f7f2f337340dc7249f81406"},
            "channel_data": {"duration": if self.malformed_duration { Value::from(format!("{} s", self.duration_ms / 1000)) }
                                         else if ended { Value::from(self.duration_ms) } else { Value::Null },
                             "audio_url": self.audio_url,
                             "call_status": if ended { "ended" } else { "in_progress" }, "status_code": 200},
            "tags_list": self.tags.iter().map(|t| json!({"tag": t, "category": "ddbc05cc", "count": 1})).collect::<Vec<_>>(),
            "transcription": self.transcript.iter().map(|(k, v)| json!({k.as_str(): v})).collect::<Vec<_>>(),
        })
    }
}

/// The simulated account.
pub struct VonageSim {
    pub api_key: String,
    sessions: Vec<VnSession>,
    rng: fastrand::Rng,
    next: u64,
    /// Sessions added (starting now) on each search request: arrivals while a client pages.
    pub arrivals_per_request: usize,
    /// Queries refused because they paged past the 10,000th result.
    pub deep_refusals: u64,
    /// Queries answered.
    pub searches: u64,
    /// Sign each session's `audio_url` afresh on every answer (a query that changes).
    pub signed_urls: bool,
}

impl Default for VonageSim {
    fn default() -> Self {
        VonageSim::new(1)
    }
}

impl VonageSim {
    /// An empty account with a fixed seed.
    pub fn new(seed: u64) -> VonageSim {
        VonageSim {
            api_key: "sim-vonage-key".into(),
            sessions: Vec::new(),
            rng: fastrand::Rng::with_seed(seed),
            next: 0,
            arrivals_per_request: 0,
            deep_refusals: 0,
            searches: 0,
            signed_urls: false,
        }
    }

    /// Adds `n` sessions starting between `from_us` and `to_us`; a fraction `open` in progress.
    /// Some share a start time with another, as real traffic does.
    pub fn add_sessions(&mut self, n: usize, from_us: i64, to_us: i64, open: f64) {
        for _ in 0..n {
            self.next += 1;
            let start_us = if self.next > 1 && self.rng.u8(0..20) == 0 {
                self.sessions
                    .last()
                    .map_or(from_us, |s| s.start_us.clamp(from_us, to_us - 1))
            } else {
                self.rng.i64(from_us..to_us)
            };
            let agent = format!("5f7f2e60a6034c9b5c79d1{:02}", self.rng.u8(0..20));
            let turns = self.rng.usize(0..4);
            let mut transcript = Vec::new();
            for i in 0..turns {
                let caller = ["user", "client"][self.rng.usize(0..2)];
                if i % 2 == 0 {
                    transcript.push((agent.clone(), "How can I help you today?".to_string()));
                } else {
                    transcript.push((
                        caller.to_string(),
                        format!("I need help with order {}", self.rng.u32(1000..9999)),
                    ));
                }
            }
            let id = format!("{:08x}-7bc1-41a0-b0a6-{:012x}", self.rng.u32(..), self.next);
            self.sessions.push(VnSession {
                audio_url: format!("acct/agent/{id}.mp3"),
                id,
                start_us,
                duration_ms: self.rng.i64(1_000..600_000),
                status: if self.rng.f64() < open {
                    "in_progress"
                } else {
                    "ended"
                }
                .into(),
                source: format!("9720014{:09}", self.rng.u64(0..1_000_000_000)),
                destination: format!("97252{:07}", self.rng.u32(0..10_000_000)),
                agent_id: agent,
                agent_name: ["oriprod2", "helpdesk", "sales-bot"][self.rng.usize(0..3)].into(),
                language: ["en-US", "es-ES"][self.rng.usize(0..2)].into(),
                tags: ["one", "two", "three"]
                    .iter()
                    .filter(|_| self.rng.bool())
                    .map(|t| t.to_string())
                    .collect(),
                transcript,
                malformed_duration: false,
            });
        }
    }

    /// Ends every session in progress; returns how many.
    pub fn finish_open(&mut self) -> usize {
        let mut n = 0;
        for s in &mut self.sessions {
            if !s.is_final() {
                s.status = "ended".into();
                n += 1;
            }
        }
        n
    }

    /// Every session, to change (a record the vendor corrects or breaks).
    pub fn sessions_mut(&mut self) -> &mut [VnSession] {
        &mut self.sessions
    }

    /// Every session.
    pub fn sessions(&self) -> &[VnSession] {
        &self.sessions
    }
}

/// The insights routes, under `/vonage`.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/vonage/insights/sessions", get(search))
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({"error": msg}))).into_response()
}

/// `YYYY-MM-DD` or an ISO datetime without offset, in µs. A bare `to_date` day means its end.
fn parse_param(v: &str, end_of_day: bool) -> Option<i64> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        let t = if end_of_day {
            d.and_hms_micro_opt(23, 59, 59, 999_999)?
        } else {
            d.and_hms_opt(0, 0, 0)?
        };
        return Some(t.and_utc().timestamp_micros());
    }
    crate::sources::window::parse_time(v)
}

async fn search(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let cut = match apply(&shared).await {
        Ok(cut) => cut,
        Err(r) => return r,
    };
    let body = {
        let mut sim = super::lock(&shared.vonage);
        if headers.get("x-vgai-key").and_then(|v| v.to_str().ok()) != Some(sim.api_key.as_str()) {
            return refuse(StatusCode::UNAUTHORIZED, "Invalid API key");
        }
        let (Some(from), Some(to)) = (
            q.get("from_date").and_then(|v| parse_param(v, false)),
            q.get("to_date").and_then(|v| parse_param(v, true)),
        ) else {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "Invalid date range: from_date and to_date are required",
            );
        };
        if to < from || to - from > 60 * 86_400 * 1_000_000 {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "Invalid date range: the system only supports ranges up to 60 days apart",
            );
        }
        let page: u64 = q
            .get("page_number")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let size: u64 = q
            .get("page_size")
            .and_then(|v| v.parse().ok())
            .filter(|s| *s >= 1)
            .unwrap_or(10);
        if (page + 1) * size > 10_000 {
            sim.deep_refusals += 1;
            return refuse(
                StatusCode::BAD_REQUEST,
                "Result window is too large, from + size must be less than or equal to: [10000]",
            );
        }
        sim.searches += 1;
        let mut hits: Vec<&VnSession> = sim
            .sessions
            .iter()
            .filter(|s| s.start_us >= from && s.start_us <= to)
            .collect();
        let sort = q.get("sort_by").cloned().unwrap_or_default();
        for key in sort.split(',').rev().filter(|k| !k.is_empty()) {
            let (attr, dir) = key.split_once(':').unwrap_or((key, "asc"));
            match attr {
                "session_start_time" => hits.sort_by_key(|s| s.start_us),
                "id" => hits.sort_by(|a, b| a.id.cmp(&b.id)),
                _ => {}
            }
            if dir == "desc" {
                hits.reverse();
            }
        }
        let total = hits.len();
        let page_hits: Vec<Value> = hits
            .iter()
            .skip((page * size) as usize)
            .take(size as usize)
            .map(|s| s.hit())
            .collect();
        let mut page_hits = page_hits;
        if sim.signed_urls {
            let nonce = sim.searches;
            for h in &mut page_hits {
                if let Some(Value::String(url)) = h.pointer_mut("/channel_data/audio_url") {
                    *url = format!(
                        "{url}?Expires={nonce}&Signature={:016x}",
                        nonce.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    );
                }
            }
        }
        let arrivals = sim.arrivals_per_request;
        if arrivals > 0 {
            let now = chrono::Utc::now().timestamp_micros();
            sim.add_sessions(arrivals, now, now + 1_000_000, 0.0);
        }
        json!({"total": total, "hits": page_hits, "page_size": size.to_string(), "page_number": page.to_string()})
    };
    if cut {
        return dropped_body("application/json", body.to_string());
    }
    Json(body).into_response()
}
