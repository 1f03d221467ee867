//! Promise: Exotel monitor-leg callbacks pushed to the daemon land in `monitor_legs` exactly
//! once, with UTC times, whether sent as JSON or as a form, redelivered, or acknowledged just
//! before a kill -9; the intake refuses what it must (404, 413, 400 kept as a reject, 503 while
//! draining) and never logs its token.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::time::Duration;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use callsync::simulator::VoicegainSim;
use callsync::simulator::exotel::{MonitorLeg, deliver};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::daemon::{Daemon, get};
use crate::helpers::*;

pub(crate) const TOKEN: &str = "hook-3f9c0e1a7b2d";
const IST: i64 = 5 * 3600 + 1800;

/// A daemon with one `exotel_monitor` source `legs` (flushed every second), a server, and
/// optionally more config.
fn monitor_env(extra: &str) -> Env {
    monitor_env_flushing(1, extra)
}

/// As `monitor_env`, with the inbox flushed once its oldest delivery is `flush_secs` old.
pub(crate) fn monitor_env_flushing(flush_secs: u64, extra: &str) -> Env {
    let env = Env::new(VoicegainSim::new(1, 0), 100);
    let token = token_file(&env, "legs", TOKEN);
    std::fs::write(
        &env.config,
        format!(
            "[warehouse]\nroot = \"{}\"\n[state]\npath = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\n\
             [sources.legs]\nkind = \"exotel_monitor\"\nwebhook_token_file = \"{}\"\nflush_interval_secs = {flush_secs}\n{extra}",
            env.warehouse().display(),
            env.state_path().display(),
            token.display()
        ),
    )
    .unwrap();
    env
}

/// One monitor_legs row as read back: (leg_sid, call_sid, status, start_time µs, end_time µs,
/// duration, custom_field, event_type).
type LegRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

pub(crate) fn read_legs(env: &Env) -> BTreeMap<String, LegRow> {
    let mut out = BTreeMap::new();
    for path in files_with_suffix(&env.warehouse().join("monitor_legs"), ".parquet") {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
            let t = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_primitive::<TimestampMicrosecondType>()
                    .clone()
            };
            let (key, leg, call, status, cf, ev) = (
                s("delivery_key"),
                s("leg_sid"),
                s("call_sid"),
                s("status"),
                s("custom_field"),
                s("event_type"),
            );
            let (st, en) = (t("start_time"), t("end_time"));
            let dur = b
                .column_by_name("on_call_duration_s")
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone();
            let opt = |a: &arrow_array::StringArray, i: usize| {
                (!a.is_null(i)).then(|| a.value(i).to_string())
            };
            for i in 0..b.num_rows() {
                let row = (
                    leg.value(i).to_string(),
                    opt(&call, i),
                    opt(&status, i),
                    (!st.is_null(i)).then(|| st.value(i)),
                    (!en.is_null(i)).then(|| en.value(i)),
                    (!dur.is_null(i)).then(|| dur.value(i)),
                    opt(&cf, i),
                    opt(&ev, i),
                );
                let k = key.value(i).to_string();
                assert!(
                    out.insert(k.clone(), row).is_none(),
                    "{k} is in the lake twice"
                );
            }
        }
    }
    out
}

fn expected(l: &MonitorLeg) -> LegRow {
    (
        l.leg_sid.clone(),
        Some(l.call_sid.clone()),
        Some(l.status.clone()),
        Some(l.start_utc_us),
        Some(l.start_utc_us + l.on_call_duration as i64 * 1_000_000),
        Some(l.on_call_duration as i64),
        Some(l.custom_field.clone()),
        Some(l.event_type.clone()),
    )
}

fn legs(n: usize, seed: u64) -> Vec<MonitorLeg> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|i| {
            let ago = 3600 + rng.i64(0..86_400);
            MonitorLeg::random(&mut rng, i as u64, ago, IST)
        })
        .collect()
}

/// Posts every leg (JSON for even ones, form for odd), `concurrency` at a time; the statuses.
fn post_all(env: &Env, url: &str, legs: &[MonitorLeg], concurrency: usize) -> Vec<Option<u16>> {
    use futures_util::StreamExt;
    env.rt.block_on(async {
        let client = reqwest::Client::new();
        futures_util::stream::iter(legs.iter().enumerate())
            .map(|(i, l)| {
                let client = client.clone();
                async move { deliver(&client, url, l, i % 2 == 0).await }
            })
            .buffered(concurrency)
            .collect()
            .await
    })
}

