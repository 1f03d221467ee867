//! Exotel call records benchmark (run with `cargo bench --bench exotel_calls`): a first sync of
//! 90 days of an account's calls (the simulator's realistic call log: every documented field,
//! empty ones where Exotel leaves them empty, signed and unsigned recording URLs) from the Bulk
//! Call Details API, 100 calls a page in 31-day windows, at two sizes to show that memory does
//! not grow with the export; beside it, the Vonage insights source on the same number of
//! sessions (the other windowed JSON source) as the reference. Then the idle re-sync.
//!
//! Environment: `CALLSYNC_BENCH_ROWS` (the larger size, default 100000; the smaller is a
//! fifth), `CALLSYNC_BENCH_REPS` (runs per case, least CPU kept; default 3).

use std::path::Path;

mod common;

use common::*;

use callsync::simulator::{Simulator, VoicegainSim};

const DAY_US: i64 = 86_400_000_000;

/// A config with one source: `exotel_calls` or `vonage_insights` over the simulator.
fn config(dir: &Path, sim: &Simulator, exotel: bool) -> std::path::PathBuf {
    let start = (chrono::Utc::now() - chrono::Duration::days(91)).format("%Y-%m-%d");
    let source = if exotel {
        let (key, token) = {
            let e = sim.exotel();
            (e.api_key.clone(), e.api_token.clone())
        };
        std::fs::write(dir.join("key"), key).unwrap();
        std::fs::write(dir.join("token"), token).unwrap();
        format!(
            "[sources.ex]\nkind = \"exotel_calls\"\naccount_sid = \"exotel30m\"\nbase_url = \"{}\"\n\
             api_key_file = \"{}\"\napi_token_file = \"{}\"\nstart_date = \"{start}\"\nwindow_days = 31\npage_size = 100\n",
            sim.exotel_base_url(),
            dir.join("key").display(),
            dir.join("token").display()
        )
    } else {
        std::fs::write(dir.join("key"), sim.vonage().api_key.clone()).unwrap();
        format!(
            "[sources.vn]\nkind = \"vonage_insights\"\nbase_url = \"{}\"\napi_key_file = \"{}\"\n\
             start_date = \"{start}\"\nwindow_days = 31\npage_size = 100\n",
            sim.vonage_base_url(),
            dir.join("key").display()
        )
    };
    let config = dir.join("callsync.toml");
    std::fs::write(
        &config,
        format!(
            "[warehouse]\nroot = \"{}\"\n[state]\npath = \"{}\"\n{source}",
            dir.join("lake").display(),
            dir.join("state.db").display()
        ),
    )
    .unwrap();
    config
}

fn main() {
    let rows = env_usize("CALLSYNC_BENCH_ROWS", 100_000);
    let reps = env_usize("CALLSYNC_BENCH_REPS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("\nFirst sync of 90 days, 100 a page, 31-day windows; best of {reps} (least CPU)\n");
    println!(
        "| source | calls | pages | CPU | wall | CPU per 1,000 calls | peak RSS | idle re-sync |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in [rows / 5, rows] {
        for exotel in [true, false] {
            let sim = rt
                .block_on(Simulator::start(VoicegainSim::new(1, 0)))
                .unwrap();
            let now = chrono::Utc::now().timestamp_micros();
            if exotel {
                sim.exotel()
                    .calls
                    .add_calls(n, now - 90 * DAY_US, now - DAY_US / 24);
            } else {
                sim.vonage()
                    .add_sessions(n, now - 90 * DAY_US, now - DAY_US / 24, 0.0);
            }
            let mut best: Option<(ChildRun, ChildRun, u64)> = None;
            for _ in 0..reps.max(1) {
                let dir = tempfile::tempdir().unwrap();
                let cfg = config(dir.path(), &sim, exotel);
                let pages0 = if exotel {
                    sim.exotel().calls.list_requests
                } else {
                    sim.vonage().searches
                };
                let first = sync_child(&cfg);
                let pages = if exotel {
                    sim.exotel().calls.list_requests
                } else {
                    sim.vonage().searches
                } - pages0;
                assert_eq!(
                    count_rows(&dir.path().join("lake")),
                    n,
                    "the lake is not exact"
                );
                let idle = sync_child(&cfg);
                if best.as_ref().is_none_or(|b| first.cpu < b.0.cpu) {
                    best = Some((first, idle, pages));
                }
            }
            let (first, idle, pages) = best.unwrap();
            println!(
                "| {} | {n} | {pages} | {:.2} s | {:.2} s | {:.1} ms | {:.1} MB | {:.2} s CPU, {:.1} MB |",
                if exotel {
                    "exotel_calls"
                } else {
                    "vonage_insights (reference)"
                },
                first.cpu,
                first.wall,
                first.cpu * 1e6 / n as f64,
                first.max_rss_mb,
                idle.cpu,
                idle.max_rss_mb
            );
        }
    }
}

/// Rows in the lake's Parquet files (from their footers).
fn count_rows(lake: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![lake.join("calls")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let f = std::fs::File::open(&p).unwrap();
                let r = parquet::file::reader::SerializedFileReader::new(f).unwrap();
                use parquet::file::reader::FileReader;
                n += r.metadata().file_metadata().num_rows() as usize;
            }
        }
    }
    n
}
