//! The voice-calls API as the vendor spells it: the voice call object, EPA results, the
//! undocumented list envelope, and callsync's window cursor.

use serde::{Deserialize, Serialize};

/// A voice call (list item or detail). Only the fields callsync maps are typed; the whole
/// object is kept as `raw`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoiceCall {
    pub id: Option<String>,
    pub campaign_id: Option<String>,
    pub direction: Option<String>,
    pub state: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub duration_seconds: Option<f64>,
    pub transcript: Option<Vec<TranscriptEntry>>,
    pub epa_results: Option<EpaResults>,
    pub created_at: Option<String>,
}

/// One transcript entry; `timestamp` is an offset like `00:00:04` from the call's start.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TranscriptEntry {
    pub role: Option<String>,
    pub text: Option<String>,
    pub timestamp: Option<String>,
}

/// Post-call survey (EPA) results, inline or from `/epa-results`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpaResults {
    pub state: Option<String>,
    pub completion_reason: Option<String>,
    pub calculated_score: Option<f64>,
}

/// The stored cursor: every call that started before `from` is exported (or was still
/// open, in which case `from` holds at its start time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcCursor {
    /// RFC 3339, UTC.
    pub from: String,
}

/// The list's array: the envelope is undocumented, so a bare array or an object whose array
/// is under `items`, `data`, `results` or `voiceCalls` is accepted.
pub fn list_items(body: &serde_json::Value) -> Option<&Vec<serde_json::Value>> {
    match body {
        serde_json::Value::Array(a) => Some(a),
        serde_json::Value::Object(o) => ["items", "data", "results", "voiceCalls"]
            .iter()
            .find_map(|k| o.get(*k).and_then(|v| v.as_array())),
        _ => None,
    }
}

/// Parses an RFC 3339 time into µs since the epoch; a time without an offset is read as UTC.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}

/// A transcript offset (`HH:MM:SS`, `MM:SS` or seconds, fractions allowed) in milliseconds.
pub fn parse_offset_ms(s: &str) -> Option<i64> {
    let mut total = 0.0f64;
    for part in s.trim().split(':') {
        let v: f64 = part.parse().ok()?;
        if !v.is_finite() || v < 0.0 {
            return None;
        }
        total = total * 60.0 + v;
    }
    Some((total * 1000.0).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_envelope_is_accepted() {
        for body in [
            r#"[{"id":"a"}]"#,
            r#"{"items":[{"id":"a"}]}"#,
            r#"{"data":[{"id":"a"}],"page":1}"#,
            r#"{"results":[{"id":"a"}]}"#,
            r#"{"voiceCalls":[{"id":"a"}]}"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(list_items(&v).map(Vec::len), Some(1), "{body}");
        }
        let v: serde_json::Value = serde_json::from_str(r#"{"calls":[]}"#).unwrap();
        assert!(list_items(&v).is_none());
    }

    #[test]
    fn times_and_offsets_parse() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:01"), Some(1_000_000));
        assert_eq!(parse_time("1970-01-01T01:00:01+01:00"), Some(1_000_000));
        assert_eq!(parse_offset_ms("00:00:04"), Some(4000));
        assert_eq!(parse_offset_ms("01:02:03.5"), Some(3_723_500));
        assert_eq!(parse_offset_ms("x"), None);
    }
}
