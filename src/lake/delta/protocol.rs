//! What callsync honours of a Delta table, checked before every commit it makes (appends,
//! files added again by recovery, compaction, the schema change of a new version) and before
//! `vacuum`. callsync writes its commits itself, so deltalake's own protocol check does not
//! run for them: this is its equivalent, stricter where callsync does less than delta-rs
//! (it enforces no constraint and writes no change-data files).
//!
//! Honoured: reader version 1; writer version 1 or 2 without column invariants; table
//! features `appendOnly` (callsync never removes rows: its compaction's removes carry
//! `dataChange = false`, which the spec allows on an append-only table). Everything else
//! another engine may have enabled (CHECK constraints, generated or identity columns, change
//! data feed, column mapping, deletion vectors, row tracking, in-commit timestamps, …) is
//! refused by name, and the table is left as it is.

use deltalake::kernel::{Protocol, StructType};
use serde_json::Value;

/// Writer features callsync's commits keep intact.
const HONOURED_WRITER_FEATURES: &[&str] = &["appendOnly"];

/// The features each legacy writer version implies (Delta protocol, "Table Features").
fn legacy_writer_features(version: i64) -> &'static [&'static str] {
    match version {
        0..=1 => &[],
        2 => &["appendOnly", "invariants"],
        3 => &["appendOnly", "invariants", "checkConstraints"],
        4 => &[
            "appendOnly",
            "invariants",
            "checkConstraints",
            "changeDataFeed",
            "generatedColumns",
        ],
        5 => &[
            "appendOnly",
            "invariants",
            "checkConstraints",
            "changeDataFeed",
            "generatedColumns",
            "columnMapping",
        ],
        _ => &[
            "appendOnly",
            "invariants",
            "checkConstraints",
            "changeDataFeed",
            "generatedColumns",
            "columnMapping",
            "identityColumns",
        ],
    }
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether any column carries `delta.invariants` (a writer-version-2 feature callsync does
/// not enforce).
fn has_invariants(schema: &StructType) -> bool {
    let text = serde_json::to_string(schema).unwrap_or_default();
    text.contains("delta.invariants")
}

/// Why callsync must not write to a table with this protocol and schema, or `None` when it
/// may: the features it does not honour, by name, and the protocol versions.
pub fn unsupported(protocol: &Protocol, schema: &StructType) -> Option<String> {
    let v = serde_json::to_value(protocol).unwrap_or(Value::Null);
    let reader = v
        .get("minReaderVersion")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let writer = v
        .get("minWriterVersion")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let mut refused: Vec<String> = Vec::new();
    match reader {
        0 | 1 => {}
        2 => refused.push("columnMapping".into()),
        _ => refused.extend(names(&v, "readerFeatures")),
    }
    let writer_features: Vec<String> = if writer >= 7 {
        names(&v, "writerFeatures")
    } else {
        legacy_writer_features(writer)
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    for f in writer_features {
        let honoured = HONOURED_WRITER_FEATURES.contains(&f.as_str())
            || (f == "invariants" && !has_invariants(schema));
        if !honoured && !refused.contains(&f) {
            refused.push(f);
        }
    }
    if reader > 3 || writer > 7 {
        refused.push(format!("protocol ({reader}, {writer})"));
    }
    if refused.is_empty() {
        return None;
    }
    Some(format!(
        "the table uses {} (protocol ({reader}, {writer})), which callsync does not honour, so it writes nothing to it; undo that change with the engine that made it, or give callsync a lake of its own",
        refused.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protocol(json: serde_json::Value) -> Protocol {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn only_the_features_callsync_honours_pass() {
        let schema = StructType::try_new(vec![]).unwrap();
        let ok = protocol(serde_json::json!({"minReaderVersion": 1, "minWriterVersion": 2}));
        assert_eq!(unsupported(&ok, &schema), None);
        let checks = protocol(serde_json::json!({"minReaderVersion": 1, "minWriterVersion": 3}));
        let why = unsupported(&checks, &schema).unwrap();
        assert!(
            why.contains("checkConstraints") && why.contains("(1, 3)"),
            "{why}"
        );
        let features = protocol(serde_json::json!({
            "minReaderVersion": 3, "minWriterVersion": 7,
            "readerFeatures": ["deletionVectors"],
            "writerFeatures": ["appendOnly", "deletionVectors", "rowTracking", "inCommitTimestamp"]
        }));
        let why = unsupported(&features, &schema).unwrap();
        for f in ["deletionVectors", "rowTracking", "inCommitTimestamp"] {
            assert!(why.contains(f), "{why}");
        }
        assert!(!why.contains("appendOnly"), "{why}");
        let append_only = protocol(serde_json::json!({
            "minReaderVersion": 1, "minWriterVersion": 7, "writerFeatures": ["appendOnly"]
        }));
        assert_eq!(unsupported(&append_only, &schema), None);
    }
}
