//! Simulated Voicegain `GET /v1/sa/call`: consecutive export, CSV with quoted new lines,
//! Bearer auth, 400 for sorting with `consecutive=true`, time-range queries for backfill.
//! Rows carry all 43 documented columns, filled the way real exports are: many empty, UUIDs,
//! random session ids, phone numbers, notes with quotes and new lines, word clouds, keywords
//! and markers on some calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Shared;
use super::faults::{apply, dropped_body};
pub use super::voicegain_rows::HEADER;
pub use super::voicegain_rows::VgCall;
use super::voicegain_rows::{AGENTS, QUEUES, SENTENCES, TAGS, TOPICS, uuid};

/// The simulated account: its calls and its token.
pub struct VoicegainSim {
    /// The JWT the simulator accepts.
    pub token: String,
    calls: BTreeMap<u64, VgCall>,
    next_id: u64,
    rng: fastrand::Rng,
    /// Fraction (0..1) of new calls that start unfinished.
    pub pending_ratio: f64,
    /// Fraction (0..1) of new calls whose row is malformed.
    pub malformed_ratio: f64,
    /// Start time of the newest generated call (seconds); new calls start after it.
    pub now_secs: i64,
    /// Seconds between the starts of consecutive calls (a random value in this range).
    pub spacing_secs: std::ops::Range<i64>,
    /// CSV rows rendered ahead by `prerender` (emptied by any change to the calls).
    rendered: HashMap<u64, String>,
}

impl Default for VoicegainSim {
    fn default() -> Self {
        VoicegainSim::new(1, 0)
    }
}

impl VoicegainSim {
    /// `n` calls with a fixed seed, ending at `now_secs`.
    pub fn new(seed: u64, n: usize) -> VoicegainSim {
        let mut sim = VoicegainSim {
            token: "sim-voicegain-token".to_string(),
            calls: BTreeMap::new(),
            next_id: 10_000,
            rng: fastrand::Rng::with_seed(seed),
            pending_ratio: 0.0,
            malformed_ratio: 0.0,
            now_secs: 1_735_689_600, // 2025-01-01T00:00:00Z
            spacing_secs: 30..150,
            rendered: HashMap::new(),
        };
        sim.add_calls(n);
        sim
    }

    /// Sets the fractions of unfinished and malformed calls for calls added from now on.
    pub fn with_ratios(mut self, pending: f64, malformed: f64) -> Self {
        self.pending_ratio = pending;
        self.malformed_ratio = malformed;
        self
    }

