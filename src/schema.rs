//! The call schema in Arrow, versioned and checked against `schemas/calls.schema.json`.

use std::sync::{Arc, LazyLock};

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// Bumped whenever a column is renamed or retyped; written to every Parquet file's
/// key-value metadata as [`SCHEMA_VERSION_KEY`].
pub const SCHEMA_VERSION: u32 = 2;

/// The Parquet key-value metadata key that carries [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "callsync.schema_version";

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The fields of one transcript turn.
pub fn turn_fields() -> Fields {
    Fields::from(vec![
        utf8("role"),
        utf8("speaker"),
        utf8("text"),
        Field::new("offset_ms", DataType::Int64, true),
    ])
}

/// The item field of a `List<Utf8>` column.
pub fn utf8_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Utf8, true))
}

/// The item field of the transcript column.
pub fn turn_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(turn_fields()), true))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("call_id", DataType::Utf8, false),
        Field::new("source_kind", DataType::Utf8, false),
        Field::new("started_at", timestamp(), true),
        Field::new("ended_at", timestamp(), true),
        Field::new("duration_ms", DataType::Int64, true),
        utf8("direction"),
        utf8("from_number"),
        utf8("to_number"),
        utf8("agent_id"),
        utf8("agent_name"),
        utf8("queue_name"),
        utf8("campaign_id"),
        utf8("vendor_status"),
        utf8("language"),
        Field::new("sentiment_score", DataType::Float64, true),
        utf8("sentiment_label"),
        utf8("summary"),
        Field::new("tags", DataType::List(utf8_item()), true),
        Field::new("topics", DataType::List(utf8_item()), true),
        Field::new("transcript", DataType::List(turn_item()), true),
        Field::new("survey_score", DataType::Float64, true),
        utf8("recording_ref"),
        utf8("category"),
        utf8("raw"),
        Field::new("extracted_at", timestamp(), false),
    ]))
});

/// The Arrow schema of the `calls` table.
pub fn call_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// The version of the `monitor_legs` schema (its own, in the same metadata key).
pub const MONITOR_LEGS_SCHEMA_VERSION: u32 = 1;

static MONITOR_LEGS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("leg_sid", DataType::Utf8, false),
        Field::new("delivery_key", DataType::Utf8, false),
        utf8("call_sid"),
        utf8("account_sid"),
        utf8("phone_number"),
        utf8("status"),
        utf8("origin"),
        utf8("last_action"),
        utf8("custom_field"),
        utf8("event_type"),
        Field::new("date_created", timestamp(), true),
        Field::new("date_updated", timestamp(), true),
        Field::new("start_time", timestamp(), true),
        Field::new("end_time", timestamp(), true),
        Field::new("on_call_duration_s", DataType::Int64, true),
        utf8("raw"),
        Field::new("received_at", timestamp(), false),
    ]))
});

/// The Arrow schema of the `monitor_legs` table (Exotel Listen/Whisper/Barge legs).
pub fn monitor_legs_schema() -> SchemaRef {
    MONITOR_LEGS.clone()
}

/// A table of the lake: its schema, its key column (exactly once per key and source), the
/// timestamp column whose UTC day partitions it, and its schema version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dataset {
    #[default]
    Calls,
    MonitorLegs,
}

impl Dataset {
    /// The directory under the lake root.
    pub fn dir(self) -> &'static str {
        match self {
            Dataset::Calls => "calls",
            Dataset::MonitorLegs => "monitor_legs",
        }
    }
    pub fn schema(self) -> SchemaRef {
        match self {
            Dataset::Calls => call_schema(),
            Dataset::MonitorLegs => monitor_legs_schema(),
        }
    }
    pub fn key_column(self) -> &'static str {
        match self {
            Dataset::Calls => "call_id",
            Dataset::MonitorLegs => "delivery_key",
        }
    }
    /// The column whose day is used when the partition column is empty.
    pub fn fallback_partition_column(self) -> &'static str {
        match self {
            Dataset::Calls => "extracted_at",
            Dataset::MonitorLegs => "received_at",
        }
    }
    pub fn partition_column(self) -> &'static str {
        match self {
            Dataset::Calls => "started_at",
            Dataset::MonitorLegs => "start_time",
        }
    }
    pub fn version(self) -> u32 {
        match self {
            Dataset::Calls => SCHEMA_VERSION,
            Dataset::MonitorLegs => MONITOR_LEGS_SCHEMA_VERSION,
        }
    }
}

/// The short type name used in `schemas/calls.schema.json`.
pub fn type_name(dt: &DataType) -> String {
    match dt {
        DataType::Utf8 => "utf8".into(),
        DataType::Int64 => "int64".into(),
        DataType::Float64 => "float64".into(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) => format!("timestamp[us, {tz}]"),
        DataType::List(item) => format!("list<{}>", type_name(item.data_type())),
        DataType::Struct(fields) => {
            let inner: Vec<String> = fields
                .iter()
                .map(|f| format!("{}: {}", f.name(), type_name(f.data_type())))
                .collect();
            format!("struct<{}>", inner.join(", "))
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_schema_equals_the_canonical_schema_file() {
        check(Dataset::Calls, "calls");
        check(Dataset::MonitorLegs, "monitor_legs");
    }

    fn check(dataset: Dataset, name: &str) {
        let path = format!("{}/schemas/{name}.schema.json", env!("CARGO_MANIFEST_DIR"));
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(
            doc["schema_version"].as_u64(),
            Some(dataset.version() as u64)
        );
        let want: Vec<(String, String, bool)> = doc["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap().to_string(),
                    f["type"].as_str().unwrap().to_string(),
                    f["nullable"].as_bool().unwrap(),
                )
            })
            .collect();
        let got: Vec<(String, String, bool)> = dataset
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), type_name(f.data_type()), f.is_nullable()))
            .collect();
        assert_eq!(got, want);
    }
}
