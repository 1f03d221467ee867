//! Simulated Exotel Bulk Call Details (`GET /v1/Accounts/<sid>/Calls.json`): the account's
//! call log with `DateCreated=gte:…;lte:…` (at most 31 days per query, nothing older than six
//! months), `SortBy=DateCreated:asc|desc` (desc by default), `PageSize` ≤ 100 (50 by default),
//! the next page by the `After` cursor in `Metadata` (also inside `NextPageUri`), times in
//! Asia/Kolkata without an offset, and calls listed only once they have ended (plus an optional
//! listing lag, as a backlog does).

use std::collections::HashMap;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Exotel's default account zone, Asia/Kolkata, is 5 h 30 min east of UTC (no DST).
pub const KOLKATA_OFFSET_SECS: i64 = 19_800;
/// At most this many days between `gte` and `lte`.
pub const MAX_QUERY_DAYS: i64 = 31;
/// Nothing created more than this many months ago is listed.
pub const MAX_AGE_MONTHS: u32 = 6;

/// One call of the simulated account.
#[derive(Debug, Clone, PartialEq)]
pub struct ExCall {
    pub sid: String,
    pub parent_call_sid: Option<String>,
    /// Start = creation, UTC µs (whole seconds).
    pub start_us: i64,
    /// UTC µs (whole seconds).
    pub end_us: i64,
    pub from: String,
    pub to: String,
    pub phone_number_sid: String,
    /// completed, no-answer, busy, failed, canceled.
    pub status: String,
    /// inbound, outbound-dial, outbound-api.
    pub direction: String,
    /// Seconds; `None` renders `null`.
    pub duration_secs: Option<i64>,
    pub price: Option<String>,
    pub answered_by: Option<String>,
    /// As the API gives it (some carry a signed query string).
    pub recording_url: Option<String>,
    /// The call is listed from this moment (UTC µs): its end, or later under a backlog.
    pub listed_at_us: i64,
    /// Renders `Duration` as `"n/a"`: a record the source must reject.
    pub malformed_duration: bool,
}

