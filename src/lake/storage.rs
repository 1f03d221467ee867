//! The storage seam under the lake: stage a file durably, publish it, list, delete.
//! `LocalStorage` is a directory (with fsyncs); `object::ObjectStorage` is object storage.
//! `super::Lake::open` picks one from `[warehouse]`.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// Where the lake's bytes live. Paths are relative to the warehouse root, `/`-separated.
pub trait Storage: Send + Sync {
    /// Creates a new staged file for writing (its directories are created).
    fn create_staged(&self, rel: &str) -> io::Result<File>;
    /// Makes a finished staged file's bytes durable; returns its size. Its directory entry
    /// is made durable by `sync_dir` on its directory, once for all of a commit's files.
    fn seal_staged(&self, rel: &str, file: File) -> io::Result<u64>;
    /// Makes the entries of a directory (files created or renamed in it) durable.
    fn sync_dir(&self, rel_dir: &str) -> io::Result<()>;
    /// Moves a staged file to its final path atomically and makes the move durable.
    fn publish(&self, staged_rel: &str, final_rel: &str) -> io::Result<()>;
    /// Whether a file exists.
    fn exists(&self, rel: &str) -> io::Result<bool>;
    /// File names directly inside a directory (empty when it does not exist).
    fn list(&self, rel_dir: &str) -> io::Result<Vec<String>>;
    /// Directory names directly inside a directory (empty when it does not exist).
    fn list_dirs(&self, rel_dir: &str) -> io::Result<Vec<String>>;
    /// Deletes a file; a missing file is not an error.
    fn delete(&self, rel: &str) -> io::Result<()>;
    /// A small file's bytes, or `None` when it does not exist.
    fn read(&self, rel: &str) -> io::Result<Option<Vec<u8>>>;
    /// Replaces a small file atomically and durably (write aside, sync, rename, sync dir).
    fn put(&self, rel: &str, bytes: &[u8]) -> io::Result<()>;
    /// Every file below a directory, recursively: lake-relative path and size, sorted
    /// (empty when the directory does not exist).
    fn walk(&self, rel_dir: &str) -> io::Result<Vec<(String, u64)>>;
    /// Some file below a directory whose name ends with `suffix`, found without listing
    /// the whole tree when one is near.
    fn first_file(&self, rel_dir: &str, suffix: &str) -> io::Result<Option<String>>;
    /// A file's size, or `None` when it does not exist.
    fn size(&self, rel: &str) -> io::Result<Option<u64>>;
    /// Opens a file for reading.
    fn open(&self, rel: &str) -> io::Result<File>;
    /// The local directory where sources spool downloads (recordings) before they are
    /// staged: `<spool_root>/<lake-relative staged path>`.
    fn spool_root(&self) -> PathBuf;
    /// Makes a file a source spooled (and synced) at `spool_root()/rel` the staged file `rel`;
    /// returns its size.
    fn adopt_spooled(&self, rel: &str) -> io::Result<u64>;
    /// Deletes what an interrupted run of `source` left in the local spool (downloads and
    /// staged files never put); the caller holds the source's lock. A local lake's spool is
    /// its staging area, which recovery lists itself.
    fn clear_spool(&self, _source: &str) -> io::Result<usize> {
        Ok(0)
    }
}

/// A warehouse in a local directory. Rename within one filesystem is atomic.
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// A warehouse rooted at `root` (created when missing).
    pub fn new(root: &Path) -> io::Result<LocalStorage> {
        fs::create_dir_all(root)?;
        Ok(LocalStorage {
            root: root.to_path_buf(),
        })
    }

    /// The absolute path of a lake-relative path.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LocalStorage {
    /// Calls `f` with the lake-relative path of every file below `rel_dir` (none when it does
    /// not exist), depth first, until `f` answers `true`.
    fn visit(
        &self,
        rel_dir: &str,
        mut f: impl FnMut(String, &fs::DirEntry) -> io::Result<bool>,
    ) -> io::Result<()> {
        let mut dirs = vec![rel_dir.trim_end_matches('/').to_string()];
        while let Some(d) = dirs.pop() {
            let entries = match fs::read_dir(self.path(&d)) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for e in entries {
                let e = e?;
                let rel = format!("{d}/{}", e.file_name().to_string_lossy());
                let t = e.file_type()?;
                if t.is_dir() {
                    dirs.push(rel);
                } else if t.is_file() && f(rel, &e)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

impl Storage for LocalStorage {
    fn create_staged(&self, rel: &str) -> io::Result<File> {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        File::options().write(true).create_new(true).open(p)
    }

    fn seal_staged(&self, _rel: &str, file: File) -> io::Result<u64> {
        file.sync_all()?;
        file.metadata().map(|m| m.len())
    }

    fn sync_dir(&self, rel_dir: &str) -> io::Result<()> {
        sync_dir(&self.path(rel_dir))
    }

    fn publish(&self, staged_rel: &str, final_rel: &str) -> io::Result<()> {
        let to = self.path(final_rel);
        let parent = to.parent().map(Path::to_path_buf);
        if let Some(parent) = &parent {
            fs::create_dir_all(parent)?;
        }
        fs::rename(self.path(staged_rel), &to)?;
        if let Some(parent) = &parent {
            sync_dir(parent)?;
        }
        Ok(())
    }

    fn exists(&self, rel: &str) -> io::Result<bool> {
        self.path(rel).try_exists()
    }

    fn list_dirs(&self, rel_dir: &str) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(self.path(rel_dir)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for e in entries {
            let e = e?;
            if e.file_type()?.is_dir() {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn list(&self, rel_dir: &str) -> io::Result<Vec<String>> {
        let dir = self.path(rel_dir);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for e in entries {
            let e = e?;
            if e.file_type()?.is_file() {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn delete(&self, rel: &str) -> io::Result<()> {
        match fs::remove_file(self.path(rel)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn read(&self, rel: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(rel)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put(&self, rel: &str, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let to = self.path(rel);
        let dir = to
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        fs::create_dir_all(&dir)?;
        let name = to
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let aside = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut f = File::create(&aside)?;
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        drop(f);
        if let Err(e) = written.and_then(|()| fs::rename(&aside, &to)) {
            let _ = fs::remove_file(&aside);
            return Err(e);
        }
        sync_dir(&dir)
    }

    fn walk(&self, rel_dir: &str) -> io::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        self.visit(rel_dir, |rel, e| {
            out.push((rel, e.metadata()?.len()));
            Ok(false)
        })?;
        out.sort();
        Ok(out)
    }

    fn first_file(&self, rel_dir: &str, suffix: &str) -> io::Result<Option<String>> {
        let mut found = None;
        self.visit(rel_dir, |rel, _| {
            let hit = rel.ends_with(suffix);
            if hit {
                found = Some(rel);
            }
            Ok(hit)
        })?;
        Ok(found)
    }

    fn open(&self, rel: &str) -> io::Result<File> {
        File::open(self.path(rel))
    }

    fn spool_root(&self) -> PathBuf {
        self.root.clone()
    }

    fn adopt_spooled(&self, rel: &str) -> io::Result<u64> {
        // Already in place under `_staging/`, synced by the source.
        fs::metadata(self.path(rel)).map(|m| m.len())
    }

    fn size(&self, rel: &str) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(rel)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
