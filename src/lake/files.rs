//! Reading what a data file holds, for recovery and `repair`: its keys (a projection of the
//! key column, in batches) and the partition day its path names.

use arrow_array::StringArray;
use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::LakeError;
use super::storage::Storage;
use crate::state::StateError;

/// Keys inserted per statement batch while reading a file.
const KEY_BATCH: usize = 8192;

fn io(path: &str, e: impl std::fmt::Display) -> LakeError {
    LakeError::Io(std::io::Error::other(format!("{path}: {e}")))
}

/// Reads the key column (and `started_at`) of a data file in batches: `on_keys` gets the keys
/// of each batch; returns (rows, latest started_at).
pub(crate) fn scan_keys(
    storage: &dyn Storage,
    path: &str,
    mut on_keys: impl FnMut(&StringArray) -> Result<(), StateError>,
) -> Result<(u64, Option<i64>), LakeError> {
    let file = storage.open(path)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| io(path, e))?;
    let arrow = builder.schema().clone();
    let key_col = ["call_id", "delivery_key"]
        .iter()
        .find_map(|n| arrow.index_of(n).ok())
        .ok_or_else(|| io(path, "has no call_id column"))?;
    let mut cols = vec![key_col];
    let started = arrow.index_of("started_at").ok();
    cols.extend(started);
    let mask = ProjectionMask::roots(builder.parquet_schema(), cols);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(KEY_BATCH)
        .build()
        .map_err(|e| io(path, e))?;
    let (mut rows, mut latest) = (0u64, None::<i64>);
    for batch in reader {
        let batch = batch.map_err(|e| io(path, e))?;
        let keys = batch
            .column(0)
            .as_string_opt::<i32>()
            .ok_or_else(|| io(path, "its key column is not text"))?;
        rows += batch.num_rows() as u64;
        on_keys(keys)?;
        if started.is_some()
            && let Some(t) = batch
                .column(1)
                .as_primitive_opt::<TimestampMicrosecondType>()
            && let Some(m) = t.iter().flatten().max()
        {
            latest = Some(latest.map_or(m, |l| l.max(m)));
        }
    }
    Ok((rows, latest))
}

/// The `date=` value of a lake-relative partition path.
pub(crate) fn date_of(path: &str) -> Option<&str> {
    path.split('/').find_map(|seg| seg.strip_prefix("date="))
}

/// UTC days since the epoch of a `YYYY-MM-DD` date.
pub(crate) fn day_number(date: &str) -> Option<i32> {
    let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((d - epoch).num_days() as i32)
}
