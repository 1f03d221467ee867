//! Builds Arrow record batches of the call schema from `CallRecord`s.

use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::ArrowError;

use crate::record::CallRecord;
use crate::schema::{call_schema, turn_fields, turn_item, utf8_item};

fn strings<'a>(
    records: &'a [CallRecord],
    f: impl Fn(&'a CallRecord) -> Option<&'a str>,
) -> ArrayRef {
    let bytes: usize = records.iter().map(|r| f(r).map_or(0, str::len)).sum();
    let mut b = StringBuilder::with_capacity(records.len(), bytes);
    for r in records {
        b.append_option(f(r));
    }
    Arc::new(b.finish())
}

fn timestamps(records: &[CallRecord], f: impl Fn(&CallRecord) -> Option<i64>) -> ArrayRef {
    let mut b = TimestampMicrosecondBuilder::with_capacity(records.len()).with_timezone("UTC");
    for r in records {
        b.append_option(f(r));
    }
    Arc::new(b.finish())
}

fn int64s(records: &[CallRecord], f: impl Fn(&CallRecord) -> Option<i64>) -> ArrayRef {
    let mut b = Int64Builder::with_capacity(records.len());
    for r in records {
        b.append_option(f(r));
    }
    Arc::new(b.finish())
}

fn float64s(records: &[CallRecord], f: impl Fn(&CallRecord) -> Option<f64>) -> ArrayRef {
    let mut b = Float64Builder::with_capacity(records.len());
    for r in records {
        b.append_option(f(r));
    }
    Arc::new(b.finish())
}

fn string_lists(
    records: &[CallRecord],
    f: impl Fn(&CallRecord) -> Option<&Vec<String>>,
) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new()).with_field(utf8_item());
    for r in records {
        match f(r) {
            Some(items) => {
                for s in items {
                    b.values().append_value(s);
                }
                b.append(true);
            }
            None => b.append(false),
        }
    }
    Arc::new(b.finish())
}

fn transcripts(records: &[CallRecord]) -> ArrayRef {
    let fields = turn_fields();
    let turns = StructBuilder::from_fields(fields, 0);
    let mut b = ListBuilder::new(turns).with_field(turn_item());
    for r in records {
        match &r.transcript {
            Some(turns) => {
                let s = b.values();
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
                b.append(true);
            }
            None => b.append(false),
        }
    }
    Arc::new(b.finish())
}

/// One record batch of the call schema; `extracted_at` is stamped on every row.
pub fn build_batch(records: &[CallRecord], extracted_at: i64) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        strings(records, |r| Some(r.call_id.as_str())),
        strings(records, |r| Some(r.source_kind)),
        timestamps(records, |r| r.started_at),
        timestamps(records, |r| r.ended_at),
        int64s(records, |r| r.duration_ms),
        strings(records, |r| r.direction.as_deref()),
        strings(records, |r| r.from_number.as_deref()),
        strings(records, |r| r.to_number.as_deref()),
        strings(records, |r| r.agent_id.as_deref()),
        strings(records, |r| r.agent_name.as_deref()),
        strings(records, |r| r.queue_name.as_deref()),
        strings(records, |r| r.campaign_id.as_deref()),
        strings(records, |r| r.vendor_status.as_deref()),
        strings(records, |r| r.language.as_deref()),
        float64s(records, |r| r.sentiment_score),
        strings(records, |r| r.sentiment_label.as_deref()),
        strings(records, |r| r.summary.as_deref()),
        string_lists(records, |r| r.tags.as_ref()),
        string_lists(records, |r| r.topics.as_ref()),
        transcripts(records),
        float64s(records, |r| r.survey_score),
        strings(records, |r| r.recording_ref.as_deref()),
        strings(records, |r| Some(r.raw.as_str())),
        timestamps(records, |_| Some(extracted_at)),
    ];
    RecordBatch::try_new(call_schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Turn;

    #[test]
    fn a_batch_matches_the_schema_with_lists_and_transcripts() {
        let recs = vec![
            CallRecord {
                call_id: "1".into(),
                source_kind: "voicegain",
                tags: Some(vec!["a".into(), "b".into()]),
                transcript: Some(vec![Turn {
                    role: Some("agent".into()),
                    speaker: Some("bot".into()),
                    text: Some("hello".into()),
                    offset_ms: Some(5),
                }]),
                ..Default::default()
            },
            CallRecord {
                call_id: "2".into(),
                source_kind: "voicegain",
                ..Default::default()
            },
        ];
        let b = build_batch(&recs, 0).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.schema(), call_schema());
    }
}
