//! `compact` for Delta tables. A compaction rewrites one partition's small files into files
//! near the target size and swaps them in ONE Delta commit (removes and adds with
//! `dataChange = false`, operation OPTIMIZE, app transaction `compact/<source>/<date>`), so
//! readers see the old files or the new ones, never both. The state records it before its
//! files are written and before the commit; whether the commit landed is read from the table
//! (an error from the store is no answer): one that landed is recorded and reported, one that
//! lost to another compaction changes nothing and has its new files deleted (no version
//! references them), and one whose outcome cannot be read keeps everything for the next run
//! to settle. Rows are copied, never changed.

use std::collections::BTreeMap;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tracing::{info, warn};

use super::LakeError;
use super::delta::{DATASETS, DeltaTables, Outcome, Rewrite, settle_compaction};
use super::sort::Sorter;
use super::table::{ActiveFile, SourceCx};
pub use super::table::{CompactOptions, Compacted};
use super::writer::DataFile;
use crate::schema::Dataset;
use crate::state::compaction::{NewFile, PendingCompaction};

/// Rows of a partition sorted in memory; a larger partition is sorted in spilled runs.
const SORT_BUDGET_BYTES: usize = 64 << 20;

/// Files below this share of the target are small (worth merging).
fn is_small(f: &ActiveFile, target: u64) -> bool {
    f.size < target / 4 * 3
}

/// Compacts every partition of the source that qualifies; the caller holds the source's lock
/// and has run recovery.
pub(super) fn compact_source(
    tables: &DeltaTables,
    cx: &SourceCx<'_>,
    opts: &CompactOptions,
) -> Result<Compacted, LakeError> {
    let mut out = Compacted::default();
    for ds in DATASETS {
        let mut by_date: BTreeMap<String, Vec<ActiveFile>> = BTreeMap::new();
        for f in tables.active_files(ds, Some(cx.source))? {
            if opts
                .dates
                .as_ref()
                .is_some_and(|(from, to)| f.date < *from || f.date > *to)
            {
                continue;
            }
            if is_small(&f, opts.target_bytes) {
                by_date.entry(f.date.clone()).or_default().push(f);
            }
        }
        for (date, files) in by_date {
            if files.len() < opts.min_files.max(2) {
                continue;
            }
            match rewrite(tables, cx, ds, &date, files, opts)? {
                Rewritten::Done {
                    before,
                    after,
                    rows,
                } => {
                    out.partitions += 1;
                    out.files_before += before;
                    out.files_after += after;
                    out.rows += rows;
                }
                Rewritten::Lost => {
                    warn!(source = %cx.source, date = %date, "Another compaction of this partition committed first; this one changed nothing.");
                    crate::telemetry::compaction_conflict(cx.source);
                    out.lost += 1;
                }
                Rewritten::Skipped => {}
            }
        }
    }
    Ok(out)
}

/// What rewriting one partition came to.
enum Rewritten {
    Done {
        before: usize,
        after: usize,
        rows: u64,
    },
    Lost,
    Skipped,
}

/// Rewrites one partition's `files` and commits the swap.
fn rewrite(
    tables: &DeltaTables,
    cx: &SourceCx<'_>,
    ds: Dataset,
    date: &str,
    mut files: Vec<ActiveFile>,
    opts: &CompactOptions,
) -> Result<Rewritten, LakeError> {
    let (storage, state, source) = (cx.storage, cx.state, cx.source);
    files.sort_by(|a, b| a.path.cmp(&b.path));
    // Only files of the current schema are merged (an older one keeps its own columns).
    let schema = ds.schema();
    let id = uuid::Uuid::now_v7().simple().to_string();
    let removed: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    let base = tables.version(ds)?.unwrap_or(0);
    state.begin_compaction(&id, cx.source_id, ds.dir(), date, &removed, base)?;
    let pending = |added: Option<Vec<NewFile>>, removed: Vec<String>| PendingCompaction {
        id: id.clone(),
        dataset: ds.dir().to_string(),
        date: date.to_string(),
        removed,
        added,
        base_version: Some(base),
    };
    let dir = format!("{}/source={source}/date={date}", ds.dir());
    let mut added: Vec<NewFile> = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    let mut current: Option<DataFile> = None;
    let mut n = 0;
    let mut rows_in = 0u64;
    let result = (|| -> Result<(), LakeError> {
        // The partition's rows in time order (bounded memory: sorted runs spill to $TMPDIR).
        let mut sorter = Sorter::new(schema.clone(), ds.partition_column(), SORT_BUDGET_BYTES);
        for f in &files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(storage.open(&f.path)?)?;
            if reader.schema().fields() != schema.fields() {
                continue;
            }
            taken.push(f.path.clone());
            for batch in reader.with_batch_size(8192).build()? {
                let batch = batch?.with_schema(schema.clone())?;
                rows_in += batch.num_rows() as u64;
                sorter.push(batch)?;
            }
        }
        sorter.finish(|batch| {
            if current.is_none() {
                n += 1;
                current = Some(DataFile::create_compacted(
                    storage,
                    &format!("{dir}/part-{id}-{n}.parquet"),
                    ds,
                )?);
            }
            let w = current.as_mut().expect("created above");
            w.write(&batch)?;
            if w.size() >= opts.target_bytes {
                let w = current.take().expect("present");
                added.push(seal(storage, w)?);
            }
            Ok(())
        })?;
        if let Some(w) = current.take() {
            added.push(seal(storage, w)?);
        }
        Ok(())
    })();
    let rows_out: u64 = added.iter().map(|a| a.rows).sum();
    if let Err(e) = result {
        // No commit was tried: its files are unreferenced, and settling deletes them.
        settle_compaction(tables, cx, &pending(None, removed))?;
        return Err(e);
    }
    if taken.len() < 2 || rows_out != rows_in {
        settle_compaction(tables, cx, &pending(None, removed))?;
        return Ok(Rewritten::Skipped);
    }
    crate::failpoint::hit("compact_written");
    state.compaction_written(&id, &taken, &added)?;
    let rw = Rewrite {
        id: id.clone(),
        source: source.to_string(),
        date: date.to_string(),
        removed: taken.clone(),
        added: added
            .iter()
            .map(|a| (a.path.clone(), a.bytes, a.stats.clone()))
            .collect(),
        target_size: opts.target_bytes as i64,
    };
    crate::failpoint::hit("compact_before_commit");
    // An error here leaves the compaction recorded and every file in place: the next run
    // reads the table to settle it.
    let done = pending(Some(added.clone()), taken.clone());
    match tables.commit_rewrite(ds, &rw)? {
        Outcome::Landed(_) | Outcome::Held => {
            crate::failpoint::hit("compact_after_commit");
            state.finish_compaction(cx.source_id, &done)?;
            info!(source = %source, date = %date, files_before = taken.len(), files_after = added.len(), rows = rows_out, "Compacted a partition.");
            Ok(Rewritten::Done {
                before: taken.len(),
                after: added.len(),
                rows: rows_out,
            })
        }
        Outcome::Lost => {
            settle_compaction(tables, cx, &done)?;
            Ok(Rewritten::Lost)
        }
    }
}

fn seal(storage: &dyn super::storage::Storage, w: DataFile) -> Result<NewFile, LakeError> {
    let (path, rows) = (w.rel.clone(), w.rows);
    let (bytes, stats) = w.finish(storage)?;
    Ok(NewFile {
        path,
        bytes,
        rows,
        stats,
    })
}
