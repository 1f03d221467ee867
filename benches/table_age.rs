//! Per-run cost as the lake ages (`cargo bench --bench table_age`): an idle sync and a
//! one-call sync of the release binary against a lake of N commits, N = 100, 2,000 and
//! 35,040 (a year of the default 15-minute schedule), plain and Delta; Delta both as a
//! default daemon leaves it (every past day compacted to one file) and never compacted. Whole
//! process: CPU, wall and peak RSS (VmHWM), the best of `TABLE_AGE_REPS` runs (default 5).
//! Then the daemon (`callsync run`, the source on a one-second schedule): its own CPU per
//! idle tick over `TABLE_AGE_DAEMON_SECS` seconds (default 30).
//!
//! The lake is synthetic, built in seconds: one real sync makes the state, the table and a
//! data file; then N-1 more commits are written as a daemon would have left them: the file
//! hard-linked to each commit's path (one file per day once compacted), one Delta log entry
//! per commit (and a daily OPTIMIZE entry when compacted) made with deltalake's own commit
//! types, a checkpoint at the end, the log entries older than 30 days (the default retention)
//! cleaned, and the state's commits, manifest and exported keys to match.

mod common;

use std::collections::HashMap;
use std::path::Path;

use callsync::simulator::Simulator;
use common::*;
use deltalake::kernel::transaction::CommitData;
use deltalake::kernel::{Action, Add, Remove, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};

/// Commits a day at the default schedule.
const PER_DAY: usize = 96;
/// Log entries kept: 30 days of commits (`log_retention_days` = 30).
const KEPT_LOG: u64 = 30 * PER_DAY as u64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Plain,
    DeltaCompacted,
    DeltaUncompacted,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Plain => "plain",
            Shape::DeltaCompacted => "delta, compacted daily",
            Shape::DeltaUncompacted => "delta, never compacted",
        }
    }
    fn delta(self) -> bool {
        self != Shape::Plain
    }
}

/// The file of the real first commit: path, size, stats.
struct Template {
    path: String,
    bytes: i64,
    stats: Option<String>,
}

fn day(today: chrono::NaiveDate, back: usize) -> String {
    (today - chrono::Duration::days(back as i64))
        .format("%Y-%m-%d")
        .to_string()
}

