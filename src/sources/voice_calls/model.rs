//! The voice-calls API as the vendor spells it: the voice call object, EPA results, the
//! undocumented list envelope, and callsync's window cursor.

use serde::Deserialize;

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

pub use crate::sources::window::parse_time;

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
    fn transcript_offsets_parse() {
        assert_eq!(parse_offset_ms("00:00:04"), Some(4000));
        assert_eq!(parse_offset_ms("01:02:03.5"), Some(3_723_500));
        assert_eq!(parse_offset_ms("x"), None);
    }
}
