//! Promise: what an operator meets in the first week holds. Push sources write few files and
//! no state while idle; metrics tell the truth across restarts and reloads; a saturated daemon
//! takes every source in turn; no header stores the webhook token; `/healthz` and `/metrics`
//! answer within a second while another process holds the state; a reload cannot move the
//! state; systemd hears STOPPING=1 when the drain begins.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use callsync::simulator::exotel::{MonitorLeg, deliver};
use callsync::simulator::{FaultKind, FaultPlan, VoicegainSim};

use crate::daemon::{Daemon, config, get, lake_count, slow_env};
use crate::exotel::{TOKEN, monitor_env_flushing, read_legs};
use crate::helpers::*;

fn runs_rows(env: &Env) -> i64 {
    let c = rusqlite::Connection::open(env.state_path()).unwrap();
    c.query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .unwrap()
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn inbox_depth(env: &Env) -> u64 {
    source_status(env, "legs")["inbox"]["depth"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

#[test]
fn a_steady_push_source_writes_few_files_and_an_idle_one_writes_nothing() {
    let env = monitor_env_flushing(20, "");
    let mut d = Daemon::start(&env, &[], true);
    let url = d.url(&format!("/webhooks/legs/{TOKEN}"));
    // Idle: the flush checks find nothing and write nothing.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(runs_rows(&env), 0, "an idle push source wrote run records");
    // A steady 10 deliveries a second for 60 seconds.
    let mut rng = fastrand::Rng::with_seed(7);
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    for n in 0..600u64 {
        let due = Duration::from_millis(100 * n);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let leg = MonitorLeg::random(&mut rng, n, 30, 19_800);
        let code = env.rt.block_on(deliver(&client, &url, &leg, n % 2 == 0));
        assert_eq!(code, Some(200));
    }
    assert!(
        wait_until(40, || inbox_depth(&env) == 0),
        "{}",
        d.log_text()
    );
    let runs = runs_rows(&env);
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(runs_rows(&env), runs, "an idle flush wrote a run record");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(20).0, Some(0), "{}", d.log_text());
    assert_eq!(
        read_legs(&env).len(),
        600,
        "every delivery in the lake once"
    );
    let mut per_partition: BTreeMap<String, usize> = BTreeMap::new();
    for f in files_with_suffix(&env.warehouse().join("monitor_legs"), ".parquet") {
        *per_partition
            .entry(f.parent().unwrap().display().to_string())
            .or_default() += 1;
    }
    eprintln!(
        "60 s at 10/s, flush_interval_secs = 20: files per partition {per_partition:?}, runs rows {runs}"
    );
    assert!(per_partition.values().all(|n| *n <= 4), "{per_partition:?}");
    assert!(runs <= 5, "{runs} run records for 60 s of deliveries");
}

#[test]
fn last_success_survives_a_restart_and_a_removed_source_loses_its_series() {
    let env = Env::new(VoicegainSim::new(61, 0), 100);
    env.sim.voicegain().add_calls(200);
    let daemon_cfg = "[server]\nlisten = \"127.0.0.1:0\"";
    env.write_config(&config(&env, "0 0 0 1 1 *", 100, true, daemon_cfg), 100_000);
    let mut d = Daemon::start(&env, &[], true);
    let prefix = "callsync_source_last_success_timestamp_seconds{source=\"vg\"}";
    assert!(
        wait_until(20, || {
            metric(&get(&env, &d.url("/metrics")).1, prefix).unwrap_or(0.0) > 0.0
        }),
        "{}",
        d.log_text()
    );
    let first = metric(&get(&env, &d.url("/metrics")).1, prefix).unwrap();
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(20).0, Some(0));
    // Restarted with a slow vendor: before its first run ends, the series says when the
    // source last succeeded, not 0.
    env.sim.set_faults(FaultPlan::every(
        1,
        vec![FaultKind::Slow(Duration::from_secs(3))],
    ));
    let mut d = Daemon::start(&env, &[], true);
    let (_, text) = get(&env, &d.url("/metrics"));
    let again = metric(&text, prefix).unwrap();
    assert!(
        (again - first).abs() < 0.01,
        "after a restart: {again}, before: {first}"
    );
    let (_, health) = get(&env, &d.url("/healthz"));
    let h: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert!(h["sources"]["vg"]["last_success_at"].is_string(), "{h}");
    // A source removed by a reload takes its series with it.
    assert!(text.contains("source=\"vn\""));
    env.write_config(
        &config(&env, "0 0 0 1 1 *", 100, false, daemon_cfg),
        100_000,
    );
    d.signal(libc::SIGHUP);
    assert!(
        wait_until(10, || !get(&env, &d.url("/metrics"))
            .1
            .contains("source=\"vn\"")),
        "{}",
        get(&env, &d.url("/metrics")).1
    );
    env.sim.set_faults(FaultPlan::default());
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(20).0, Some(0));
}

