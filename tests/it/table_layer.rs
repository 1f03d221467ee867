//! Promise: the table layer keeps every exported call through what a lake meets in the field,
//! run as a user runs callsync (the binary, a local lake, third-party readers):
//! - a plain lake switched to `format = "delta"` has its files adopted into the table in one
//!   commit, with their statistics, and every exported call is in the table;
//! - a Delta lake switched back to plain is refused, and nothing moves;
//! - a table another engine upgraded with a feature callsync does not honour (a CHECK
//!   constraint) is refused by the feature's name and left unchanged, by sync, compact and
//!   vacuum alike, and `verify` names it;
//! - a local log entry lost or emptied after the state marked its commit published (a power
//!   cut before the log was durable) is found by the next run, which adds its files again, and
//!   `verify` names the files until then;
//! - the local Delta log is fsynced (the entry and `_delta_log/`) before the state marks the
//!   commit published (strace shows the order).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use callsync::simulator::VoicegainSim;

use crate::delta::{Readers, ids_once, truth, use_delta};
use crate::helpers::*;

fn local_delta(env: &Env, max_rows: usize) {
    use_delta(
        env,
        &format!(
            "[warehouse]\nroot = \"{}\"\nmax_rows_per_file = {max_rows}\n",
            env.warehouse().display()
        ),
    );
}

fn table_uri(env: &Env) -> String {
    env.warehouse().join("calls").display().to_string()
}

