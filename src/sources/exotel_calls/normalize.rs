//! Exotel calls → rows of the call schema (or a reject reason): local times to UTC, the
//! duration in ms, the direction in two words, the recording URL without its query string.

use chrono_tz::Tz;

use crate::record::{CallBatchBuilder, CallRow};
use crate::sources::exotel_monitor::normalize::local_time;

use super::KIND;
use super::model::{Call, direction};

/// An optional local time field (empty counts as absent); the `Err` names it.
pub fn optional_local(tz: Tz, field: &str, v: Option<&str>) -> Result<Option<i64>, String> {
    match v.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => local_time(tz, field, v).map(Some),
    }
}

/// A call's start in UTC µs: `StartTime`, else `DateCreated` (a call that never connected
/// may have no start). The `Err` is the reject reason.
pub fn started_at(tz: Tz, c: &Call) -> Result<i64, String> {
    match optional_local(tz, "StartTime", c.start_time.as_deref())? {
        Some(t) => Ok(t),
        None => optional_local(tz, "DateCreated", c.date_created.as_deref())?
            .ok_or_else(|| "the call has neither StartTime nor DateCreated".to_string()),
    }
}

/// A text field, trimmed; empty counts as absent.
fn text(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Appends one call; `raw` is the object as received. The `Err` is the reject reason.
pub fn append(b: &mut CallBatchBuilder, tz: Tz, c: &Call, raw: &str) -> Result<(), String> {
    let id = c.sid.trim();
    if id.is_empty() {
        return Err("the call has no Sid".into());
    }
    let started_at = started_at(tz, c)?;
    let ended_at = optional_local(tz, "EndTime", c.end_time.as_deref())?;
    let duration_ms = c.duration_secs()?.map(|s| (s * 1000.0).round() as i64);
    b.append(&CallRow {
        call_id: id,
        source_kind: KIND,
        started_at: Some(started_at),
        ended_at,
        duration_ms,
        direction: c.direction.as_deref().and_then(direction),
        from_number: text(&c.from),
        to_number: text(&c.to),
        vendor_status: text(&c.status),
        recording_ref: c.recording_ref(),
        raw,
        ..CallRow::default()
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_documented_call_becomes_a_utc_row_and_a_broken_one_a_reason() {
        let raw = r#"{"Sid":"b6cf","ParentCallSid":null,"DateCreated":"2026-11-20 10:00:00","DateUpdated":"2026-11-20 10:05:04",
            "AccountSid":"exotel30m","To":"08012345678","From":"09876543210","PhoneNumberSid":"08039591234",
            "Status":"completed","StartTime":"2026-11-20 10:00:00","EndTime":"2026-11-20 10:05:00","Duration":"300",
            "Price":"1.500","Direction":"outbound-api","AnsweredBy":"human","RecordingUrl":"https://r.exotel.com/b6cf.mp3?sig=x"}"#;
        let c: Call = serde_json::from_str(raw).unwrap();
        let tz: Tz = "Asia/Kolkata".parse().unwrap();
        // 10:00 in Kolkata is 04:30 UTC.
        assert_eq!(started_at(tz, &c), Ok(1_795_149_000_000_000));
        let mut b = CallBatchBuilder::new();
        append(&mut b, tz, &c, raw).unwrap();
        assert_eq!(b.len(), 1);
        let broken: Call =
            serde_json::from_str(r#"{"Sid":"x","StartTime":"20/11/2026 10:00"}"#).unwrap();
        assert!(
            append(&mut b, tz, &broken, "{}")
                .unwrap_err()
                .contains("StartTime")
        );
        let never: Call = serde_json::from_str(
            r#"{"Sid":"y","StartTime":"","DateCreated":"2026-11-20 10:00:00","Status":"failed"}"#,
        )
        .unwrap();
        assert_eq!(started_at(tz, &never), Ok(1_795_149_000_000_000));
        let nothing: Call = serde_json::from_str(r#"{"Sid":"z"}"#).unwrap();
        assert!(append(&mut b, tz, &nothing, "{}").is_err());
    }
}