/// A UTC µs time as the account's local `YYYY-MM-DD HH:MM:SS`.
pub fn local(us: i64) -> String {
    chrono::DateTime::from_timestamp(us.div_euclid(1_000_000) + KOLKATA_OFFSET_SECS, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// A local `YYYY-MM-DD HH:MM:SS` of the account as UTC µs.
fn parse_local(s: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| (t.and_utc().timestamp() - KOLKATA_OFFSET_SECS) * 1_000_000)
}

impl ExCall {
    /// The recording URL as the lake should reference it: without its query string.
    pub fn recording_ref(&self) -> Option<String> {
        self.recording_url
            .as_deref()
            .map(|u| u.split('?').next().unwrap_or(u).to_string())
    }

    /// The call as the API renders it.
    pub fn json(&self, account_sid: &str) -> Value {
        let duration = if self.malformed_duration {
            Value::from("n/a")
        } else {
            self.duration_secs
                .map_or(Value::Null, |d| Value::from(d.to_string()))
        };
        json!({
            "Sid": self.sid,
            "ParentCallSid": self.parent_call_sid,
            "DateCreated": local(self.start_us),
            "DateUpdated": local(self.end_us + 4_000_000),
            "AccountSid": account_sid,
            "To": self.to,
            "From": self.from,
            "PhoneNumberSid": self.phone_number_sid,
            "Status": self.status,
            "StartTime": local(self.start_us),
            "EndTime": local(self.end_us),
            "Duration": duration,
            "Price": self.price,
            "Direction": self.direction,
            "AnsweredBy": self.answered_by,
            "RecordingUrl": self.recording_url,
            "Uri": format!("/v1/Accounts/{account_sid}/Calls/{}.json", self.sid),
        })
    }
}

/// The account's call log.
pub struct CallLog {
    calls: Vec<ExCall>,
    by_sid: HashMap<String, usize>,
    rng: fastrand::Rng,
    /// New calls are listed this many seconds after they end.
    pub listing_lag_secs: i64,
    /// List requests answered (refusals included).
    pub list_requests: u64,
    /// List requests refused with 400 (range, age, page size).
    pub refused: u64,
    /// Answer every list page with the same `After` cursor (a broken pager).
    pub stuck_cursor: bool,
    /// The last page still carries an `After` (its last call's cursor, or the one it was
    /// given when empty) beside `"NextPageUri": null`, as some API versions answer.
    pub after_on_last_page: bool,
    /// Sign each `RecordingUrl` afresh on every answer (its query changes), as Exotel does.
    pub signed_urls: bool,
}

impl Default for CallLog {
    fn default() -> Self {
        CallLog::new(7)
    }
}

impl CallLog {
    /// An empty log with a fixed seed.
    pub fn new(seed: u64) -> CallLog {
        CallLog {
            calls: Vec::new(),
            by_sid: HashMap::new(),
            rng: fastrand::Rng::with_seed(seed),
            listing_lag_secs: 0,
            list_requests: 0,
            refused: 0,
            stuck_cursor: false,
            after_on_last_page: false,
            signed_urls: false,
        }
    }

    /// Adds `n` calls created between `from_us` and `to_us` (whole seconds; some share a
    /// second, as busy accounts do), shaped like real traffic: most completed with a
    /// recording, the rest unanswered, busy or failed with empty fields; some child legs.
    /// Returns their sids.
    pub fn add_calls(&mut self, n: usize, from_us: i64, to_us: i64) -> Vec<String> {
        let mut sids = Vec::with_capacity(n);
        for _ in 0..n {
            let rng = &mut self.rng;
            let start = match self.calls.last() {
                Some(last) if rng.u8(0..15) == 0 && (from_us..to_us).contains(&last.start_us) => {
                    last.start_us / 1_000_000
                }
                _ => rng.i64(from_us..to_us.max(from_us + 1)) / 1_000_000,
            };
            let status = match rng.u8(0..100) {
                0..=64 => "completed",
                65..=79 => "no-answer",
                80..=89 => "busy",
                90..=96 => "failed",
                _ => "canceled",
            };
            let completed = status == "completed";
            let talk = if completed {
                rng.i64(3..1800)
            } else {
                rng.i64(0..45)
            };
            let direction = ["inbound", "outbound-dial", "outbound-api"][rng.usize(0..3)];
            let sid = format!("{:032x}", rng.u128(..));
            let account = "exotel30m";
            let recording_url = (completed && rng.u8(0..10) < 8).then(|| {
                if rng.bool() {
                    format!("https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/{account}/{sid}.mp3")
                } else {
                    format!(
                        "https://recordings.exotel.com/{account}/{sid}.mp3?AWSAccessKeyId=AKIA{:08X}&Expires={}&Signature=a%2Bb{:x}",
                        rng.u32(..),
                        start + 3600,
                        rng.u64(..)
                    )
                }
            });
            let end = start + talk;
            let call = ExCall {
                parent_call_sid: (direction == "outbound-dial" && rng.u8(0..4) == 0)
                    .then(|| format!("{:032x}", rng.u128(..))),
                start_us: start * 1_000_000,
                end_us: end * 1_000_000,
                from: format!("0{}", 9_000_000_000u64 + rng.u64(0..999_999_999)),
                to: format!("0{}", 8_000_000_000u64 + rng.u64(0..999_999_999)),
                phone_number_sid: format!("0804{:07}", rng.u32(0..10_000_000)),
                status: status.into(),
                direction: direction.into(),
                duration_secs: (status != "failed").then_some(talk),
                price: completed.then(|| format!("{:.3}", talk as f64 / 60.0 * 0.5)),
                answered_by: completed
                    .then(|| ["human", "human", "machine"][rng.usize(0..3)].into()),
                recording_url,
                listed_at_us: (end + self.listing_lag_secs) * 1_000_000,
                malformed_duration: false,
                sid: sid.clone(),
            };
            self.by_sid.insert(sid.clone(), self.calls.len());
            self.calls.push(call);
            sids.push(sid);
        }
        sids
    }

    /// Every call, listed or not.
    pub fn calls(&self) -> &[ExCall] {
        &self.calls
    }

    /// Every call, to change (a call the vendor lists late, a broken record).
    pub fn calls_mut(&mut self) -> &mut [ExCall] {
        &mut self.calls
    }

    /// The call with this sid.
    pub fn get(&self, sid: &str) -> Option<&ExCall> {
        self.by_sid.get(sid).map(|&i| &self.calls[i])
    }

    /// The calls the list shows at `now_us`: ended and past their listing lag.
    pub fn listed(&self, now_us: i64) -> impl Iterator<Item = &ExCall> {
        self.calls.iter().filter(move |c| c.listed_at_us <= now_us)
    }
}

/// A 400 as Exotel answers it.
pub fn bad_request(msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"RestException": {"Status": 400, "Message": msg}})),
    )
        .into_response()
}

/// The `After` cursor of a call: its creation second and sid, in sort order.
fn cursor_of(c: &ExCall) -> String {
    format!("{}_{}", c.start_us / 1_000_000, c.sid)
}

fn parse_cursor(s: &str) -> Option<(i64, String)> {
    let (t, sid) = s.split_once('_')?;
    Some((t.parse::<i64>().ok()? * 1_000_000, sid.to_string()))
}

/// `DateCreated=gte:…;lte:…` as UTC µs bounds (both inclusive).
fn date_created(v: &str) -> Option<(Option<i64>, Option<i64>)> {
    let (mut gte, mut lte) = (None, None);
    for part in v.split(';').filter(|p| !p.trim().is_empty()) {
        let (op, t) = part.split_once(':')?;
        let t = parse_local(t)?;
        match op.trim() {
            "gte" => gte = Some(t),
            "lte" => lte = Some(t),
            _ => return None,
        }
    }
    Some((gte, lte))
}