/// The partition day number (UTC days since the epoch) of `YYYY-MM-DD`.
fn day_number(date: &str) -> i64 {
    let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
    (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days()
}

/// Builds a lake of `n` commits in `dir` whose first commit was made by a real sync.
fn build(dir: &Path, sim: &Simulator, n: usize, shape: Shape) -> std::path::PathBuf {
    let warehouse = dir.join("lake");
    let format = if shape.delta() { "delta" } else { "parquet" };
    let config = write_config_with(
        dir,
        sim,
        &sim.voicegain().token.clone(),
        &format!(
            "[warehouse]\nroot = \"{}\"\nformat = \"{format}\"\n",
            warehouse.display()
        ),
    );
    sync_child(&config);
    let db = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    let t: Template = db
        .query_row(
            "SELECT final_path, bytes, stats FROM manifest WHERE final_path LIKE 'calls/%'",
            [],
            |r| {
                Ok(Template {
                    path: r.get(0)?,
                    bytes: r.get(1)?,
                    stats: r.get(2)?,
                })
            },
        )
        .unwrap();
    let source_id: i64 = db
        .query_row("SELECT id FROM sources WHERE name = 'vg'", [], |r| r.get(0))
        .unwrap();
    let today = chrono::Utc::now().date_naive();
    // Commit i (1..n) lands on the day `(n - 1 - i) / PER_DAY` days before today.
    let day_of = |i: usize| day(today, (n - 1 - i) / PER_DAY);
    let tx = db.unchecked_transaction().unwrap();
    let mut files: Vec<(String, String)> = Vec::new(); // (lake path, date) of active files
    let mut by_day: HashMap<String, Vec<String>> = HashMap::new();
    let mut log: Vec<Vec<Action>> = Vec::new(); // Delta entries after the real table's
    let mut ops: Vec<DeltaOperation> = Vec::new();
    let write_op = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(vec!["source".into(), "date".into()]),
        predicate: None,
    };
    let add = |path: &str, date: &str, data_change: bool| Add {
        path: path["calls/".len()..].to_string(),
        partition_values: HashMap::from([
            ("source".to_string(), Some("vg".to_string())),
            ("date".to_string(), Some(date.to_string())),
        ]),
        size: t.bytes,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change,
        stats: t.stats.clone(),
        ..Default::default()
    };
    let link = |path: &str| {
        let to = warehouse.join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::hard_link(warehouse.join(&t.path), &to).unwrap();
    };
    let mut key = tx
        .prepare("INSERT INTO exported (source_id, call_id, day) VALUES (?1, ?2, ?3)")
        .unwrap();
    let mut commit = tx
        .prepare("INSERT INTO commits (id, source_id, run_id, committed_at, rows, rejects, seq) VALUES (?1, ?2, 0, ?3, 1, 0, ?4)")
        .unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    for i in 1..n {
        let date = day_of(i);
        let id = format!("{:032x}", 0xb0_0000 + i);
        let path = format!("calls/source=vg/date={date}/part-{id}-1.parquet");
        link(&path);
        key.execute(rusqlite::params![
            source_id,
            format!("b{i}"),
            day_number(&date)
        ])
        .unwrap();
        commit
            .execute(rusqlite::params![id, source_id, now, i as i64 + 1])
            .unwrap();
        log.push(vec![
            Action::Add(add(&path, &date, true)),
            Action::Txn(Transaction::new("callsync/vg", i as i64 + 1)),
        ]);
        ops.push(write_op.clone());
        by_day.entry(date.clone()).or_default().push(path.clone());
        // A day is over: a default daemon compacts it to one file the next morning.
        let next = (i + 1 < n).then(|| day_of(i + 1));
        if shape == Shape::DeltaCompacted && next.as_ref().is_some_and(|d| *d != date) {
            let merged = format!(
                "calls/source=vg/date={date}/part-{:032x}-1.parquet",
                0xc0_0000 + i
            );
            link(&merged);
            let mut actions: Vec<Action> = by_day[&date]
                .iter()
                .map(|p| {
                    Action::Remove(Remove {
                        path: p["calls/".len()..].to_string(),
                        data_change: false,
                        deletion_timestamp: Some(chrono::Utc::now().timestamp_millis()),
                        extended_file_metadata: Some(true),
                        partition_values: Some(add(p, &date, false).partition_values),
                        size: Some(t.bytes),
                        ..Default::default()
                    })
                })
                .collect();
            actions.push(Action::Add(add(&merged, &date, false)));
            log.push(actions);
            ops.push(DeltaOperation::Optimize {
                predicate: None,
                target_size: 128 << 20,
            });
            by_day.insert(date.clone(), vec![merged]);
        }
    }
    drop(key);
    drop(commit);
    for (date, paths) in &by_day {
        for p in paths {
            files.push((p.clone(), date.clone()));
        }
    }
    let mut manifest = tx
        .prepare("INSERT INTO manifest (staged, final_path, source_id, commit_id, rows, bytes, published, stats) VALUES (?1, ?1, ?2, 'synthetic', 1, ?3, 1, ?4)")
        .unwrap();
    for (p, _) in &files {
        manifest
            .execute(rusqlite::params![p, source_id, t.bytes, t.stats])
            .unwrap();
    }
    drop(manifest);
    tx.execute(
        "UPDATE sources SET commit_seq = ?2 WHERE id = ?1",
        rusqlite::params![source_id, n as i64],
    )
    .unwrap();
    tx.commit().unwrap();
    if shape.delta() {
        write_log(&warehouse.join("calls/_delta_log"), log, ops);
    }
    config
}

/// Appends `entries` to the log after its newest version, checkpoints the end, and cleans
/// entries older than the kept window.
fn write_log(dir: &Path, entries: Vec<Vec<Action>>, ops: Vec<DeltaOperation>) {
    let mut version = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".json")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap();
    for (actions, op) in entries.into_iter().zip(ops) {
        version += 1;
        let txns: Vec<Transaction> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Txn(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        let actions: Vec<Action> = actions
            .into_iter()
            .filter(|a| !matches!(a, Action::Txn(_)))
            .collect();
        let data = CommitData::new(actions, op, HashMap::new(), txns);
        std::fs::write(
            dir.join(format!("{version:020}.json")),
            data.get_bytes().unwrap(),
        )
        .unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = url::Url::from_directory_path(dir.parent().unwrap()).unwrap();
        let table = deltalake::open_table(url).await.unwrap();
        deltalake::checkpoints::create_checkpoint(&table, None)
            .await
            .unwrap();
    });
    // The log a default daemon keeps: the last 30 days of entries and the newest checkpoint.
    let keep_from = version.saturating_sub(KEPT_LOG);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let v: Option<u64> = name.split('.').next().and_then(|s| s.parse().ok());
        let json = name.ends_with(".json") && !name.contains("checkpoint");
        let old_checkpoint = name.contains(".checkpoint.") && v.is_some_and(|v| v < version);
        if (json && v.is_some_and(|v| v < keep_from)) || old_checkpoint {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
}

