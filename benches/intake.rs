//! Webhook intake benchmark (`cargo bench --bench intake`): concurrent clients post Exotel
//! monitor-leg callbacks to the real (release) binary's `callsync run`; every 2xx means the
//! delivery was committed to the SQLite inbox first. Reports acknowledged deliveries per second
//! and p50/p99 acknowledgement latency, the load generator sharing this machine's cores.
//!
//! Environment: `CALLSYNC_BENCH_DELIVERIES` (default 20000), `CALLSYNC_BENCH_CLIENTS`
//! (concurrent senders, default 64).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use callsync::simulator::exotel::MonitorLeg;
use futures_util::StreamExt;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env_usize("CALLSYNC_BENCH_DELIVERIES", 20_000);
    let clients = env_usize("CALLSYNC_BENCH_CLIENTS", 64);
    let dir = tempfile::tempdir().unwrap();
    let token = "bench-token-1d2c";
    std::fs::write(dir.path().join("token"), token).unwrap();
    let config = dir.path().join("callsync.toml");
    std::fs::write(
        &config,
        format!(
            "[warehouse]\nroot = \"{}\"\n[state]\npath = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\n\
             [sources.legs]\nkind = \"exotel_monitor\"\nwebhook_token_file = \"{}\"\nflush_interval_secs = 1\n",
            dir.path().join("lake").display(),
            dir.path().join("state.db").display(),
            dir.path().join("token").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_callsync"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .trim_start_matches("listening on http://")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let url = format!("http://{addr}/webhooks/legs/{token}");
    let mut rng = fastrand::Rng::with_seed(5);
    let bodies: Vec<(bool, String)> = (0..n)
        .map(|i| {
            let leg = MonitorLeg::random(&mut rng, i as u64, 3600, 19_800);
            if i % 2 == 0 {
                (true, leg.json())
            } else {
                (false, leg.form())
            }
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (wall, mut lat, ok) = rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .build()
            .unwrap();
        let t0 = Instant::now();
        let results: Vec<(bool, Duration)> = futures_util::stream::iter(bodies)
            .map(|(json, body)| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let ct = if json {
                        "application/json"
                    } else {
                        "application/x-www-form-urlencoded"
                    };
                    let t = Instant::now();
                    let r = client
                        .post(&url)
                        .header("content-type", ct)
                        .body(body)
                        .send()
                        .await;
                    let ok = r.is_ok_and(|r| r.status().is_success());
                    (ok, t.elapsed())
                }
            })
            .buffer_unordered(clients)
            .collect()
            .await;
        let wall = t0.elapsed();
        let ok = results.iter().filter(|r| r.0).count();
        let lat: Vec<Duration> = results.into_iter().map(|r| r.1).collect();
        (wall, lat, ok)
    });
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    // Every acknowledged delivery is in the inbox.
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))
        .unwrap_or(0);
    let exported: i64 = conn
        .query_row("SELECT count(*) FROM exported", [], |r| r.get(0))
        .unwrap_or(0);
    drop(conn);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    println!(
        "webhook intake, {n} monitor-leg callbacks from {clients} concurrent clients (load generator on the same 2 cores):\n\
         {:.0} acknowledged deliveries/s ({ok} acknowledged in {:.2} s), latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         {stored} in the inbox (every 2xx persisted first), {exported} exported to the lake meanwhile (flush every 1 s)",
        ok as f64 / wall.as_secs_f64(),
        wall.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
    );
    assert!(
        stored as usize >= ok,
        "an acknowledged delivery is missing from the inbox"
    );
}
