//! Export benchmarks (run with `cargo bench`), on the simulator's realistic Voicegain rows
//! (all 43 documented columns, about 16 empty a call): (a) CSV → normalized Parquet on one
//! core; (b) two shapes of a whole 100k-call sync (200 days of history, and calls of the last
//! 2 days), each beside DuckDB's partitioned COPY of the same CSV on one thread; (c) 1M calls
//! end to end: peak RSS and state bytes per call; (d) voice-calls detail latency; (e) the
//! recent shape into a local directory beside an S3 bucket (the moto server on loopback), in
//! one commit and in commits of 5,000 calls (a daemon's small syncs): CPU, wall, per-commit.
//!
//! Environment: `CALLSYNC_BENCH_ROWS` (default 100000), `CALLSYNC_BENCH_BIG_ROWS` (default
//! 1000000, 0 skips (c)), `CALLSYNC_BENCH_REPS` (runs of (a) and (b), least CPU kept; default
//! 5), `CALLSYNC_BENCH_ONLY=encode|export|big|voice_calls|s3`, `CALLSYNC_TEST_PYTHON` (a Python
//! with duckdb; default `target/pyenv/bin/python`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::*;

use callsync::lake::storage::LocalStorage;
use callsync::lake::writer::CommitWriter;
use callsync::simulator::{FaultKind, FaultPlan, Simulator, VoicegainSim};
use callsync::sources::voicegain::normalize::parse_page;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// (a) CSV pages (as the vendor sends them, `per_page` rows each) → normalized, encoded
/// Parquet, single thread: (wall, cpu, parse cpu).
fn encode_bench(pages: &[String], rows: usize) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(dir.path()).unwrap();
    let t0 = Instant::now();
    let c0 = thread_cpu();
    let mut parse_cpu = 0.0;
    let mut w = CommitWriter::new(&storage, "bench", "bench", 0);
    let mut n = 0;
    for body in pages {
        let p0 = thread_cpu();
        let page = parse_page("bench", body.as_bytes(), false).unwrap();
        parse_cpu += (thread_cpu() - p0).as_secs_f64();
        let calls = page.calls.unwrap();
        n += calls.num_rows();
        w.add_calls(&calls).unwrap();
    }
    w.finish().unwrap();
    let cpu = (thread_cpu() - c0).as_secs_f64();
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(n, rows);
    (wall, cpu, parse_cpu)
}

/// (e) The recent shape into a local directory and into an S3 bucket on the moto server, in
/// one commit and in commits of `small` calls; prints a table row per case.
fn s3_bench(rt: &tokio::runtime::Runtime, rows: usize, reps: usize) {
    let moto = MotoServer::start();
    let sim = generate(rows, 2, 8);
    let token = sim.token.clone();
    let sim = rt.block_on(Simulator::start(sim)).unwrap();
    println!(
        "\n(e) {rows} calls of the last 2 days, local directory vs S3 (moto on loopback); best of {reps}\n"
    );
    println!("| lake | commits | CPU | wall | wall per commit | peak RSS |");
    println!("|---|---|---|---|---|---|");
    let mut bucket = 0;
    for (max_rows, label) in [(100_000, "one commit"), (5_000, "commits of 5,000")] {
        for s3 in [false, true] {
            let mut best: Option<(ChildRun, i64)> = None;
            for _ in 0..reps.max(1) {
                let dir = tempfile::tempdir().unwrap();
                let warehouse = if s3 {
                    bucket += 1;
                    moto.warehouse(rt, &format!("bench{bucket}"), max_rows)
                } else {
                    format!(
                        "[warehouse]\nroot = \"{}\"\nmax_rows_per_file = {max_rows}\n",
                        dir.path().join("lake").display()
                    )
                };
                let config = write_config_with(dir.path(), &sim, &token, &warehouse);
                let run = sync_child(&config);
                let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
                let commits: i64 = conn
                    .query_row("SELECT count(*) FROM commits", [], |r| r.get(0))
                    .unwrap();
                if best.as_ref().is_none_or(|b| run.cpu < b.0.cpu) {
                    best = Some((run, commits));
                }
            }
            let (run, commits) = best.expect("at least one run");
            println!(
                "| {} ({label}) | {commits} | {:.3} s | {:.3} s | {:.1} ms | {:.1} MB |",
                if s3 { "S3 (moto)" } else { "local" },
                run.cpu,
                run.wall,
                run.wall * 1000.0 / commits.max(1) as f64,
                run.max_rss_mb
            );
        }
    }
}

