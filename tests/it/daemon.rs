//! Promise: `callsync run` exports every source on its schedule without ever overlapping a
//! source with itself, reports itself on `/healthz`, `/metrics` (read by a real Prometheus
//! parser) and to systemd, drains on SIGTERM without losing or doubling a call (a second
//! signal exits at once), re-reads its config on SIGHUP, and idles cheaply.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callsync::simulator::{FaultKind, FaultPlan, VoicegainSim};

use crate::helpers::*;

/// A running daemon: its process, its server address, its log file.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    addr: Option<String>,
    log: PathBuf,
}

impl Daemon {
    pub(crate) fn start(env: &Env, extra_env: &[(&str, &str)], server: bool) -> Daemon {
        let log = env.dir.path().join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut cmd = env.command(&["run"]);
        cmd.stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .env("RUST_LOG", "info");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut addr = None;
        if server {
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            addr = line
                .strip_prefix("listening on http://")
                .map(|a| a.split_whitespace().next().unwrap_or_default().to_string());
            assert!(addr.is_some(), "no listen line: {line:?}");
        }
        Daemon { child, addr, log }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr.as_deref().unwrap())
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the exit; returns the code and how long it took.
    pub(crate) fn wait_exit(&mut self, secs: u64) -> (Option<i32>, Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s.code(), t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(secs) {
                let _ = self.child.kill();
                panic!(
                    "the daemon did not exit within {secs} s:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn get(env: &Env, url: &str) -> (u16, String) {
    env.rt.block_on(async {
        let r = reqwest::get(url).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// A Voicegain source `vg` on `schedule` plus, optionally, a Vonage source `vn`.
pub(crate) fn config(
    env: &Env,
    schedule: &str,
    per_page: u32,
    vonage: bool,
    daemon: &str,
) -> String {
    let vg_token = token_file(env, "vg", &env.sim.voicegain().token.clone());
    let mut text = format!(
        "{daemon}\n{}",
        vg_table(
            "vg",
            &env.sim.voicegain_base_url(),
            &format!("token_file = \"{}\"", vg_token.display()),
            per_page
        )
        .replace(
            "[sources.vg.http]",
            &format!("schedule = \"{schedule}\"\n[sources.vg.http]")
        )
    );
    if vonage {
        let key = token_file(env, "vn", &env.sim.vonage().api_key.clone());
        let start = (chrono::Utc::now() - chrono::Duration::days(4)).format("%Y-%m-%d");
        text.push_str(&format!(
            "[sources.vn]\nkind = \"vonage_insights\"\nbase_url = \"{}\"\napi_key_file = \"{}\"\nstart_date = \"{start}\"\npage_size = 50\nwindow_days = 2\nschedule = \"{schedule}\"\n",
            env.sim.vonage_base_url(),
            key.display()
        ));
    }
    text
}

fn with_sessions(env: &Env, n: usize) {
    let now = chrono::Utc::now().timestamp_micros();
    env.sim
        .vonage()
        .add_sessions(n, now - 3 * 86_400_000_000, now - 3_600_000_000, 0.0);
}

pub(crate) fn lake_count(env: &Env, source: &str) -> usize {
    env.lake().iter().filter(|r| r.source == source).count()
}

/// Parses `/metrics` text with the Python `prometheus_client` OpenMetrics parser when it is
/// available (`.ci/run` installs it): `(name, labels, value)` of every sample.
fn parse_metrics(text: &str) -> Option<Vec<(String, serde_json::Value, f64)>> {
    let python = test_python()?;
    let script = "import sys, json\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        out = []\nfor f in text_string_to_metric_families(sys.stdin.read()):\n    for s in f.samples:\n        out.append([s.name, s.labels, s.value])\nprint(json.dumps(out))";
    let mut child = Command::new(python)
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named 'prometheus_client'") {
            skip("prometheus_client is not installed; /metrics checked by hand only");
            return None;
        }
        panic!("the Prometheus parser refused /metrics: {err}\n{text}");
    }
    let v: Vec<(String, serde_json::Value, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    Some(v)
}

/// A sample's value, from parsed samples or (without Python) from the text.
fn sample(
    text: &str,
    parsed: &Option<Vec<(String, serde_json::Value, f64)>>,
    name: &str,
    source: &str,
) -> f64 {
    match parsed {
        Some(samples) => samples
            .iter()
            .find(|(n, l, _)| {
                n == name && l["source"] == source && l.get("outcome").is_none_or(|o| o == "ok")
            })
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("{name}{{source={source}}} missing")),
        None => text
            .lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{source=\"{source}\""))
                    && (!l.contains("outcome=") || l.contains("outcome=\"ok\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}{{source={source}}} missing")),
    }
}

#[test]
fn a_daemon_on_a_one_second_schedule_exports_everything_and_its_metrics_match_the_lake() {
    let env = Env::new(VoicegainSim::new(90, 0).with_ratios(0.0, 0.01), 200);
    env.sim.voicegain().add_calls(900);
    with_sessions(&env, 200);
    env.write_config(
        &config(
            &env,
            "* * * * * *",
            200,
            true,
            "[server]\nlisten = \"127.0.0.1:0\"",
        ),
        100_000,
    );
    let mut d = Daemon::start(&env, &[], true);
    let want_vg = env.sim.voicegain().expected_exported().len();
    assert!(
        wait_until(30, || lake_count(&env, "vg") == want_vg
            && lake_count(&env, "vn") == 200),
        "not exported:\n{}",
        d.log_text()
    );
    // New calls are picked up by the next ticks.
    env.sim.voicegain().add_calls(100);
    let want_vg = env.sim.voicegain().expected_exported().len();
    assert!(wait_until(20, || lake_count(&env, "vg") == want_vg));
    assert_lake_matches_truth(&env);
    // Let a run that may be committing finish, then read health and metrics.
    assert!(wait_until(10, || {
        let (_, body) = get(&env, &d.url("/healthz"));
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        h["sources"]["vg"]["running"] == false && h["sources"]["vn"]["running"] == false
    }));
    let (status, body) = get(&env, &d.url("/healthz"));
    assert_eq!(status, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "ok");
    for s in ["vg", "vn"] {
        assert_eq!(h["sources"][s]["last_outcome"], "ok", "{body}");
        assert_eq!(h["sources"][s]["consecutive_failures"], 0);
        assert!(h["sources"][s]["next_tick"].is_string());
    }
    let (status, text) = get(&env, &d.url("/metrics"));
    assert_eq!(status, 200);
    let parsed = parse_metrics(&text);
    for s in ["vg", "vn"] {
        let rows = sample(&text, &parsed, "callsync_rows_exported_total", s);
        assert_eq!(
            rows as usize,
            lake_count(&env, s),
            "rows_exported_total of {s}\n{text}"
        );
        let last = sample(
            &text,
            &parsed,
            "callsync_source_last_success_timestamp_seconds",
            s,
        );
        let now = chrono::Utc::now().timestamp() as f64;
        assert!(last > now - 60.0 && last <= now + 1.0, "{last}");
        let runs = sample(&text, &parsed, "callsync_runs_total", s);
        assert!(runs >= 1.0, "runs {runs} of {s}:\n{text}");
    }
    let rejects = sample(&text, &parsed, "callsync_rejects_total", "vg");
    assert_eq!(rejects as usize, rejects_of(&env));
    assert!(
        text.contains("callsync_source_cursor_lag_seconds{source=\"vn\"}"),
        "{text}"
    );
    assert!(text.contains("callsync_build_info{version="), "{text}");
    assert!(text.contains("callsync_http_requests_total{source=\"vg\",status_class=\"2xx\"}"));
    d.signal(libc::SIGTERM);
    let (code, took) = d.wait_exit(30);
    assert_eq!(code, Some(0), "{}", d.log_text());
    assert!(took < Duration::from_secs(30));
    // Every log line about a run carries its source, and each run has a summary line.
    let log = d.log_text();
    assert!(
        log.lines()
            .filter(|l| l.contains("Run finished."))
            .all(|l| l.contains("source="))
    );
    assert!(
        log.contains("cursor_before=") && log.contains("duration_ms="),
        "{log}"
    );
}

fn rejects_of(env: &Env) -> usize {
    rejects(&env.warehouse()).len()
}

#[test]
fn a_source_slower_than_its_schedule_never_runs_twice_at_once() {
    let env = Env::new(VoicegainSim::new(91, 0), 20);
    env.sim.voicegain().add_calls(400);
    env.sim.set_faults(FaultPlan::every(
        1,
        vec![FaultKind::Slow(Duration::from_millis(150))],
    ));
    env.write_config(
        &config(
            &env,
            "* * * * * *",
            20,
            false,
            "[server]\nlisten = \"127.0.0.1:0\"",
        ),
        40,
    );
    let d = Daemon::start(&env, &[], true);
    // 20 pages of 150 ms: a run takes about 3 s, its schedule is every second.
    let want = env.sim.voicegain().expected_exported().len();
    assert!(
        wait_until(40, || lake_count(&env, "vg") == want),
        "{}",
        d.log_text()
    );
    assert_eq!(
        env.sim.max_in_flight("voicegain"),
        1,
        "two runs of one source overlapped"
    );
    let (_, text) = get(&env, &d.url("/metrics"));
    let skipped = text
        .lines()
        .find(|l| l.starts_with("callsync_runs_total{source=\"vg\",outcome=\"skipped\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(
        skipped >= 1.0,
        "ticks during a run are skipped and counted:\n{text}"
    );
    assert_lake_matches_truth(&env);
}

#[test]
fn systemd_gets_ready_watchdog_at_its_rate_and_stopping() {
    let env = Env::new(VoicegainSim::new(92, 0), 100);
    env.sim.voicegain().add_calls(50);
    env.write_config(&config(&env, "0 0 0 1 1 *", 100, false, ""), 100_000);
    let sock_path = env.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut d = Daemon::start(
        &env,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "300000"),
        ],
        false,
    );
    let mut msgs: Vec<(Instant, String)> = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        if let Ok(n) = sock.recv(&mut buf) {
            msgs.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    assert!(
        msgs.first().is_some_and(|m| m.1.contains("READY=1")),
        "{msgs:?}"
    );
    let pings: Vec<Instant> = msgs
        .iter()
        .filter(|m| m.1.contains("WATCHDOG=1"))
        .map(|m| m.0)
        .collect();
    // WATCHDOG_USEC / 2 = 150 ms: about 20 pings in 3 s.
    assert!(
        (12..=26).contains(&pings.len()),
        "{} pings: {msgs:?}",
        pings.len()
    );
    let worst = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        worst < Duration::from_millis(300),
        "a gap of {worst:?} between pings"
    );
    // The run at start-up exported the calls.
    assert!(wait_until(10, || lake_count(&env, "vg") == 50));
    d.signal(libc::SIGTERM);
    let mut stopping = false;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) && !stopping {
        if let Ok(n) = sock.recv(&mut buf) {
            stopping = String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
        }
    }
    assert!(stopping, "no STOPPING=1");
    assert_eq!(d.wait_exit(10).0, Some(0));
}

/// A slow export: 3,000 calls in pages of 20, each request 40 ms late.
pub(crate) fn slow_env(seed: u64) -> Env {
    let env = Env::new(VoicegainSim::new(seed, 0).with_ratios(0.0, 0.005), 20);
    env.sim.voicegain().add_calls(3000);
    env.sim.set_faults(FaultPlan::every(
        1,
        vec![FaultKind::Slow(Duration::from_millis(40))],
    ));
    env.write_config(
        &config(
            &env,
            "0 0 0 1 1 *",
            20,
            false,
            "[daemon]\nshutdown_grace_secs = 10",
        ),
        200,
    );
    env
}

#[test]
fn sigterm_during_a_slow_export_drains_and_exits_0_and_the_next_sync_is_exact() {
    let env = slow_env(93);
    let mut d = Daemon::start(&env, &[], false);
    assert!(
        wait_until(20, || lake_count(&env, "vg") >= 400),
        "{}",
        d.log_text()
    );
    d.signal(libc::SIGTERM);
    let (code, took) = d.wait_exit(15);
    assert_eq!(code, Some(0), "{}", d.log_text());
    assert!(took < Duration::from_secs(10), "drain took {took:?}");
    eprintln!("drain during a slow export: exit 0 after {took:?}");
    let rows = env.lake();
    unique_ids(&rows);
    assert!(rows.len() < env.sim.voicegain().expected_exported().len());
    env.sim.set_faults(FaultPlan::default());
    env.sync_ok();
    assert_lake_matches_truth(&env);
}

#[test]
fn a_second_signal_during_a_slow_drain_exits_at_once_losing_nothing_committed() {
    let env = slow_env(94);
    // Catch the drain in a slow commit: after a first commit, the next page is staged, and a
    // SIGTERM then has pages to commit. (Should the signal land in the instant between a
    // commit and the next page, the drain has nothing to do and ends at once: try again.)
    let (code, took) = loop {
        let mut d = Daemon::start(&env, &[("CALLSYNC_SLOW_COMMIT_MS", "3000")], false);
        let before = lake_count(&env, "vg");
        assert!(
            wait_until(30, || lake_count(&env, "vg") >= before + 200),
            "{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
        d.signal(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(300));
        if d.child.try_wait().unwrap().is_some() {
            continue;
        }
        d.signal(libc::SIGTERM);
        break d.wait_exit(5);
    };
    assert_ne!(code, Some(0));
    assert!(
        took < Duration::from_secs(1),
        "the second signal took {took:?}"
    );
    // What a reader sees is whole and committed.
    let rows = env.lake();
    unique_ids(&rows);
    if let Some((n, distinct)) = duckdb_counts(&env.warehouse()) {
        assert_eq!((n as usize, distinct as usize), (rows.len(), rows.len()));
    }
    env.sim.set_faults(FaultPlan::default());
    env.sync_ok();
    assert_lake_matches_truth(&env);
}

#[test]
fn sighup_adds_a_new_source_and_a_broken_config_keeps_the_old_one() {
    let env = Env::new(VoicegainSim::new(95, 0), 100);
    env.sim.voicegain().add_calls(300);
    with_sessions(&env, 120);
    let head = format!(
        "[warehouse]\nroot = \"{}\"\n[state]\npath = \"{}\"\n",
        env.warehouse().display(),
        env.state_path().display()
    );
    std::fs::write(
        &env.config,
        format!(
            "{head}{}",
            config(
                &env,
                "*/1 * * * * *",
                100,
                false,
                "[server]\nlisten = \"127.0.0.1:0\""
            )
        ),
    )
    .unwrap();
    let d = Daemon::start(&env, &[], true);
    assert!(wait_until(20, || lake_count(&env, "vg") == 300));
    assert_eq!(lake_count(&env, "vn"), 0);
    std::fs::write(
        &env.config,
        format!(
            "{head}{}",
            config(
                &env,
                "*/1 * * * * *",
                100,
                true,
                "[server]\nlisten = \"127.0.0.1:0\""
            )
        ),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    assert!(
        wait_until(20, || lake_count(&env, "vn") == 120),
        "{}",
        d.log_text()
    );
    std::fs::write(
        &env.config,
        format!("{head}[sources.vg]\nkind = \"nope\"\n"),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    assert!(wait_until(10, || d
        .log_text()
        .contains("Config not reloaded")));
    assert!(
        d.log_text().contains("unknown kind"),
        "every problem is logged"
    );
    // The old config keeps running.
    env.sim.voicegain().add_calls(50);
    assert!(
        wait_until(20, || lake_count(&env, "vg") == 350),
        "{}",
        d.log_text()
    );
    let (status, _) = get(&env, &d.url("/healthz"));
    assert_eq!(status, 200);
}

#[test]
fn an_idle_daemon_uses_little_cpu_and_memory() {
    let env = Env::new(VoicegainSim::new(96, 0), 100);
    env.write_config(
        &config(
            &env,
            "0 0 0 1 1 *",
            100,
            false,
            "[server]\nlisten = \"127.0.0.1:0\"",
        )
        .replace(
            "kind = \"voicegain\"",
            "kind = \"voicegain\"\nrun_on_start = false",
        ),
        100_000,
    );
    let d = Daemon::start(&env, &[], true);
    let pid = d.child.id();
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 (11 and 12 after the name), in clock ticks.
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    };
    std::thread::sleep(Duration::from_secs(1));
    let c0 = cpu();
    std::thread::sleep(Duration::from_secs(20));
    let used = cpu() - c0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!(
        "idle daemon: {used:.3} s CPU in 20 s, {} MB peak RSS",
        hwm_kb / 1024
    );
    assert!(used <= 0.1, "idle CPU {used} s in 20 s");
    assert!(hwm_kb <= 32 * 1024, "peak RSS {hwm_kb} kB");
    let (status, _) = get(&env, &d.url("/healthz"));
    assert_eq!(status, 200);
}

#[test]
fn check_passes_with_good_credentials_and_names_the_source_and_status_with_a_bad_one() {
    let env = Env::new(VoicegainSim::new(97, 0), 100);
    with_sessions(&env, 10);
    env.write_config(&config(&env, "0 */15 * * * *", 100, true, ""), 100_000);
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("vg: ok") && text(&out).contains("vn: ok"),
        "{}",
        text(&out)
    );
    assert!(env.lake().is_empty(), "check exports nothing");
    std::fs::write(env.dir.path().join("vn.token"), "wrong-key-7f3a").unwrap();
    let out = env.run(&["check"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("vg: ok"), "{t}");
    assert!(
        t.contains("vn: FAILED: HTTP 401: the credential was rejected"),
        "{t}"
    );
    assert!(!t.contains("wrong-key-7f3a"), "{t}");
}

#[test]
fn json_logs_are_json_on_every_line_of_stdout_and_stderr_and_carry_the_source() {
    let env = Env::new(VoicegainSim::new(98, 0).with_ratios(0.0, 0.02), 100);
    env.sim.voicegain().add_calls(300);
    let out = env
        .command(&["sync"])
        .env("CALLSYNC_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // stdout too: the per-run summary is a JSON event like the rest.
    let summaries = every_line_json(&stdout, "sync stdout");
    assert!(
        summaries.iter().any(|v| v["fields"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("vg:")),
        "{stdout}"
    );
    let mut runs = 0;
    for v in every_line_json(&stderr, "sync stderr") {
        let line = v.to_string();
        if v["fields"]["message"] == "Run finished." {
            runs += 1;
            assert_eq!(v["fields"]["source"], "vg", "{line}");
            for k in [
                "rows",
                "rejects",
                "skipped",
                "pages",
                "duration_ms",
                "cursor_before",
                "cursor_after",
            ] {
                assert!(v["fields"].get(k).is_some(), "{k} missing: {line}");
            }
        }
    }
    assert_eq!(runs, 1, "{stderr}");

    // The daemon: the listen address, its logs, a run, a drain: every line of both streams.
    env.write_config(
        &config(
            &env,
            "0 0 0 1 1 *",
            100,
            false,
            "[server]\nlisten = \"127.0.0.1:0\"",
        ),
        100_000,
    );
    env.sim.voicegain().add_calls(50);
    let child = env
        .command(&["run"])
        .env("CALLSYNC_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let want = env.sim.voicegain().expected_exported().len();
    assert!(wait_until(20, || lake_count(&env, "vg") == want));
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = every_line_json(&String::from_utf8_lossy(&out.stdout), "run stdout");
    assert!(
        stdout.iter().any(|v| v["fields"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("listening on http://127.0.0.1:")),
        "{stdout:?}"
    );
    let stderr = every_line_json(&String::from_utf8_lossy(&out.stderr), "run stderr");
    assert!(stderr.len() >= 5, "{stderr:?}");
    // A config error, too, is a JSON line.
    std::fs::write(&env.config, "[warehouse]\nroot = 5\n").unwrap();
    let out = env
        .command(&["sync"])
        .env("CALLSYNC_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = every_line_json(&String::from_utf8_lossy(&out.stderr), "config error");
    assert!(
        err[0]["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("warehouse"),
        "{err:?}"
    );
}

/// Parses every line of `text` as JSON (a log shipper's view), failing on the first that is not.
fn every_line_json(text: &str, what: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{what}: not a JSON line ({e}): {line}\n{text}"))
        })
        .collect()
}

/// The syscalls of a systemd filter group, nested groups expanded.
fn syscall_group(group: &str, out: &mut std::collections::BTreeSet<String>) {
    let o = Command::new("systemd-analyze")
        .args(["syscall-filter", group])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&o.stdout).lines().skip(1) {
        let w = line.trim();
        if w.is_empty() || w.starts_with('#') {
            continue;
        }
        if w.starts_with('@') {
            syscall_group(w, out);
        } else {
            out.insert(w.to_string());
        }
    }
}

#[test]
fn the_daemon_makes_only_syscalls_its_systemd_unit_allows() {
    if !have_tool("strace") || !have_tool("systemd-analyze") {
        return;
    }
    // What the unit allows: its SystemCallFilter= lines (allow list, then ~deny lists).
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/callsync.service"
    ))
    .unwrap();
    // In order, as systemd reads them: an allow list, then `~` lines remove, plain lines add.
    let mut allowed = std::collections::BTreeSet::new();
    for line in unit.lines() {
        let Some(v) = line.strip_prefix("SystemCallFilter=") else {
            continue;
        };
        let (deny, list) = match v.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, v),
        };
        let mut set = std::collections::BTreeSet::new();
        for item in list.split_whitespace() {
            if item.starts_with('@') {
                syscall_group(item, &mut set);
            } else {
                set.insert(item.to_string());
            }
        }
        if deny {
            allowed.retain(|s| !set.contains(s));
        } else {
            allowed.extend(set);
        }
    }
    assert!(allowed.len() > 100, "{allowed:?}");
    // A daemon that exports through its server, under strace.
    let env = Env::new(VoicegainSim::new(99, 0), 100);
    env.sim.voicegain().add_calls(500);
    env.write_config(
        &config(
            &env,
            "* * * * * *",
            100,
            false,
            "[server]\nlisten = \"127.0.0.1:0\"",
        ),
        100_000,
    );
    let trace = env.dir.path().join("strace.txt");
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_callsync"))
        .arg("--config")
        .arg(&env.config)
        .arg("run")
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
    assert!(wait_until(30, || lake_count(&env, "vg") == 500));
    let (status, _) = get(&env, &format!("http://{addr}/healthz"));
    assert_eq!(status, 200);
    let _ = get(&env, &format!("http://{addr}/metrics"));
    // The daemon, not strace: its pid is the child's child.
    std::thread::sleep(Duration::from_millis(500));
    let pids =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .unwrap_or_default();
    for pid in pids.split_whitespace() {
        // SAFETY: signalling a process we started.
        unsafe { libc::kill(pid.parse().unwrap(), libc::SIGTERM) };
    }
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut used = std::collections::BTreeSet::new();
    for l in text.lines() {
        let rest = l.split_once(' ').map_or(l, |(_, r)| r).trim_start();
        if let Some(name) = rest.split('(').next()
            && !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            used.insert(name.to_string());
        }
    }
    assert!(
        used.contains("epoll_wait") || used.contains("epoll_pwait"),
        "{used:?}"
    );
    let outside: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(
        outside.is_empty(),
        "syscalls the unit's SystemCallFilter= refuses: {outside:?}"
    );
}

#[test]
fn the_systemd_unit_is_hardened_to_an_exposure_of_2_or_less() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/config/callsync.service");
    if !have_tool("systemd-analyze") {
        return;
    }
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=true", unit])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{out}{}", String::from_utf8_lossy(&o.stderr)));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(score <= 2.0, "{line}");
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&verify.stderr);
    assert!(
        !err.contains("Unknown key") && !err.contains("Unknown section"),
        "{err}"
    );
}

