//! Simulated Exotel Listen/Whisper/Barge StatusCallbacks: monitor legs as Exotel posts them
//! when a supervisor's leg ends, as JSON or as a form (per `StatusCallbackContentType`), with
//! times in the account's time zone and no offset.

use std::time::Duration;

use super::exotel_calls::KOLKATA_OFFSET_SECS;

/// One monitor leg's terminal callback.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorLeg {
    pub leg_sid: String,
    pub call_sid: String,
    pub account_sid: String,
    pub phone_number: String,
    pub status: String,
    pub origin: String,
    pub last_action: String,
    pub custom_field: String,
    pub event_type: String,
    /// Local times in the account's zone, `YYYY-MM-DD HH:MM:SS`.
    pub date_created: String,
    pub date_updated: String,
    pub start_time: String,
    pub end_time: String,
    pub on_call_duration: u32,
    /// Start in UTC, µs (the ground truth for `start_time` with the zone's offset applied).
    pub start_utc_us: i64,
}

impl MonitorLeg {
    /// A random leg that started `ago_secs` before now, in a zone `offset_secs` east of UTC.
    pub fn random(rng: &mut fastrand::Rng, n: u64, ago_secs: i64, offset_secs: i64) -> MonitorLeg {
        let start = chrono::Utc::now().timestamp() - ago_secs;
        let dur = 5 + rng.u32(0..600);
        let local = |t: i64| {
            chrono::DateTime::from_timestamp(t + offset_secs, 0)
                .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default()
        };
        MonitorLeg {
            leg_sid: format!("{:016x}{:016x}", rng.u64(..), n),
            call_sid: format!("{:032x}", rng.u128(..)),
            account_sid: "exotel30m".into(),
            phone_number: format!("0{}", 9_000_000_000u64 + rng.u64(0..999_999_999)),
            status: ["completed", "completed", "no-answer", "busy", "failed"][rng.usize(0..5)]
                .into(),
            origin: "monitor".into(),
            last_action: ["listen", "whisper", "barge"][rng.usize(0..3)].into(),
            custom_field: if rng.bool() {
                "LegsCustom".into()
            } else {
                format!("team=\"{}\", shift=2", rng.u8(1..9))
            },
            event_type: "terminal".into(),
            date_created: local(start),
            date_updated: local(start + dur as i64),
            start_time: local(start),
            end_time: local(start + dur as i64),
            on_call_duration: dur,
            start_utc_us: start * 1_000_000,
        }
    }

    fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LegSid", self.leg_sid.clone()),
            ("CallSid", self.call_sid.clone()),
            ("AccountSid", self.account_sid.clone()),
            ("DateCreated", self.date_created.clone()),
            ("DateUpdated", self.date_updated.clone()),
            ("StartTime", self.start_time.clone()),
            ("EndTime", self.end_time.clone()),
            ("PhoneNumber", self.phone_number.clone()),
            ("Status", self.status.clone()),
            ("OnCallDuration", self.on_call_duration.to_string()),
            ("Origin", self.origin.clone()),
            ("LastAction", self.last_action.clone()),
            ("CustomField", self.custom_field.clone()),
            ("EventType", self.event_type.clone()),
        ]
    }

    /// The callback as JSON (`StatusCallbackContentType: application/json`).
    pub fn json(&self) -> String {
        let m: serde_json::Map<String, serde_json::Value> = self
            .pairs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        serde_json::Value::Object(m).to_string()
    }

    /// The callback as a form (`application/x-www-form-urlencoded`).
    pub fn form(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.pairs() {
            s.append_pair(k, &v);
        }
        s.finish()
    }
}

/// Posts one callback the way Exotel does; the HTTP status, or `None` when no answer came.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    leg: &MonitorLeg,
    json: bool,
) -> Option<u16> {
    let (ct, body) = if json {
        ("application/json", leg.json())
    } else {
        ("application/x-www-form-urlencoded", leg.form())
    };
    client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, ct)
        .timeout(Duration::from_secs(15))
        .body(body)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// What the simulated ExoVoiceAnalyze does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// One result webhook.
    Ok,
    /// The result webhook comes twice (Exotel retries).
    Twice,
    /// A `success: false` result.
    Fail,
    /// No webhook for the first submission; a result for the later ones.
    LostFirst,
}