/// (b)/(c) A whole export from the simulator by the release binary, `reps` times into fresh
/// state: the least CPU (this machine's timings vary run to run) with the greatest peak RSS.
fn export_bench(
    rt: &tokio::runtime::Runtime,
    data: VoicegainSim,
    n: usize,
    reps: usize,
) -> (ChildRun, f64, usize) {
    let token = data.token.clone();
    let sim = rt.block_on(Simulator::start(data)).unwrap();
    let mut best: Option<(ChildRun, f64, usize)> = None;
    for _ in 0..reps.max(1) {
        let (run, state, files) = export_once(&sim, &token, n);
        let peak = best
            .as_ref()
            .map_or(0.0, |b| b.0.max_rss_mb)
            .max(run.max_rss_mb);
        if best.as_ref().is_none_or(|b| run.cpu < b.0.cpu) {
            best = Some((run, state, files));
        }
        if let Some(b) = best.as_mut() {
            b.0.max_rss_mb = peak;
        }
    }
    best.expect("at least one run")
}

/// Writes a config for one Voicegain source `vg` on `sim` under `dir`; returns its path.
fn write_config(dir: &Path, sim: &Simulator, token: &str) -> PathBuf {
    let warehouse = format!(
        "[warehouse]\nroot = \"{}\"\nmax_rows_per_file = 100000\n",
        dir.join("lake").display()
    );
    write_config_with(dir, sim, token, &warehouse)
}

fn export_once(sim: &Simulator, token: &str, n: usize) -> (ChildRun, f64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let config = write_config(dir.path(), sim, token);
    let run = sync_child(&config);
    let conn = rusqlite::Connection::open(&state).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let exported: i64 = conn
        .query_row("SELECT count(*) FROM exported", [], |r| r.get(0))
        .unwrap();
    assert_eq!(exported as usize, n, "not every call was exported");
    drop(conn);
    let db_bytes = std::fs::metadata(&state).unwrap().len() as f64;
    let files = count_parquet(&dir.path().join("lake"));
    (run, db_bytes / n as f64, files)
}

/// (d) voice-calls export of `n` calls with `latency` added to every request: wall seconds,
/// requests made, and the `N × latency / detail_concurrency` figure it is compared with.
fn voice_calls_bench(
    rt: &tokio::runtime::Runtime,
    n: usize,
    latency: Duration,
    concurrency: usize,
) -> (f64, u64, f64) {
    let sim = rt
        .block_on(Simulator::start(VoicegainSim::new(1, 0)))
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    sim.voice_calls()
        .add_calls(n, now - 5 * 86_400, now - 3600, 0.0);
    sim.set_faults(FaultPlan::every(1, vec![FaultKind::Slow(latency)]));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, sim.voice_calls().token.clone()).unwrap();
    let config = dir.path().join("callsync.toml");
    let start = chrono::DateTime::from_timestamp(now - 6 * 86_400, 0)
        .unwrap()
        .format("%Y-%m-%d");
    std::fs::write(
        &config,
        format!(
            "[warehouse]\nroot = \"{}\"\n[state]\npath = \"{}\"\n[sources.vc]\nkind = \"voice_calls\"\nbase_url = \"{}\"\n\
             token_file = \"{}\"\nstart_date = \"{start}\"\npage_size = 100\nwindow_days = 7\ndetail_concurrency = {concurrency}\n",
            dir.path().join("lake").display(),
            dir.path().join("state.db").display(),
            sim.voice_calls_base_url(),
            token.display()
        ),
    )
    .unwrap();
    let run = sync_child(&config);
    let ideal = n as f64 * latency.as_secs_f64() / concurrency as f64;
    (run.wall, sim.requests(), ideal)
}

