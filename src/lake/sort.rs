//! Sorts a partition's rows by its time column with bounded memory, for compaction. Rows are
//! gathered up to a memory budget and sorted; when more follow, each sorted run is spilled to
//! a local Parquet file (under `$TMPDIR`) and the runs are merged, a small batch of each in
//! memory at a time. Rows without a time sort last; equal times keep their input order, so
//! the output is the same for the same input.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::path::PathBuf;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;
use arrow_select::interleave::interleave_record_batch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::LakeError;

/// Rows per batch handed on (to the writer, or to a run file).
const OUT_ROWS: usize = 8192;
/// Rows of each run held in memory while merging.
const MERGE_ROWS: usize = 1024;

/// A row's sort key: rows without a time last, then by time.
type Key = (bool, i64);

/// The sort keys of a batch's rows.
fn keys(batch: &RecordBatch, column: &str) -> Result<Vec<Key>, LakeError> {
    let col = batch
        .column_by_name(column)
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| std::io::Error::other(format!("rows to sort have no {column} timestamp")))?;
    Ok((0..col.len())
        .map(|i| {
            if col.is_valid(i) {
                (false, col.value(i))
            } else {
                (true, 0)
            }
        })
        .collect())
}

/// Rows pushed in, handed on sorted by `column`.
pub struct Sorter {
    schema: SchemaRef,
    column: &'static str,
    budget_bytes: usize,
    pending: Vec<RecordBatch>,
    pending_bytes: usize,
    spill: Option<tempfile::TempDir>,
    runs: Vec<PathBuf>,
}

impl Sorter {
    /// Sorts rows of `schema` by `column` (a microsecond timestamp), holding about
    /// `budget_bytes` of rows in memory.
    pub fn new(schema: SchemaRef, column: &'static str, budget_bytes: usize) -> Sorter {
        Sorter {
            schema,
            column,
            budget_bytes,
            pending: Vec::new(),
            pending_bytes: 0,
            spill: None,
            runs: Vec::new(),
        }
    }

    /// Takes rows; spills a sorted run when the budget is reached.
    pub fn push(&mut self, batch: RecordBatch) -> Result<(), LakeError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.pending_bytes += batch.get_array_memory_size();
        self.pending.push(batch);
        if self.pending_bytes >= self.budget_bytes {
            self.spill_run()?;
        }
        Ok(())
    }

    /// Runs spilled so far (0 while everything fits the budget).
    #[cfg(test)]
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Hands every row on, sorted, in batches of at most `OUT_ROWS`.
    pub fn finish(
        mut self,
        mut out: impl FnMut(RecordBatch) -> Result<(), LakeError>,
    ) -> Result<(), LakeError> {
        if self.runs.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            return sorted_chunks(&pending, self.column, &mut out);
        }
        if !self.pending.is_empty() {
            self.spill_run()?;
        }
        self.merge(&mut out)
    }

    /// Sorts the rows held and writes them as one run file.
    fn spill_run(&mut self) -> Result<(), LakeError> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        if self.spill.is_none() {
            self.spill = Some(
                tempfile::Builder::new()
                    .prefix("callsync-sort-")
                    .tempdir()?,
            );
        }
        let dir = self.spill.as_ref().expect("made above").path();
        let path = dir.join(format!("run-{}.parquet", self.runs.len()));
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
            .set_statistics_enabled(EnabledStatistics::None)
            .set_dictionary_enabled(false)
            .build();
        let mut w = ArrowWriter::try_new(File::create(&path)?, self.schema.clone(), Some(props))?;
        sorted_chunks(&pending, self.column, &mut |b| {
            w.write(&b)?;
            Ok(())
        })?;
        w.close()?;
        self.runs.push(path);
        Ok(())
    }

    /// Merges the spilled runs.
    fn merge(
        &self,
        out: &mut dyn FnMut(RecordBatch) -> Result<(), LakeError>,
    ) -> Result<(), LakeError> {
        struct Run {
            reader: ParquetRecordBatchReader,
            keys: Vec<Key>,
            row: usize,
            slot: usize,
            batch: RecordBatch,
        }
        let next =
            |reader: &mut ParquetRecordBatchReader| -> Result<Option<RecordBatch>, LakeError> {
                match reader.next() {
                    Some(b) => Ok(Some(b?.with_schema(self.schema.clone())?)),
                    None => Ok(None),
                }
            };
        let mut slots: Vec<RecordBatch> = Vec::new();
        let mut runs: Vec<Run> = Vec::new();
        let mut heap: BinaryHeap<Reverse<(Key, usize)>> = BinaryHeap::new();
        for path in &self.runs {
            let mut reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)?
                .with_batch_size(MERGE_ROWS)
                .build()?;
            if let Some(batch) = next(&mut reader)? {
                let keys = keys(&batch, self.column)?;
                heap.push(Reverse((keys[0], runs.len())));
                slots.push(batch.clone());
                runs.push(Run {
                    reader,
                    keys,
                    row: 0,
                    slot: slots.len() - 1,
                    batch,
                });
            }
        }
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(OUT_ROWS);
        while let Some(Reverse((_, r))) = heap.pop() {
            let run = &mut runs[r];
            picks.push((run.slot, run.row));
            run.row += 1;
            if run.row == run.keys.len() {
                if let Some(batch) = next(&mut run.reader)? {
                    run.keys = keys(&batch, self.column)?;
                    run.row = 0;
                    slots.push(batch.clone());
                    run.slot = slots.len() - 1;
                    run.batch = batch;
                } else {
                    run.row = usize::MAX;
                }
            }
            if run.row != usize::MAX {
                heap.push(Reverse((run.keys[run.row], r)));
            }
            if picks.len() == OUT_ROWS {
                let refs: Vec<&RecordBatch> = slots.iter().collect();
                out(interleave_record_batch(&refs, &picks)?)?;
                picks.clear();
                // Keep only each run's current batch.
                slots.clear();
                for run in runs.iter_mut().filter(|r| r.row != usize::MAX) {
                    slots.push(run.batch.clone());
                    run.slot = slots.len() - 1;
                }
            }
        }
        if !picks.is_empty() {
            let refs: Vec<&RecordBatch> = slots.iter().collect();
            out(interleave_record_batch(&refs, &picks)?)?;
        }
        Ok(())
    }
}