/// The simulated ExoVoiceAnalyze account.
pub struct AnalyzeSim {
    pub account_sid: String,
    pub api_key: String,
    pub api_token: String,
    /// Submissions per call sid.
    pub submissions: std::collections::HashMap<String, u32>,
    /// Result webhooks sent (doubles included).
    pub webhooks_sent: u64,
    /// Post the result webhook (and wait for its answer) before answering the submission:
    /// the result reaches callsync before the job id does.
    pub result_before_answer: bool,
    /// Call-details requests served (bulk and single).
    pub details_requests: u64,
    /// Answer every submission with this status instead (an outage: 503), counting none.
    pub submit_status: Option<u16>,
    /// The account's call log (Bulk Call Details).
    pub calls: super::exotel_calls::CallLog,
    /// Submissions answered with `submit_status`.
    pub refused_submissions: u64,
}

/// The call-details truth of a call sid: where its start lies, how long it lasted, who
/// called whom. Deterministic, so tests compare the lake with it. Sids starting with
/// `NODETAIL` are unknown to the call-details API.
#[derive(Debug, Clone, PartialEq)]
pub struct CallDetail {
    pub sid: String,
    /// UTC start, µs.
    pub start_utc_us: i64,
    pub duration_secs: i64,
    /// inbound, outbound-dial or outbound-api.
    pub direction: String,
    pub from: String,
    pub to: String,
}

/// The details of `sid` (`None` for the ones the API does not know).
pub fn call_detail(sid: &str) -> Option<CallDetail> {
    if sid.starts_with("NODETAIL") {
        return None;
    }
    let n = sid
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(131).wrapping_add(b as u64));
    // Calls of the 30 days before 2026-11-20, whole seconds.
    let start = 1_763_596_800 - (n % (30 * 86_400)) as i64;
    Some(CallDetail {
        sid: sid.to_string(),
        start_utc_us: start * 1_000_000,
        duration_secs: 10 + (n % 900) as i64,
        direction: ["inbound", "outbound-dial", "outbound-api"][(n % 3) as usize].into(),
        from: format!("0{}", 9_000_000_000 + n % 999_999_999),
        to: format!("0{}", 8_000_000_000 + (n / 7) % 999_999_999),
    })
}

impl CallDetail {
    /// The call as the API renders it (times local to Asia/Kolkata, Duration a string).
    pub fn json(&self, account_sid: &str) -> serde_json::Value {
        let local = |us: i64| {
            chrono::DateTime::from_timestamp(us / 1_000_000 + KOLKATA_OFFSET_SECS, 0)
                .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default()
        };
        let end = self.start_utc_us + self.duration_secs * 1_000_000;
        serde_json::json!({
            "Sid": self.sid, "ParentCallSid": null, "DateCreated": local(self.start_utc_us),
            "DateUpdated": local(end), "AccountSid": account_sid, "To": self.to, "From": self.from,
            "PhoneNumberSid": "08039591234", "Status": "completed",
            "StartTime": local(self.start_utc_us), "EndTime": local(end),
            "Duration": self.duration_secs.to_string(), "Price": "1.500",
            "Direction": self.direction, "AnsweredBy": "human",
            "RecordingUrl": format!("https://recordings.exotel.com/{account_sid}/{}.mp3?sig=abc", self.sid),
        })
    }
}

/// Whether the request carries the account's Basic credential.
fn authorized(shared: &super::Shared, sid: &str, headers: &axum::http::HeaderMap) -> bool {
    use base64::Engine;
    let sim = super::lock(&shared.exotel);
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", sim.api_key, sim.api_token));
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Basic {basic}"))
        && sid == sim.account_sid
}

fn unauthorized() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::UNAUTHORIZED,
        "Authentication is required",
    )
        .into_response()
}

