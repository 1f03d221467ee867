//! The plain Parquet lake: readers list the partition folders, so publishing is moving a
//! committed file into its folder (a rename on local disk, a copy then a delete of the staged
//! object on object storage), and what readers see is what the folders hold.

use tracing::info;

use super::LakeError;
use super::compact::{CompactOptions, Compacted};
use super::delta::dataset_of;
use super::marker::DATASETS;
use super::recover::{clear_staging, finish_moves, forget, mark_done};
use super::storage::Storage;
use super::table::{ActiveFile, Finding, Recovered, SourceCx, Table};
use crate::schema::Dataset;
use crate::state::ManifestRow;

/// Why a plain lake cannot be compacted or vacuumed.
pub const NO_COMPACTION: &str = "compact and vacuum need [warehouse] format = \"delta\": a plain Parquet lake has no atomic swap, so a reader listing the folder mid-way would see rows twice or miss them";

/// The plain format.
pub struct Plain;

impl Plain {
    /// Data files in the folder of one partition.
    fn partition_files(
        storage: &dyn Storage,
        source: &str,
        ds: Dataset,
        date: &str,
    ) -> Result<Vec<String>, LakeError> {
        let dir = format!("{}/source={source}/date={date}", ds.dir());
        Ok(storage
            .list(&dir)?
            .into_iter()
            .filter(|n| n.ends_with(".parquet"))
            .map(|n| format!("{dir}/{n}"))
            .collect())
    }

    fn forget_in(cx: &SourceCx<'_>, gone: &[String]) -> Result<(usize, usize), LakeError> {
        forget(cx, gone, false, &|ds, date| {
            Self::partition_files(cx.storage, cx.source, ds, date)
        })
    }
}

impl Table for Plain {
    fn format(&self) -> &'static str {
        "plain"
    }

    fn publish(&self, cx: &SourceCx<'_>, rows: &[ManifestRow]) -> Result<(), LakeError> {
        for row in rows {
            cx.storage.publish(&row.staged, &row.final_path)?;
        }
        crate::failpoint::hit("after_publish");
        let names: Vec<&str> = rows.iter().map(|r| r.staged.as_str()).collect();
        cx.state.mark_published(&names)?;
        Ok(())
    }

    /// Recovery of a plain lake's source, under its lock:
    /// 1. A committed file whose move was not recorded is finished: in place with its size,
    ///    it is done; staged, it is moved; neither, it is lost.
    /// 2. A lost data file is forgotten: the calls no other file of its partition holds are
    ///    un-exported and the cursor rewound, so the next run fetches them again.
    /// 3. Staged files no manifest row names (their commit never happened) are deleted.
    fn recover(&self, cx: &SourceCx<'_>) -> Result<Recovered, LakeError> {
        let moves = finish_moves(cx, cx.state.unpublished(cx.source_id)?)?;
        let gone = mark_done(cx, &moves)?;
        let (forgotten, unexported) = Self::forget_in(cx, &gone)?;
        let deleted = clear_staging(cx)?;
        Ok(Recovered {
            rolled_forward: moves.rolled_forward,
            deleted,
            forgotten,
            unexported,
            ..Recovered::default()
        })
    }

    fn active_files(
        &self,
        storage: &dyn Storage,
        source: &str,
    ) -> Result<Vec<ActiveFile>, LakeError> {
        let mut out = Vec::new();
        for dataset in DATASETS {
            for (path, size) in storage.walk(&format!("{dataset}/source={source}"))? {
                if !path.ends_with(".parquet") {
                    continue;
                }
                let date = super::files::date_of(&path).unwrap_or_default().to_string();
                out.push(ActiveFile {
                    path,
                    size,
                    source: source.to_string(),
                    date,
                    rows: None,
                });
            }
        }
        Ok(out)
    }

    fn first_file(&self, storage: &dyn Storage, source: &str) -> Result<Option<String>, LakeError> {
        // Every file in the folders is data: the first one found will do.
        for dataset in DATASETS {
            if let Some(f) =
                storage.first_file(&format!("{dataset}/source={source}"), ".parquet")?
            {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    fn verify(&self, cx: &SourceCx<'_>, _idle: bool) -> Result<Vec<Finding>, LakeError> {
        // The folders are listed before the state is read: a run publishing meanwhile shows
        // up as committed-but-unpublished, never as foreign.
        let lake = self.active_files(cx.storage, cx.source)?;
        let manifest = cx.state.manifest(cx.source_id)?;
        let source = cx.source;
        let mut out = Vec::new();
        for m in manifest
            .iter()
            .filter(|m| m.published && dataset_of(&m.final_path).is_some())
        {
            let hint = format!(
                "; `callsync repair --source {source}` un-exports its calls so the next run fetches them again"
            );
            out.extend(super::verify::size_finding(cx.storage, m, &hint)?);
        }
        let named: std::collections::BTreeSet<&str> =
            manifest.iter().map(|m| m.final_path.as_str()).collect();
        for f in &lake {
            if !named.contains(f.path.as_str()) {
                out.push(Finding::problem(
                    &f.path,
                    format!(
                        "foreign: {} is in the lake but no commit of {source} names it",
                        f.path
                    ),
                ));
            }
        }
        Ok(out)
    }

    fn forget_missing(&self, cx: &SourceCx<'_>) -> Result<Recovered, LakeError> {
        let mut gone = Vec::new();
        for m in cx.state.manifest(cx.source_id)? {
            if m.published
                && dataset_of(&m.final_path).is_some()
                && cx.storage.size(&m.final_path)?.is_none()
            {
                gone.push(m.final_path);
            }
        }
        let (forgotten, unexported) = Self::forget_in(cx, &gone)?;
        if forgotten > 0 {
            info!(source = %cx.source, files = forgotten, calls = unexported, "Forgot committed files that are gone; the next run fetches their calls again.");
        }
        Ok(Recovered {
            forgotten,
            unexported,
            ..Recovered::default()
        })
    }

    fn compact(&self, _cx: &SourceCx<'_>, _opts: &CompactOptions) -> Result<Compacted, LakeError> {
        Err(LakeError::Refused(NO_COMPACTION.to_string()))
    }

    fn vacuum(
        &self,
        _retain_hours: u64,
        _dry_run: bool,
    ) -> Result<Vec<(&'static str, Vec<String>)>, LakeError> {
        Err(LakeError::Refused(NO_COMPACTION.to_string()))
    }
}
