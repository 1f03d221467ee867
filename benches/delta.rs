//! Delta benchmarks (`cargo bench --bench delta`), on the simulator's realistic Voicegain
//! rows: (f) the 100k-call history (200 days) and recent (2 days) shapes into a local Delta
//! table beside the plain layout: CPU of a one-commit run, and wall per commit in commits of
//! 5,000; (g) the recent shape onto S3 (the moto server), plain beside Delta; (h) DuckDB's
//! `delta_scan` and Polars' `scan_delta` over a month of daemon commits (a `GROUP BY source,
//! date`, a one-day time range and a `call_id` lookup) before and after `callsync compact`,
//! beside the anchor: the same rows written by `deltalake.write_deltalake(...,
//! partition_by=["source", "date"])`.
//!
//! Environment: `CALLSYNC_BENCH_ROWS` (default 100000), `CALLSYNC_BENCH_REPS` (default 3),
//! `CALLSYNC_BENCH_ONLY=local|s3|query`, `CALLSYNC_TEST_PYTHON` (deltalake, moto) and
//! `CALLSYNC_TEST_DUCKDB_PYTHON` (DuckDB 1.4.4 with its delta extension), defaulting to the
//! venvs `.ci/run` makes under `target/`.

mod common;

use std::path::Path;
use std::process::Command;

use callsync::simulator::Simulator;
use common::*;

/// The DuckDB Python (1.4.4 with duckdb-ext-delta).
fn duck_python() -> String {
    std::env::var("CALLSYNC_TEST_DUCKDB_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/duckdelta/bin/python").to_string()
    })
}

/// One sync of `sim` into a fresh lake made by `warehouse(dir)`: the run and its commits.
fn one_sync(sim: &Simulator, token: &str, warehouse: &dyn Fn(&Path) -> String) -> (ChildRun, i64) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), sim, token, &warehouse(dir.path()));
    let run = sync_child(&config);
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let commits: i64 = conn
        .query_row("SELECT count(*) FROM commits", [], |r| r.get(0))
        .unwrap();
    (run, commits)
}

/// Best (least CPU) of `reps` syncs.
fn best_of(
    reps: usize,
    sim: &Simulator,
    token: &str,
    warehouse: &dyn Fn(&Path) -> String,
) -> (ChildRun, i64) {
    let mut best: Option<(ChildRun, i64)> = None;
    for _ in 0..reps.max(1) {
        let r = one_sync(sim, token, warehouse);
        if best.as_ref().is_none_or(|b| r.0.cpu < b.0.cpu) {
            best = Some(r);
        }
    }
    best.expect("at least one run")
}

fn row(lake: &str, label: &str, run: &ChildRun, commits: i64) {
    println!(
        "| {lake} | {label} | {commits} | {:.3} s | {:.3} s | {:.1} ms | {:.1} MB |",
        run.cpu,
        run.wall,
        run.wall * 1000.0 / commits.max(1) as f64,
        run.max_rss_mb
    );
}

/// (f) Plain beside Delta on a local disk, for one shape.
fn local_bench(rt: &tokio::runtime::Runtime, rows: usize, reps: usize, name: &str, days: i64) {
    let sim = generate(rows, days, if days == 2 { 8 } else { 7 });
    let token = sim.token.clone();
    let sim = rt.block_on(Simulator::start(sim)).unwrap();
    let mut cpu = [[0.0; 2]; 2];
    let mut per_commit = [[0.0; 2]; 2];
    for (i, (max_rows, label)) in [(100_000, "one commit"), (5_000, "commits of 5,000")]
        .into_iter()
        .enumerate()
    {
        for (j, format) in ["parquet", "delta"].into_iter().enumerate() {
            let wh = |d: &Path| {
                format!(
                    "[warehouse]\nroot = \"{}\"\nformat = \"{format}\"\nmax_rows_per_file = {max_rows}\n",
                    d.join("lake").display()
                )
            };
            let (run, commits) = best_of(reps, &sim, &token, &wh);
            row(&format!("{name}, {format}"), label, &run, commits);
            cpu[i][j] = run.cpu;
            per_commit[i][j] = run.wall * 1000.0 / commits.max(1) as f64;
        }
    }
    println!(
        "| {name}: Delta's extra | | | {:+.1}% CPU (one commit), {:+.1}% (commits of 5,000) | | {:+.1} ms per commit (commits of 5,000) | |",
        (cpu[0][1] / cpu[0][0] - 1.0) * 100.0,
        (cpu[1][1] / cpu[1][0] - 1.0) * 100.0,
        per_commit[1][1] - per_commit[1][0]
    );
}