/// The best (least CPU) of `reps` runs of `f`.
fn best(reps: usize, mut f: impl FnMut() -> ChildRun) -> ChildRun {
    let mut best: Option<ChildRun> = None;
    for _ in 0..reps.max(1) {
        let r = f();
        if best.as_ref().is_none_or(|b| r.cpu < b.cpu) {
            best = Some(r);
        }
    }
    best.unwrap()
}

/// CPU seconds (user + system) a live process has used, from `/proc/<pid>/stat`.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// The daemon's own CPU per idle tick: `callsync run` with the source on a one-second
/// schedule, its CPU over `secs` seconds after a warm-up, divided by the runs it made (from
/// the state's `runs` table). Returns (ms per tick, ticks).
fn daemon_idle_tick(config: &Path, secs: u64) -> (f64, i64) {
    let text = std::fs::read_to_string(config).unwrap();
    let daemon_cfg = config.with_file_name("daemon.toml");
    std::fs::write(
        &daemon_cfg,
        text.replace(
            "[sources.vg]\n",
            "[sources.vg]\nschedule = \"* * * * * *\"\n",
        ) + "[server]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let state = config.with_file_name("state.db");
    let runs = || -> i64 {
        rusqlite::Connection::open(&state)
            .and_then(|c| c.query_row("SELECT count(*) FROM runs", [], |r| r.get(0)))
            .unwrap_or(0)
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_callsync"))
        .arg("--config")
        .arg(&daemon_cfg)
        .arg("run")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(5));
    let (cpu0, runs0) = (cpu_secs(child.id()), runs());
    std::thread::sleep(std::time::Duration::from_secs(secs));
    let (cpu1, runs1) = (cpu_secs(child.id()), runs());
    let _ = child.kill();
    let _ = child.wait();
    let ticks = (runs1 - runs0).max(1);
    ((cpu1 - cpu0) * 1e3 / ticks as f64, ticks)
}

fn main() {
    let reps = env_usize("TABLE_AGE_REPS", 5);
    let sizes: Vec<usize> = std::env::var("TABLE_AGE_COMMITS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 2_000, 35_040]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| lake | commits | build | idle sync CPU | wall | peak RSS | one-call sync CPU | wall | peak RSS | daemon CPU per idle tick |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for shape in [Shape::Plain, Shape::DeltaCompacted, Shape::DeltaUncompacted] {
        for &n in &sizes {
            let sim = generate(1, 1, 41);
            let sim = rt.block_on(Simulator::start(sim)).unwrap();
            let dir = tempfile::tempdir().unwrap();
            if std::env::var("TABLE_AGE_KEEP").is_ok() {
                // For profiling: the lake outlives the bench.
                eprintln!("kept: {}", dir.path().display());
            }
            let t0 = std::time::Instant::now();
            let config = build(dir.path(), &sim, n, shape);
            let built = t0.elapsed().as_secs_f64();
            // A warm-up run settles anything the synthetic state left for recovery.
            sync_child(&config);
            let idle = best(reps, || sync_child(&config));
            let one = best(reps, || {
                sim.voicegain().add_calls(1);
                sync_child(&config)
            });
            let (tick_ms, ticks) =
                daemon_idle_tick(&config, env_usize("TABLE_AGE_DAEMON_SECS", 30) as u64);
            if std::env::var("TABLE_AGE_KEEP").is_ok() {
                std::mem::forget(dir);
            }
            println!(
                "| {} | {n} | {built:.0} s | {:.1} ms | {:.1} ms | {:.0} MB | {:.1} ms | {:.1} ms | {:.0} MB | {tick_ms:.1} ms ({ticks} ticks) |",
                shape.name(),
                idle.cpu * 1e3,
                idle.wall * 1e3,
                idle.max_rss_mb,
                one.cpu * 1e3,
                one.wall * 1e3,
                one.max_rss_mb
            );
        }
    }
}
