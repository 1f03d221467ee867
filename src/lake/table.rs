//! The one table layer: the steps of the commit protocol as a trait, with a plain Parquet
//! implementation (`plain::Plain`) and a Delta one (`delta::Delta`). The pipeline, the
//! commands and the daemon reach the lake only through `Lake`, which holds one of them.
//!
//! Stage and commit are the same for every format (files under `_staging/`, then one SQLite
//! transaction); the formats differ from publish on: where readers see committed files, how an
//! interrupted run is recovered, which files are active, what `verify` holds against what, and
//! whether the files can be compacted.

use crate::shared::{Cursor, LakeFacts};
use crate::state::{Commit, ManifestRow, State};

use super::LakeError;
use super::storage::Storage;
use super::writer::CommitWriter;

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

/// A data file readers see: its lake-relative path, size and partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveFile {
    /// Lake-relative path (`calls/source=…/date=…/part-….parquet`).
    pub path: String,
    pub size: u64,
    pub source: String,
    pub date: String,
    /// Rows, from the file's statistics (Delta only).
    pub rows: Option<u64>,
}

/// A source kind's rule for a cursor that re-lists what the lake lost: given the facts of the
/// calls to fetch again (the least numeric id, less one, and the start of their day) and the
/// stored cursor, the cursor to store (`None`: from the beginning). It is the kind's `repair`
/// rule, which never skips a call.
pub type CursorRule<'a> = dyn Fn(&LakeFacts, Option<&Cursor>) -> Option<Cursor> + Sync + 'a;

/// Keeps the stored cursor (for callers without a source kind's rule).
pub fn keep_cursor(_: &LakeFacts, c: Option<&Cursor>) -> Option<Cursor> {
    c.cloned()
}

/// One source of a lake, as recovery and `verify` work on it (under the source's lock).
pub struct SourceCx<'a> {
    pub storage: &'a dyn Storage,
    pub state: &'a State,
    pub source_id: i64,
    pub source: &'a str,
    /// How the source re-lists calls whose file is gone.
    pub rewind: &'a CursorRule<'a>,
}

/// What recovery did for one source.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Committed files whose publish was finished now.
    pub rolled_forward: usize,
    /// Staged files of commits that never happened, and files of compactions that did not
    /// commit, deleted.
    pub deleted: usize,
    /// Committed files the table lacked, added to it again.
    pub readded: usize,
    /// Files the table held that the state did not name, adopted.
    pub adopted: usize,
    /// Files the table replaced (another process's compaction), dropped from the state.
    pub replaced: usize,
    /// Committed files that are gone from the lake: their calls are fetched again.
    pub forgotten: usize,
    /// Calls un-exported because their file is gone.
    pub unexported: usize,
    /// Compactions in flight that were settled (finished or undone).
    pub compactions: usize,
}

/// One thing `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// A problem (exit 1) rather than a note.
    pub problem: bool,
    /// The lake-relative file it is about, when it is about one.
    pub file: Option<String>,
    pub text: String,
}

impl Finding {
    /// A problem about `file`.
    pub fn problem(file: &str, text: String) -> Finding {
        Finding {
            problem: true,
            file: Some(file.to_string()),
            text,
        }
    }

    /// A note about `file` (the next run settles it).
    pub fn note(file: &str, text: String) -> Finding {
        Finding {
            problem: false,
            file: Some(file.to_string()),
            text,
        }
    }
}

/// The steps of the commit protocol that a lake format implements.
pub trait Table: Send + Sync {
    /// `plain` or `delta`.
    fn format(&self) -> &'static str;

    /// Step 1: a commit's files, staged under `_staging/<source>/` (the same for every
    /// format).
    fn stage<'a>(
        &self,
        storage: &'a dyn Storage,
        source: &str,
        commit_id: &str,
        extracted_at_us: i64,
    ) -> CommitWriter<'a> {
        CommitWriter::new(storage, source, commit_id, extracted_at_us)
    }

    /// Step 2: one SQLite transaction records the staged files, the keys and the cursor
    /// (the same for every format). Returns the commit's sequence number.
    fn commit(&self, state: &mut State, c: &Commit<'_>) -> Result<i64, LakeError> {
        Ok(state.commit(c)?)
    }

    /// Step 3: committed files become what readers see; then they are marked published.
    fn publish(&self, cx: &SourceCx<'_>, rows: &[ManifestRow]) -> Result<(), LakeError>;

    /// Step 4, before a run exports anything: an interrupted run is finished or undone, and
    /// the state brought to agree with the lake.
    fn recover(&self, cx: &SourceCx<'_>) -> Result<Recovered, LakeError>;

    /// The data files readers see, of one source.
    fn active_files(
        &self,
        storage: &dyn Storage,
        source: &str,
    ) -> Result<Vec<ActiveFile>, LakeError>;

    /// The data files that hold the source's exported calls, for `repair` to rebuild the
    /// state from: what readers see (a format may add files it has yet to adopt).
    fn data_files(
        &self,
        storage: &dyn Storage,
        source: &str,
    ) -> Result<Vec<ActiveFile>, LakeError> {
        self.active_files(storage, source)
    }

    /// Some file of `data_files`, found without listing everything when one is near (the
    /// question "does the lake hold files of this source?").
    fn first_file(&self, storage: &dyn Storage, source: &str) -> Result<Option<String>, LakeError> {
        Ok(self
            .data_files(storage, source)?
            .into_iter()
            .next()
            .map(|f| f.path))
    }

    /// The format's checks of `verify`: the state's published data files against what
    /// readers see, and that against the storage. `idle`: no run of the source is in flight.
    fn verify(&self, cx: &SourceCx<'_>, idle: bool) -> Result<Vec<Finding>, LakeError>;

    /// Committed data files that are gone are forgotten (`repair`): their calls are
    /// un-exported and the cursor rewound, so the next run fetches them again.
    fn forget_missing(&self, cx: &SourceCx<'_>) -> Result<Recovered, LakeError>;

    /// Merges the source's small files, one atomic commit per partition.
    fn compact(&self, cx: &SourceCx<'_>, opts: &CompactOptions) -> Result<Compacted, LakeError>;

    /// Deletes files the tables removed more than `retain_hours` ago; returns them per
    /// dataset directory.
    fn vacuum(
        &self,
        retain_hours: u64,
        dry_run: bool,
    ) -> Result<Vec<(&'static str, Vec<String>)>, LakeError>;
}