#[test]
fn a_saturated_daemon_runs_the_longest_waiting_source_first() {
    let env = Env::new(VoicegainSim::new(62, 0), 20);
    env.sim.voicegain().add_calls(60);
    env.sim.set_faults(FaultPlan::every(
        1,
        vec![FaultKind::Slow(Duration::from_millis(250))],
    ));
    // Three sources due every second, one slot: each run takes longer than the schedule.
    let base = config(
        &env,
        "* * * * * *",
        20,
        false,
        "[daemon]\nmax_concurrent_sources = 1\n[server]\nlisten = \"127.0.0.1:0\"",
    );
    let mut text = base.clone();
    for name in ["vg2", "vg3"] {
        let table = base[base.find("[sources.vg]").unwrap()..]
            .replace("[sources.vg]", &format!("[sources.{name}]"))
            .replace("[sources.vg.http]", &format!("[sources.{name}.http]"));
        text.push_str(&table);
    }
    env.write_config(&text, 100_000);
    let d = Daemon::start(&env, &[], true);
    let ok = |name: &str| {
        metric(
            &get(&env, &d.url("/metrics")).1,
            &format!("callsync_runs_total{{source=\"{name}\",outcome=\"ok\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(
        wait_until(30, || ["vg", "vg2", "vg3"].iter().all(|n| ok(n) >= 3.0)),
        "runs: vg {} vg2 {} vg3 {}\n{}",
        ok("vg"),
        ok("vg2"),
        ok("vg3"),
        d.log_text()
    );
    let counts: Vec<f64> = ["vg", "vg2", "vg3"].iter().map(|n| ok(n)).collect();
    let (lo, hi) = (
        counts.iter().cloned().fold(f64::MAX, f64::min),
        counts.iter().cloned().fold(0.0, f64::max),
    );
    assert!(hi - lo <= 1.0, "sources did not take turns: {counts:?}");
    assert_eq!(env.sim.max_in_flight("voicegain"), 1);
    for n in ["vg", "vg2", "vg3"] {
        assert_eq!(lake_count(&env, n), 60, "{n}");
    }
}

#[test]
fn a_path_carrying_proxy_header_leaves_no_token_in_the_state_or_the_lake() {
    let env = monitor_env_flushing(1, "");
    let mut d = Daemon::start(&env, &[], true);
    let url = d.url(&format!("/webhooks/legs/{TOKEN}"));
    let path = format!("/webhooks/legs/{TOKEN}");
    let leg = MonitorLeg::random(&mut fastrand::Rng::with_seed(3), 1, 60, 19_800);
    let code = env.rt.block_on(async {
        reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .header("x-original-uri", &path)
            .header("x-forwarded-uri", &path)
            .header("x-envoy-original-path", &path)
            .header("x-request-id", "req-1")
            .body(leg.json())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(code, 200);
    assert!(
        wait_until(15, || read_legs(&env).len() == 1),
        "{}",
        d.log_text()
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(20).0, Some(0));
    let mut files = files_with_suffix(env.dir.path(), "");
    files.retain(|f| !f.ends_with("legs.token"));
    assert!(files.len() > 3);
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "{} holds the webhook token",
            f.display()
        );
    }
    // The allowlisted headers are kept.
    let c = rusqlite::Connection::open(env.state_path()).unwrap();
    let headers: String = c
        .query_row("SELECT headers FROM inbox", [], |r| r.get(0))
        .unwrap();
    assert!(
        headers.contains("req-1") && headers.contains("content-type"),
        "{headers}"
    );
}

#[test]
fn health_and_metrics_answer_within_a_second_while_another_process_holds_the_state() {
    let env = monitor_env_flushing(1, "");
    let d = Daemon::start(&env, &[], true);
    assert_eq!(get(&env, &d.url("/healthz")).0, 200);
    let state = env.state_path();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(state).unwrap();
        c.execute_batch("BEGIN IMMEDIATE; INSERT INTO schema_version VALUES (999, 'held');")
            .unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(10));
        c.execute_batch("ROLLBACK;").unwrap();
    });
    locked_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let t0 = Instant::now();
        let (code, body) = get(&env, &d.url("/healthz"));
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("locked by another writer"), "{body}");
        let t0 = Instant::now();
        let (code, body) = get(&env, &d.url("/metrics"));
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(1), "/metrics took {took:?}");
        assert_eq!(code, 200);
        assert!(body.contains("callsync_inbox_depth"));
    }
    holder.join().unwrap();
    assert!(
        wait_until(5, || get(&env, &d.url("/healthz")).0 == 200),
        "{}",
        d.log_text()
    );
}

