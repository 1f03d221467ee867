//! What sources produce: call rows borrowed from the vendor's bytes, appended straight into
//! Arrow builders of the call schema (no per-field allocation), and rejects.

use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::ArrowError;

use crate::schema::{call_schema, turn_fields, turn_item, utf8_item};

/// A set of call ids. foldhash (hashbrown's default hasher, seeded per process) hashes short
/// ids several times faster than the standard SipHash.
pub type KeySet = std::collections::HashSet<String, foldhash::fast::RandomState>;

/// A list-of-strings value: either a vendor string split on a separator (items trimmed,
/// empty ones dropped) or items already split.
#[derive(Debug, Clone, Copy)]
pub enum StrList<'a> {
    Split(&'a str, char),
    Items(&'a [String]),
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

/// One call in the shape of the call schema (see `schemas/calls.schema.json`), borrowing
/// its text from the record being read. Timestamps are microseconds since the epoch, UTC.
#[derive(Debug, Clone, Default)]
pub struct CallRow<'a> {
    pub call_id: &'a str,
    pub source_kind: &'static str,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub direction: Option<&'a str>,
    pub from_number: Option<&'a str>,
    pub to_number: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    pub agent_name: Option<&'a str>,
    pub queue_name: Option<&'a str>,
    pub campaign_id: Option<&'a str>,
    pub vendor_status: Option<&'a str>,
    pub language: Option<&'a str>,
    pub sentiment_score: Option<f64>,
    pub sentiment_label: Option<&'a str>,
    pub summary: Option<&'a str>,
    pub tags: Option<StrList<'a>>,
    pub topics: Option<StrList<'a>>,
    pub transcript: Option<&'a [Turn]>,
    pub survey_score: Option<f64>,
    pub recording_ref: Option<&'a str>,
    /// The category a vendor's analysis put the call in (schema version 2).
    pub category: Option<&'a str>,
    /// JSON of the record as received.
    pub raw: &'a str,
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
    /// What makes it the same record, where the raw text has parts the vendor re-issues on
    /// every response (`stable_fingerprint`); `None`: the raw text itself.
    pub fingerprint: Option<u64>,
}

/// A part of a vendor record that changes between two listings of the same record, left out
/// of its reject's fingerprint. Paths are field names, dotted into nested objects.
#[derive(Debug, Clone, Copy)]
pub enum Volatile {
    /// A URL signed afresh on every response (a recording link that expires): its query (the
    /// signature, the expiry) is left out, the rest of the URL kept.
    SignedUrl(&'static str),
    /// A field the vendor stamps at response time (a request id, a fetch time): left out.
    Stamp(&'static str),
}

/// The fingerprint of a record without its volatile parts: xxHash64 (seed 0) of its JSON
/// with those parts taken out (object keys in sorted order).
pub fn stable_fingerprint(record: &serde_json::Value, volatile: &[Volatile]) -> u64 {
    let mut v = record.clone();
    for part in volatile {
        let (path, signed) = match part {
            Volatile::SignedUrl(p) => (*p, true),
            Volatile::Stamp(p) => (*p, false),
        };
        let mut segments: Vec<&str> = path.split('.').collect();
        let Some(last) = segments.pop() else { continue };
        let mut at = Some(&mut v);
        for seg in segments {
            at = at.and_then(|o| o.get_mut(seg));
        }
        let Some(obj) = at.and_then(|o| o.as_object_mut()) else {
            continue;
        };
        if !signed {
            obj.remove(last);
        } else if let Some(serde_json::Value::String(url)) = obj.get_mut(last)
            && let Some((base, _query)) = url.split_once('?')
        {
            *url = base.to_string();
        }
    }
    twox_hash::XxHash64::oneshot(0, v.to_string().as_bytes())
}

impl Reject {
    /// What the state remembers of a reject, so that the same record re-listed (the lookback,
    /// a repair) is not rejected again: its key (the call id, or for a record without one a
    /// hash of its raw text) and a hash of its raw text (a changed record is judged again).
    /// xxHash64 with seed 0: stable across builds, so a state and a lake of another build agree.
    /// With a `fingerprint` (a record with volatile parts) that is the hash instead.
    pub fn identity(call_id: Option<&str>, raw: &str, fingerprint: Option<u64>) -> (String, i64) {
        let hash = fingerprint.unwrap_or_else(|| twox_hash::XxHash64::oneshot(0, raw.as_bytes()));
        let key = match call_id {
            Some(id) => id.to_string(),
            None => format!("raw:{hash:016x}"),
        };
        (key, hash as i64)
    }
}

/// UTC day (`YYYY-MM-DD`) of a microsecond timestamp.
pub fn utc_day(micros: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => "1970-01-01".to_string(),
    }
}

/// Appends a list value; an empty list is written as null.
fn append_list(b: &mut ListBuilder<StringBuilder>, v: Option<StrList<'_>>) {
    let mut n = 0;
    match v {
        Some(StrList::Split(s, sep)) => {
            for part in s.split(sep).map(str::trim).filter(|p| !p.is_empty()) {
                b.values().append_value(part);
                n += 1;
            }
        }
        Some(StrList::Items(items)) => {
            for item in items {
                b.values().append_value(item);
                n += 1;
            }
        }
        None => {}
    }
    b.append(n > 0);
}

/// Arrow builders for one batch of the call schema.
pub struct CallBatchBuilder {
    call_id: StringBuilder,
    source_kind: StringBuilder,
    started_at: TimestampMicrosecondBuilder,
    ended_at: TimestampMicrosecondBuilder,
    duration_ms: Int64Builder,
    direction: StringBuilder,
    from_number: StringBuilder,
    to_number: StringBuilder,
    agent_id: StringBuilder,
    agent_name: StringBuilder,
    queue_name: StringBuilder,
    campaign_id: StringBuilder,
    vendor_status: StringBuilder,
    language: StringBuilder,
    sentiment_score: Float64Builder,
    sentiment_label: StringBuilder,
    summary: StringBuilder,
    tags: ListBuilder<StringBuilder>,
    topics: ListBuilder<StringBuilder>,
    transcript: ListBuilder<StructBuilder>,
    survey_score: Float64Builder,
    recording_ref: StringBuilder,
    category: StringBuilder,
    raw: StringBuilder,
    len: usize,
}

impl Default for CallBatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl CallBatchBuilder {
    /// Empty builders.
    pub fn new() -> Self {
        Self::with_capacity(0, 0)
    }

    /// Builders sized for about `rows` rows whose `raw` text totals about `raw_bytes`, so a
    /// page is built without regrowing its buffers.
    pub fn with_capacity(rows: usize, raw_bytes: usize) -> Self {
        let ts = || TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
        // Short text: about 16 bytes a value.
        let text = || StringBuilder::with_capacity(rows, rows * 16);
        let list = || ListBuilder::with_capacity(text(), rows).with_field(utf8_item());
        CallBatchBuilder {
            call_id: text(),
            source_kind: text(),
            started_at: ts(),
            ended_at: ts(),
            duration_ms: Int64Builder::with_capacity(rows),
            direction: text(),
            from_number: text(),
            to_number: text(),
            agent_id: text(),
            agent_name: text(),
            queue_name: text(),
            campaign_id: text(),
            vendor_status: text(),
            language: text(),
            sentiment_score: Float64Builder::with_capacity(rows),
            sentiment_label: text(),
            summary: StringBuilder::with_capacity(rows, rows * 64),
            tags: list(),
            topics: list(),
            transcript: ListBuilder::new(StructBuilder::from_fields(turn_fields(), 0))
                .with_field(turn_item()),
            survey_score: Float64Builder::with_capacity(rows),
            recording_ref: text(),
            category: text(),
            raw: StringBuilder::with_capacity(rows, raw_bytes),
            len: 0,
        }
    }

    /// Rows appended since the last `finish`.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no row was appended since the last `finish`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one call.
    pub fn append(&mut self, r: &CallRow<'_>) {
        self.call_id.append_value(r.call_id);
        self.source_kind.append_value(r.source_kind);
        self.started_at.append_option(r.started_at);
        self.ended_at.append_option(r.ended_at);
        self.duration_ms.append_option(r.duration_ms);
        self.direction.append_option(r.direction);
        self.from_number.append_option(r.from_number);
        self.to_number.append_option(r.to_number);
        self.agent_id.append_option(r.agent_id);
        self.agent_name.append_option(r.agent_name);
        self.queue_name.append_option(r.queue_name);
        self.campaign_id.append_option(r.campaign_id);
        self.vendor_status.append_option(r.vendor_status);
        self.language.append_option(r.language);
        self.sentiment_score.append_option(r.sentiment_score);
        self.sentiment_label.append_option(r.sentiment_label);
        self.summary.append_option(r.summary);
        append_list(&mut self.tags, r.tags);
        append_list(&mut self.topics, r.topics);
        match r.transcript {
            Some(turns) => {
                let s = self.transcript.values();
                for t in turns {
                    s.field_builder::<StringBuilder>(0)
                        .expect("role is utf8")
                        .append_option(t.role.as_deref());
                    s.field_builder::<StringBuilder>(1)
                        .expect("speaker is utf8")
                        .append_option(t.speaker.as_deref());
                    s.field_builder::<StringBuilder>(2)
                        .expect("text is utf8")
                        .append_option(t.text.as_deref());
                    s.field_builder::<Int64Builder>(3)
                        .expect("offset_ms is int64")
                        .append_option(t.offset_ms);
                    s.append(true);
                }
                self.transcript.append(true);
            }
            None => self.transcript.append(false),
        }
        self.survey_score.append_option(r.survey_score);
        self.recording_ref.append_option(r.recording_ref);
        self.category.append_option(r.category);
        self.raw.append_value(r.raw);
        self.len += 1;
    }

    /// The rows appended so far as one batch; `extracted_at` (µs) is stamped on every row.
    /// The builders are emptied for the next batch.
    pub fn finish(&mut self, extracted_at: i64) -> Result<RecordBatch, ArrowError> {
        let n = self.len;
        self.len = 0;
        let mut extracted = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        extracted.append_value_n(extracted_at, n);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.call_id.finish()),
            Arc::new(self.source_kind.finish()),
            Arc::new(self.started_at.finish()),
            Arc::new(self.ended_at.finish()),
            Arc::new(self.duration_ms.finish()),
            Arc::new(self.direction.finish()),
            Arc::new(self.from_number.finish()),
            Arc::new(self.to_number.finish()),
            Arc::new(self.agent_id.finish()),
            Arc::new(self.agent_name.finish()),
            Arc::new(self.queue_name.finish()),
            Arc::new(self.campaign_id.finish()),
            Arc::new(self.vendor_status.finish()),
            Arc::new(self.language.finish()),
            Arc::new(self.sentiment_score.finish()),
            Arc::new(self.sentiment_label.finish()),
            Arc::new(self.summary.finish()),
            Arc::new(self.tags.finish()),
            Arc::new(self.topics.finish()),
            Arc::new(self.transcript.finish()),
            Arc::new(self.survey_score.finish()),
            Arc::new(self.recording_ref.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.raw.finish()),
            Arc::new(extracted.finish()),
        ];
        RecordBatch::try_new(call_schema(), columns)
    }
}

