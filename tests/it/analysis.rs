//! Promise: Exotel analysis is exactly once and cheap. A job is recorded before it is
//! submitted, so a result that arrives before the vendor's answer finds it; re-running
//! `exotel analyze` submits nothing already submitted (failed ones only with
//! `--retry-failed`, an analysed call never); a failing resubmission never holds back results,
//! and the drain resubmits nothing; every analysis row carries its call's time from the
//! call-details API, and a call that API does not know is named by `status`.

use std::collections::BTreeSet;
use std::time::Duration;

use callsync::simulator::exotel::{Fate, call_detail, fate};

use crate::daemon::{Daemon, get};
use crate::exotel::analysis_env;
use crate::helpers::*;

fn analyze(env: &Env, calls: &[String], flags: &[&str]) -> std::process::Output {
    let mut args = vec!["exotel", "analyze", "--source", "insights"];
    args.extend_from_slice(flags);
    for c in calls {
        args.extend(["--call-sid", c.as_str()]);
    }
    env.run(&args)
}

fn insights_rows(env: &Env) -> std::collections::BTreeMap<String, LakeRow> {
    rows_by_id(env, "insights")
}

fn submissions(env: &Env, call: &str) -> u32 {
    env.sim
        .exotel()
        .submissions
        .get(call)
        .copied()
        .unwrap_or_default()
}

fn status_of(env: &Env) -> serde_json::Value {
    source_status(env, "insights")
}

/// Each row has its call's start, end, duration, direction and numbers, in its UTC day.
fn assert_call_times(rows: &std::collections::BTreeMap<String, LakeRow>) {
    for (id, r) in rows {
        match call_detail(id) {
            Some(c) => {
                assert_eq!(r.started_at, Some(c.start_utc_us), "started_at of {id}");
                assert_eq!(
                    r.ended_at,
                    Some(c.start_utc_us + c.duration_secs * 1_000_000)
                );
                assert_eq!(r.duration_ms, Some(c.duration_secs * 1000));
                let dir = if c.direction == "inbound" {
                    "inbound"
                } else {
                    "outbound"
                };
                assert_eq!(r.direction.as_deref(), Some(dir), "{id}");
                assert_eq!(r.from_number.as_deref(), Some(c.from.as_str()));
                assert_eq!(r.to_number.as_deref(), Some(c.to.as_str()));
                let day = chrono::DateTime::from_timestamp_micros(c.start_utc_us)
                    .unwrap()
                    .format("%Y-%m-%d")
                    .to_string();
                assert_eq!(r.date, day, "partition of {id}");
            }
            None => assert_eq!(r.started_at, None, "{id} has no call details"),
        }
    }
}

#[test]
fn a_result_that_arrives_before_the_submission_answer_finds_its_job() {
    let (env, _) = analysis_env("result_timeout_secs = 2\nflush_interval_secs = 1\n");
    env.sim.exotel().result_before_answer = true;
    let d = Daemon::start(&env, &[], true);
    // Calls whose results come once, before the answer to their submission.
    let calls: Vec<String> = (0..40)
        .map(|i| format!("CA{:04}", 2000 + i))
        .filter(|c| fate(c) == Fate::Ok)
        .collect();
    let out = analyze(&env, &calls, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        wait_until(30, || insights_rows(&env).len() == calls.len()),
        "{}",
        d.log_text()
    );
    // Past result_timeout_secs twice over: a job whose result came first is done, so the
    // flushes never resubmit it and never give it up.
    std::thread::sleep(Duration::from_secs(5));
    for c in &calls {
        assert_eq!(submissions(&env, c), 1, "{c} was submitted again");
    }
    let s = status_of(&env);
    assert_eq!(s["failed_jobs"].as_array().unwrap().len(), 0, "{s}");
    let rows = insights_rows(&env);
    assert_eq!(rows.len(), calls.len());
    assert_call_times(&rows);
}