/// DuckDB doing callsync's partitioned work: `COPY (SELECT *, <UTC day> AS date FROM
/// read_csv(...)) TO dir (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (date))` with one
/// thread, the COPY alone timed in-process: (cpu s, wall s, files), or `None` without duckdb.
/// (DuckDB's sniffer reads `startTime` as a TIMESTAMP, so the day is a cast.)
fn duckdb_bench(csv: &Path) -> Option<(f64, f64, usize)> {
    let python = std::env::var("CALLSYNC_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/pyenv/bin/python"
            ))
        });
    if !python.exists() {
        return None;
    }
    let out = csv.with_extension("duckdb");
    let _ = std::fs::remove_dir_all(&out);
    let script = format!(
        "import duckdb, resource, time\ncon = duckdb.connect()\ncon.execute('SET threads=1')\n\
         r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.time()\n\
         con.execute(\"COPY (SELECT *, CAST(\\\"startTime\\\" AS DATE) AS date FROM read_csv('{csv}')) TO '{out}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (date))\")\n\
         r1 = resource.getrusage(resource.RUSAGE_SELF)\n\
         print((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime), time.time() - t0)",
        csv = csv.display(),
        out = out.display()
    );
    let o = Command::new(python).arg("-c").arg(script).output().ok()?;
    if !o.status.success() {
        eprintln!("duckdb failed: {}", String::from_utf8_lossy(&o.stderr));
        return None;
    }
    let s = String::from_utf8_lossy(&o.stdout);
    let v: Vec<f64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let files = count_parquet(&out);
    let _ = std::fs::remove_dir_all(&out);
    Some((v[0], v[1], files))
}

/// One shape of export, side by side with DuckDB's partitioned COPY of the same CSV.
struct Shape {
    name: &'static str,
    duck: Option<(f64, f64, usize)>,
    run: ChildRun,
    state_bytes: f64,
    files: usize,
    csv_mb: f64,
}

fn shape_bench(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    n: usize,
    days: i64,
    seed: u64,
    reps: usize,
) -> Shape {
    let sim = generate(n, days, seed);
    let csv = VoicegainSim::csv(sim.calls());
    let tmp = tempfile::tempdir().unwrap();
    let csv_path = tmp.path().join("calls.csv");
    std::fs::write(&csv_path, &csv).unwrap();
    // Best of `reps` for both, interleaved so both see the same moments of this shared
    // machine (its timings vary run to run); the peak RSS is the greatest of callsync's runs.
    let token = sim.token.clone();
    let server = rt.block_on(Simulator::start(sim)).unwrap();
    let mut duck: Option<(f64, f64, usize)> = None;
    let mut best: Option<(ChildRun, f64, usize)> = None;
    let mut peak: f64 = 0.0;
    for _ in 0..reps.max(1) {
        if let Some(d) = duckdb_bench(&csv_path)
            && duck.is_none_or(|b| d.0 < b.0)
        {
            duck = Some(d);
        }
        let r = export_once(&server, &token, n);
        peak = peak.max(r.0.max_rss_mb);
        if best.as_ref().is_none_or(|b| r.0.cpu < b.0.cpu) {
            best = Some(r);
        }
    }
    let (mut run, state_bytes, files) = best.expect("at least one run");
    run.max_rss_mb = peak;
    Shape {
        name,
        duck,
        run,
        state_bytes,
        files,
        csv_mb: csv.len() as f64 / 1e6,
    }
}

