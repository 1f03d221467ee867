//! Exotel's v1 call details as Exotel spells them: the bulk answer (`Metadata`, `Calls`) and a
//! call (`Sid`, `DateCreated`, `StartTime`, `Duration` as a string, …), times in the account's
//! time zone without an offset.

use serde::Deserialize;

/// One call of the call-details API (`Calls.json` answers `{"Metadata": …, "Calls": [...]}`,
/// `Calls/<sid>.json` answers `{"Call": {...}}`). Only what callsync maps is typed; the object
/// is kept whole as `raw`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Call {
    #[serde(rename = "Sid")]
    pub sid: String,
    #[serde(rename = "ParentCallSid", default)]
    pub parent_call_sid: Option<String>,
    /// When the call was created (what `DateCreated=` filters on), local time.
    #[serde(rename = "DateCreated", default)]
    pub date_created: Option<String>,
    #[serde(rename = "StartTime", default)]
    pub start_time: Option<String>,
    #[serde(rename = "EndTime", default)]
    pub end_time: Option<String>,
    /// Seconds, as a string (a number is accepted too).
    #[serde(rename = "Duration", default)]
    pub duration: Option<serde_json::Value>,
    /// inbound, outbound-dial, outbound-api.
    #[serde(rename = "Direction", default)]
    pub direction: Option<String>,
    #[serde(rename = "From", default)]
    pub from: Option<String>,
    #[serde(rename = "To", default)]
    pub to: Option<String>,
    /// completed, failed, busy, no-answer, canceled, …
    #[serde(rename = "Status", default)]
    pub status: Option<String>,
    #[serde(rename = "RecordingUrl", default)]
    pub recording_url: Option<String>,
}

/// The bulk answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CallsAnswer {
    #[serde(rename = "Metadata", default)]
    pub metadata: Metadata,
    /// Kept as JSON: a malformed call is a reject, not a failed page.
    #[serde(rename = "Calls", default)]
    pub calls: Vec<serde_json::Value>,
}

/// A field that is present, `null` or not (an absent one is `None` by `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The paging part of the bulk answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    /// The next page: a URI relative to the API host, `null` on the last page. `None`: the
    /// field is absent; `Some(None)`: an explicit `null`, which ends the window whatever
    /// `After` says (a last page may still carry the cursor of its last call).
    #[serde(rename = "NextPageUri", default, deserialize_with = "present")]
    pub next_page_uri: Option<Option<String>>,
    /// The cursor of the next page (also inside `NextPageUri`).
    #[serde(rename = "After", default)]
    pub after: Option<serde_json::Value>,
}

impl Call {
    /// The duration in seconds: `Err` names a value that is not a number of seconds; an
    /// empty or absent one is `None` (a failed call has none).
    pub fn duration_secs(&self) -> Result<Option<f64>, String> {
        match &self.duration {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(n)) => Ok(n.as_f64()),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|d| d.is_finite() && *d >= 0.0)
                .map(Some)
                .ok_or_else(|| format!("Duration {s:?} is not a number of seconds")),
            Some(other) => Err(format!("Duration {other} is not a number of seconds")),
        }
    }

    /// The recording URL without its query string (a signed URL expires; the object does
    /// not), `None` when the call has no recording.
    pub fn recording_ref(&self) -> Option<&str> {
        let url = self.recording_url.as_deref()?.trim();
        let bare = url.split(['?', '#']).next().unwrap_or(url);
        (!bare.is_empty()).then_some(bare)
    }
}

/// Exotel's call directions in the schema's two words.
pub fn direction(d: &str) -> Option<&'static str> {
    let d = d.trim().to_ascii_lowercase();
    if d.starts_with("inbound") || d == "incoming" {
        Some("inbound")
    } else if d.starts_with("outbound") || d == "outgoing" {
        Some("outbound")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_recordings_and_directions_read_as_documented() {
        let c: Call = serde_json::from_str(
            r#"{"Sid":"a","Duration":"42","RecordingUrl":"https://r.exotel.com/x/a.mp3?Signature=s%2B&Expires=1","Direction":"outbound-api"}"#,
        )
        .unwrap();
        assert_eq!(c.duration_secs(), Ok(Some(42.0)));
        assert_eq!(c.recording_ref(), Some("https://r.exotel.com/x/a.mp3"));
        assert_eq!(direction(c.direction.as_deref().unwrap()), Some("outbound"));
        let c: Call =
            serde_json::from_str(r#"{"Sid":"b","Duration":null,"RecordingUrl":""}"#).unwrap();
        assert_eq!((c.duration_secs(), c.recording_ref()), (Ok(None), None));
        let c: Call = serde_json::from_str(r#"{"Sid":"c","Duration":"n/a"}"#).unwrap();
        assert!(c.duration_secs().unwrap_err().contains("n/a"));
        assert_eq!(direction("outbound-dial"), Some("outbound"));
        assert_eq!(direction("inbound"), Some("inbound"));
        assert_eq!(direction("sideways"), None);
    }
}