#[test]
fn a_reload_that_moves_the_state_keeps_the_running_one() {
    let env = Env::new(VoicegainSim::new(63, 0), 100);
    env.sim.voicegain().add_calls(100);
    env.write_config(&config(&env, "* * * * * *", 100, false, ""), 100_000);
    let mut d = Daemon::start(&env, &[], false);
    assert!(wait_until(20, || lake_count(&env, "vg") == 100));
    let moved = env.dir.path().join("elsewhere").join("callsync.db");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        &env.state_path().display().to_string(),
        &moved.display().to_string(),
    );
    std::fs::write(&env.config, text).unwrap();
    d.signal(libc::SIGHUP);
    assert!(
        wait_until(10, || d.log_text().contains(
            "[state] path changed; it takes effect at the next start"
        )),
        "{}",
        d.log_text()
    );
    env.sim.voicegain().add_calls(50);
    let want = env.sim.voicegain().expected_exported().len();
    assert!(wait_until(20, || lake_count(&env, "vg") == want));
    assert!(!moved.exists(), "the runs moved to the new state");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(20).0, Some(0));
    assert_lake_matches_truth(&env);
}

#[test]
fn systemd_hears_stopping_when_the_drain_begins() {
    let env = slow_env(64);
    let sock_path = env.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut d = Daemon::start(
        &env,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("CALLSYNC_SLOW_COMMIT_MS", "2000"),
        ],
        false,
    );
    assert!(
        wait_until(30, || lake_count(&env, "vg") >= 200),
        "{}",
        d.log_text()
    );
    std::thread::sleep(Duration::from_millis(300));
    d.signal(libc::SIGTERM);
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    let mut stopping = None;
    while t0.elapsed() < Duration::from_secs(10) && stopping.is_none() {
        if let Ok(n) = sock.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1")
        {
            stopping = Some(t0.elapsed());
        }
    }
    let stopping = stopping.expect("no STOPPING=1");
    let (code, exited) = d.wait_exit(20);
    let exited = exited + t0.elapsed();
    assert_eq!(code, Some(0), "{}", d.log_text());
    assert!(
        stopping < Duration::from_millis(500),
        "STOPPING=1 after {stopping:?}"
    );
    assert!(
        exited > stopping + Duration::from_millis(500),
        "STOPPING=1 at {stopping:?}, exit at {exited:?}: not sent before the drain's commit"
    );
}