/// Hands `batches`' rows on sorted, `OUT_ROWS` at a time (no copy of the whole set is made).
fn sorted_chunks(
    batches: &[RecordBatch],
    column: &str,
    out: &mut dyn FnMut(RecordBatch) -> Result<(), LakeError>,
) -> Result<(), LakeError> {
    let mut order: Vec<(Key, usize, usize)> = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        for (i, k) in keys(batch, column)?.into_iter().enumerate() {
            order.push((k, b, i));
        }
    }
    // (key, batch, row): equal times keep their input order.
    order.sort_unstable();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    for chunk in order.chunks(OUT_ROWS) {
        let picks: Vec<(usize, usize)> = chunk.iter().map(|(_, b, i)| (*b, *i)).collect();
        out(interleave_record_batch(&refs, &picks)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{StringArray, TimestampMicrosecondArray};
    use arrow_schema::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn batch(schema: &SchemaRef, rows: &[(Option<i64>, &str)]) -> RecordBatch {
        let t: TimestampMicrosecondArray = rows.iter().map(|r| r.0).collect();
        let s: StringArray = rows.iter().map(|r| Some(r.1)).collect();
        RecordBatch::try_new(schema.clone(), vec![Arc::new(t), Arc::new(s)]).unwrap()
    }

    fn sorted(budget: usize, input: &[Vec<(Option<i64>, &str)>]) -> (Vec<String>, usize) {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("id", DataType::Utf8, false),
        ]));
        let mut s = Sorter::new(schema.clone(), "t", budget);
        for rows in input {
            s.push(batch(&schema, rows)).unwrap();
        }
        let runs = s.runs();
        let mut ids = Vec::new();
        s.finish(|b| {
            ids.extend(
                b.column(1)
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap().to_string()),
            );
            Ok(())
        })
        .unwrap();
        (ids, runs)
    }

    #[test]
    fn rows_come_out_by_time_nulls_last_ties_in_input_order_whether_spilled_or_not() {
        let input = vec![
            vec![(Some(30), "c"), (None, "n1"), (Some(10), "a")],
            vec![(Some(20), "b"), (Some(10), "a2"), (None, "n2")],
            vec![(Some(5), "z"), (Some(30), "c2")],
        ];
        let want: Vec<String> = ["z", "a", "a2", "b", "c", "c2", "n1", "n2"]
            .map(String::from)
            .to_vec();
        let (in_memory, runs) = sorted(1 << 30, &input);
        assert_eq!((&in_memory, runs), (&want, 0));
        // A budget of one byte: every batch is its own spilled run, merged.
        let (merged, runs) = sorted(1, &input);
        assert_eq!((&merged, runs), (&want, 3));
    }

    #[test]
    fn a_merge_of_many_runs_keeps_every_row_once_in_order() {
        let mut rng = fastrand::Rng::with_seed(7);
        let input: Vec<Vec<(Option<i64>, String)>> = (0..40)
            .map(|b| {
                (0..500)
                    .map(|i| {
                        let t = (rng.u8(..) != 0).then(|| rng.i64(0..10_000));
                        (t, format!("{b}-{i}"))
                    })
                    .collect()
            })
            .collect();
        let borrowed: Vec<Vec<(Option<i64>, &str)>> = input
            .iter()
            .map(|b| b.iter().map(|(t, s)| (*t, s.as_str())).collect())
            .collect();
        let (merged, runs) = sorted(40_000, &borrowed);
        assert!(runs > 5, "{runs} runs");
        let (in_memory, _) = sorted(1 << 30, &borrowed);
        assert_eq!(merged, in_memory);
        assert_eq!(merged.len(), 20_000);
        let time: std::collections::HashMap<&str, Option<i64>> =
            borrowed.iter().flatten().map(|(t, s)| (*s, *t)).collect();
        let keys: Vec<(bool, i64)> = merged
            .iter()
            .map(|s| time[s.as_str()].map_or((true, 0), |t| (false, t)))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]));
    }
}
