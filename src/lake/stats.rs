//! Delta statistics of a data file, from the Parquet footer just written: `numRecords`, and
//! `minValues`, `maxValues`, `nullCount` for the top-level columns that carry Parquet
//! statistics (the writer keeps them on the columns readers prune on). Readers skip files
//! with them; a column left out is simply not skipped on.

use arrow_schema::{DataType, Schema};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;
use serde_json::{Map, Value};

/// Longest text kept as a min or max (longer values are left out, never truncated: a cut
/// maximum would be below the real one).
const MAX_TEXT: usize = 256;

/// One column's bounds across the file's row groups.
#[derive(Default)]
struct Bounds {
    /// False once a row group lacks a bound (the file-wide one is then unknown).
    complete: bool,
    nulls: Option<u64>,
    seen: bool,
}

/// A typed bound and how it compares.
#[derive(PartialEq, PartialOrd)]
enum Scalar {
    Int(i64),
    Float(f64),
    Text(String),
}

fn scalars(s: &Statistics) -> (Option<Scalar>, Option<Scalar>) {
    match s {
        Statistics::Int64(v) => (
            v.min_opt().map(|x| Scalar::Int(*x)),
            v.max_opt().map(|x| Scalar::Int(*x)),
        ),
        Statistics::Int32(v) => (
            v.min_opt().map(|x| Scalar::Int(i64::from(*x))),
            v.max_opt().map(|x| Scalar::Int(i64::from(*x))),
        ),
        Statistics::Double(v) => (
            v.min_opt()
                .filter(|x| x.is_finite())
                .map(|x| Scalar::Float(*x)),
            v.max_opt()
                .filter(|x| x.is_finite())
                .map(|x| Scalar::Float(*x)),
        ),
        Statistics::ByteArray(v) => {
            let text = |b: Option<&parquet::data_type::ByteArray>| {
                b.and_then(|b| std::str::from_utf8(b.data()).ok())
                    .filter(|t| t.chars().count() <= MAX_TEXT)
                    .map(|t| Scalar::Text(t.to_string()))
            };
            (text(v.min_opt()), text(v.max_opt()))
        }
        _ => (None, None),
    }
}

/// A bound as Delta writes it: timestamps in UTC at millisecond precision (a minimum rounded
/// down, a maximum rounded up, so both stay true bounds).
fn json(v: Scalar, dt: &DataType, is_max: bool) -> Option<Value> {
    match (v, dt) {
        (Scalar::Int(us), DataType::Timestamp(_, _)) => {
            let ms = if is_max {
                us.div_euclid(1000) + i64::from(us.rem_euclid(1000) != 0)
            } else {
                us.div_euclid(1000)
            };
            let t = chrono::DateTime::from_timestamp_millis(ms)?;
            Some(Value::from(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()))
        }
        (Scalar::Int(i), _) => Some(Value::from(i)),
        (Scalar::Float(f), _) => Some(Value::from(f)),
        (Scalar::Text(t), _) => Some(Value::from(t)),
    }
}

/// The Delta `stats` JSON of a file written with `schema`.
pub fn delta_stats(meta: &ParquetMetaData, schema: &Schema) -> String {
    let fields = schema.fields();
    let mut bounds: Vec<Bounds> = fields.iter().map(|_| Bounds::default()).collect();
    let mut typed: Vec<(Option<Scalar>, Option<Scalar>)> =
        fields.iter().map(|_| (None, None)).collect();
    for rg in meta.row_groups() {
        for col in rg.columns() {
            let parts = col.column_path().parts();
            if parts.len() != 1 {
                continue;
            }
            let Some(i) = fields.iter().position(|f| f.name() == &parts[0]) else {
                continue;
            };
            let b = &mut bounds[i];
            let Some(s) = col.statistics() else {
                b.complete = false;
                b.seen = true;
                continue;
            };
            let first = !b.seen;
            b.seen = true;
            if first {
                b.complete = true;
                b.nulls = Some(0);
            }
            b.nulls = match (b.nulls, s.null_count_opt()) {
                (Some(a), Some(n)) => Some(a + n),
                _ => None,
            };
            let (lo, hi) = scalars(s);
            // A chunk of nulls only has no bounds and narrows nothing.
            if lo.is_none() && hi.is_none() && s.null_count_opt() == Some(col.num_values() as u64) {
                continue;
            }
            let t = &mut typed[i];
            match lo {
                Some(lo) if t.0.as_ref().is_none_or(|cur| lo < *cur) => t.0 = Some(lo),
                Some(_) => {}
                None => b.complete = false,
            }
            match hi {
                Some(hi) if t.1.as_ref().is_none_or(|cur| hi > *cur) => t.1 = Some(hi),
                Some(_) => {}
                None => b.complete = false,
            }
        }
    }
    let (mut mins, mut maxs, mut nulls) = (Map::new(), Map::new(), Map::new());
    for ((f, b), (lo, hi)) in fields.iter().zip(bounds).zip(typed) {
        if !b.seen {
            continue;
        }
        if let Some(n) = b.nulls {
            nulls.insert(f.name().clone(), Value::from(n));
        }
        if !b.complete {
            continue;
        }
        if let (Some(lo), Some(hi)) = (lo, hi)
            && let (Some(lo), Some(hi)) = (
                json(lo, f.data_type(), false),
                json(hi, f.data_type(), true),
            )
        {
            mins.insert(f.name().clone(), lo);
            maxs.insert(f.name().clone(), hi);
        }
    }
    let mut out = Map::new();
    out.insert(
        "numRecords".into(),
        Value::from(meta.file_metadata().num_rows()),
    );
    out.insert("minValues".into(), Value::Object(mins));
    out.insert("maxValues".into(), Value::Object(maxs));
    out.insert("nullCount".into(), Value::Object(nulls));
    Value::Object(out).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
    use arrow_schema::{Field, TimeUnit};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use std::sync::Arc;

    #[test]
    fn stats_bound_every_value_with_timestamps_rounded_outward() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("call_id", DataType::Utf8, false),
            Field::new(
                "started_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("duration_ms", DataType::Int64, true),
            Field::new("raw", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["b", "a", "c"])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(1_500), None, Some(2_000)])
                        .with_timezone("UTC"),
                ),
                Arc::new(Int64Array::from(vec![Some(5), Some(-1), None])),
                Arc::new(StringArray::from(vec!["x", "y", "z"])),
            ],
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_statistics_enabled(EnabledStatistics::None)
            .set_column_statistics_enabled("call_id".into(), EnabledStatistics::Chunk)
            .set_column_statistics_enabled("started_at".into(), EnabledStatistics::Chunk)
            .set_column_statistics_enabled("duration_ms".into(), EnabledStatistics::Chunk)
            .set_max_row_group_row_count(Some(2))
            .build();
        let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        let meta = w.close().unwrap();
        let v: Value = serde_json::from_str(&delta_stats(&meta, &schema)).unwrap();
        assert_eq!(v["numRecords"], 3);
        assert_eq!(v["minValues"]["call_id"], "a");
        assert_eq!(v["maxValues"]["call_id"], "c");
        assert_eq!(v["minValues"]["started_at"], "1970-01-01T00:00:00.001Z");
        assert_eq!(v["maxValues"]["started_at"], "1970-01-01T00:00:00.002Z");
        assert_eq!(v["nullCount"]["started_at"], 1);
        assert_eq!(v["minValues"]["duration_ms"], -1);
        assert_eq!(v["nullCount"]["duration_ms"], 1);
        assert!(v["minValues"].get("raw").is_none(), "{v}");
    }
}
