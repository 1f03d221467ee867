//! Promise: `compact` cuts a Delta table's small files to the fewest near the target, one
//! atomic commit per partition, and never changes a row: the row set and a per-partition hash
//! of every row are the same before and after, also across a SIGKILL mid-compaction and two
//! compactions started together; `vacuum` then deletes the replaced files; a plain lake is
//! refused with the reason. A compacted file's rows are in time order, declared so, with a
//! page index on the time column (pyarrow reads it).

use std::collections::BTreeMap;
use std::process::Stdio;

use callsync::simulator::VoicegainSim;

use crate::delta::{Readers, ids_once, truth, use_delta};
use crate::helpers::*;

/// A local Delta lake after `syncs` small syncs of `per_sync` new calls each.
fn many_small_commits(seed: u64, syncs: usize, per_sync: usize) -> Env {
    let env = Env::new(VoicegainSim::new(seed, 0).with_ratios(0.0, 0.0), 200);
    use_delta(
        &env,
        &format!("[warehouse]\nroot = \"{}\"\n", env.warehouse().display()),
    );
    for _ in 0..syncs {
        env.sim.voicegain().add_calls(per_sync);
        env.sync_ok();
    }
    env
}

/// The deltalake reader's view: (files per partition, row hash per partition), after
/// checking every reader holds exactly the truth.
fn table_view(env: &Env, readers: &Readers) -> (BTreeMap<String, u64>, BTreeMap<String, String>) {
    let uri = env.warehouse().join("calls").display().to_string();
    table_view_at(env, readers, &uri, None)
}

/// As `table_view`, for the table at `uri` with these storage options.
pub(crate) fn table_view_at(
    env: &Env,
    readers: &Readers,
    uri: &str,
    options: Option<&serde_json::Value>,
) -> (BTreeMap<String, u64>, BTreeMap<String, String>) {
    let want = truth(env);
    let mut view = None;
    for line in readers.read(uri, "call_id", options) {
        assert_eq!(
            ids_once(&line),
            want,
            "{} differs from the truth",
            line["reader"]
        );
        if line["reader"] == "deltalake" {
            view = Some((
                serde_json::from_value(line["files_by_partition"].clone()).unwrap(),
                serde_json::from_value(line["rows_hash"].clone()).unwrap(),
            ));
        }
    }
    view.unwrap()
}

