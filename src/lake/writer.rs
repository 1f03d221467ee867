//! Stages one commit's files: a Parquet file per partition date and a JSONL rejects file,
//! all under `_staging/<source>/`, named by commit id, with bounded memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, RecordBatch};

use super::LakeError;
use super::storage::Storage;
use crate::record::{Reject, utc_day};
use crate::schema::{Dataset, SCHEMA_VERSION_KEY};
pub use crate::state::StagedFile;

/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 65_536;
/// Encoded bytes a row group may hold in memory before it is flushed early.
const ROW_GROUP_MAX_BYTES: usize = 4 << 20;
/// Partition files open at once; the least recently used is finished (it stays in the
/// commit) when another day arrives. Calls mostly come in time order, so this is rarely hit.
const MAX_OPEN_PARTITIONS: usize = 2;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Rows per row group of a compacted file: whole row groups for readers to split work by
/// (DuckDB's own default is 122,880).
const COMPACTED_ROW_GROUP_ROWS: usize = 131_072;
/// Encoded bytes a compacted file's row group may hold in memory before it is flushed early.
const COMPACTED_ROW_GROUP_MAX_BYTES: usize = 48 << 20;

/// Parquet writer settings for the calls table: zstd, no dictionary or min/max statistics on
/// near-unique long text, bounded row groups, the schema version in the metadata.
pub fn writer_properties(dataset: Dataset) -> WriterProperties {
    properties(dataset).build()
}

/// The settings of a file compaction writes, its rows sorted by the partition's time column:
/// larger row groups, that order declared (`sorting_columns`), and page-level statistics on
/// that column, so the page index lets a time-range query skip pages, not just row groups.
pub fn compacted_properties(dataset: Dataset) -> WriterProperties {
    let time = dataset.partition_column();
    let schema = dataset.schema();
    let sorting = schema.index_of(time).ok().map(|i| {
        vec![parquet::file::metadata::SortingColumn {
            column_idx: i as i32,
            descending: false,
            nulls_first: false,
        }]
    });
    properties(dataset)
        .set_max_row_group_row_count(Some(COMPACTED_ROW_GROUP_ROWS))
        .set_column_statistics_enabled(ColumnPath::from(time), EnabledStatistics::Page)
        .set_sorting_columns(sorting)
        .build()
}

fn properties(dataset: Dataset) -> parquet::file::properties::WriterPropertiesBuilder {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        // Min/max statistics only where readers prune on them (below); on free text they
        // cost a comparison per value and prune nothing.
        .set_statistics_enabled(EnabledStatistics::None)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(concat!("callsync ", env!("CARGO_PKG_VERSION")).to_string())
        .set_key_value_metadata(Some(vec![KeyValue::new(
            SCHEMA_VERSION_KEY.to_string(),
            dataset.version().to_string(),
        )]));
    // Near-unique columns: dictionary encoding only costs hashing.
    for col in [
        "call_id",
        "started_at",
        "ended_at",
        "from_number",
        "to_number",
        "summary",
        "recording_ref",
        "raw",
    ] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(col), false);
    }
    // Row-group (chunk) statistics, which readers prune on; per-page ones cost more.
    for col in [
        "call_id",
        "source_kind",
        "started_at",
        "ended_at",
        "duration_ms",
        "sentiment_score",
        "survey_score",
        "extracted_at",
    ] {
        b = b.set_column_statistics_enabled(ColumnPath::from(col), EnabledStatistics::Chunk);
    }
    let text = ColumnPath::new(vec![
        "transcript".into(),
        "list".into(),
        "item".into(),
        "text".into(),
    ]);
    b.set_column_dictionary_enabled(text, false)
}

/// The partition day of each row of a batch of `dataset` (UTC days since the epoch): the day
/// of its partition column, or, for a row without that time (an analysis result carries
/// none), of the day it was extracted.
pub fn partition_days(dataset: Dataset, batch: &RecordBatch) -> Result<Vec<i32>, LakeError> {
    let column = dataset.partition_column();
    let started = batch
        .column_by_name(column)
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| std::io::Error::other(format!("batch has no {column} timestamp column")))?;
    let fallback = batch
        .column_by_name(dataset.fallback_partition_column())
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>());
    Ok((0..batch.num_rows())
        .map(|i| {
            let t = if started.is_valid(i) {
                started.value(i)
            } else {
                fallback.filter(|f| f.is_valid(i)).map_or(0, |f| f.value(i))
            };
            t.div_euclid(MICROS_PER_DAY) as i32
        })
        .collect())
}

/// One Parquet data file being written through the storage seam, with bounded memory.
pub struct DataFile {
    /// Lake-relative path it is created at.
    pub rel: String,
    writer: ArrowWriter<File>,
    /// The file, sealed once the writer has written its footer.
    file: File,
    dataset: Dataset,
    /// Encoded bytes a row group may hold before it is flushed early.
    flush_bytes: usize,
    /// Rows written.
    pub rows: u64,
}