/// `GET /exotel/v1/Accounts/{sid}/Calls.json`: by `Sid=a,b,…` (at most 100), or the list with
/// its filters, sort and cursor (`exotel_calls::list`).
pub async fn calls_bulk(
    axum::extract::State(shared): axum::extract::State<std::sync::Arc<super::Shared>>,
    axum::extract::Path(sid): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !authorized(&shared, &sid, &headers) {
        return unauthorized();
    }
    let Some(sids) = q.get("Sid") else {
        let cut = match super::faults::apply(&shared).await {
            Ok(cut) => cut,
            Err(r) => return r,
        };
        let answer = super::exotel_calls::list(&mut super::lock(&shared.exotel).calls, &sid, &q);
        return match answer {
            Ok(v) if cut => super::faults::dropped_body("application/json", v.to_string()),
            Ok(v) => axum::Json(v).into_response(),
            Err(msg) => super::exotel_calls::bad_request(msg),
        };
    };
    let mut sim = super::lock(&shared.exotel);
    sim.details_requests += 1;
    let sids: Vec<&str> = sids.split(',').filter(|s| !s.is_empty()).collect();
    if sids.len() > 100 {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"RestException": {"Status": 400, "Message": "At most 100 Sids"}})),
        )
            .into_response();
    }
    let calls: Vec<serde_json::Value> =
        sids.iter().filter_map(|s| sim.call_json(s, &sid)).collect();
    axum::Json(serde_json::json!({
        "Metadata": {"Total": calls.len(), "PageSize": q.get("PageSize").map_or("50", String::as_str),
                     "FirstPageUri": null, "PrevPageUri": null, "NextPageUri": null},
        "Calls": calls,
    }))
    .into_response()
}

impl AnalyzeSim {
    /// A call as the call-details API renders it: from the call log, else the deterministic
    /// details of `call_detail`; `None` when the API does not know it.
    pub fn call_json(&self, call_sid: &str, account_sid: &str) -> Option<serde_json::Value> {
        match self.calls.get(call_sid) {
            Some(c) => Some(c.json(account_sid)),
            None => call_detail(call_sid).map(|c| c.json(account_sid)),
        }
    }
}

/// `GET /exotel/v1/Accounts/{sid}/Calls/{CallSid}.json` → `{"Call": {...}}`.
pub async fn call_single(
    axum::extract::State(shared): axum::extract::State<std::sync::Arc<super::Shared>>,
    axum::extract::Path((sid, file)): axum::extract::Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !authorized(&shared, &sid, &headers) {
        return unauthorized();
    }
    let mut sim = super::lock(&shared.exotel);
    sim.details_requests += 1;
    match file
        .strip_suffix(".json")
        .and_then(|call| sim.call_json(call, &sid))
    {
        Some(c) => axum::Json(serde_json::json!({"Call": c})).into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, "Call not found").into_response(),
    }
}

impl Default for AnalyzeSim {
    fn default() -> Self {
        AnalyzeSim {
            account_sid: "exotel30m".into(),
            api_key: "sim-exotel-key".into(),
            api_token: "sim-exotel-token".into(),
            submissions: Default::default(),
            webhooks_sent: 0,
            result_before_answer: false,
            details_requests: 0,
            submit_status: None,
            refused_submissions: 0,
            calls: Default::default(),
        }
    }
}

/// A call sid's fate, from the number it ends with: 3 → twice, 7 → failure, 9 → its first
/// webhook never comes; others succeed.
pub fn fate(call_sid: &str) -> Fate {
    match call_sid.bytes().last() {
        Some(b'3') => Fate::Twice,
        Some(b'7') => Fate::Fail,
        Some(b'9') => Fate::LostFirst,
        _ => Fate::Ok,
    }
}

/// The insights the simulator returns for a call: (summary, sentiment, category, transcript lines).
pub fn insights(call_sid: &str) -> (String, String, String, Vec<String>) {
    let n = call_sid
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let sentiment = ["POSITIVE", "NEGATIVE", "NEUTRAL"][(n % 3) as usize];
    let category = [
        "sales",
        "support",
        "Jobseeker mentioned they will not be able to move forward",
    ][(n % 3) as usize];
    let lines = vec![
        "Hello, where do you go?".to_string(),
        format!("Hi, this is caller {}.", n % 1000),
        "I am looking for \"help\" with my order.".to_string(),
        "Thanks for calling.".to_string(),
    ];
    (
        format!(
            "Caller {} asked about an order; resolved.\nFollow-up by email.",
            n % 1000
        ),
        sentiment.to_string(),
        category.to_string(),
        lines,
    )
}