fn main() {
    let rows = env_usize("CALLSYNC_BENCH_ROWS", 100_000);
    let big = env_usize("CALLSYNC_BENCH_BIG_ROWS", 1_000_000);
    let reps = env_usize("CALLSYNC_BENCH_REPS", 5);
    let only = std::env::var("CALLSYNC_BENCH_ONLY").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    if only == "serve" {
        // For profiling by hand: the simulator with one shape's data and a config to sync
        // it with (`callsync --config <path> sync`; delete lake/ and state.db* between runs).
        let days: i64 = env_usize("CALLSYNC_BENCH_SHAPE", 2) as i64;
        let sim = generate(rows, days, if days == 2 { 8 } else { 7 });
        let token = sim.token.clone();
        let sim = rt.block_on(Simulator::start(sim)).unwrap();
        let dir = std::env::temp_dir().join("callsync-bench-serve");
        std::fs::create_dir_all(&dir).unwrap();
        println!("config: {}", write_config(&dir, &sim, &token).display());
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if only.is_empty() || only == "encode" {
        // (a) CSV pages of 1000 rows (the default per_page), 200 days of history, one core.
        let sim = generate(rows, 200, 7);
        let all: Vec<&callsync::simulator::VgCall> = sim.calls().collect();
        let pages: Vec<String> = all
            .chunks(1000)
            .map(|c| VoicegainSim::csv(c.iter().copied()))
            .collect();
        let mut best = (f64::MAX, f64::MAX, 0.0);
        for _ in 0..reps {
            let r = encode_bench(&pages, rows);
            if r.1 < best.1 {
                best = r;
            }
        }
        let (enc_wall, enc_cpu, parse_cpu) = best;
        println!(
            "(a) CSV → normalized Parquet, one core: {:.0} rows/s ({enc_cpu:.3} s CPU: parse+normalize {parse_cpu:.3}, encode {:.3}; {enc_wall:.3} s wall)",
            rows as f64 / enc_cpu,
            enc_cpu - parse_cpu
        );
    }
    if only.is_empty() || only == "export" {
        println!(
            "\n(b) {rows} Voicegain calls, all 43 documented columns: callsync's whole sync (HTTP from the simulator, normalize, Parquet, SQLite commit) beside DuckDB's partitioned COPY of the same CSV, one thread; best of {reps}\n"
        );
        println!(
            "| shape | CSV | DuckDB partitioned COPY, CPU | callsync sync, CPU | ratio | callsync peak RSS | files | state bytes/call |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let shapes = [
            ("200-day initial load", 200, 7),
            ("calls of the last 2 days", 2, 8),
        ];
        let pick = std::env::var("CALLSYNC_BENCH_SHAPE").ok();
        for (name, days, seed) in shapes {
            if pick.as_deref().is_some_and(|p| p != days.to_string()) {
                continue;
            }
            let s = shape_bench(&rt, name, rows, days, seed, reps);
            let (duck, ratio) = match s.duck {
                Some((cpu, _, files)) => (
                    format!("{cpu:.3} s ({files} files)"),
                    format!("{:.2}×", s.run.cpu / cpu),
                ),
                None => ("not measured (no Python with duckdb)".into(), "—".into()),
            };
            println!(
                "| {} | {:.1} MB | {duck} | {:.3} s ({:.3} s in the kernel; {:.3} s wall) | {ratio} | {:.1} MB | {} | {:.1} |",
                s.name,
                s.csv_mb,
                s.run.cpu,
                s.run.sys,
                s.run.wall,
                s.run.max_rss_mb,
                s.files,
                s.state_bytes
            );
        }
    }
    if (only.is_empty() || only == "big") && big > 0 {
        let (r, state, files) = export_bench(&rt, generate(big, 200, 9), big, 1);
        println!(
            "\n(c) callsync sync, {big} calls over 200 days: {:.3} s CPU, {:.3} s wall, {:.1} MB peak RSS, {files} files, {state:.1} state bytes/call",
            r.cpu, r.wall, r.max_rss_mb
        );
    }
    if only.is_empty() || only == "s3" {
        s3_bench(&rt, rows, reps.min(3));
    }
    let vc_calls = env_usize("CALLSYNC_BENCH_VC_CALLS", 5000);
    if (only.is_empty() || only == "voice_calls") && vc_calls > 0 {
        let (wall, requests, ideal) =
            voice_calls_bench(&rt, vc_calls, Duration::from_millis(50), 8);
        println!(
            "\n(d) voice-calls sync, {vc_calls} calls, 50 ms per request, detail_concurrency 8: {wall:.1} s wall ({requests} requests); N × latency / concurrency = {ideal:.1} s"
        );
    }
}
