//! Per-source exclusive locks: an OS file lock, released by the kernel when the holder dies,
//! so a kill -9 never leaves a stale lock.

use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};

/// A held lock on one source; released on drop.
#[derive(Debug)]
pub struct SourceLock {
    _file: File,
    path: PathBuf,
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("source {source_name} is being exported by another callsync process (lock {path})")]
    Busy { source_name: String, path: PathBuf },
    #[error("cannot open lock file {path}: {error}")]
    Io {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

impl SourceLock {
    /// Takes the lock of `source` beside the state file, without waiting.
    pub fn try_acquire(state_path: &Path, source: &str) -> Result<SourceLock, LockError> {
        let dir = PathBuf::from(format!("{}.locks", state_path.display()));
        let path = dir.join(format!("{source}.lock"));
        let io = |error| LockError::Io {
            path: path.clone(),
            error,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(SourceLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(LockError::Busy {
                source_name: source.to_string(),
                path,
            }),
            Err(TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_source_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let a = SourceLock::try_acquire(&db, "vg").unwrap();
        assert!(matches!(
            SourceLock::try_acquire(&db, "vg"),
            Err(LockError::Busy { .. })
        ));
        let _other = SourceLock::try_acquire(&db, "other").unwrap();
        drop(a);
        SourceLock::try_acquire(&db, "vg").unwrap();
    }
}