impl DataFile {
    /// Creates `rel` (through `Storage::create_staged`) for rows of `dataset`.
    pub fn create(storage: &dyn Storage, rel: &str, dataset: Dataset) -> Result<Self, LakeError> {
        Self::with(
            storage,
            rel,
            dataset,
            writer_properties(dataset),
            ROW_GROUP_MAX_BYTES,
        )
    }

    /// Creates a file compaction writes (rows given in time order): `compacted_properties`.
    pub fn create_compacted(
        storage: &dyn Storage,
        rel: &str,
        dataset: Dataset,
    ) -> Result<Self, LakeError> {
        let props = compacted_properties(dataset);
        Self::with(storage, rel, dataset, props, COMPACTED_ROW_GROUP_MAX_BYTES)
    }

    fn with(
        storage: &dyn Storage,
        rel: &str,
        dataset: Dataset,
        props: WriterProperties,
        flush_bytes: usize,
    ) -> Result<Self, LakeError> {
        let file = storage.create_staged(rel)?;
        let writer = ArrowWriter::try_new(file.try_clone()?, dataset.schema(), Some(props))?;
        Ok(DataFile {
            rel: rel.to_string(),
            writer,
            file,
            dataset,
            flush_bytes,
            rows: 0,
        })
    }

    /// Writes rows; a row group is flushed early once it holds its byte bound.
    pub fn write(&mut self, rows: &RecordBatch) -> Result<(), LakeError> {
        self.writer.write(rows)?;
        if self.writer.in_progress_size() > self.flush_bytes {
            self.writer.flush()?;
        }
        self.rows += rows.num_rows() as u64;
        Ok(())
    }

    /// Writes out the buffered row group, if any.
    fn flush(&mut self) -> Result<(), LakeError> {
        if self.writer.in_progress_rows() > 0 {
            self.writer.flush()?;
        }
        Ok(())
    }

    /// Bytes the file will about hold so far.
    pub fn size(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    /// Writes the footer and seals the file; returns its size and Delta statistics.
    pub fn finish(self, storage: &dyn Storage) -> Result<(u64, String), LakeError> {
        let meta = self.writer.close()?;
        let stats = super::stats::delta_stats(&meta, &self.dataset.schema());
        let bytes = storage.seal_staged(&self.rel, self.file)?;
        Ok((bytes, stats))
    }
}

struct Partition {
    last_used: u64,
    final_path: String,
    data: DataFile,
}

struct RejectFile {
    staged: String,
    final_path: String,
    out: BufWriter<File>,
    rows: u64,
}

/// Stages the files of one commit.
pub struct CommitWriter<'a> {
    storage: &'a dyn Storage,
    source: String,
    commit_id: String,
    next_n: u32,
    extracted_at: i64,
    partitions: BTreeMap<(Dataset, i64), Partition>,
    finished: Vec<StagedFile>,
    uses: u64,
    rejects: Option<RejectFile>,
    calls: u64,
    rejected: u64,
}

impl<'a> CommitWriter<'a> {
    /// Starts a commit; `extracted_at` (µs) picks the day of its rejects file.
    pub fn new(storage: &'a dyn Storage, source: &str, commit_id: &str, extracted_at: i64) -> Self {
        CommitWriter {
            storage,
            source: source.to_string(),
            commit_id: commit_id.to_string(),
            next_n: 0,
            extracted_at,
            partitions: BTreeMap::new(),
            finished: Vec::new(),
            uses: 0,
            rejects: None,
            calls: 0,
            rejected: 0,
        }
    }

    /// The commit id (also in every file name).
    pub fn commit_id(&self) -> &str {
        &self.commit_id
    }