    /// Adds `n` calls with increasing ids, `spacing_secs` apart.
    pub fn add_calls(&mut self, n: usize) -> Vec<u64> {
        self.rendered.clear();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            self.next_id += 1 + self.rng.u64(0..3);
            let id = self.next_id;
            self.now_secs += self.rng.i64(self.spacing_secs.clone());
            let call = self.random_call(id, self.now_secs);
            self.calls.insert(id, call);
            ids.push(id);
        }
        ids
    }

    fn random_call(&mut self, id: u64, start_secs: i64) -> VgCall {
        let rng = &mut self.rng;
        // A quarter of the calls are handled by a voice bot alone: no agent, no queue.
        let bot_only = rng.u8(0..4) == 0;
        let (agent_id, agent_name) = if bot_only {
            (String::new(), String::new())
        } else {
            let (id, name, _) = AGENTS[rng.usize(0..AGENTS.len())];
            (id.to_string(), name.to_string())
        };
        // Outbound calls are dialled by an agent outside any queue.
        let outbound = rng.u8(0..3) == 0;
        let queue_name = if bot_only || outbound {
            String::new()
        } else {
            QUEUES[rng.usize(0..QUEUES.len())].1.to_string()
        };
        let tags = TAGS
            .iter()
            .filter(|_| rng.u8(0..4) == 0)
            .map(|t| t.to_string())
            .collect();
        let topics = TOPICS
            .iter()
            .filter(|_| rng.u8(0..5) == 0)
            .map(|t| t.to_string())
            .collect();
        // Notes: most calls, one to four sentences, sometimes split over lines.
        let notes = if rng.u8(0..5) == 0 {
            String::new()
        } else {
            let mut n = String::new();
            for i in 0..rng.usize(1..=3) {
                if i > 0 {
                    n.push_str(if rng.u8(0..3) == 0 { "\n" } else { " " });
                }
                n.push_str(SENTENCES[rng.usize(0..SENTENCES.len())]);
            }
            n
        };
        let phase = if rng.f64() < self.pending_ratio {
            if rng.bool() {
                "TRANSCRIBING"
            } else {
                "ANALYZING"
            }
        } else if rng.u8(0..20) == 0 {
            "ERROR"
        } else {
            "DONE"
        };
        VgCall {
            id,
            start_secs,
            duration_secs: 5 + rng.u32(0..900),
            direction: if outbound { "outbound" } else { "inbound" }.to_string(),
            external: format!("+1{}{:07}", 200 + rng.u32(0..800), rng.u32(0..10_000_000)),
            internal: format!("1469333{:04}", rng.u32(0..10_000)),
            agent_id,
            agent_name,
            queue_name,
            sentiment: (rng.u8(0..10) > 0).then(|| (rng.i32(-100..=100) as f64) / 100.0),
            notes,
            tags,
            topics,
            phase: phase.to_string(),
            language: ["en", "en", "en", "es", "fr"][rng.usize(0..5)].to_string(),
            recording: uuid(rng),
            malformed: rng.f64() < self.malformed_ratio,
            seed: rng.u64(..),
        }
    }

    /// Finishes every unfinished call (DONE); returns their ids.
    pub fn finish_pending(&mut self) -> Vec<u64> {
        self.rendered.clear();
        let mut ids = Vec::new();
        for c in self.calls.values_mut() {
            if !c.is_final() {
                c.phase = "DONE".to_string();
                ids.push(c.id);
            }
        }
        ids
    }

    /// Every call.
    pub fn calls(&self) -> impl Iterator<Item = &VgCall> {
        self.calls.values()
    }

    /// Ground truth of a consecutive export: final calls before the first unfinished one,
    /// well-formed only (malformed ones go to rejects).
    pub fn expected_exported(&self) -> Vec<&VgCall> {
        self.consecutive_prefix().filter(|c| !c.malformed).collect()
    }

    /// Ids a consecutive export must reject.
    pub fn expected_rejected(&self) -> Vec<u64> {
        self.consecutive_prefix()
            .filter(|c| c.malformed)
            .map(|c| c.id)
            .collect()
    }

    fn consecutive_prefix(&self) -> impl Iterator<Item = &VgCall> {
        self.calls.values().take_while(|c| c.is_final())
    }

    /// Renders every call's CSV row now, so that serving pages later costs the simulator
    /// almost no CPU (benchmarks measure callsync beside it on the same cores).
    pub fn prerender(&mut self) {
        self.rendered = self
            .calls
            .values()
            .map(|c| (c.id, Self::render(std::iter::once(c), false)))
            .collect();
    }

    /// A page of the vendor's CSV, from rows rendered ahead where there are.
    fn page<'a>(&self, rows: impl Iterator<Item = &'a VgCall>) -> String {
        if self.rendered.is_empty() {
            return Self::csv(rows);
        }
        let mut out = Self::render(std::iter::empty(), true);
        for c in rows {
            match self.rendered.get(&c.id) {
                Some(row) => out.push_str(row),
                None => out.push_str(&Self::render(std::iter::once(c), false)),
            }
        }
        out
    }

    /// Renders rows as the vendor's CSV.
    pub fn csv<'a>(rows: impl Iterator<Item = &'a VgCall>) -> String {
        Self::render(rows, true)
    }

    fn render<'a>(rows: impl Iterator<Item = &'a VgCall>, header: bool) -> String {
        let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
        if header {
            let _ = w.write_record(HEADER);
        }
        for c in rows {
            let _ = w.write_record(c.cells());
        }
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }
}

/// The Voicegain routes, under `/voicegain/v1`.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/voicegain/v1/sa/call", get(sa_call))
}

