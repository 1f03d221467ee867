//! Promise: stage, commit, then publish. A crash at any step loses nothing and shows readers
//! nothing uncommitted; two processes never export one source at once.

use std::time::{Duration, Instant};

use callsync::simulator::{FaultKind, FaultPlan, VoicegainSim};

use crate::helpers::*;

fn crash_at(point: &str) -> Env {
    let env = Env::with_max_rows(VoicegainSim::new(10, 0).with_ratios(0.0, 0.01), 100, 300);
    env.sim.voicegain().add_calls(1000);
    let out = env
        .command(&["sync"])
        .env("CALLSYNC_FAILPOINT", point)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the failpoint should abort the process"
    );
    env
}

#[test]
fn a_crash_after_staging_shows_nothing_and_the_next_sync_is_exact() {
    let env = crash_at("after_stage");
    assert!(
        env.lake().is_empty(),
        "nothing was committed, so nothing may be visible"
    );
    assert!(
        !staging_files(&env.warehouse()).is_empty(),
        "the staged file stays until recovery"
    );
    env.sync_ok();
    assert!(
        staging_files(&env.warehouse()).is_empty(),
        "recovery deletes uncommitted staged files"
    );
    assert_lake_matches_truth(&env);
}

#[test]
fn a_crash_after_commit_before_publish_is_rolled_forward() {
    let env = crash_at("after_commit");
    assert!(
        env.lake().is_empty(),
        "publish had not happened, so nothing may be visible"
    );
    let staged = staging_files(&env.warehouse());
    assert!(!staged.is_empty());
    let status = env.run(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        s[0]["cursor"]["after_call_id"].as_u64().unwrap() > 0,
        "the commit moved the cursor"
    );
    env.sync_ok();
    assert!(staging_files(&env.warehouse()).is_empty());
    assert_lake_matches_truth(&env);
}

#[test]
fn a_second_process_on_the_same_source_is_refused_and_touches_nothing() {
    let env = Env::with_max_rows(VoicegainSim::new(11, 0), 20, 1_000_000);
    env.sim.voicegain().add_calls(2000);
    env.sim.set_faults(FaultPlan::every(
        1,
        vec![FaultKind::Slow(Duration::from_millis(100))],
    ));
    let mut first = env.spawn(&["sync"]);
    // Wait until the first process has staged its file.
    wait_until(30, || !staging_files(&env.warehouse()).is_empty());
    let staged = staging_files(&env.warehouse());
    assert!(!staged.is_empty(), "the first sync never staged a file");
    let second = env.run(&["sync"]);
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(
        text(&second).contains("another callsync process"),
        "{}",
        text(&second)
    );
    for f in &staged {
        assert!(
            f.exists(),
            "the second process deleted the first one's staged file"
        );
    }
    first.kill().unwrap();
    first.wait().unwrap();
    env.sim.set_faults(FaultPlan::default());
    env.sync_ok();
    assert_lake_matches_truth(&env);
}

#[test]
fn sigterm_commits_what_was_read_and_the_next_sync_finishes_exact() {
    let env = Env::with_max_rows(VoicegainSim::new(12, 0), 50, 1_000_000);
    env.sim.voicegain().add_calls(3000);
    env.sim.set_faults(FaultPlan::every(
        1,
        vec![FaultKind::Slow(Duration::from_millis(50))],
    ));
    let mut child = env.spawn(&["sync"]);
    wait_until(30, || !staging_files(&env.warehouse()).is_empty());
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let t1 = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        t1.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        t1.elapsed()
    );
    assert_eq!(status.code(), Some(0), "a stopped sync is not a failure");
    let committed = unique_ids(&env.lake());
    assert!(
        !committed.is_empty(),
        "what was read before the signal is committed"
    );
    assert!(staging_files(&env.warehouse()).is_empty());
    env.sim.set_faults(FaultPlan::default());
    env.sync_ok();
    assert_lake_matches_truth(&env);
}
