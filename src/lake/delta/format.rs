//! The Delta format of the table layer: publishing moves committed files into their partition
//! folder and then adds them to the table in one Delta commit per (table, callsync commit);
//! readers see what the table's latest version holds.

use std::collections::{BTreeMap, HashSet};

use deltalake::kernel::{Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tracing::info;

use super::commit::{Guard, Outcome};
use super::recover::plan;
use super::{DATASETS, DeltaError, DeltaTables, PARTITION_COLUMNS, dataset_of, partition_of};
use crate::lake::LakeError;
use crate::lake::compact::{CompactOptions, Compacted};
use crate::lake::recover::forget;
use crate::lake::storage::Storage;
use crate::lake::table::{ActiveFile, Finding, Recovered, SourceCx, Table};
use crate::state::{ManifestEntry, ManifestRow};

/// The Delta format: the lake's two tables.
pub struct Delta {
    pub tables: DeltaTables,
}

fn write_operation() -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(PARTITION_COLUMNS.iter().map(|c| c.to_string()).collect()),
        predicate: None,
    }
}

/// The add action of a data file (lake-relative `path`).
fn add_of(ds: crate::schema::Dataset, path: &str, size: u64, stats: Option<String>) -> Add {
    let rel = path[ds.dir().len() + 1..].to_string();
    Add {
        partition_values: partition_of(&rel),
        path: rel,
        size: size as i64,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: true,
        stats,
        ..Default::default()
    }
}

impl DeltaTables {
    /// Adds committed data files to their tables, one Delta commit per (table, callsync
    /// commit), each with the app transaction `callsync/<source>` = the commit's sequence
    /// number; a commit the table already holds is skipped. `fresh`: right after the state
    /// commit (the table cannot hold it yet), not recovery.
    pub fn append(
        &self,
        source: &str,
        rows: &[ManifestRow],
        fresh: bool,
    ) -> Result<(), DeltaError> {
        let mut by_table: BTreeMap<(usize, i64), Vec<Add>> = BTreeMap::new();
        for r in rows {
            let Some(ds) = dataset_of(&r.final_path) else {
                continue;
            };
            let i = DATASETS.iter().position(|d| *d == ds).unwrap_or(0);
            by_table.entry((i, r.seq)).or_default().push(add_of(
                ds,
                &r.final_path,
                r.bytes,
                r.stats.clone(),
            ));
        }
        let app = format!("callsync/{source}");
        for ((i, seq), adds) in by_table {
            let id = uuid::Uuid::now_v7().simple().to_string();
            self.block(self.commit(
                DATASETS[i],
                Guard::Txn {
                    app: &app,
                    seq,
                    fresh,
                },
                &adds,
                &write_operation(),
                Transaction::new(&app, seq),
                &id,
            ))?;
        }
        Ok(())
    }

    /// Adds committed files the table lacks again (one commit per table, with a new sequence
    /// number of the source); statistics come from the state, or from the file's footer.
    /// Returns the files added.
    pub(super) fn readd(
        &self,
        cx: &SourceCx<'_>,
        files: &[ManifestEntry],
    ) -> Result<usize, LakeError> {
        let app = format!("callsync/{}", cx.source);
        let mut added = 0;
        for ds in DATASETS {
            let mut adds = Vec::new();
            for m in files
                .iter()
                .filter(|m| dataset_of(&m.final_path) == Some(ds))
            {
                let stats = match &m.stats {
                    Some(s) => Some(s.clone()),
                    None => Some(footer_stats(cx.storage, &m.final_path)?),
                };
                adds.push(add_of(ds, &m.final_path, m.bytes, stats));
            }
            if adds.is_empty() {
                continue;
            }
            let seq = cx.state.next_seq(cx.source_id)?;
            let id = uuid::Uuid::now_v7().simple().to_string();
            if let Outcome::Landed(_) = self.block(self.commit(
                ds,
                Guard::Missing,
                &adds,
                &write_operation(),
                Transaction::new(&app, seq),
                &id,
            ))? {
                added += adds.len();
            }
        }
        Ok(added)
    }
}

/// Delta statistics of a data file, from its footer.
fn footer_stats(storage: &dyn Storage, path: &str) -> Result<String, LakeError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(storage.open(path)?)?;
    Ok(crate::lake::stats::delta_stats(
        builder.metadata(),
        builder.schema(),
    ))
}

