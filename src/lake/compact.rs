//! `compact` and `vacuum` for Delta tables. A compaction rewrites one partition's small files
//! into files near the target size and swaps them in ONE Delta commit (removes and adds with
//! `dataChange = false`, operation OPTIMIZE, app transaction `compact/<source>/<date>`), so
//! readers see the old files or the new ones, never both. The state records it before its
//! files are written and before the commit: recovery finishes one whose commit landed and
//! deletes the files of one whose commit did not. Rows are copied, never changed.

use std::collections::BTreeMap;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tracing::{info, warn};

use super::LakeError;
use super::delta::{ActiveFile, DeltaError, Rewrite};
use super::storage::Storage;
use super::writer::DataFile;
use crate::schema::Dataset;
use crate::state::State;
use crate::state::compaction::{NewFile, PendingCompaction};

/// What to compact.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Size the new files aim at.
    pub target_bytes: u64,
    /// A partition is compacted when it holds at least this many small files.
    pub min_files: usize,
    /// Only partitions whose date lies in this inclusive range (`YYYY-MM-DD`).
    pub dates: Option<(String, String)>,
}

/// What a compaction of one source did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// Partitions rewritten.
    pub partitions: usize,
    /// Files replaced, and files written in their place.
    pub files_before: usize,
    pub files_after: usize,
    /// Rows copied.
    pub rows: u64,
    /// Partitions another compaction committed first (left as that one made them).
    pub lost: usize,
}

/// Files below this share of the target are small (worth merging).
fn is_small(f: &ActiveFile, target: u64) -> bool {
    f.size < target / 4 * 3
}

fn ds_named(dir: &str) -> Option<Dataset> {
    [Dataset::Calls, Dataset::MonitorLegs]
        .into_iter()
        .find(|d| d.dir() == dir)
}