/// The lake-relative path of a call's recording: the call id when it is a safe file name
/// (`[A-Za-z0-9_-]{1,128}`), otherwise a hash of it; `ext` is reduced to `[a-z0-9]{1,8}`.
pub fn recording_path(source: &str, started_at_us: i64, call_id: &str, ext: &str) -> String {
    let safe = (1..=128).contains(&call_id.len())
        && call_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let name = if safe {
        call_id.to_string()
    } else {
        // FNV-1a, 64 bit: stable across versions and platforms, unlike std's hasher.
        let h = call_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("id-{h:016x}")
    };
    let ext: String = ext
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(8)
        .collect();
    let ext = if ext.is_empty() {
        "bin".to_string()
    } else {
        ext
    };
    format!(
        "recordings/source={source}/date={}/{name}.{ext}",
        utc_day(started_at_us)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_ignores_signatures_and_stamps_and_sees_every_other_change() {
        let vol = [Volatile::SignedUrl("a.url"), Volatile::Stamp("fetched")];
        let f = |v: serde_json::Value| stable_fingerprint(&v, &vol);
        let base =
            f(serde_json::json!({"id": "1", "a": {"url": "https://x/r.mp3?sig=1"}, "fetched": 5}));
        assert_eq!(
            base,
            f(serde_json::json!({"fetched": 9, "a": {"url": "https://x/r.mp3?sig=2"}, "id": "1"}))
        );
        assert_ne!(
            base,
            f(
                serde_json::json!({"id": "1", "a": {"url": "https://x/other.mp3?sig=1"}, "fetched": 5})
            )
        );
        assert_ne!(
            base,
            f(serde_json::json!({"id": "2", "a": {"url": "https://x/r.mp3?sig=1"}, "fetched": 5}))
        );
        // A record without the parts is fingerprinted whole.
        assert_eq!(
            f(serde_json::json!({"id": "1"})),
            f(serde_json::json!({"id": "1"}))
        );
    }

    #[test]
    fn recording_names_are_the_call_id_only_when_safe() {
        assert_eq!(
            recording_path("vc", 0, "vc_abc-123", "WAV"),
            "recordings/source=vc/date=1970-01-01/vc_abc-123.wav"
        );
        let p = recording_path("vc", 0, "../../etc/passwd", "mp3?x");
        assert!(
            p.starts_with("recordings/source=vc/date=1970-01-01/id-"),
            "{p}"
        );
        assert!(p.ends_with(".mp3x") && !p.contains(".."), "{p}");
        assert_ne!(p, recording_path("vc", 0, "../../etc/passwe", "mp3"));
        assert!(recording_path("vc", 0, "a", "").ends_with("/a.bin"));
    }

    use arrow_array::Array;
    use arrow_array::cast::AsArray;

    #[test]
    fn a_batch_matches_the_schema_with_lists_and_transcripts() {
        let turns = vec![Turn {
            role: Some("agent".into()),
            speaker: Some("bot".into()),
            text: Some("hello".into()),
            offset_ms: Some(5),
        }];
        let mut b = CallBatchBuilder::new();
        b.append(&CallRow {
            call_id: "1",
            source_kind: "voicegain",
            tags: Some(StrList::Split(" a| |b ", '|')),
            transcript: Some(&turns),
            raw: "{}",
            ..Default::default()
        });
        b.append(&CallRow {
            call_id: "2",
            source_kind: "voicegain",
            tags: Some(StrList::Split("", '|')),
            raw: "{}",
            ..Default::default()
        });
        let batch = b.finish(7).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), call_schema());
        let tags = batch.column_by_name("tags").unwrap().as_list::<i32>();
        assert_eq!(
            tags.value(0)
                .as_string::<i32>()
                .iter()
                .flatten()
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(tags.is_null(1), "an empty list is null");
        assert!(b.is_empty());
    }
}