fn bad_request(msg: &str) -> Box<Response> {
    Box::new(
        (
            StatusCode::BAD_REQUEST,
            format!("{{\"status\":400,\"message\":\"{msg}\"}}"),
        )
            .into_response(),
    )
}

async fn sa_call(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let cut = match apply(&shared).await {
        Ok(cut) => cut,
        Err(r) => return r,
    };
    let body = {
        let sim = super::lock(&shared.voicegain);
        let expected = format!("Bearer {}", sim.token);
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(expected.as_str())
        {
            return (
                StatusCode::UNAUTHORIZED,
                "{\"status\":401,\"message\":\"Unauthorized\"}",
            )
                .into_response();
        }
        match answer(&sim, &q) {
            Ok(b) => b,
            Err(r) => return *r,
        }
    };
    if cut {
        return dropped_body("text/csv", body);
    }
    ([(header::CONTENT_TYPE, "text/csv")], body).into_response()
}

fn answer(sim: &VoicegainSim, q: &HashMap<String, String>) -> Result<String, Box<Response>> {
    if q.get("format").map(String::as_str) != Some("csv") {
        return Err(bad_request("the simulator only serves format=csv"));
    }
    let consecutive = q.get("consecutive").map(String::as_str) == Some("true");
    let page: usize = match q.get("page").map(|p| p.parse::<usize>()) {
        None => 1,
        Some(Ok(p)) if p >= 1 => p,
        _ => return Err(bad_request("page must be an integer >= 1")),
    };
    let per_page: usize = match q.get("per_page").map(|p| p.parse::<usize>()) {
        None => 50,
        Some(Ok(p)) if (1..=10_000).contains(&p) => p,
        _ => return Err(bad_request("per_page must be between 1 and 10000")),
    };
    let skip = (page - 1) * per_page;
    if consecutive {
        if q.contains_key("sort_by") || q.contains_key("sort_dir") {
            return Err(bad_request(
                "sort_by/sort_dir cannot be used with consecutive=true",
            ));
        }
        let after: u64 = match q.get("afterCallId").map(|a| a.parse::<u64>()) {
            None => 0,
            Some(Ok(a)) => a,
            Some(Err(_)) => return Err(bad_request("afterCallId must be an integer >= 0")),
        };
        let rows = sim
            .calls
            .range(after + 1..)
            .map(|(_, c)| c)
            .take_while(|c| c.is_final())
            .skip(skip)
            .take(per_page);
        return Ok(sim.page(rows));
    }
    let parse = |k: &str| -> Result<Option<i64>, Box<Response>> {
        match q.get(k) {
            None => Ok(None),
            Some(v) => chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| Some(t.timestamp()))
                .map_err(|_| bad_request(&format!("{k} must be RFC 3339"))),
        }
    };
    let from = parse("fromTime")?.unwrap_or(i64::MIN);
    let to = parse("toTime")?.unwrap_or(i64::MAX);
    let desc = q.get("sort_dir").map(String::as_str) == Some("desc");
    let mut rows: Vec<&VgCall> = sim
        .calls
        .values()
        .filter(|c| c.start_secs >= from && c.start_secs <= to)
        .collect();
    if q.get("sort_by").map(String::as_str) == Some("time") {
        rows.sort_by_key(|c| (c.start_secs, c.id));
    }
    if desc {
        rows.reverse();
    }
    Ok(sim.page(rows.into_iter().skip(skip).take(per_page)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prerendered_pages_equal_rendered_ones_until_the_calls_change() {
        let mut sim = VoicegainSim::new(3, 50).with_ratios(0.2, 0.1);
        sim.add_calls(50);
        let fresh = VoicegainSim::csv(sim.calls().skip(5).take(20));
        sim.prerender();
        assert_eq!(sim.page(sim.calls().skip(5).take(20)), fresh);
        sim.finish_pending();
        assert!(sim.rendered.is_empty());
        assert_eq!(
            sim.page(sim.calls().skip(5).take(20)),
            VoicegainSim::csv(sim.calls().skip(5).take(20))
        );
    }
}
