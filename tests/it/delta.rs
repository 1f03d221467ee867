//! Promise: with `format = "delta"` the lake is Delta tables that third-party readers (the
//! `deltalake` Python package, Polars `scan_delta`, DuckDB's `delta_scan`) open cleanly after
//! any kill, never with a duplicate; after a final sync they hold exactly one row per call,
//! and the history has one version per callsync commit, each with its app transaction.
//! Locally and on S3 (the moto server).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use callsync::simulator::{FaultKind, FaultPlan, VoicegainSim};

use crate::helpers::*;
use crate::object_store::{Moto, s3_warehouse};

/// The Pythons that read Delta tables: the test Python (deltalake, Polars) and the one with
/// DuckDB 1.4.4 and its delta extension (`CALLSYNC_TEST_DUCKDB_PYTHON`).
pub(crate) struct Readers {
    py: String,
    duck: String,
}

impl Readers {
    pub(crate) fn get() -> Option<Readers> {
        let py = test_python()?;
        let Ok(duck) = std::env::var("CALLSYNC_TEST_DUCKDB_PYTHON") else {
            skip("CALLSYNC_TEST_DUCKDB_PYTHON is not set (DuckDB with duckdb-ext-delta)");
            return None;
        };
        Some(Readers { py, duck })
    }

    /// Every reader's view of the table at `uri`: one JSON object per reader.
    pub(crate) fn read(
        &self,
        uri: &str,
        key: &str,
        options: Option<&serde_json::Value>,
    ) -> Vec<serde_json::Value> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/delta_readers.py");
        let mut lines = Vec::new();
        for (python, mode) in [(&self.py, "py"), (&self.duck, "duckdb")] {
            let mut c = Command::new(python);
            c.args([script, mode, uri, key]);
            if let Some(o) = options {
                c.env("DELTA_STORAGE_OPTIONS", o.to_string());
            }
            let out = c.output().unwrap();
            assert!(
                out.status.success(),
                "{mode} could not read {uri}: {}",
                text(&out)
            );
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                lines.push(serde_json::from_str(l).unwrap());
            }
        }
        assert_eq!(lines.len(), 3, "{lines:?}");
        lines
    }
}