impl Table for Delta {
    fn format(&self) -> &'static str {
        "delta"
    }

    fn publish(&self, cx: &SourceCx<'_>, rows: &[ManifestRow]) -> Result<(), LakeError> {
        for row in rows {
            cx.storage.publish(&row.staged, &row.final_path)?;
        }
        crate::failpoint::hit("after_publish");
        self.tables.append(cx.source, rows, true)?;
        let names: Vec<&str> = rows.iter().map(|r| r.staged.as_str()).collect();
        cx.state.mark_published(&names)?;
        // The next run's check expects the log to show these commits.
        for r in rows {
            if let Some(ds) = dataset_of(&r.final_path) {
                cx.state.note_published_seq(cx.source_id, ds.dir(), r.seq)?;
            }
        }
        Ok(())
    }

    fn recover(&self, cx: &SourceCx<'_>) -> Result<Recovered, LakeError> {
        super::recover::recover(&self.tables, cx)
    }

    fn active_files(
        &self,
        _storage: &dyn Storage,
        source: &str,
    ) -> Result<Vec<ActiveFile>, LakeError> {
        let mut out = Vec::new();
        for ds in DATASETS {
            out.extend(self.tables.active_files(ds, Some(source))?);
        }
        Ok(out)
    }

    /// A source that never wrote a Delta commit (no app transaction `callsync/<source>` in
    /// either table) holds its calls in the files of its plain days, published before the
    /// lake was switched to Delta and not adopted yet: those are its data. Any other source's
    /// data is what the tables hold (other files in its folders are files the tables removed,
    /// or never committed).
    fn data_files(
        &self,
        storage: &dyn Storage,
        source: &str,
    ) -> Result<Vec<ActiveFile>, LakeError> {
        let app = format!("callsync/{source}");
        let mut wrote = false;
        for ds in DATASETS {
            wrote |= self.tables.txn_version(ds, &app)?.is_some();
        }
        if wrote {
            self.active_files(storage, source)
        } else {
            crate::lake::plain::Plain.active_files(storage, source)
        }
    }

    fn verify(&self, cx: &SourceCx<'_>, idle: bool) -> Result<Vec<Finding>, LakeError> {
        let source = cx.source;
        let mut out = Vec::new();
        for ds in DATASETS {
            if !self.tables.exists(ds)? {
                continue;
            }
            if let Err(e @ DeltaError::Unsupported { .. }) = self.tables.check_latest(ds) {
                out.push(Finding::problem(ds.dir(), e.to_string()));
            }
        }
        // A compaction in flight: its old and new files are what the next run settles.
        let mut compacting: HashSet<String> = HashSet::new();
        for c in cx.state.pending_compactions(cx.source_id)? {
            compacting.extend(c.removed);
            compacting.extend(c.added.into_iter().flatten().map(|f| f.path));
        }
        for f in &compacting {
            out.push(Finding::note(
                f,
                format!(
                    "written or replaced by an interrupted compaction: {f} (the next run of {source} settles it from the table)"
                ),
            ));
        }
        let mut p = plan(&self.tables, cx, &compacting)?;
        if !(idle || p.readd.is_empty() && p.gone.is_empty()) {
            // A run publishing meanwhile: what it added since is in the table now.
            p = plan(&self.tables, cx, &compacting)?;
        }
        for f in &p.adopt {
            out.push(Finding::problem(
                &f.path,
                format!(
                    "not in the state: {} is in the Delta table but no commit of {source} names it; the next run of {source} adopts it and its calls",
                    f.path
                ),
            ));
        }
        for (list, what, next) in [
            (&p.readd, "not in the Delta table", "adds it again"),
            (
                &p.replaced,
                "replaced in the Delta table by another process's compaction",
                "follows the table",
            ),
            (
                &p.gone,
                "missing, in neither the Delta table nor the lake",
                "fetches its calls again",
            ),
        ] {
            for m in list {
                out.push(Finding::problem(
                    &m.final_path,
                    format!(
                        "{what}: {} (committed in {}, {} bytes); the next run of {source} {next}",
                        m.final_path, m.commit_id, m.bytes
                    ),
                ));
            }
        }
        for f in &p.active {
            match cx.storage.size(&f.path)? {
                None => out.push(Finding::problem(
                    &f.path,
                    format!(
                        "missing: the Delta table references {}, which is not in the lake (readers fail on it); `callsync repair --source {source}` removes it from the table and the next run fetches its calls again",
                        f.path
                    ),
                )),
                Some(n) if n != f.size => out.push(Finding::problem(
                    &f.path,
                    format!(
                        "wrong size: {} is {n} bytes, the Delta table records {} (readers fail on it)",
                        f.path, f.size
                    ),
                )),
                Some(_) => {}
            }
        }
        Ok(out)
    }

    fn forget_missing(&self, cx: &SourceCx<'_>) -> Result<Recovered, LakeError> {
        let mut rec = Recovered::default();
        for ds in DATASETS {
            let mut missing = Vec::new();
            for f in self.tables.active_files(ds, Some(cx.source))? {
                if cx.storage.size(&f.path)?.is_none() {
                    missing.push(f.path);
                }
            }
            if missing.is_empty() {
                continue;
            }
            let rel: Vec<String> = missing
                .iter()
                .map(|p| p[ds.dir().len() + 1..].to_string())
                .collect();
            let id = uuid::Uuid::now_v7().simple().to_string();
            let seq = cx.state.next_seq(cx.source_id)?;
            let app = format!("callsync/{}", cx.source);
            self.tables.block(self.tables.commit(
                ds,
                Guard::Drop { paths: &rel },
                &[],
                &DeltaOperation::FileSystemCheck {},
                Transaction::new(&app, seq),
                &id,
            ))?;
            info!(source = %cx.source, table = ds.dir(), files = missing.len(), "Removed files that are gone from the lake from the Delta table.");
            let (files, calls) = forget(cx, &missing, false, &|ds, date| {
                Ok(self.tables.partition_files(ds, cx.source, date)?)
            })?;
            rec.forgotten += files;
            rec.unexported += calls;
        }
        // Published files the table lacks and the lake too: the next recovery forgets them.
        let more = super::recover::recover(&self.tables, cx)?;
        rec.forgotten += more.forgotten;
        rec.unexported += more.unexported;
        Ok(rec)
    }

    fn compact(&self, cx: &SourceCx<'_>, opts: &CompactOptions) -> Result<Compacted, LakeError> {
        crate::lake::compact::compact_source(&self.tables, cx, opts)
    }

    fn vacuum(
        &self,
        retain_hours: u64,
        dry_run: bool,
    ) -> Result<Vec<(&'static str, Vec<String>)>, LakeError> {
        let mut out = Vec::new();
        for ds in DATASETS {
            out.push((ds.dir(), self.tables.vacuum(ds, retain_hours, dry_run)?));
        }
        Ok(out)
    }
}