/// The log entries of the calls table, by version.
fn log_entries(env: &Env) -> Vec<(u64, PathBuf)> {
    let dir = env.warehouse().join("calls/_delta_log");
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let v = name.strip_suffix(".json")?.parse().ok()?;
                    Some((v, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Every reader holds exactly the vendor's calls.
fn readers_exact(env: &Env, readers: &Readers) {
    let want = truth(env);
    for line in readers.read(&table_uri(env), "call_id", None) {
        assert_eq!(
            ids_once(&line),
            want,
            "{} differs from the truth",
            line["reader"]
        );
    }
}

#[test]
fn a_plain_lake_switched_to_delta_holds_every_exported_call_in_the_table() {
    let Some(readers) = Readers::get() else {
        return;
    };
    let env = Env::with_max_rows(VoicegainSim::new(31, 0).with_ratios(0.0, 0.01), 50, 100);
    env.sim.voicegain().add_calls(600);
    env.sync_ok();
    env.sim.voicegain().add_calls(200);
    env.sync_ok();
    let plain: BTreeSet<String> = files_with_suffix(&env.warehouse().join("calls"), ".parquet")
        .iter()
        .map(|p| {
            p.strip_prefix(env.warehouse().join("calls"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert!(plain.len() > 5, "{plain:?}");
    local_delta(&env, 100);
    let out = env.sync_ok();
    assert!(
        text(&out).contains("Committed files the table lacked were added to it again."),
        "{}",
        text(&out)
    );
    // One commit adopted every file, with statistics from the state (their footers').
    let entries = log_entries(&env);
    let adopted = std::fs::read_to_string(&entries[1].1).unwrap();
    let adds: BTreeSet<String> = adopted
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let add = v.get("add")?;
            assert!(
                add["stats"]
                    .as_str()
                    .is_some_and(|s| s.contains("numRecords")),
                "{add}"
            );
            Some(add["path"].as_str()?.to_string())
        })
        .collect();
    assert_eq!(
        adds, plain,
        "the adopting commit holds every file of the plain lake"
    );
    readers_exact(&env, &readers);
    // Syncs go on appending to the table.
    env.sim.voicegain().add_calls(150);
    env.sync_ok();
    readers_exact(&env, &readers);
    let v = env.run(&["verify"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
}

#[test]
fn a_delta_lake_switched_back_to_plain_is_refused_and_nothing_moves() {
    let env = Env::with_max_rows(VoicegainSim::new(32, 0), 50, 100);
    env.sim.voicegain().add_calls(300);
    local_delta(&env, 100);
    env.sync_ok();
    let before = files_with_suffix(&env.warehouse(), "");
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, cfg.replace("format = \"delta\"\n", "")).unwrap();
    env.sim.voicegain().add_calls(100);
    for args in [&["sync"][..], &["verify"][..], &["repair", "--force"][..]] {
        let out = env.run(args);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        let t = text(&out);
        assert!(
            t.contains("holds Delta tables (calls/_delta_log/)")
                && t.contains("keep format = \"delta\""),
            "{args:?}: {t}"
        );
    }
    assert_eq!(
        files_with_suffix(&env.warehouse(), ""),
        before,
        "nothing moved"
    );
}

/// Runs a Python snippet with the `deltalake` package; returns its stdout.
fn python(code: &str) -> String {
    let py = test_python().unwrap();
    let out = Command::new(py).arg("-c").arg(code).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_table_another_engine_upgraded_is_refused_by_feature_and_left_unchanged() {
    let Some(_readers) = Readers::get() else {
        return;
    };
    let env = Env::with_max_rows(VoicegainSim::new(33, 0), 50, 100);
    env.sim.voicegain().add_calls(300);
    local_delta(&env, 100);
    env.sync_ok();
    let uri = table_uri(&env);
    let upgraded = python(&format!(
        "import deltalake\ndt = deltalake.DeltaTable('{uri}')\n\
         dt.alter.add_constraint({{'call_id_present': 'call_id IS NOT NULL'}})\n\
         dt = deltalake.DeltaTable('{uri}')\np = dt.protocol()\n\
         print(dt.version(), p.min_reader_version, p.min_writer_version)"
    ));
    let version = upgraded.split_whitespace().next().unwrap().to_string();
    env.sim.voicegain().add_calls(100);
    let out = env.run(&["sync"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("checkConstraints") && text(&out).contains("does not honour"),
        "{}",
        text(&out)
    );
    let c = env.run(&["compact", "--target-file-mb", "64"]);
    assert!(text(&c).contains("checkConstraints"), "{}", text(&c));
    let vac = env.run(&["vacuum", "--retain-hours", "1"]);
    assert_ne!(vac.status.code(), Some(0), "{}", text(&vac));
    assert!(text(&vac).contains("checkConstraints"), "{}", text(&vac));
    let v = env.run(&["verify"]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(text(&v).contains("checkConstraints"), "{}", text(&v));
    let after = python(&format!(
        "import deltalake\nprint(deltalake.DeltaTable('{uri}').version())"
    ));
    assert_eq!(
        after, version,
        "the table is left as the other engine made it ({upgraded})"
    );
}

#[test]
fn a_lost_or_emptied_local_log_entry_is_found_by_the_next_run_and_named_by_verify() {
    let Some(readers) = Readers::get() else {
        return;
    };
    for emptied in [false, true] {
        let env = Env::with_max_rows(VoicegainSim::new(34, 0), 50, 100);
        env.sim.voicegain().add_calls(300);
        local_delta(&env, 100);
        env.sync_ok();
        env.sim.voicegain().add_calls(150);
        env.sync_ok();
        // A power cut before the newest entry was durable, after the state marked it
        // published.
        let (_, newest) = log_entries(&env).pop().unwrap();
        let lost: Vec<String> = std::fs::read_to_string(&newest)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some(format!("calls/{}", v.get("add")?["path"].as_str()?)))
            .collect();
        assert!(!lost.is_empty());
        if emptied {
            std::fs::write(&newest, b"").unwrap();
        } else {
            std::fs::remove_file(&newest).unwrap();
        }
        let v = env.run(&["verify"]);
        assert_eq!(v.status.code(), Some(1), "{}", text(&v));
        for f in &lost {
            assert!(
                text(&v).contains(&format!("not in the Delta table: {f}"))
                    && text(&v).contains("the next run of vg adds it again"),
                "emptied={emptied}: verify names {f}:\n{}",
                text(&v)
            );
        }
        let out = env.sync_ok();
        assert!(
            text(&out).contains("added to it again"),
            "emptied={emptied}: {}",
            text(&out)
        );
        let v = env.run(&["verify"]);
        assert_eq!(v.status.code(), Some(0), "emptied={emptied}: {}", text(&v));
        readers_exact(&env, &readers);
    }
}

/// Index of the first line at or after `from` that satisfies `f`.
fn find(lines: &[String], from: usize, f: impl Fn(&str) -> bool) -> Option<usize> {
    (from..lines.len()).find(|&i| f(&lines[i]))
}

/// The fd an `openat` line returned.
fn fd_of(line: &str) -> Option<String> {
    line.rsplit("= ").next().map(|s| s.trim().to_string())
}

#[test]
fn the_local_delta_log_is_fsynced_before_the_state_marks_a_commit_published() {
    if !have_tool("strace") {
        return;
    }
    let env = Env::with_max_rows(VoicegainSim::new(35, 0), 50, 100_000);
    env.sim.voicegain().add_calls(100);
    local_delta(&env, 100_000);
    env.sync_ok();
    env.sim.voicegain().add_calls(100);
    let trace = env.dir.path().join("strace.txt");
    let out = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=openat,fsync,fdatasync,link,linkat,rename,renameat,renameat2",
        ])
        .arg("-o")
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_callsync"))
        .arg("--config")
        .arg(&env.config)
        .arg("sync")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| {
            l.split_once(' ')
                .map_or(l, |(_, rest)| rest)
                .trim()
                .to_string()
        })
        .collect();
    let (version, _) = log_entries(&env).pop().unwrap();
    let entry = format!("_delta_log/{version:020}.json\"");
    let made = find(&lines, 0, |l| {
        (l.starts_with("link") || l.starts_with("rename")) && l.contains(&entry)
    })
    .unwrap_or_else(|| panic!("no link or rename makes {entry}:\n{}", lines.join("\n")));
    let opened = find(&lines, made, |l| {
        l.starts_with("openat(") && l.contains(&entry)
    })
    .expect("the entry is opened again to be synced");
    let fd = fd_of(&lines[opened]).unwrap();
    let synced = find(&lines, opened, |l| l.starts_with(&format!("fsync({fd})")))
        .expect("the entry is fsynced");
    let dir_opened = find(&lines, synced, |l| {
        l.starts_with("openat(") && l.contains("calls/_delta_log\"")
    })
    .expect("the log directory is opened to be synced");
    let dir_fd = fd_of(&lines[dir_opened]).unwrap();
    let dir_synced = find(&lines, dir_opened, |l| {
        l.starts_with(&format!("fsync({dir_fd})"))
    })
    .expect("the log directory is fsynced");
    // The state's write after the entry (marking its files published) is fsynced after both.
    let wal_fds: BTreeSet<String> = lines
        .iter()
        .filter(|l| l.starts_with("openat(") && l.contains("callsync.db-wal\""))
        .filter_map(|l| fd_of(l))
        .collect();
    let marked = find(&lines, made, |l| {
        wal_fds.iter().any(|fd| {
            l.starts_with(&format!("fsync({fd})")) || l.starts_with(&format!("fdatasync({fd})"))
        })
    })
    .expect("the state is synced after the entry was made");
    assert!(
        synced < marked && dir_synced < marked,
        "entry made at {made}, synced at {synced}, directory at {dir_synced}, state at {marked}"
    );
}
