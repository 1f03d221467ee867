//! The lake: where committed files live and how readers see them. `Lake` is the one way in:
//! a storage (a local directory or an object store) and a table format (`plain` or `delta`,
//! one trait in `table.rs`), opened from `[warehouse]`.
//!
//! Order of a commit (see DESIGN.md): stage files under `_staging/<source>/` (durable), record
//! them in ONE SQLite transaction with the cursor, then publish (into the Hive partitions; with
//! Delta, then one table commit). Recovery, under the source's lock, finishes or undoes what
//! an interrupted run left, reading the lake (never guessing from an error) to know which.

pub mod compact;
pub mod delta;
mod durable;
mod files;
pub mod layer;
pub mod marker;
pub mod object;
pub mod plain;
mod recover;
pub mod repair;
mod sort;
pub mod stats;
pub mod storage;
pub mod table;
mod verify;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use tracing::info;

use crate::config::{LakeFormat, LakeLocation, WarehouseConfig};
use crate::state::{ManifestRow, State, StateError};
pub use layer::StoreLayer;
use storage::Storage;
use table::{CursorRule, Finding, Recovered, SourceCx, Table};

/// A lake operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("lake I/O: {}", describe_io(.0))]
    Io(#[from] std::io::Error),
    #[error("Parquet: {}", describe(.0))]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Delta(#[from] delta::DeltaError),
    #[error("{0}")]
    Refused(String),
}

/// An I/O error, saying in plain words when the disk is full.
fn describe_io(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::StorageFull {
        format!("the disk holding the lake is full ({e}); free space or grow it, then run again")
    } else {
        e.to_string()
    }
}

/// Any error whose text shows a full disk (Parquet wraps the writer's I/O error).
fn describe(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    if text.contains("No space left on device") || text.contains("os error 28") {
        format!("the disk holding the lake is full ({text}); free space or grow it, then run again")
    } else {
        text
    }
}

/// A lake: its storage and its table format.
pub struct Lake {
    storage: Box<dyn Storage>,
    table: Box<dyn Table>,
    /// The lake's location, for messages.
    display: String,
}

impl Lake {
    /// Opens the lake of `[warehouse]`: a local directory, or an object store whose staged
    /// files spool beside the state (`<state path>.spool/`). `rt` drives an object store's
    /// requests.
    pub fn open(
        cfg: &WarehouseConfig,
        state_path: &Path,
        rt: &tokio::runtime::Handle,
    ) -> Result<Lake, LakeError> {
        Lake::open_with(cfg, state_path, rt, None)
    }

    /// `open`, with every store the lake uses wrapped by `layer` (tests inject faults so).
    pub fn open_with(
        cfg: &WarehouseConfig,
        state_path: &Path,
        rt: &tokio::runtime::Handle,
        layer: Option<&dyn StoreLayer>,
    ) -> Result<Lake, LakeError> {
        // Delta's engine builds TLS clients from the process default provider, and
        // callsync reaches that engine only through a `Lake`.
        crate::tls::install_ring();
        let wrap = |s: Arc<dyn object_store::ObjectStore>| match layer {
            Some(l) => l.object_store(s),
            None => s,
        };
        let (storage, store, url): (Box<dyn Storage>, _, url::Url) = match cfg.location() {
            LakeLocation::Local(root) => {
                let local = storage::LocalStorage::new(&root)?;
                let abs = std::fs::canonicalize(&root)?;
                let url = url::Url::from_directory_path(&abs).map_err(|()| {
                    std::io::Error::other(format!("{} is not an absolute path", abs.display()))
                })?;
                let storage: Box<dyn Storage> = match layer {
                    Some(l) => l.storage(Box::new(local)),
                    None => Box::new(local),
                };
                // The local Delta log is fsynced (object_store's local store does not).
                let store = wrap(Arc::new(durable::SyncedLocal::new()));
                (storage, store, url)
            }
            LakeLocation::Object {
                url,
                scheme,
                bucket,
                prefix,
            } => {
                let options = cfg
                    .resolved_storage_options()
                    .map_err(|e| LakeError::Io(std::io::Error::other(e)))?;
                let store = object::build_store(&scheme, &bucket, &options)
                    .map_err(|e| LakeError::Io(std::io::Error::other(e)))?;
                let store = wrap(store);
                let mut spool = state_path.as_os_str().to_owned();
                spool.push(".spool");
                let lake = object::ObjectStorage::new(
                    store.clone(),
                    &prefix,
                    Path::new(&spool),
                    rt.clone(),
                    &url,
                )?;
                let base = url::Url::parse(&url).map_err(std::io::Error::other)?;
                (Box::new(lake) as Box<dyn Storage>, store, base)
            }
        };
        let table: Box<dyn Table> = match cfg.format {
            LakeFormat::Parquet => {
                refuse_delta_as_plain(storage.as_ref(), &cfg.display())?;
                Box::new(plain::Plain)
            }
            LakeFormat::Delta => Box::new(delta::Delta {
                tables: delta::DeltaTables::new(
                    store,
                    url,
                    rt.clone(),
                    cfg.checkpoint_interval,
                    cfg.log_retention_days,
                ),
            }),
        };
        Ok(Lake {
            storage,
            table,
            display: cfg.display(),
        })
    }