    /// Calls staged so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Rejects staged so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    fn next_names(&mut self, dir: &str, ext: &str, date: &str) -> (String, String) {
        self.next_n += 1;
        let n = self.next_n;
        (
            format!("_staging/{}/{}-{n}.tmp", self.source, self.commit_id),
            format!(
                "{dir}/source={}/date={date}/part-{}-{n}.{ext}",
                self.source, self.commit_id
            ),
        )
    }

    /// Adds a batch of calls (the call schema), each row to the partition of its UTC start
    /// day. Runs of rows on the same day are written as zero-copy slices.
    pub fn add_calls(&mut self, batch: &RecordBatch) -> Result<(), LakeError> {
        self.add_rows(Dataset::Calls, batch)
    }

    /// Adds a batch of `dataset`'s schema, each row to the partition of the UTC day of its
    /// partition column.
    pub fn add_rows(&mut self, dataset: Dataset, batch: &RecordBatch) -> Result<(), LakeError> {
        let days = partition_days(dataset, batch)?;
        let n = batch.num_rows();
        let mut start = 0;
        while start < n {
            let day = days[start];
            let mut end = start + 1;
            while end < n && days[end] == day {
                end += 1;
            }
            self.write_run((dataset, day as i64), &batch.slice(start, end - start))?;
            start = end;
        }
        Ok(())
    }

    fn write_run(&mut self, key: (Dataset, i64), rows: &RecordBatch) -> Result<(), LakeError> {
        let (dataset, day) = key;
        self.uses += 1;
        if !self.partitions.contains_key(&key) {
            if self.partitions.len() >= MAX_OPEN_PARTITIONS {
                self.finish_least_recent()?;
            }
            // Calls come in time order: a new day means the open ones are done for now, so
            // their buffered row groups are written out instead of held (memory stays one
            // partition's worth, not MAX_OPEN_PARTITIONS').
            for p in self.partitions.values_mut() {
                p.data.flush()?;
            }
            let date = utc_day(day * MICROS_PER_DAY);
            let (staged, final_path) = self.next_names(dataset.dir(), "parquet", &date);
            let data = DataFile::create(self.storage, &staged, dataset)?;
            self.partitions.insert(
                key,
                Partition {
                    last_used: 0,
                    final_path,
                    data,
                },
            );
        }
        let p = self.partitions.get_mut(&key).expect("inserted above");
        p.last_used = self.uses;
        p.data.write(rows)?;
        self.calls += rows.num_rows() as u64;
        Ok(())
    }

    fn finish_least_recent(&mut self) -> Result<(), LakeError> {
        let Some(day) = self
            .partitions
            .iter()
            .min_by_key(|(_, p)| p.last_used)
            .map(|(d, _)| *d)
        else {
            return Ok(());
        };
        if let Some(p) = self.partitions.remove(&day) {
            let f = finish_partition(self.storage, p)?;
            self.finished.push(f);
        }
        Ok(())
    }

    /// Adds a file already staged (synced) by someone else, e.g. a downloaded recording.
    pub fn add_file(&mut self, file: StagedFile) {
        self.finished.push(file);
    }

    /// Adds a reject to the rejects file of the extraction day.
    pub fn add_reject(&mut self, r: &Reject) -> Result<(), LakeError> {
        if self.rejects.is_none() {
            let day = utc_day(self.extracted_at);
            let (staged, final_path) = self.next_names("_rejects", "jsonl", &day);
            let file = self.storage.create_staged(&staged)?;
            self.rejects = Some(RejectFile {
                staged,
                final_path,
                out: BufWriter::new(file),
                rows: 0,
            });
        }
        let rf = self.rejects.as_mut().expect("created above");
        let mut line = serde_json::json!({
            "source": self.source,
            "call_id": r.call_id,
            "error": r.error,
            "raw": r.raw,
        });
        if let Some(f) = r.fingerprint {
            // What makes it the same record (its raw text has volatile parts): a repair
            // reads it back to know the reject.
            line["fingerprint"] = serde_json::Value::from(format!("{f:016x}"));
        }
        serde_json::to_writer(&mut rf.out, &line).map_err(std::io::Error::other)?;
        rf.out.write_all(b"\n")?;
        rf.rows += 1;
        self.rejected += 1;
        Ok(())
    }

    /// Finishes every file and makes it durable; returns what the commit must record.
    pub fn finish(mut self) -> Result<Vec<StagedFile>, LakeError> {
        let mut out = std::mem::take(&mut self.finished);
        for (_, p) in std::mem::take(&mut self.partitions) {
            out.push(finish_partition(self.storage, p)?);
        }
        if let Some(rf) = self.rejects.take() {
            let file = rf.out.into_inner().map_err(|e| e.into_error())?;
            let bytes = self.storage.seal_staged(&rf.staged, file)?;
            out.push(StagedFile {
                staged: rf.staged,
                final_path: rf.final_path,
                rows: rf.rows,
                bytes,
                stats: None,
            });
        }
        // One directory sync for every file this commit staged (each file's bytes were synced
        // when it was sealed): the commit that names them never outlives their entries.
        if !out.is_empty() {
            self.storage
                .sync_dir(&format!("_staging/{}", self.source))?;
        }
        Ok(out)
    }

    /// Drops the commit and deletes its staged files (best effort: recovery deletes any
    /// that remain, since no manifest row names them).
    pub fn abort(mut self) {
        let mut names: Vec<String> = self
            .partitions
            .values()
            .map(|p| p.data.rel.clone())
            .collect();
        names.extend(self.finished.iter().map(|f| f.staged.clone()));
        names.extend(self.rejects.as_ref().map(|r| r.staged.clone()));
        self.partitions.clear();
        self.rejects = None;
        for n in names {
            let _ = self.storage.delete(&n);
        }
    }
}

fn finish_partition(storage: &dyn Storage, p: Partition) -> Result<StagedFile, LakeError> {
    let (staged, rows) = (p.data.rel.clone(), p.data.rows);
    let (bytes, stats) = p.data.finish(storage)?;
    Ok(StagedFile {
        staged,
        final_path: p.final_path,
        rows,
        bytes,
        stats: Some(stats),
    })
}