/// (g) The recent shape on S3 (moto), plain beside Delta, in commits of 5,000.
fn s3_bench(rt: &tokio::runtime::Runtime, rows: usize, reps: usize) {
    let moto = MotoServer::start();
    let sim = generate(rows, 2, 8);
    let token = sim.token.clone();
    let sim = rt.block_on(Simulator::start(sim)).unwrap();
    let bucket = std::cell::Cell::new(0);
    for format in ["parquet", "delta"] {
        let wh = |_: &Path| {
            bucket.set(bucket.get() + 1);
            moto.warehouse(rt, &format!("delta-bench{}", bucket.get()), 5_000)
                .replacen(
                    "[warehouse]\n",
                    &format!("[warehouse]\nformat = \"{format}\"\n"),
                    1,
                )
        };
        let (run, commits) = best_of(reps, &sim, &token, &wh);
        row(
            &format!("S3 (moto), {format}"),
            "commits of 5,000",
            &run,
            commits,
        );
    }
}

/// Runs a Python script; its stdout.
fn py(python: &str, script: &str) -> String {
    let out = Command::new(python).arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One reader's timings of the three layout queries over the Delta table at `uri`
/// (`benches/query_readers.py`): a JSON object with `group`, `range`, `lookup` (ms, best of
/// `reps`) and each query's result.
fn reader_queries(
    reader: &str,
    uri: &str,
    day: &str,
    call_id: &str,
    reps: usize,
) -> serde_json::Value {
    let python = if reader.starts_with("duckdb") {
        duck_python()
    } else {
        python()
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/query_readers.py");
    let out = Command::new(python)
        .args([script, reader, uri, day, call_id, &reps.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `(files, most files in a partition, partitions)` of the table, by the deltalake package.
fn table_files(uri: &str) -> (usize, usize, usize) {
    let script = format!(
        "import deltalake, collections\n\
         c = collections.Counter(u.rsplit('/', 1)[0] for u in deltalake.DeltaTable('{uri}').file_uris())\n\
         print(sum(c.values()), max(c.values()), len(c))"
    );
    let out = py(&python(), &script);
    let v: Vec<usize> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[0], v[1], v[2])
}

/// A table's label, `table_files` and each reader's `reader_queries`.
type Measured = (String, (usize, usize, usize), Vec<serde_json::Value>);

/// (h) A month of daemon commits (every 15 minutes: 2,880 commits), queried by DuckDB's
/// `delta_scan` and Polars' `scan_delta` before and after `compact`, beside the anchor: the
/// same rows written in one go by delta-rs' own writer, partitioned alike.
fn query_bench(rt: &tokio::runtime::Runtime, rows: usize) {
    let sim = generate(rows, 30, 11);
    let middle = sim.calls().nth(rows / 2).unwrap();
    let call_id = middle.id.to_string();
    let day = chrono::DateTime::from_timestamp(middle.start_secs, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    let token = sim.token.clone();
    let sim = rt.block_on(Simulator::start(sim)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let per_commit = (rows / 2_880).max(1);
    let wh = format!(
        "[warehouse]\nroot = \"{}\"\nformat = \"delta\"\nmax_rows_per_file = {per_commit}\n",
        dir.path().join("lake").display()
    );
    let config = write_config_with(dir.path(), &sim, &token, &wh);
    // A page per commit, as a 15-minute tick lists about one page.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("per_page = 1000", &format!("per_page = {per_commit}")),
    )
    .unwrap();
    let sync = sync_child(&config);
    let uri = dir.path().join("lake/calls").display().to_string();
    let readers = ["duckdb", "polars", "duckdb-files"];
    let mut tables: Vec<Measured> = Vec::new();
    let measure = |label: &str, uri: &str, reps: usize| {
        let files = table_files(uri);
        let got: Vec<serde_json::Value> = readers
            .iter()
            .map(|r| reader_queries(r, uri, &day, &call_id, reps))
            .collect();
        (label.to_string(), files, got)
    };
    tables.push(measure("before compact (daemon commits)", &uri, 3));
    let compact = run_child(
        Command::new(env!("CARGO_BIN_EXE_callsync"))
            .arg("--config")
            .arg(&config)
            .arg("compact")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null()),
    );
    tables.push(measure("after callsync compact", &uri, 5));
    // The anchor: the same rows, one write by delta-rs' writer.
    let anchor = dir.path().join("anchor").display().to_string();
    py(
        &python(),
        &format!(
            "import deltalake\n\
             deltalake.write_deltalake('{anchor}', deltalake.DeltaTable('{uri}').to_pyarrow_table(), partition_by=['source', 'date'])"
        ),
    );
    tables.push(measure(
        "anchor: write_deltalake(partition_by=[source, date])",
        &anchor,
        5,
    ));
    // Every table answers every query alike.
    for (i, r) in readers.iter().enumerate() {
        for q in ["group", "range", "lookup"] {
            let key = format!("{q}_result");
            let first = &tables[0].2[i][&key];
            for t in &tables[1..] {
                assert_eq!(&t.2[i][&key], first, "{r} {q}: {} differs", t.0);
            }
        }
    }
    println!(
        "\n(h) {rows} calls over 30 days in {} commits ({per_commit} calls each, a daemon's 15-minute syncs; sync {:.1} s wall); best of 5 (3 before compact)\n",
        tables[0].1.0, sync.wall
    );
    println!(
        "| table | files | most in a partition | reader | GROUP BY source, date | one-day range on started_at | call_id lookup |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, (files, most, _), got) in &tables {
        for (i, r) in readers.iter().enumerate() {
            println!(
                "| {label} | {files} | {most} | {r} | {:.1} ms | {:.1} ms | {:.1} ms |",
                got[i]["group"].as_f64().unwrap(),
                got[i]["range"].as_f64().unwrap(),
                got[i]["lookup"].as_f64().unwrap()
            );
        }
    }
    for (i, r) in readers.iter().enumerate() {
        let ratio =
            |q: &str| tables[1].2[i][q].as_f64().unwrap() / tables[2].2[i][q].as_f64().unwrap();
        println!(
            "\n{r}: after compact / anchor = {:.2}× (GROUP BY), {:.2}× (one-day range), {:.2}× (lookup); target ≤ 1.2×, < 1× on the range (duckdb-files: the same files by read_parquet, no log)",
            ratio("group"),
            ratio("range"),
            ratio("lookup")
        );
    }
    println!(
        "\ncompact: {:.2} s wall, {:.2} s CPU, {:.1} MB peak RSS, {} partitions",
        compact.wall, compact.cpu, compact.max_rss_mb, tables[0].1.2
    );
    if std::env::var_os("CALLSYNC_BENCH_KEEP").is_some() {
        println!("kept: {}", dir.keep().display());
    }
}

fn main() {
    let rows = env_usize("CALLSYNC_BENCH_ROWS", 100_000);
    let reps = env_usize("CALLSYNC_BENCH_REPS", 3);
    let only = std::env::var("CALLSYNC_BENCH_ONLY").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if only.is_empty() || only == "local" || only == "s3" {
        println!(
            "\n(f, g) {rows} Voicegain calls: plain Parquet beside Delta tables; best of {reps} (least CPU)\n"
        );
        println!("| lake | commits | count | CPU | wall | wall per commit | peak RSS |");
        println!("|---|---|---|---|---|---|---|");
    }
    if only.is_empty() || only == "local" {
        local_bench(&rt, rows, reps, "200-day history", 200);
        local_bench(&rt, rows, reps, "last 2 days", 2);
    }
    if only.is_empty() || only == "s3" {
        s3_bench(&rt, rows, reps);
    }
    if only.is_empty() || only == "query" {
        query_bench(&rt, rows);
    }
}