/// Answers a list query (no `Sid=`): the filters, sort, page size and cursor; `Err` is the
/// message of a refusal (400, counted in `refused`).
pub fn list(
    log: &mut CallLog,
    account_sid: &str,
    q: &HashMap<String, String>,
) -> Result<Value, &'static str> {
    let answer = list_or_refuse(log, account_sid, q);
    if answer.is_err() {
        log.refused += 1;
    }
    answer
}

fn list_or_refuse(
    log: &mut CallLog,
    account_sid: &str,
    q: &HashMap<String, String>,
) -> Result<Value, &'static str> {
    log.list_requests += 1;
    let now = chrono::Utc::now();
    let now_us = now.timestamp_micros();
    let size = match q.get("PageSize").map(|s| s.parse::<usize>()) {
        None => 50,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => {
            return Err("PageSize must be between 1 and 100");
        }
    };
    let oldest = now
        .checked_sub_months(chrono::Months::new(MAX_AGE_MONTHS))
        .unwrap_or(now)
        .timestamp_micros();
    let (gte, lte) = match q.get("DateCreated") {
        // The default: the last 31 days.
        None => (Some(now_us - MAX_QUERY_DAYS * 86_400_000_000), Some(now_us)),
        Some(v) => match date_created(v) {
            Some(b) => b,
            None => {
                return Err("DateCreated must be gte:YYYY-MM-DD HH:MM:SS;lte:YYYY-MM-DD HH:MM:SS");
            }
        },
    };
    let (gte, lte) = (gte.unwrap_or(oldest), lte.unwrap_or(now_us));
    if lte - gte > MAX_QUERY_DAYS * 86_400_000_000 {
        return Err("DateCreated range cannot be more than a month (31 days)");
    }
    if gte < oldest {
        return Err("Call records older than 6 months cannot be fetched");
    }
    let desc = match q.get("SortBy").map(String::as_str) {
        None | Some("DateCreated:desc") => true,
        Some("DateCreated:asc") => false,
        Some(_) => {
            return Err("SortBy must be DateCreated:asc or DateCreated:desc");
        }
    };
    let after = q.get("After").and_then(|a| parse_cursor(a));
    let mut hits: Vec<&ExCall> = log
        .listed(now_us)
        .filter(|c| c.start_us >= gte && c.start_us <= lte)
        .collect();
    let total = hits.len();
    hits.sort_by(|a, b| (a.start_us, &a.sid).cmp(&(b.start_us, &b.sid)));
    if desc {
        hits.reverse();
    }
    if let Some((t, sid)) = &after {
        hits.retain(|c| {
            let k = (c.start_us, &c.sid);
            if desc { k < (*t, sid) } else { k > (*t, sid) }
        });
    }
    let more = hits.len() > size;
    hits.truncate(size);
    let next_after = if log.stuck_cursor {
        // A broken pager: the cursor it was given (or the first call's) comes back.
        q.get("After")
            .cloned()
            .or_else(|| hits.first().map(|c| cursor_of(c)))
    } else if more {
        hits.last().map(|c| cursor_of(c))
    } else {
        None
    };
    // The last page's `After`, where this API version sends one: never a next page.
    let after_field = if next_after.is_none() && log.after_on_last_page {
        hits.last()
            .map(|c| cursor_of(c))
            .or_else(|| q.get("After").cloned())
    } else {
        next_after.clone()
    };
    let base_query = |after: Option<&str>| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in q.iter().filter(|(k, _)| k.as_str() != "After") {
            s.append_pair(k, v);
        }
        if let Some(a) = after {
            s.append_pair("After", a);
        }
        format!("/v1/Accounts/{account_sid}/Calls.json?{}", s.finish())
    };
    Ok(json!({
        "Metadata": {
            "Total": total,
            "PageSize": size,
            "FirstPageUri": base_query(None),
            "PrevPageUri": null,
            "NextPageUri": next_after.as_deref().map(|a| base_query(Some(a))),
            "After": after_field,
        },
        "Calls": hits.iter().map(|c| {
            let mut v = c.json(account_sid);
            if log.signed_urls
                && let Some(Value::String(url)) = v.get_mut("RecordingUrl")
            {
                let n = log.list_requests;
                *url = format!("{url}?Expires={n}&Signature={:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            }
            v
        }).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_round_trip_through_the_account_zone() {
        let us = 1_763_596_800_000_000;
        assert_eq!(local(us), "2025-11-20 05:30:00");
        assert_eq!(parse_local(&local(us)), Some(us));
        assert_eq!(
            date_created("gte:2025-11-20 05:30:00;lte:2025-11-20 06:30:00"),
            Some((Some(us), Some(us + 3_600_000_000)))
        );
        assert_eq!(date_created("between:x"), None);
    }
}