    /// Where the lake's bytes live.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// The table format.
    pub fn table(&self) -> &dyn Table {
        self.table.as_ref()
    }

    /// The lake's location, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// One source of the lake, for the table's steps.
    pub fn source<'a>(
        &'a self,
        state: &'a State,
        source_id: i64,
        source: &'a str,
        rewind: &'a CursorRule<'a>,
    ) -> SourceCx<'a> {
        SourceCx {
            storage: self.storage.as_ref(),
            state,
            source_id,
            source,
            rewind,
        }
    }

    /// Publishes committed files (step 3) and marks them published.
    pub fn publish(
        &self,
        state: &State,
        source_id: i64,
        source: &str,
        rows: &[ManifestRow],
    ) -> Result<(), LakeError> {
        let keep = table::keep_cursor;
        self.table
            .publish(&self.source(state, source_id, source, &keep), rows)
    }

    /// Recovery for one source; the caller holds the source's lock.
    pub fn recover(
        &self,
        state: &State,
        source_id: i64,
        source: &str,
        rewind: &CursorRule<'_>,
    ) -> Result<Recovered, LakeError> {
        let rec = self
            .table
            .recover(&self.source(state, source_id, source, rewind))?;
        if rec != Recovered::default() {
            info!(
                source = %source,
                rolled_forward = rec.rolled_forward,
                deleted = rec.deleted,
                readded = rec.readded,
                adopted = rec.adopted,
                replaced = rec.replaced,
                forgotten = rec.forgotten,
                unexported = rec.unexported,
                compactions = rec.compactions,
                "Recovered from an interrupted run."
            );
        }
        Ok(rec)
    }

    /// Holds the lake against the state for one source (`source_id` is `None` when the
    /// state does not know it). `idle`: the caller holds the source's lock.
    pub fn verify(
        &self,
        state: &State,
        source_id: Option<i64>,
        source: &str,
        idle: bool,
    ) -> Result<Vec<Finding>, LakeError> {
        verify::verify(self, state, source_id, source, idle)
    }
}

/// Refuses to open a lake holding Delta tables as a plain one: its folders also hold files
/// the tables removed (compaction's inputs until `vacuum`), which a plain reader would count
/// twice, and plain writes would never reach the tables.
fn refuse_delta_as_plain(storage: &dyn Storage, lake: &str) -> Result<(), LakeError> {
    for ds in delta::DATASETS {
        if storage
            .first_file(&format!("{}/_delta_log", ds.dir()), ".json")?
            .is_some()
        {
            return Err(LakeError::Refused(format!(
                "the lake {lake} holds Delta tables ({}/_delta_log/) but [warehouse] format is \"parquet\" (the plain layout): read as plain Parquet, its folders also hold files the table removed (a compaction's inputs until vacuum), which readers would count twice, and plain commits would never reach the table. callsync does not turn a Delta lake back into a plain one; keep format = \"delta\"",
                ds.dir()
            )));
        }
    }
    Ok(())
}