#[test]
fn analysis_is_submitted_once_and_again_only_when_asked() {
    let (env, _) = analysis_env("result_timeout_secs = 60\nflush_interval_secs = 1\n");
    let d = Daemon::start(&env, &[], true);
    let mut calls: Vec<String> = (0..30)
        .map(|i| format!("CA{:04}", 1000 + i))
        .filter(|c| fate(c) != Fate::LostFirst)
        .collect();
    calls.push("NODETAIL0001".into());
    let failing: BTreeSet<&String> = calls.iter().filter(|c| fate(c) == Fate::Fail).collect();
    assert!(!failing.is_empty());
    let out = analyze(&env, &calls, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let want = calls.len() - failing.len();
    assert!(
        wait_until(30, || insights_rows(&env).len() == want
            && status_of(&env)["failed_jobs"].as_array().unwrap().len()
                == failing.len()),
        "{}",
        d.log_text()
    );
    // The same list again: nothing submitted, the failed ones included.
    let out = analyze(&env, &calls, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("insights: 0 submitted"), "{said}");
    assert!(
        said.contains(&format!("{} failed before (--retry-failed", failing.len())),
        "{said}"
    );
    assert!(calls.iter().all(|c| submissions(&env, c) == 1));
    // --retry-failed submits the failed ones only.
    let out = analyze(&env, &calls, &["--retry-failed"]);
    let said = text(&out);
    assert!(
        said.contains(&format!("insights: {} submitted", failing.len())),
        "{said}"
    );
    for c in &calls {
        let n = if failing.contains(c) { 2 } else { 1 };
        assert_eq!(submissions(&env, c), n, "{c}");
    }
    // --force never pays for a second analysis of an analysed call: refused, saying why.
    let analysed = calls.iter().find(|c| !failing.contains(c)).unwrap().clone();
    let out = analyze(&env, std::slice::from_ref(&analysed), &["--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "call {analysed} is already analysed and its row is in the lake (one row per call)"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(submissions(&env, &analysed), 1);
    // Every row has its call's time; the call the details API does not know is listed.
    let rows = insights_rows(&env);
    assert_eq!(rows.len(), want);
    assert_call_times(&rows);
    let s = status_of(&env);
    assert_eq!(
        s["calls_without_details"],
        serde_json::json!(["NODETAIL0001"]),
        "{s}"
    );
    let human = text(&env.run(&["status"]));
    assert!(
        human.contains("not returned by the call-details API"),
        "{human}"
    );
}

#[test]
fn a_failing_resubmission_never_holds_back_results_and_the_drain_resubmits_nothing() {
    let (env, port) = analysis_env("result_timeout_secs = 1\nflush_interval_secs = 1\n");
    let mut d = Daemon::start(&env, &[], true);
    // Lost-first calls get no result for their first submission: they come due for
    // resubmission while the vendor is down.
    let lost: Vec<String> = (0..40)
        .map(|i| format!("CA{:04}", 3000 + i))
        .filter(|c| fate(c) == Fate::LostFirst)
        .collect();
    let out = analyze(&env, &lost, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    env.sim.exotel().submit_status = Some(503);
    // Results of other calls arrive by webhook meanwhile (as a redelivery would).
    let ok: Vec<String> = (0..20)
        .map(|i| format!("CA{:04}", 4000 + i))
        .filter(|c| fate(c) == Fate::Ok)
        .collect();
    let hook = format!(
        "http://127.0.0.1:{port}/webhooks/insights/{}",
        crate::exotel::TOKEN
    );
    for (i, c) in ok.iter().enumerate() {
        let body = serde_json::json!({"success": true, "job_id": format!("job-{i}"), "callSID": c,
            "summary": {"summary": "s", "confidence": 0.5}});
        let (code, _) = env.rt.block_on(async {
            let r = reqwest::Client::new()
                .post(&hook)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), ())
        });
        assert_eq!(code, 200);
    }
    assert!(
        wait_until(30, || insights_rows(&env).len() == ok.len()
            && env.sim.exotel().refused_submissions > 0),
        "results wait behind a failing resubmission:\n{}",
        d.log_text()
    );
    let (_, metrics) = get(&env, &d.url("/metrics"));
    let failures: f64 = metrics
        .lines()
        .find(|l| l.starts_with("callsync_analysis_resubmit_failures_total{source=\"insights\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(failures >= 1.0, "{metrics}");
    assert!(
        d.log_text()
            .contains("Resubmission failed; trying again at the next flush.")
    );
    // The vendor is back; the drain still starts no vendor work.
    env.sim.exotel().submit_status = None;
    let before: u32 = lost.iter().map(|c| submissions(&env, c)).sum();
    d.signal(libc::SIGTERM);
    let (code, _) = d.wait_exit(20);
    assert_eq!(code, Some(0), "{}", d.log_text());
    let after: u32 = lost.iter().map(|c| submissions(&env, c)).sum();
    assert_eq!(before, after, "the drain resubmitted");
}

#[test]
fn check_reaches_the_call_details_api_and_says_a_monitor_source_calls_nothing() {
    let (env, _) = analysis_env("");
    // A monitor-leg source beside it: webhook only.
    let legs = token_file(&env, "legs-hook", "legs-token-1");
    let mut cfg = std::fs::read_to_string(&env.config).unwrap();
    cfg.push_str(&format!(
        "[sources.legs]\nkind = \"exotel_monitor\"\nwebhook_token_file = \"{}\"\n",
        legs.display()
    ));
    std::fs::write(&env.config, &cfg).unwrap();
    let requests = || {
        let e = env.sim.exotel();
        e.details_requests + e.calls.list_requests
    };
    let before = requests();
    let out = env.run(&["check"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("insights: ok (exotel_analyze call-details API reached, credential accepted"),
        "{said}"
    );
    assert!(
        said.contains(
            "legs: ok (webhook only: token loaded, URL /webhooks/legs/…; nothing is called"
        ),
        "{said}"
    );
    assert!(!said.contains("legs-token-1"), "{said}");
    assert_eq!(requests(), before + 1, "one GET per check");
    // A rejected key is named as such, without the secret.
    std::fs::write(env.dir.path().join("exo-key.token"), "wrong-key").unwrap();
    let out = env.run(&["check", "--source", "insights"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("insights: FAILED: HTTP 401: the credential was rejected"),
        "{said}"
    );
    assert!(
        !said.contains("wrong-key") && !said.contains("sim-exotel-token"),
        "{said}"
    );
}