#[test]
fn monitor_leg_callbacks_json_and_form_land_once_with_utc_times() {
    let env = monitor_env("");
    let d = Daemon::start(&env, &[("RUST_LOG", "trace")], true);
    let url = d.url(&format!("/webhooks/legs/{TOKEN}"));
    let sent = legs(300, 1);
    let statuses = post_all(&env, &url, &sent, 16);
    assert!(statuses.iter().all(|s| *s == Some(200)), "{statuses:?}");
    // Exotel retries: some callbacks come twice (as the other encoding, too).
    let again = post_all(&env, &url, &sent[..40], 8);
    assert!(again.iter().all(|s| *s == Some(200)));
    assert!(
        wait_until(20, || read_legs(&env).len() == 300),
        "{}",
        d.log_text()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let got = read_legs(&env);
    let want: BTreeMap<String, LegRow> = sent
        .iter()
        .map(|l| (format!("{}:terminal", l.leg_sid), expected(l)))
        .collect();
    assert_eq!(got, want);
    // Partitioned by the UTC day of the start.
    for p in files_with_suffix(&env.warehouse().join("monitor_legs"), ".parquet") {
        assert!(
            p.to_string_lossy()
                .contains("monitor_legs/source=legs/date="),
            "{}",
            p.display()
        );
    }
    let (_, metrics) = get(&env, &d.url("/metrics"));
    assert!(
        metrics
            .contains("callsync_webhook_requests_total{source=\"legs\",outcome=\"accepted\"} 300"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("callsync_webhook_requests_total{source=\"legs\",outcome=\"duplicate\"} 40"),
        "{metrics}"
    );
    assert!(
        metrics.contains("callsync_inbox_depth{source=\"legs\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("callsync_rows_exported_total{source=\"legs\"} 300"),
        "{metrics}"
    );
    let log = d.log_text();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log is at trace level"
    );
    assert!(!log.contains(TOKEN), "the webhook token is in the log");
}

#[test]
fn the_intake_refuses_wrong_tokens_unknown_sources_big_and_garbage_bodies_and_keeps_the_garbage() {
    let env = monitor_env("");
    let d = Daemon::start(&env, &[("RUST_LOG", "trace")], true);
    let post = |path: &str, ct: &str, body: Vec<u8>| -> u16 {
        env.rt.block_on(async {
            reqwest::Client::new()
                .post(d.url(path))
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let leg = &legs(1, 2)[0];
    assert_eq!(
        post(
            "/webhooks/legs/wrong-token",
            "application/json",
            leg.json().into()
        ),
        404
    );
    assert_eq!(
        post(
            &format!("/webhooks/nosuch/{TOKEN}"),
            "application/json",
            leg.json().into()
        ),
        404
    );
    let big = vec![b'a'; 2 << 20];
    assert_eq!(
        post(&format!("/webhooks/legs/{TOKEN}"), "application/json", big),
        413
    );
    assert_eq!(
        post(
            &format!("/webhooks/legs/{TOKEN}"),
            "application/json",
            b"{not json".to_vec()
        ),
        400
    );
    assert_eq!(
        post(
            &format!("/webhooks/legs/{TOKEN}"),
            "application/json",
            leg.json().into()
        ),
        200
    );
    // The garbage goes to the rejects area with its reason, through the commit path.
    assert!(
        wait_until(10, || !rejects(&env.warehouse()).is_empty()),
        "{}",
        d.log_text()
    );
    let r = rejects(&env.warehouse());
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["source"], "legs");
    assert!(
        r[0]["error"].as_str().unwrap().contains("not JSON"),
        "{r:?}"
    );
    assert_eq!(r[0]["raw"], "{not json");
    assert!(wait_until(10, || read_legs(&env).len() == 1));
    let (_, metrics) = get(&env, &d.url("/metrics"));
    for want in [
        "callsync_webhook_not_found_total 1",
        "outcome=\"wrong_token\"} 1",
        "outcome=\"too_large\"} 1",
        "outcome=\"invalid\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} missing:\n{metrics}");
    }
    assert!(!d.log_text().contains(TOKEN));
    // Rejected once, also across a repair that reads the whole inbox again.
    let mut d = d;
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(20).0, Some(0));
    let out = env.run(&["repair", "--source", "legs", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = env.run(&["sync", "--source", "legs"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        rejects(&env.warehouse()).len(),
        1,
        "the garbage was rejected again"
    );
    assert_eq!(read_legs(&env).len(), 1);
}

#[test]
fn webhooks_get_503_while_the_daemon_drains() {
    // A slow commit of a pull source keeps the drain going for a few seconds.
    let env = monitor_env("");
    env.sim.voicegain().add_calls(100);
    let vg_token = token_file(&env, "vg", &env.sim.voicegain().token.clone());
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&vg_table(
        "vg",
        &env.sim.voicegain_base_url(),
        &format!("token_file = \"{}\"", vg_token.display()),
        10,
    ));
    std::fs::write(&env.config, text).unwrap();
    let mut d = Daemon::start(&env, &[("CALLSYNC_SLOW_COMMIT_MS", "2500")], true);
    let url = d.url(&format!("/webhooks/legs/{TOKEN}"));
    assert!(wait_until(10, || d
        .log_text()
        .contains("Run started. source=vg")));
    // Its pages are read at once; its (slow) commit is then under way, and the drain waits.
    std::thread::sleep(Duration::from_millis(300));
    d.signal(libc::SIGTERM);
    assert!(wait_until(5, || d.log_text().contains("Draining")));
    let leg = &legs(1, 3)[0];
    assert_eq!(
        post_all(&env, &url, std::slice::from_ref(leg), 1),
        vec![Some(503)]
    );
    let (status, _) = get(&env, &d.url("/healthz"));
    assert_eq!(status, 503);
    assert_eq!(d.wait_exit(20).0, Some(0), "{}", d.log_text());
}

#[test]
fn a_kill_9_right_after_acknowledging_a_burst_loses_and_doubles_nothing() {
    let env = monitor_env("");
    let mut d = Daemon::start(&env, &[], true);
    let url = d.url(&format!("/webhooks/legs/{TOKEN}"));
    let sent = legs(600, 4);
    // A burst from 32 concurrent senders; the daemon is killed the moment the last is answered.
    let statuses = post_all(&env, &url, &sent, 32);
    d.child.kill().unwrap();
    let _ = d.child.wait();
    let acked: BTreeSet<String> = sent
        .iter()
        .zip(&statuses)
        .filter(|(_, s)| **s == Some(200))
        .map(|(l, _)| format!("{}:terminal", l.leg_sid))
        .collect();
    assert_eq!(acked.len(), 600, "{statuses:?}");
    // Restarted, it exports every acknowledged delivery from its inbox, once.
    let d2 = Daemon::start(&env, &[], true);
    assert!(
        wait_until(30, || read_legs(&env).len() >= acked.len()),
        "{}",
        d2.log_text()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let got: BTreeSet<String> = read_legs(&env).into_keys().collect();
    assert_eq!(got, acked);
    let legs = source_status(&env, "legs");
    assert_eq!(legs["inbox"]["depth"], 0, "{legs}");
    assert_eq!(legs["rows_total"], 600, "{legs}");
    let v = env.run(&["verify"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
}

/// Writes a config with one `exotel_analyze` source `insights` against the simulator, its
/// callback on `port`, plus `extra` keys of that source.
pub(crate) fn analyze_config(env: &Env, port: u16, extra: &str) {
    let (key, tok) = {
        let e = env.sim.exotel();
        (e.api_key.clone(), e.api_token.clone())
    };
    let key = token_file(env, "exo-key", &key);
    let tok = token_file(env, "exo-token", &tok);
    let hook = token_file(env, "exo-hook", TOKEN);
    std::fs::write(
        &env.config,
        format!(
            "[warehouse]\nroot = \"{}\"\n[state]\npath = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
             [sources.insights]\nkind = \"exotel_analyze\"\naccount_sid = \"exotel30m\"\nbase_url = \"{}\"\n\
             api_key_file = \"{}\"\napi_token_file = \"{}\"\nwebhook_token_file = \"{}\"\n\
             callback_base_url = \"http://127.0.0.1:{port}\"\n\
             insight_tasks = [\"summarization\", \"categorise\", \"sentiment\", \"transcript\"]\n\
             categories = [\"sales\", \"support\"]\nmax_submissions = 3\n{extra}\
             [sources.insights.http]\nmax_attempts = 3\nbackoff_initial_ms = 10\nbackoff_max_ms = 50\n",
            env.warehouse().display(),
            env.state_path().display(),
            env.sim.exotel_base_url(),
            key.display(),
            tok.display(),
            hook.display()
        ),
    )
    .unwrap();
}

/// A simulator and a config with the `exotel_analyze` source `insights` (`extra` keys added),
/// its callback on a free port; returns the env and the port.
pub(crate) fn analysis_env(extra: &str) -> (Env, u16) {
    let env = Env::new(VoicegainSim::new(1, 0), 100);
    let port = free_port();
    analyze_config(&env, port, extra);
    (env, port)
}

/// A free loopback port (the daemon's callback URL must be known before it starts).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (summary, sentiment_label, category, transcript (role, text)) of a call.
type Insights = (
    Option<String>,
    Option<String>,
    Option<String>,
    Vec<(String, String)>,
);

/// The insights of every call of `source`, asserting none is there twice.
fn read_insights(env: &Env, source: &str) -> BTreeMap<String, Insights> {
    let mut out = BTreeMap::new();
    for path in files_with_suffix(
        &env.warehouse().join(format!("calls/source={source}")),
        ".parquet",
    ) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
            let (id, sum, sen, cat) = (
                s("call_id"),
                s("summary"),
                s("sentiment_label"),
                s("category"),
            );
            let tr = b
                .column_by_name("transcript")
                .unwrap()
                .as_list::<i32>()
                .clone();
            let opt = |a: &arrow_array::StringArray, i: usize| {
                (!a.is_null(i)).then(|| a.value(i).to_string())
            };
            for i in 0..b.num_rows() {
                let turns = if tr.is_null(i) {
                    Vec::new()
                } else {
                    let v = tr.value(i);
                    let st = v.as_struct();
                    let role = st.column(0).as_string::<i32>();
                    let text = st.column(2).as_string::<i32>();
                    (0..st.len())
                        .map(|j| (role.value(j).to_string(), text.value(j).to_string()))
                        .collect()
                };
                let k = id.value(i).to_string();
                let row = (opt(&sum, i), opt(&sen, i), opt(&cat, i), turns);
                assert!(
                    out.insert(k.clone(), row).is_none(),
                    "{k} is in the lake twice"
                );
            }
        }
    }
    out
}

#[test]
fn analysis_results_land_once_failures_show_in_status_and_lost_ones_are_resubmitted() {
    use callsync::simulator::exotel::{Fate, fate, insights};
    let (env, _) = analysis_env("result_timeout_secs = 2\nflush_interval_secs = 1\n");
    let d = Daemon::start(&env, &[], true);
    let calls: Vec<String> = (0..30).map(|i| format!("CA{:04}", 1000 + i)).collect();
    let mut args = vec!["exotel", "analyze", "--source", "insights"];
    for c in &calls {
        args.extend(["--call-sid", c.as_str()]);
    }
    let out = env.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("insights: 30 submitted, 0 already"),
        "{}",
        text(&out)
    );
    // Idempotent: nothing is submitted again (queued, analysed or failed alike).
    let out = env.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("insights: 0 submitted"),
        "{}",
        text(&out)
    );
    let want: BTreeSet<&String> = calls.iter().filter(|c| fate(c) != Fate::Fail).collect();
    assert!(
        wait_until(30, || read_insights(&env, "insights").len() == want.len()),
        "{}\n{:?}",
        d.log_text(),
        read_insights(&env, "insights").keys().collect::<Vec<_>>()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let got = read_insights(&env, "insights");
    assert_eq!(got.keys().collect::<BTreeSet<_>>(), want);
    for (call, (summary, sentiment, category, turns)) in &got {
        let (s, se, ca, lines) = insights(call);
        assert_eq!(summary.as_deref(), Some(s.as_str()));
        assert_eq!(sentiment.as_deref(), Some(se.as_str()));
        assert_eq!(category.as_deref(), Some(ca.as_str()));
        let want_turns: Vec<(String, String)> = lines
            .into_iter()
            .map(|l| ("unknown".to_string(), l))
            .collect();
        assert_eq!(turns, &want_turns, "{call}");
    }
    // Lost first webhooks were resubmitted; doubled ones absorbed.
    let subs = env.sim.exotel().submissions.clone();
    for c in &calls {
        let n = subs[c];
        match fate(c) {
            Fate::LostFirst => assert_eq!(n, 2, "{c} submissions"),
            _ => assert_eq!(n, 1, "{c} submissions"),
        }
    }
    let s = source_status(&env, "insights");
    let failed: BTreeSet<String> = s["failed_jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            assert_eq!(j["status"], "failed");
            assert_eq!(j["reason"], "Forbidden to access recording url of call");
            j["call_sid"].as_str().unwrap().to_string()
        })
        .collect();
    let want_failed: BTreeSet<String> = calls
        .iter()
        .filter(|c| fate(c) == Fate::Fail)
        .cloned()
        .collect();
    assert_eq!(failed, want_failed);
    // An invalid task is refused with the vendor's message, naming the call.
    let out = env.run(&[
        "exotel",
        "analyze",
        "--source",
        "insights",
        "--call-sid",
        "BAD0001",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("call BAD0001 refused by ExoVoiceAnalyze (HTTP 400): Invalid parameter: Invalid insight task"), "{}", text(&out));
    assert!(!d.log_text().contains(TOKEN));
}