/// Compacts every partition of `source` that qualifies; the caller holds the source's lock
/// and has run recovery.
pub fn compact_source(
    storage: &dyn Storage,
    state: &State,
    source_id: i64,
    source: &str,
    opts: &CompactOptions,
) -> Result<Compacted, LakeError> {
    let delta = storage.delta().ok_or_else(|| {
        LakeError::Io(std::io::Error::other(
            "compact needs [warehouse] format = \"delta\"",
        ))
    })?;
    let mut out = Compacted::default();
    for ds in [Dataset::Calls, Dataset::MonitorLegs] {
        let mut by_date: BTreeMap<String, Vec<ActiveFile>> = BTreeMap::new();
        for f in delta.active_files(ds, Some(source))? {
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
            match rewrite(storage, state, source_id, source, ds, &date, files, opts) {
                Ok((before, after, rows)) => {
                    out.partitions += 1;
                    out.files_before += before;
                    out.files_after += after;
                    out.rows += rows;
                }
                Err(LakeError::Delta(e @ DeltaError::CompactionLost { .. })) => {
                    warn!(source = %source, date = %date, error = %e, "Compaction lost the race; the partition is as the other one left it.");
                    out.lost += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

/// Rewrites one partition's `files`; returns (files replaced, files written, rows).
#[allow(clippy::too_many_arguments)]
fn rewrite(
    storage: &dyn Storage,
    state: &State,
    source_id: i64,
    source: &str,
    ds: Dataset,
    date: &str,
    mut files: Vec<ActiveFile>,
    opts: &CompactOptions,
) -> Result<(usize, usize, u64), LakeError> {
    let delta = storage.delta().expect("checked by the caller");
    files.sort_by(|a, b| a.path.cmp(&b.path));
    // Only files of the current schema are merged (an older one keeps its own columns).
    let schema = ds.schema();
    let id = uuid::Uuid::now_v7().simple().to_string();
    let removed: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    state.begin_compaction(&id, source_id, ds.dir(), date, &removed)?;
    let dir = format!("{}/source={source}/date={date}", ds.dir());
    let mut added: Vec<NewFile> = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    let mut current: Option<DataFile> = None;
    let mut n = 0;
    let mut rows_in = 0u64;
    let result = (|| -> Result<(), LakeError> {
        for f in &files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(storage.open(&f.path)?)?;
            if reader.schema().fields() != schema.fields() {
                continue;
            }
            taken.push(f.path.clone());
            for batch in reader.with_batch_size(8192).build()? {
                let batch = batch?;
                let batch = batch.with_schema(schema.clone())?;
                rows_in += batch.num_rows() as u64;
                if current.is_none() {
                    n += 1;
                    current = Some(DataFile::create(
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
            }
        }
        if let Some(w) = current.take() {
            added.push(seal(storage, w)?);
        }
        Ok(())
    })();
    let undo = |added: &[NewFile]| {
        for a in added {
            let _ = storage.delete(&a.path);
        }
    };
    if let Err(e) = result {
        undo(&added);
        state.drop_compaction(&id)?;
        return Err(e);
    }
    let rows_out: u64 = added.iter().map(|a| a.rows).sum();
    if taken.len() < 2 || rows_out != rows_in {
        undo(&added);
        state.drop_compaction(&id)?;
        return Ok((0, 0, 0));
    }
    state.compaction_written(&id, &taken, &added)?;
    let rw = Rewrite {
        source: source.to_string(),
        date: date.to_string(),
        removed: taken.clone(),
        added: added
            .iter()
            .map(|a| (a.path.clone(), a.bytes, a.stats.clone()))
            .collect(),
        target_size: opts.target_bytes as i64,
    };
    crate::pipeline::failpoint("compact_before_commit");
    if let Err(e) = delta.commit_rewrite(ds, rw) {
        undo(&added);
        state.drop_compaction(&id)?;
        return Err(e.into());
    }
    crate::pipeline::failpoint("compact_after_commit");
    let done = PendingCompaction {
        id,
        dataset: ds.dir().to_string(),
        date: date.to_string(),
        removed: taken.clone(),
        added: Some(added.clone()),
    };
    state.finish_compaction(source_id, &done)?;
    info!(source = %source, date = %date, files_before = taken.len(), files_after = added.len(), rows = rows_out, "Compacted a partition.");
    Ok((taken.len(), added.len(), rows_out))
}

fn seal(storage: &dyn Storage, w: DataFile) -> Result<NewFile, LakeError> {
    let (path, rows) = (w.rel.clone(), w.rows);
    let (bytes, stats) = w.finish(storage)?;
    Ok(NewFile {
        path,
        bytes,
        rows,
        stats,
    })
}

/// Recovery of a source's unfinished compactions: one whose new files are in the table is
/// finished in the state; any other has its new files deleted and is forgotten.
pub fn recover_compactions(
    storage: &dyn Storage,
    state: &State,
    source_id: i64,
    source: &str,
) -> Result<usize, LakeError> {
    let pending = state.pending_compactions(source_id)?;
    if pending.is_empty() {
        return Ok(0);
    }
    let Some(delta) = storage.delta() else {
        return Ok(0);
    };
    for c in &pending {
        let Some(ds) = ds_named(&c.dataset) else {
            state.drop_compaction(&c.id)?;
            continue;
        };
        let landed = match &c.added {
            Some(added) if !added.is_empty() => {
                let active = delta.active_files(ds, Some(source))?;
                active.iter().any(|f| f.path == added[0].path)
            }
            _ => false,
        };
        if landed {
            state.finish_compaction(source_id, c)?;
            info!(source = %source, date = %c.date, "Finished recording an interrupted compaction that had committed.");
        } else {
            // Its files, also the ones written before it recorded them.
            let dir = format!("{}/source={source}/date={}", c.dataset, c.date);
            let prefix = format!("part-{}-", c.id);
            for name in storage.list(&dir)? {
                if name.starts_with(&prefix) {
                    storage.delete(&format!("{dir}/{name}"))?;
                }
            }
            state.drop_compaction(&c.id)?;
            info!(source = %source, date = %c.date, "Undid an interrupted compaction that had not committed.");
        }
    }
    Ok(pending.len())
}

/// Holds the state's published data files of a source against its tables' files and makes
/// the state follow the tables: a compaction by another process (a second daemon wrongly
/// given the same source, or a copy of the state) replaced files this state still names.
/// Returns the files changed.
pub fn reconcile(
    storage: &dyn Storage,
    state: &State,
    source_id: i64,
    source: &str,
) -> Result<usize, LakeError> {
    let Some(delta) = storage.delta() else {
        return Ok(0);
    };
    let mut active: BTreeMap<String, ActiveFile> = BTreeMap::new();
    for ds in [Dataset::Calls, Dataset::MonitorLegs] {
        for f in delta.active_files(ds, Some(source))? {
            active.insert(f.path.clone(), f);
        }
    }
    let manifest = state.manifest(source_id)?;
    let named: std::collections::BTreeSet<&str> =
        manifest.iter().map(|m| m.final_path.as_str()).collect();
    let removed: Vec<String> = manifest
        .iter()
        .filter(|m| {
            m.published
                && super::delta::dataset_of(&m.final_path).is_some()
                && !active.contains_key(&m.final_path)
        })
        .map(|m| m.final_path.clone())
        .collect();
    let added: Vec<NewFile> = active
        .values()
        .filter(|f| !named.contains(f.path.as_str()))
        .map(|f| NewFile {
            path: f.path.clone(),
            bytes: f.size,
            rows: f.rows.unwrap_or_default(),
            stats: String::new(),
        })
        .collect();
    if removed.is_empty() && added.is_empty() {
        return Ok(0);
    }
    warn!(source = %source, removed = removed.len(), added = added.len(), "The table's files of this source changed outside this state (a compaction by another process?); the state now follows the table.");
    let n = removed.len() + added.len();
    state.finish_compaction(
        source_id,
        &PendingCompaction {
            id: format!("reconciled-{}", uuid::Uuid::now_v7().simple()),
            dataset: String::new(),
            date: String::new(),
            removed,
            added: Some(added),
        },
    )?;
    Ok(n)
}
