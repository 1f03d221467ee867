//! The normalized call record every source produces, and the reject that replaces a bad one.

/// One call in the shape of the call schema (see `schemas/calls.schema.json`).
/// Timestamps are microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallRecord {
    pub call_id: String,
    pub source_kind: &'static str,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub direction: Option<String>,
    pub from_number: Option<String>,
    pub to_number: Option<String>,
    pub agent_id: Option<String>,
    pub agent_name: Option<String>,
    pub queue_name: Option<String>,
    pub campaign_id: Option<String>,
    pub vendor_status: Option<String>,
    pub language: Option<String>,
    pub sentiment_score: Option<f64>,
    pub sentiment_label: Option<String>,
    pub summary: Option<String>,
    pub tags: Option<Vec<String>>,
    pub topics: Option<Vec<String>>,
    pub transcript: Option<Vec<Turn>>,
    pub survey_score: Option<f64>,
    pub recording_ref: Option<String>,
    /// JSON of the record as received.
    pub raw: String,
}

/// One transcript turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Turn {
    /// `customer` or `agent` (or the vendor's own role where it gives one).
    pub role: Option<String>,
    /// Who spoke, as the vendor names them.
    pub speaker: Option<String>,
    pub text: Option<String>,
    /// Milliseconds from the start of the call.
    pub offset_ms: Option<i64>,
}

/// A record that could not be parsed or normalized: written to the rejects area with its
/// reason and raw text, counted, and passed over.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// The call id when it could be read.
    pub call_id: Option<String>,
    /// Why the record was rejected.
    pub error: String,
    /// The record as received (JSON object for CSV rows).
    pub raw: String,
}

/// What a source yields for each record it read.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Call(Box<CallRecord>),
    Reject(Reject),
}

/// UTC day (`YYYY-MM-DD`) of a microsecond timestamp, used as the partition date.
pub fn utc_day(micros: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => "1970-01-01".to_string(),
    }
}

/// Splits a `|`-separated list (Voicegain tags/topics); `None` when empty.
pub fn split_list(s: &str, sep: char) -> Option<Vec<String>> {
    let items: Vec<String> = s
        .split(sep)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if items.is_empty() { None } else { Some(items) }
}
