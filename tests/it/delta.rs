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
    /// `None`: DuckDB is not asked (a store its extensions cannot reach; the caller says why).
    duck: Option<String>,
    /// Environment every reader gets.
    vars: Vec<(String, String)>,
}

impl Readers {
    pub(crate) fn get() -> Option<Readers> {
        let py = test_python()?;
        let Ok(duck) = std::env::var("CALLSYNC_TEST_DUCKDB_PYTHON") else {
            skip("CALLSYNC_TEST_DUCKDB_PYTHON is not set (DuckDB with duckdb-ext-delta)");
            return None;
        };
        Some(Readers {
            py,
            duck: Some(duck),
            vars: Vec::new(),
        })
    }

    /// The same readers without DuckDB, each with the environment `vars`.
    pub(crate) fn without_duckdb(&self, vars: Vec<(String, String)>) -> Readers {
        Readers {
            py: self.py.clone(),
            duck: None,
            vars,
        }
    }

    /// Every reader's view of the table at `uri`: one JSON object per reader.
    pub(crate) fn read(
        &self,
        uri: &str,
        key: &str,
        options: Option<&serde_json::Value>,
    ) -> Vec<serde_json::Value> {
        self.read_with(uri, key, options, &[])
    }

    /// As `read`, with extra environment for the script.
    pub(crate) fn read_with(
        &self,
        uri: &str,
        key: &str,
        options: Option<&serde_json::Value>,
        vars: &[(&str, &str)],
    ) -> Vec<serde_json::Value> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/delta_readers.py");
        let mut lines = Vec::new();
        let mut modes = vec![(&self.py, "py")];
        modes.extend(self.duck.as_ref().map(|d| (d, "duckdb")));
        let expected = 1 + modes.len();
        for (python, mode) in modes {
            let mut c = Command::new(python);
            c.args([script, mode, uri, key]);
            if let Some(o) = options {
                c.env("DELTA_STORAGE_OPTIONS", o.to_string());
            }
            c.envs(vars.iter().copied());
            c.envs(self.vars.iter().map(|(k, v)| (k, v)));
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
        assert_eq!(lines.len(), expected, "{lines:?}");
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
pub(crate) fn kill_loop_then_exact(
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

/// The delta-rs storage options of the moto server, for the readers.
fn s3_options(moto: &Moto) -> serde_json::Value {
    crate::object_store::Cloud::delta_table(moto, "", "").1
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
    let options = s3_options(&moto);
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

/// Two processes, each with its own state file and source, append to one table at once, 50
/// commits each: the table holds the exact union, every commit once.
fn two_writers(
    env: &Env,
    readers: &Readers,
    warehouse: &str,
    uri: &str,
    options: Option<&serde_json::Value>,
    extra_env: &[(&str, &str)],
) {
    let token = token_file(env, "vg-two", &env.sim.voicegain().token.clone());
    let mut children = Vec::new();
    for name in ["vg_a", "vg_b"] {
        let config = env.dir.path().join(format!("{name}.toml"));
        let state = env.dir.path().join(format!("{name}.db"));
        let warehouse = warehouse.replacen(
            "[warehouse]\n",
            "[warehouse]\nformat = \"delta\"\nmax_rows_per_file = 60\n",
            1,
        );
        std::fs::write(
            &config,
            format!(
                "{warehouse}[state]\npath = \"{}\"\n{}",
                state.display(),
                vg_table(
                    name,
                    &env.sim.voicegain_base_url(),
                    &format!("token_file = \"{}\"", token.display()),
                    60
                )
            ),
        )
        .unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_callsync"));
        c.arg("--config")
            .arg(&config)
            .arg("sync")
            .env("RUST_LOG", "warn");
        for (k, v) in extra_env {
            c.env(k, v);
        }
        children.push((
            name,
            state,
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ));
    }
    let mut retries = 0;
    let mut commits = 0;
    for (name, state, child) in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        retries += text(&out).matches("Another writer committed first").count();
        let db = rusqlite::Connection::open(&state).unwrap();
        let n: i64 = db
            .query_row("SELECT count(*) FROM commits WHERE rows > 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(n >= 50, "{name} made only {n} commits");
        commits += n;
    }
    let truth = truth(env);
    let want: BTreeSet<String> = ["vg_a", "vg_b"]
        .iter()
        .flat_map(|s| truth.iter().map(move |id| format!("{s}:{id}")))
        .collect();
    // Each reader keys rows by `source:call_id`.
    for line in readers.read_with(uri, "call_id", options, &[("DELTA_KEY_WITH_SOURCE", "1")]) {
        assert_eq!(
            ids_once(&line),
            want,
            "{} differs from the union",
            line["reader"]
        );
        if line["reader"] == "deltalake" {
            let writes = line["operations"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| *o == "WRITE")
                .count() as i64;
            assert_eq!(
                writes, commits,
                "one table version per commit of either writer"
            );
        }
    }
    eprintln!(
        "two writers on {uri}: {commits} commits, {} rows, {retries} retries",
        want.len()
    );
}

#[test]
fn two_processes_append_to_one_local_table_at_once_and_lose_no_commit() {
    let Some(readers) = Readers::get() else {
        return;
    };
    let env = Env::new(VoicegainSim::new(403, 0).with_ratios(0.0, 0.0), 60);
    env.sim.voicegain().add_calls(3000);
    let warehouse = format!("[warehouse]\nroot = \"{}\"\n", env.warehouse().display());
    let uri = env.warehouse().join("calls").display().to_string();
    two_writers(&env, &readers, &warehouse, &uri, None, &[]);
}

#[test]
fn two_processes_append_to_one_table_on_s3_at_once_and_lose_no_commit() {
    let Some(readers) = Readers::get() else {
        return;
    };
    let Some(moto) = Moto::start() else {
        return;
    };
    let env = Env::new(VoicegainSim::new(404, 0).with_ratios(0.0, 0.0), 60);
    env.sim.voicegain().add_calls(3000);
    moto.bucket(&env, "lake");
    let prefix = "shared-lake";
    let warehouse = s3_warehouse(&moto, prefix, 60).replace("max_rows_per_file = 60\n", "");
    let uri = format!("s3://lake/{prefix}/calls");
    two_writers(
        &env,
        &readers,
        &warehouse,
        &uri,
        Some(&s3_options(&moto)),
        &[("MOTO_SECRET", "testing")],
    );
}

#[test]
fn a_table_of_200_commits_has_checkpoints_opens_fast_and_sheds_expired_log_files() {
    let Some(readers) = Readers::get() else {
        return;
    };
    let env = Env::new(VoicegainSim::new(405, 0).with_ratios(0.0, 0.0), 20);
    env.sim.voicegain().add_calls(4000);
    use_delta(
        &env,
        &format!(
            "[warehouse]\nroot = \"{}\"\nmax_rows_per_file = 20\nlog_retention_days = 1\n",
            env.warehouse().display()
        ),
    );
    env.sync_ok();
    let log = env.warehouse().join("calls").join("_delta_log");
    let names = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let checkpoints = names()
        .iter()
        .filter(|n| n.ends_with(".checkpoint.parquet"))
        .count();
    assert!(
        checkpoints >= 19,
        "{checkpoints} checkpoints in {:?}",
        names()
    );
    let uri = env.warehouse().join("calls").display().to_string();
    let lines = readers.read(&uri, "call_id", None);
    let py = lines.iter().find(|l| l["reader"] == "deltalake").unwrap();
    let open_secs = py["open_secs"].as_f64().unwrap();
    assert!(py["version"].as_u64().unwrap() >= 200, "{}", py["version"]);
    assert!(open_secs < 1.0, "opening took {open_secs} s");
    // Log files older than the retention go at the next checkpoint (never past the newest
    // checkpoint before them): age them, then commit until a checkpoint is written.
    let old = std::time::SystemTime::now() - Duration::from_secs(3 * 86_400);
    for n in names() {
        let f = std::fs::File::options()
            .write(true)
            .open(log.join(&n))
            .unwrap();
        f.set_modified(old).unwrap();
    }
    let before = names().iter().filter(|n| n.ends_with(".json")).count();
    for _ in 0..12 {
        env.sim.voicegain().add_calls(20);
        env.sync_ok();
    }
    let after = names().iter().filter(|n| n.ends_with(".json")).count();
    assert!(after < 20, "{before} JSON commits before, {after} after");
    for line in readers.read(&uri, "call_id", None) {
        assert_eq!(ids_once(&line), truth(&env), "{}", line["reader"]);
    }
    eprintln!(
        "log growth: version {}, {checkpoints} checkpoints, opened in {open_secs:.3} s; {before} JSON commits -> {after} after cleanup",
        py["version"]
    );
}