#[test]
fn compaction_cuts_files_and_keeps_every_row_across_kills_and_a_concurrent_compaction() {
    let Some(readers) = Readers::get() else {
        return;
    };
    let env = many_small_commits(501, 60, 25);
    let (files_before, hash_before) = table_view(&env, &readers);
    let total_before: u64 = files_before.values().sum();
    // Killed before and after its commit: the table stays readable and exact.
    for point in ["compact_before_commit", "compact_after_commit"] {
        let out = env
            .command(&["compact"])
            .env("CALLSYNC_FAILPOINT", point)
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "{point}: {}", text(&out));
        let (_, hash) = table_view(&env, &readers);
        assert_eq!(hash, hash_before, "{point}: rows changed");
        let v = env.run(&["verify"]);
        assert_eq!(v.status.code(), Some(0), "{point}: {}", text(&v));
    }
    // A second state of the same source (as if two daemons owned it) compacting at the same
    // time: one commit wins, the other finds its files gone and changes nothing.
    let twin_dir = env.dir.path().join("twin");
    std::fs::create_dir_all(&twin_dir).unwrap();
    env.sim.voicegain().add_calls(30);
    env.sync_ok();
    std::fs::copy(env.state_path(), twin_dir.join("callsync.db")).unwrap();
    let twin_cfg = env.dir.path().join("twin.toml");
    std::fs::write(
        &twin_cfg,
        std::fs::read_to_string(&env.config).unwrap().replace(
            &env.state_path().display().to_string(),
            &twin_dir.join("callsync.db").display().to_string(),
        ),
    )
    .unwrap();
    let (_, hash_before) = table_view(&env, &readers);
    let a = env
        .command(&["compact"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = std::process::Command::new(env!("CARGO_BIN_EXE_callsync"))
        .args(["--config", twin_cfg.to_str().unwrap(), "compact"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    eprintln!("compact A: {}\ncompact B: {}", text(&a), text(&b));
    let (files_after, hash_after) = table_view(&env, &readers);
    assert_eq!(hash_after, hash_before, "two compactions changed rows");
    // Whatever the race left, one more compact finishes the job: one file per partition
    // (each holds far less than the 128 MiB target).
    let out = env.run(&["compact"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (files_after, hash_final) = {
        let _ = files_after;
        table_view(&env, &readers)
    };
    assert_eq!(hash_final, hash_before);
    assert!(
        files_after.values().all(|n| *n == 1),
        "a partition holds more than one file: {files_after:?}"
    );
    let total_after: u64 = files_after.values().sum();
    compacted_layout_is_for_readers(&env);
    eprintln!(
        "compaction: {total_before} files in {} partitions -> {total_after}",
        files_before.len()
    );
    let v = env.run(&["verify"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    // vacuum deletes the replaced files; the table and verify stay clean.
    let data_files = || {
        files_with_suffix(&env.warehouse().join("calls"), ".parquet")
            .into_iter()
            .filter(|p| !p.to_string_lossy().contains("_delta_log"))
            .collect::<Vec<_>>()
    };
    let parquet_on_disk = || data_files().len();
    assert!(parquet_on_disk() as u64 > total_after);
    // Files removed less than an hour ago stay (queries in flight read them)...
    let out = env.run(&["vacuum", "--retain-hours", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(parquet_on_disk() as u64 > total_after, "{}", text(&out));
    // ...and go once they were removed that long ago (the clock run two hours ahead).
    let out = env
        .command(&["vacuum", "--retain-hours", "1"])
        .env("CALLSYNC_TEST_CLOCK_AHEAD_HOURS", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        parquet_on_disk() as u64,
        total_after,
        "{}\n{:?}",
        text(&out),
        data_files()
    );
    let (_, hash_vacuumed) = table_view(&env, &readers);
    assert_eq!(hash_vacuumed, hash_before);
    let v = env.run(&["verify"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    // New calls still land once after all this.
    env.sim.voicegain().add_calls(40);
    env.sync_ok();
    table_view(&env, &readers);
}

/// pyarrow's view of every file the table references: rows in `started_at` order (nulls
/// last), that order declared in each row group's `sorting_columns`, and a page index
/// (column and offset index) on `started_at`.
fn compacted_layout_is_for_readers(env: &Env) {
    let uri = env.warehouse().join("calls").display().to_string();
    let script = format!(
        "import deltalake, pyarrow.parquet as pq\n\
         for u in deltalake.DeltaTable('{uri}').file_uris():\n\
         \x20   f = pq.ParquetFile(u)\n\
         \x20   t = f.read(columns=['started_at']).column(0).to_pylist()\n\
         \x20   key = [(v is None, v or 0) for v in t]\n\
         \x20   assert key == sorted(key), ('not in time order', u)\n\
         \x20   i = f.schema_arrow.get_field_index('started_at')\n\
         \x20   for g in range(f.metadata.num_row_groups):\n\
         \x20       rg = f.metadata.row_group(g)\n\
         \x20       sc = rg.sorting_columns\n\
         \x20       assert len(sc) == 1 and sc[0].column_index == i and not sc[0].descending and not sc[0].nulls_first, (u, sc)\n\
         \x20       c = rg.column(i)\n\
         \x20       assert c.has_column_index and c.has_offset_index, ('no page index', u)\n\
         print('ok')"
    );
    let out = std::process::Command::new(test_python().unwrap())
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn compact_on_a_plain_lake_is_refused_with_the_reason() {
    let env = Env::new(VoicegainSim::new(502, 0), 50);
    env.sim.voicegain().add_calls(50);
    env.sync_ok();
    let out = env.run(&["compact"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("format = \"delta\""), "{}", text(&out));
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{cfg}[compaction]\nschedule = \"0 0 3 * * *\"\n"),
    )
    .unwrap();
    let out = env.run(&["sync"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("[compaction] key `schedule`"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_daemon_compacts_on_its_schedule_between_runs_and_keeps_every_row() {
    use crate::daemon::Daemon;
    let Some(readers) = Readers::get() else {
        return;
    };
    let env = Env::new(VoicegainSim::new(503, 0).with_ratios(0.0, 0.0), 25);
    env.sim.voicegain().add_calls(50);
    let sources = crate::daemon::config(
        &env,
        "* * * * * *",
        25,
        false,
        "[server]\nlisten = \"127.0.0.1:0\"\n",
    );
    env.write_config(
        &format!(
            "{sources}[compaction]\nschedule = \"*/3 * * * * *\"\nmin_files = 4\nretain_hours = 1\n"
        ),
        25,
    );
    use_delta(
        &env,
        &format!(
            "[warehouse]\nroot = \"{}\"\nmax_rows_per_file = 25\n",
            env.warehouse().display()
        ),
    );
    let mut d = Daemon::start(&env, &[], true);
    for _ in 0..30 {
        env.sim.voicegain().add_calls(30);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let want = truth(&env);
    let uri = env.warehouse().join("calls").display().to_string();
    assert!(
        wait_until(30, || {
            readers.read(&uri, "call_id", None)[0]["rows"].as_u64() == Some(want.len() as u64)
                && d.log_text().contains("Compaction done.")
        }),
        "{}",
        d.log_text()
    );
    // The upkeep is in /metrics: compactions, vacuums and checkpoints that succeeded, and the
    // most files one past partition holds.
    let metric = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let (_, scraped) = crate::daemon::get(&env, &d.url("/metrics"));
    let metrics = scraped.as_str();
    for task in ["compaction", "vacuum", "checkpoint"] {
        let ok = metric(
            metrics,
            &format!("callsync_upkeep_runs_total{{task=\"{task}\",outcome=\"ok\"}}"),
        );
        assert!(ok.is_some_and(|n| n >= 1.0), "{task}: {ok:?}\n{metrics}");
        let last = metric(
            metrics,
            &format!("callsync_upkeep_last_success_timestamp_seconds{{task=\"{task}\"}}"),
        );
        assert!(last.is_some_and(|t| t > 1.7e9), "{task}: {last:?}");
    }
    let files = metric(metrics, "callsync_partition_files_max{source=\"vg\"}");
    assert!(files.is_some_and(|n| n >= 1.0), "{files:?}\n{metrics}");
    assert!(
        metrics.contains("callsync_delta_commit_retries_total{table=\"calls\"}"),
        "{metrics}"
    );
    d.signal(libc::SIGTERM);
    let (code, _) = d.wait_exit(30);
    assert_eq!(code, Some(0), "{}", d.log_text());
    let lines = readers.read(&uri, "call_id", None);
    for line in &lines {
        assert_eq!(ids_once(line), want, "{}", line["reader"]);
    }
    let py = lines.iter().find(|l| l["reader"] == "deltalake").unwrap();
    let ops = py["operations"].as_array().unwrap();
    let optimizes = ops.iter().filter(|o| *o == "OPTIMIZE").count();
    let writes = ops.iter().filter(|o| *o == "WRITE").count();
    let files: u64 = py["files_by_partition"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(
        optimizes >= 1 && (files as usize) < writes,
        "{optimizes} OPTIMIZE, {writes} WRITE, {files} files"
    );
    assert!(!d.log_text().contains("Run failed"), "{}", d.log_text());
    let v = env.run(&["verify"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    eprintln!("daemon compaction: {writes} commits, {optimizes} compactions, {files} files left");
}

#[test]
fn vacuum_refuses_to_keep_removed_files_less_than_an_hour_and_warns_below_a_day() {
    let env = Env::new(VoicegainSim::new(504, 0), 50);
    env.sim.voicegain().add_calls(50);
    use_delta(
        &env,
        &format!("[warehouse]\nroot = \"{}\"\n", env.warehouse().display()),
    );
    env.sync_ok();
    let out = env.run(&["vacuum", "--retain-hours", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--retain-hours must be at least 1"),
        "{}",
        text(&out)
    );
    let out = env.run(&["vacuum", "--retain-hours", "6"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("a reader holding an older snapshot of the table"),
        "{}",
        text(&out)
    );
    // The config refuses it too, naming the key.
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{cfg}[compaction]\nretain_hours = 0\n"),
    )
    .unwrap();
    let out = env.run(&["sync"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("[compaction] key `retain_hours`: must be at least 1"),
        "{}",
        text(&out)
    );
}