/// The key column's values a reader saw, asserting it saw none twice.
pub(crate) fn ids_once(line: &serde_json::Value) -> BTreeSet<String> {
    let ids: Vec<String> = line["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let set: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(set.len(), ids.len(), "{} saw a duplicate", line["reader"]);
    set
}

/// `(count of callsync commits with data files, highest such seq)` of a source in the state.
fn data_commits(env: &Env, source: &str) -> (u64, i64) {
    let db = rusqlite::Connection::open(env.state_path()).unwrap();
    db.query_row(
        "SELECT count(DISTINCT c.id), COALESCE(max(c.seq), 0) FROM commits c
         JOIN sources s ON s.id = c.source_id
         WHERE s.name = ?1 AND EXISTS (SELECT 1 FROM manifest m WHERE m.commit_id = c.id
           AND m.final_path LIKE 'calls/%.parquet')",
        [source],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
    )
    .unwrap()
}

/// The Voicegain truth as call ids.
pub(crate) fn truth(env: &Env) -> BTreeSet<String> {
    env.sim
        .voicegain()
        .expected_exported()
        .iter()
        .map(|c| c.id.to_string())
        .collect()
}

/// Kills `sync` at the failpoints, at random moments and right after the table's log grows;
/// after every kill, before any restart, every reader opens the table and sees no duplicate.
/// Then a final sync: every reader holds the truth, and the history has one version per
/// commit with its app transaction.
fn kill_loop_then_exact(
    env: &Env,
    readers: &Readers,
    uri: &str,
    options: Option<&serde_json::Value>,
    log_len: &dyn Fn() -> usize,
    extra_env: &[(&str, &str)],
) {
    let run = |fail: Option<&str>| {
        let mut c = env.command(&["sync"]);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        if let Some(p) = fail {
            c.env("CALLSYNC_FAILPOINT", p);
        }
        c
    };
    let table_ok = |when: &str| {
        if log_len() == 0 {
            return;
        }
        for line in readers.read(uri, "call_id", options) {
            let ids = ids_once(&line);
            assert!(ids.is_subset(&truth(env)), "{when}: rows that are no call");
        }
    };
    for point in ["after_stage", "after_commit"] {
        let out = run(Some(point)).output().unwrap();
        assert_ne!(out.status.code(), Some(0), "{point}: {}", text(&out));
        table_ok(point);
    }
    env.sim.set_faults(FaultPlan::every(
        1,
        vec![FaultKind::Slow(Duration::from_millis(20))],
    ));
    let mut rng = fastrand::Rng::with_seed(29);
    let mut kills = 0;
    for round in 0..8 {
        let mut child = run(None)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(rng.u64(100..900)));
        } else {
            // Right after a new table version appears.
            let before = log_len();
            let t0 = Instant::now();
            while log_len() == before
                && t0.elapsed() < Duration::from_secs(15)
                && child.try_wait().unwrap().is_none()
            {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        table_ok(&format!("after kill {round}"));
    }
    assert!(kills >= 6, "only {kills} runs were killed mid-way");
    env.sim.set_faults(FaultPlan::default());
    let out = run(None).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let want = truth(env);
    let (commits, last_seq) = data_commits(env, "vg");
    for line in readers.read(uri, "call_id", options) {
        assert_eq!(
            ids_once(&line),
            want,
            "{} differs from the truth",
            line["reader"]
        );
        if line["reader"] == "deltalake" {
            assert_eq!(line["protocol"], serde_json::json!([1, 2]));
            let writes = line["operations"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| *o == "WRITE")
                .count() as u64;
            assert_eq!(writes, commits, "one table version per callsync commit");
            assert_eq!(
                line["txn"]["vg"], last_seq,
                "the app transaction of the last commit"
            );
            eprintln!(
                "delta {uri}: {kills} kills, then exact: {} rows, {commits} commits, version {}",
                want.len(),
                line["version"]
            );
        }
    }
    let v = {
        let mut c = env.command(&["verify"]);
        for (k, val) in extra_env {
            c.env(k, val);
        }
        c.output().unwrap()
    };
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
}

fn delta_env(seed: u64) -> Env {
    let env = Env::new(VoicegainSim::new(seed, 0).with_ratios(0.0, 0.01), 50);
    env.sim.voicegain().add_calls(3000);
    env
}

/// Rewrites the config's `[warehouse]` table to a Delta lake with `warehouse` lines.
pub(crate) fn use_delta(env: &Env, warehouse: &str) {
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    let state = cfg.find("[state]").unwrap();
    std::fs::write(
        &env.config,
        format!(
            "{}{}",
            warehouse.replacen("[warehouse]\n", "[warehouse]\nformat = \"delta\"\n", 1),
            &cfg[state..]
        ),
    )
    .unwrap();
}

#[test]
fn a_local_delta_table_is_exact_after_kills_and_every_reader_agrees() {
    let Some(readers) = Readers::get() else {
        return;
    };
    let env = delta_env(401);
    use_delta(
        &env,
        &format!(
            "[warehouse]\nroot = \"{}\"\nmax_rows_per_file = 300\n",
            env.warehouse().display()
        ),
    );
    let table = env.warehouse().join("calls");
    let log = table.join("_delta_log");
    let log_len = || {
        std::fs::read_dir(&log)
            .map(|d| d.count())
            .unwrap_or_default()
    };
    let uri = table.display().to_string();
    kill_loop_then_exact(&env, &readers, &uri, None, &log_len, &[]);
    assert!(staging_files(&env.warehouse()).is_empty());
}

#[test]
fn a_delta_table_on_s3_is_exact_after_kills_and_every_reader_agrees() {
    let Some(readers) = Readers::get() else {
        return;
    };
    let Some(moto) = Moto::start() else {
        return;
    };
    let env = delta_env(402);
    moto.bucket(&env, "lake");
    let prefix = "delta-lake";
    use_delta(&env, &s3_warehouse(&moto, prefix, 300));
    let options = serde_json::json!({
        "aws_endpoint": moto.endpoint(),
        "aws_allow_http": "true",
        "aws_region": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "aws_conditional_put": "etag",
    });
    let log_len = || {
        moto.keys(&env, "lake", &format!("{prefix}/calls/_delta_log/"))
            .len()
    };
    let uri = format!("s3://lake/{prefix}/calls");
    kill_loop_then_exact(
        &env,
        &readers,
        &uri,
        Some(&options),
        &log_len,
        &[("MOTO_SECRET", "testing")],
    );
    assert!(
        moto.keys(&env, "lake", &format!("{prefix}/_staging/"))
            .is_empty()
    );
}