fn result_body(call_sid: &str, job_id: &str, task_id: &str, fate: Fate) -> String {
    if fate == Fate::Fail {
        return serde_json::json!({"success": false, "reason": "Forbidden to access recording url of call",
            "job_id": job_id, "callSID": call_sid}).to_string();
    }
    let (summary, sentiment, category, lines) = insights(call_sid);
    serde_json::json!({
        "success": true, "reason": "", "task_id": task_id, "job_id": job_id, "callSID": call_sid,
        "summary": {"summary": summary, "confidence": 0.9},
        "sentiment": {"sentiment": sentiment, "confidence": 0.8},
        "category": {"category": category, "confidence": 0.7},
        "transcript": lines.join("\n") + "\n",
    })
    .to_string()
}

/// Posts a result to the callback `sends` times (after a short random delay each when
/// `delay`), counting those acknowledged.
async fn post_results(
    shared: std::sync::Arc<super::Shared>,
    callback: String,
    body: String,
    sends: u32,
    delay: bool,
) {
    let client = reqwest::Client::new();
    for _ in 0..sends {
        if delay {
            tokio::time::sleep(Duration::from_millis(50 + fastrand::u64(0..200))).await;
        }
        let ok = client
            .post(&callback)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            super::lock(&shared.exotel).webhooks_sent += 1;
        }
    }
}

/// `POST /exotel/v1/Accounts/{sid}/Calls/{call}/ExoVoiceAnalyze.json`
pub async fn exo_voice_analyze(
    axum::extract::State(shared): axum::extract::State<std::sync::Arc<super::Shared>>,
    axum::extract::Path((sid, call)): axum::extract::Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use base64::Engine;
    let (expected, account, n) = {
        let mut sim = super::lock(&shared.exotel);
        if let Some(code) = sim.submit_status {
            sim.refused_submissions += 1;
            let code = axum::http::StatusCode::from_u16(code)
                .unwrap_or(axum::http::StatusCode::SERVICE_UNAVAILABLE);
            return (code, "Service Unavailable").into_response();
        }
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", sim.api_key, sim.api_token));
        let n = {
            let e = sim.submissions.entry(call.clone()).or_default();
            *e += 1;
            *e
        };
        (format!("Basic {basic}"), sim.account_sid.clone(), n)
    };
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str())
        || sid != account
    {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            "Authentication is required",
        )
            .into_response();
    }
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let tasks: Vec<String> = req["insight_tasks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let known = ["summarization", "categorise", "sentiment", "transcript"];
    let bad = tasks.is_empty() || tasks.iter().any(|t| !known.contains(&t.as_str()));
    let no_categories = tasks.iter().any(|t| t == "categorise")
        && req["categories"].as_array().is_none_or(|a| a.is_empty());
    if bad || no_categories || call.starts_with("BAD") {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"request_id": "1cb6", "method": "POST", "http_code": 400,
                "ResponseData": {"Code": 400, "Message": "Invalid parameter", "Description": "Invalid insight task"}})),
        )
            .into_response();
    }
    let job_id = format!("{:08x}-job-{n}-{call}", fastrand::u32(..));
    let task_id = req["task_id"].as_str().unwrap_or_default().to_string();
    let callback = req["callback_url"].as_str().unwrap_or_default().to_string();
    let fate = fate(&call);
    let sends = match (fate, n) {
        (Fate::LostFirst, 1) => 0,
        (Fate::Twice, _) => 2,
        _ => 1,
    };
    if sends > 0 {
        let body = result_body(&call, &job_id, &task_id, fate);
        if super::lock(&shared.exotel).result_before_answer {
            // The result reaches the callback (and is acknowledged) before this answer leaves.
            post_results(shared.clone(), callback, body, sends, false).await;
        } else {
            tokio::spawn(post_results(shared.clone(), callback, body, sends, true));
        }
    }
    axum::Json(serde_json::json!({"request_id": "11a3", "method": "POST", "http_code": 200, "success": true, "reason": "",
        "ExoVoiceAnalyze": {"job_id": job_id, "task_id": task_id, "call_sid": call, "status": "queued"}}))
    .into_response()
}
