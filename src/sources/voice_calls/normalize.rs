//! voice-calls detail objects → call rows of the call schema (or a reject reason).

use crate::record::{CallBatchBuilder, CallRow, Turn};
use crate::sources::window::{optional_duration_ms, optional_time};

use super::KIND;
use super::model::{EpaResults, VoiceCall, parse_offset_ms, parse_time};

/// A call as fetched: the detail object, its text as received, and its EPA results (inline
/// or from `/epa-results`).
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub call: VoiceCall,
    pub raw: String,
    pub epa: Option<EpaResults>,
    /// The downloaded recording, if any.
    pub recording: Option<crate::sources::Attachment>,
}

/// Transcript turns: role as given, offset from `timestamp` (an offset from the call's start,
/// or an absolute time, which is made relative to `started_at`).
pub fn turns(call: &VoiceCall, started_at: Option<i64>) -> Option<Vec<Turn>> {
    let entries = call.transcript.as_ref()?;
    Some(
        entries
            .iter()
            .map(|e| Turn {
                role: e.role.clone(),
                speaker: None,
                text: e.text.clone(),
                offset_ms: e.timestamp.as_deref().and_then(|t| {
                    parse_offset_ms(t).or_else(|| {
                        let at = parse_time(t)?;
                        Some((at - started_at?) / 1000)
                    })
                }),
            })
            .collect(),
    )
}

/// Appends one fetched call; the `Err` is the reject reason.
pub fn append(b: &mut CallBatchBuilder, f: &Fetched) -> Result<(), String> {
    let c = &f.call;
    let id =
        c.id.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or("the call has no id")?;
    let start = c.start_time.as_deref().ok_or("the call has no startTime")?;
    let started_at =
        parse_time(start).ok_or_else(|| format!("startTime {start:?} is not RFC 3339"))?;
    let ended_at = optional_time("endTime", c.end_time.as_deref())?;
    let duration_ms = optional_duration_ms("durationSeconds", c.duration_seconds, 1000.0)?;
    let direction = c.direction.as_deref().map(str::to_ascii_lowercase);
    let turns = turns(c, Some(started_at));
    let survey = f
        .epa
        .as_ref()
        .or(c.epa_results.as_ref())
        .and_then(|e| e.calculated_score);
    b.append(&CallRow {
        call_id: id,
        source_kind: KIND,
        started_at: Some(started_at),
        ended_at,
        duration_ms,
        direction: direction.as_deref(),
        campaign_id: c.campaign_id.as_deref(),
        vendor_status: c.state.as_deref(),
        transcript: turns.as_deref(),
        survey_score: survey,
        // The recording URL is signed and expires: it is never stored; a downloaded recording
        // is referred to by its lake-relative path.
        recording_ref: f.recording.as_ref().map(|a| a.final_path.as_str()),
        raw: &f.raw,
        ..CallRow::default()
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float64Type;

    #[test]
    fn the_documented_example_maps_to_the_call_schema() {
        let raw = r#"{"id":"vc_abc123","campaignId":"camp_456","direction":"Outbound","state":"Completed",
            "startTime":"2024-01-15T10:30:00Z","endTime":"2024-01-15T10:35:12Z","durationSeconds":312,
            "transcript":[{"role":"agent","text":"Hello, this is...","timestamp":"00:00:01"},
                          {"role":"customer","text":"Hi, yes...","timestamp":"00:00:04"}],
            "epaResults":{"state":"Completed","calculatedScore":85.5}}"#;
        let f = Fetched {
            call: serde_json::from_str(raw).unwrap(),
            raw: raw.to_string(),
            epa: None,
            recording: None,
        };
        let mut b = CallBatchBuilder::new();
        append(&mut b, &f).unwrap();
        let batch = b.finish(0).unwrap();
        let s = |n: &str| {
            batch
                .column_by_name(n)
                .unwrap()
                .as_string::<i32>()
                .value(0)
                .to_string()
        };
        assert_eq!(s("direction"), "outbound");
        assert_eq!(s("campaign_id"), "camp_456");
        let score = batch
            .column_by_name("survey_score")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert_eq!(score.value(0), 85.5);
        let t = turns(&f.call, None).unwrap();
        assert_eq!(t[1].role.as_deref(), Some("customer"));
        assert_eq!(t[1].offset_ms, Some(4000));
    }

    #[test]
    fn a_call_without_a_start_time_is_rejected() {
        let f = Fetched {
            call: serde_json::from_str(r#"{"id":"x"}"#).unwrap(),
            ..Default::default()
        };
        let err = append(&mut CallBatchBuilder::new(), &f).unwrap_err();
        assert!(err.contains("startTime"));
    }
}