#[test]
fn under_the_units_umask_the_lake_is_group_readable_and_the_state_private() {
    use std::os::unix::fs::PermissionsExt;
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/callsync.service"
    ))
    .unwrap();
    let umask = unit
        .lines()
        .find_map(|l| l.strip_prefix("UMask="))
        .expect("the unit sets UMask=");
    let umask = u32::from_str_radix(umask.trim(), 8).unwrap();
    assert_eq!(
        umask & 0o040,
        0,
        "the unit's umask hides the lake from its group"
    );
    assert!(
        !unit.contains("DynamicUser=yes"),
        "a DynamicUser's state lives under 0700 /var/lib/private"
    );
    assert!(unit.contains("StateDirectoryMode=0750"));
    // The daemon's own files under that umask.
    let env = Env::new(VoicegainSim::new(71, 0).with_ratios(0.0, 0.05), 100);
    env.sim.voicegain().add_calls(200);
    let out = env
        .command(&["sync"])
        .pre_exec_umask(umask)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let files = files_with_suffix(&env.warehouse(), "");
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().ends_with(".parquet"))
    );
    for f in &files {
        assert_eq!(
            mode(f) & 0o040,
            0o040,
            "{} is not group-readable",
            f.display()
        );
        assert_eq!(mode(f) & 0o007, 0, "{} is readable by others", f.display());
        let dir = f.parent().unwrap();
        assert_eq!(
            mode(dir) & 0o050,
            0o050,
            "{} is not group-listable",
            dir.display()
        );
    }
    let state_dir = env.state_path().parent().unwrap().to_path_buf();
    assert_eq!(mode(&state_dir), 0o700, "the state directory is private");
    // One spelling of the credential paths: every one the docs use is loaded by the unit.
    let loaded: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .filter_map(|l| l.split(':').next())
        .collect();
    for doc in ["README.md", "config/callsync.toml"] {
        let text =
            std::fs::read_to_string(format!("{}/{doc}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(
            !text.contains("/run/credentials/callsync/"),
            "{doc} spells the path another way"
        );
        for (i, _) in text.match_indices("/run/credentials/callsync.service/") {
            let name: String = text[i + "/run/credentials/callsync.service/".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if name.is_empty() || name == "NAME" {
                continue;
            }
            assert!(
                loaded.contains(&name.as_str()),
                "{doc} uses credential {name}, which the unit does not load"
            );
        }
    }
}

/// Runs a command under a umask, as systemd's `UMask=` does.
trait PreExecUmask {
    fn pre_exec_umask(&mut self, umask: u32) -> &mut Self;
}

impl PreExecUmask for Command {
    fn pre_exec_umask(&mut self, umask: u32) -> &mut Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask is async-signal-safe and touches no memory.
        unsafe {
            self.pre_exec(move || {
                libc::umask(umask as libc::mode_t);
                Ok(())
            })
        }
    }
}

