//! Promise: a full disk fails the sync with an error that names the source and says the disk
//! is full; no partial file is visible to a reader (DuckDB's glob included); once there is
//! room again the next sync is exact. Needs root to mount a small tmpfs as the warehouse.

use std::path::{Path, PathBuf};
use std::process::Command;

use callsync::simulator::VoicegainSim;

use crate::helpers::*;

/// A tmpfs mounted for the test, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    fn grow(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn a_full_disk_fails_the_sync_naming_the_source_and_loses_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("mounting a tmpfs for the warehouse needs root");
        return;
    }
    let env = Env::with_max_rows(VoicegainSim::new(81, 0).with_ratios(0.0, 0.005), 500, 1000);
    env.sim.voicegain().add_calls(12_000);
    let fs = match Tmpfs::mount(&env.warehouse(), "600k") {
        Ok(fs) => fs,
        Err(e) => {
            skip(&format!("cannot mount a tmpfs here ({e})"));
            return;
        }
    };
    let out = env.run(&["sync"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("vg: FAILED"), "{t}");
    assert!(t.contains("disk holding the lake is full"), "{t}");
    // What is visible is whole and committed: our reader and DuckDB read every file, with no
    // duplicate.
    let rows = env.lake();
    unique_ids(&rows);
    assert!(
        !rows.is_empty() && rows.len() < 12_000,
        "{} rows",
        rows.len()
    );
    if let Some((n, distinct)) = duckdb_counts(&env.warehouse()) {
        assert_eq!((n as usize, distinct as usize), (rows.len(), rows.len()));
    }
    fs.grow("64m");
    env.sync_ok();
    assert_lake_matches_truth(&env);
    assert!(staging_files(&env.warehouse()).is_empty());
    let v = env.run(&["verify"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
}