#[test]
fn a_reload_waits_for_a_busy_state_off_the_scheduler_and_the_watchdog_keeps_hearing() {
    let env = Env::new(VoicegainSim::new(93, 0), 100);
    let port = crate::exotel::free_port();
    crate::exotel::analyze_config(&env, port, "");
    let sock_path = env.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut d = Daemon::start(
        &env,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
        false,
    );
    let mut buf = [0u8; 4096];
    let mut recv = |until: Instant, pings: &mut Vec<Instant>| {
        while Instant::now() < until {
            if let Ok(n) = sock.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1")
            {
                pings.push(Instant::now());
            }
        }
    };
    let mut pings = Vec::new();
    recv(Instant::now() + Duration::from_secs(2), &mut pings);
    assert!(
        !pings.is_empty(),
        "no watchdog ping before the reload: {}",
        d.log_text()
    );
    // The reload adds a push source: registering it needs the state's write lock, which
    // another process holds for 40 s.
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    let table = &cfg[cfg.find("[sources.insights]").unwrap()..];
    std::fs::write(
        &env.config,
        format!(
            "{cfg}{}",
            table
                .replace("[sources.insights]", "[sources.insights2]")
                .replace("[sources.insights.http]", "[sources.insights2.http]")
        ),
    )
    .unwrap();
    let holder = rusqlite::Connection::open(env.state_path()).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let locked_at = Instant::now();
    d.signal(libc::SIGHUP);
    let mut held = Vec::new();
    recv(locked_at + Duration::from_secs(40), &mut held);
    holder.execute_batch("COMMIT").unwrap();
    let released = Instant::now();
    let gaps: Vec<Duration> = held.windows(2).map(|w| w[1] - w[0]).collect();
    let worst = gaps.iter().max().copied().unwrap_or(Duration::MAX);
    eprintln!(
        "reload under a held lock: {} watchdog pings in 40 s, the longest gap {worst:?}",
        held.len()
    );
    assert!(
        held.len() >= 60,
        "{} pings while the lock was held",
        held.len()
    );
    assert!(
        worst < Duration::from_secs(1),
        "a gap of {worst:?} between pings"
    );
    let log = d.log_text();
    assert!(log.contains("Config reload waits for the state"), "{log}");
    assert!(
        !log.contains("Config reloaded."),
        "applied before the lock was released: {log}"
    );
    // Released: the reload finishes and the new source is registered.
    assert!(
        wait_until(20, || d.log_text().contains("Config reloaded.")),
        "{}",
        d.log_text()
    );
    eprintln!("reload applied {:?} after the release", released.elapsed());
    let db = rusqlite::Connection::open(env.state_path()).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM sources WHERE name = 'insights2'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(20).0, Some(0), "{}", d.log_text());
}
