//! Promise: an Exotel account's calls reach the lake exactly once from the Bulk Call Details
//! API: a 90-day first sync in windows of at most 31 days equals the account's call log; an
//! idle re-sync costs list pages only; calls listed late inside the lookback are exported; a
//! 40-day backfill crosses the 31-day limit; a range past the API's six months is refused
//! before any request; kill -9 mid-sync loses and doubles nothing; a cursor that stops
//! advancing fails the run naming its window; `check` tells a good credential from a rejected
//! one; with `analyze_with`, every completed call with a recording is submitted once, across
//! restarts and within a daily cap, and its analysis row carries the call's time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use callsync::simulator::exotel::{Fate, fate};
use callsync::simulator::exotel_calls::ExCall;
use callsync::simulator::{FaultKind, FaultPlan, VoicegainSim};

use crate::daemon::Daemon;
use crate::exotel::analyze_config;
use crate::helpers::*;

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn day(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// The `[sources.ex]` table pointed at the simulator (`extra` keys added).
fn ex_table(env: &Env, start_date: &str, extra: &str) -> String {
    let (key, tok) = {
        let e = env.sim.exotel();
        (e.api_key.clone(), e.api_token.clone())
    };
    let key = token_file(env, "ex-key", &key);
    let tok = token_file(env, "ex-token", &tok);
    format!(
        "[sources.ex]\nkind = \"exotel_calls\"\naccount_sid = \"exotel30m\"\nbase_url = \"{}\"\n\
         api_key_file = \"{}\"\napi_token_file = \"{}\"\nstart_date = \"{start_date}\"\n{extra}\
         [sources.ex.http]\nmax_attempts = 8\nbackoff_initial_ms = 5\nbackoff_max_ms = 50\n",
        env.sim.exotel_base_url(),
        key.display(),
        tok.display()
    )
}

/// A simulator whose account made `n` calls over the `days` days before the last hour, and
/// a config with the source `ex` from the day before them.
pub(crate) fn setup(n: usize, days: i64, extra: &str) -> Env {
    let env = Env::new(VoicegainSim::new(1, 0), 100);
    let now = now_us();
    env.sim
        .exotel()
        .calls
        .add_calls(n, now - days * DAY_US, now - HOUR_US);
    let start = day(now - (days + 1) * DAY_US);
    env.write_config(&ex_table(&env, &start, extra), 100_000);
    env
}

/// The first microsecond of a UTC day `YYYY-MM-DD`.
fn day_start_us(d: &str) -> i64 {
    chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros()
}

/// The calls the account lists now that were created before `before_us` and at or after
/// `from_us`.
fn listed(env: &Env, from_us: i64, before_us: i64) -> BTreeMap<String, ExCall> {
    let now = now_us();
    env.sim
        .exotel()
        .calls
        .listed(now)
        .filter(|c| c.start_us >= from_us && c.start_us < before_us)
        .map(|c| (c.sid.clone(), c.clone()))
        .collect()
}

/// The lake's `ex` rows equal `want` field by field (malformed calls are rejects instead).
fn assert_exact(env: &Env, want: &BTreeMap<String, ExCall>) {
    let got = rows_by_id(env, "ex");
    let want: BTreeMap<&String, &ExCall> =
        want.iter().filter(|(_, c)| !c.malformed_duration).collect();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(**k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} missing, {} not in the truth (of {} rows): {missing:?} {extra:?}",
        missing.len(),
        extra.len(),
        got.len()
    );
    for (id, r) in &got {
        let c = want[id];
        assert_eq!(r.started_at, Some(c.start_us), "started_at of {id}");
        assert_eq!(r.ended_at, Some(c.end_us), "ended_at of {id}");
        assert_eq!(r.duration_ms, c.duration_secs.map(|d| d * 1000), "{id}");
        let dir = if c.direction == "inbound" {
            "inbound"
        } else {
            "outbound"
        };
        assert_eq!(r.direction.as_deref(), Some(dir));
        assert_eq!(r.from_number.as_deref(), Some(c.from.as_str()));
        assert_eq!(r.to_number.as_deref(), Some(c.to.as_str()));
        assert_eq!(r.vendor_status.as_deref(), Some(c.status.as_str()));
        assert_eq!(r.recording_ref, c.recording_ref(), "recording_ref of {id}");
        assert_eq!(r.date, day(c.start_us), "partition of {id}");
        let raw: serde_json::Value = serde_json::from_str(r.raw.as_deref().unwrap()).unwrap();
        assert_eq!(raw, c.json("exotel30m"), "raw of {id}");
    }
}

fn counters(env: &Env) -> (u64, u64, u64) {
    let e = env.sim.exotel();
    (
        e.calls.list_requests,
        e.details_requests,
        e.submissions.values().map(|&n| n as u64).sum(),
    )
}

#[test]
fn a_90_day_first_sync_equals_the_call_log_and_an_idle_resync_lists_only() {
    let env = setup(2500, 90, "window_days = 31\npage_size = 100\n");
    let now = now_us();
    // A call still going on is not listed yet; a broken record is a reject with its reason.
    {
        let mut e = env.sim.exotel();
        let ongoing = e
            .calls
            .add_calls(3, now - 20 * 60_000_000, now - 10 * 60_000_000);
        for c in e.calls.calls_mut() {
            if ongoing.contains(&c.sid) {
                c.end_us = now + HOUR_US;
                c.listed_at_us = c.end_us;
            }
        }
        e.calls.calls_mut()[17].malformed_duration = true;
    }
    let out = env.sync_ok();
    let want = listed(&env, 0, now - 300_000_000);
    assert_eq!(want.len(), 2500);
    assert_exact(&env, &want);
    let bad = env.sim.exotel().calls.calls()[17].clone();
    let rejected = rejects(&env.warehouse());
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["call_id"], bad.sid.as_str());
    assert!(
        rejected[0]["error"].as_str().unwrap().contains("Duration"),
        "{rejected:?}"
    );
    // Oldest first, within the API's limits: no request was refused.
    let (lists, details, submissions) = counters(&env);
    assert_eq!(env.sim.exotel().calls.refused, 0, "{}", text(&out));
    assert!(lists > 2500 / 100, "{lists} list requests");
    assert_eq!((details, submissions), (0, 0));
    // Idle: the lookback (a day) is listed again and nothing else is asked or written.
    let out = env.sync_ok();
    assert!(
        text(&out).contains("ex: ok: 0 calls written"),
        "{}",
        text(&out)
    );
    let (lists2, details2, submissions2) = counters(&env);
    assert!(
        (1..=4).contains(&(lists2 - lists)),
        "{} list requests",
        lists2 - lists
    );
    assert_eq!((details2, submissions2), (0, 0));
    assert_exact(&env, &want);
}

#[test]
fn calls_listed_late_inside_the_lookback_are_exported() {
    let env = setup(300, 3, "window_days = 1\n");
    env.sync_ok();
    let now = now_us();
    // Calls created 20 to 2 hours ago that the vendor lists only now (a backlog), and calls
    // that were still going on at the last sync and have ended since.
    let late: BTreeSet<String> = env
        .sim
        .exotel()
        .calls
        .add_calls(40, now - 20 * HOUR_US, now - 2 * HOUR_US)
        .into_iter()
        .collect();
    let out = env.sync_ok();
    assert!(
        text(&out).contains("ex: ok: 40 calls written"),
        "{}",
        text(&out)
    );
    let got: BTreeSet<String> = rows_by_id(&env, "ex").into_keys().collect();
    assert!(late.is_subset(&got));
    assert_exact(&env, &listed(&env, 0, now - 300_000_000));
}

#[test]
fn a_40_day_backfill_crosses_the_31_day_limit_and_a_range_past_six_months_is_refused() {
    let env = Env::new(VoicegainSim::new(1, 0), 100);
    let now = now_us();
    env.sim
        .exotel()
        .calls
        .add_calls(1500, now - 70 * DAY_US, now - HOUR_US);
    env.write_config(
        &ex_table(&env, &day(now - 2 * DAY_US), "window_days = 31\n"),
        100_000,
    );
    env.sync_ok();
    // Forty days, from 50 to 11 days ago: two windows, 31 days and 9.
    let (from, to) = (day(now - 50 * DAY_US), day(now - 11 * DAY_US));
    let lists = counters(&env).0;
    let out = env.run(&["backfill", "--source", "ex", "--from", &from, "--to", &to]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(env.sim.exotel().calls.refused, 0, "{}", text(&out));
    assert!(counters(&env).0 - lists >= 2);
    let start = day_start_us;
    let mut want = listed(&env, start(&from), start(&to) + DAY_US);
    want.extend(listed(
        &env,
        start(&day(now - 2 * DAY_US)),
        now - 300_000_000,
    ));
    assert!(want.len() > 800, "{}", want.len());
    assert_exact(&env, &want);

    // Past the six months the API keeps: refused with the limit named, nothing asked.
    let lists = counters(&env).0;
    let old = (day(now - 200 * DAY_US), day(now - 170 * DAY_US));
    let out = env.run(&[
        "backfill", "--source", "ex", "--from", &old.0, "--to", &old.1,
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("6 months"), "{}", text(&out));
    assert!(
        text(&out).contains("earliest day possible"),
        "{}",
        text(&out)
    );
    // A start_date that old is refused the same way (a fresh state).
    std::fs::remove_dir_all(env.state_path().parent().unwrap()).unwrap();
    std::fs::remove_dir_all(env.warehouse()).unwrap();
    env.write_config(&ex_table(&env, &old.0, ""), 100_000);
    let out = env.run(&["sync"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("start_date {} is older than the 6 months", old.0)),
        "{}",
        text(&out)
    );
    assert_eq!(counters(&env).0, lists, "a refused range was asked for");
}

#[test]
fn kill_9_during_a_sync_loses_and_doubles_nothing() {
    let env = setup(4000, 40, "window_days = 2\npage_size = 25\n");
    // Commits of 300 calls, so the kills land between commits as well as inside them.
    let cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("max_rows_per_file = 100000", "max_rows_per_file = 300");
    std::fs::write(&env.config, cfg).unwrap();
    env.sim.set_faults(FaultPlan::every(
        1,
        vec![FaultKind::Slow(Duration::from_millis(10))],
    ));
    let mut rng = fastrand::Rng::with_seed(18);
    let mut kills = 0;
    for _ in 0..8 {
        let mut child = env.spawn(&["sync"]);
        std::thread::sleep(Duration::from_millis(rng.u64(150..900)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        // Before any restart: no call twice.
        rows_by_id(&env, "ex");
    }
    assert!(kills >= 5, "only {kills} syncs were killed mid-run");
    let kept = rows_by_id(&env, "ex").len();
    assert!(kept > 0, "no commit survived the kills");
    env.sim.set_faults(FaultPlan::default());
    env.sync_ok();
    assert_exact(&env, &listed(&env, 0, now_us() - 300_000_000));
    assert!(staging_files(&env.warehouse()).is_empty());
}

#[test]
fn a_cursor_that_stops_advancing_fails_the_run_naming_its_window() {
    let env = setup(300, 2, "window_days = 1\npage_size = 10\n");
    env.sim.exotel().calls.stuck_cursor = true;
    let t0 = Instant::now();
    let out = env.run(&["sync"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("stopped advancing"), "{t}");
    assert!(t.contains("the page cursor of the window 20"), "{t}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(env.sim.exotel().calls.list_requests < 10);
}

#[test]
fn a_last_page_that_still_carries_after_ends_its_window_and_the_sync_is_exact() {
    let env = setup(300, 2, "window_days = 1\npage_size = 10\n");
    // NextPageUri null on the last page, After still set (echoed when the page is empty):
    // followed, it would be asked again and again, and the run would fail as stuck.
    env.sim.exotel().calls.after_on_last_page = true;
    let out = env.run(&["sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_exact(&env, &listed(&env, 0, now_us() - 300_000_000));
    let first = env.sim.exotel().calls.list_requests;
    // An idle resync lists each window's pages once more, and no page past the last.
    env.sync_ok();
    let again = env.sim.exotel().calls.list_requests - first;
    assert!(
        again <= first,
        "{again} list requests on an idle resync, {first} on the first"
    );
}

#[test]
fn check_passes_with_good_credentials_and_names_a_rejected_one() {
    let env = setup(10, 1, "");
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("ex: ok"), "{}", text(&out));
    std::fs::write(env.dir.path().join("ex-token.token"), "wrong-token-8812").unwrap();
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("ex: FAILED: HTTP 401"), "{t}");
    assert!(
        !t.contains("wrong-token-8812") && !t.contains("sim-exotel-key"),
        "{t}"
    );
}

/// The calls of the account that `analyze_with` submits: completed, with a recording.
fn eligible(env: &Env) -> BTreeSet<String> {
    env.sim
        .exotel()
        .calls
        .listed(now_us())
        .filter(|c| c.status == "completed" && c.recording_url.is_some())
        .map(|c| c.sid.clone())
        .collect()
}

fn submitted(env: &Env) -> BTreeMap<String, u32> {
    env.sim
        .exotel()
        .submissions
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// A config with the analysis source `insights` (its callback on `port`) and `ex` handing
/// it its calls.
fn analysis_setup(calls: usize, ex_extra: &str) -> (Env, u16) {
    let env = Env::new(VoicegainSim::new(1, 0), 100);
    let now = now_us();
    env.sim
        .exotel()
        .calls
        .add_calls(calls, now - 5 * DAY_US, now - HOUR_US);
    let port = crate::exotel::free_port();
    analyze_config(&env, port, "flush_interval_secs = 1\n");
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&ex_table(
        &env,
        &day(now - 6 * DAY_US),
        &format!("analyze_with = \"insights\"\nschedule = \"*/1 * * * * *\"\n{ex_extra}"),
    ));
    std::fs::write(&env.config, text).unwrap();
    (env, port)
}

#[test]
fn new_calls_are_analysed_once_across_restarts_with_their_call_time() {
    let (env, _) = analysis_setup(150, "window_days = 2\n");
    let want = eligible(&env);
    assert!(want.len() > 60, "{}", want.len());
    let analysed = |want: &BTreeSet<String>| -> usize {
        want.iter()
            .filter(|c| matches!(fate(c), Fate::Ok | Fate::Twice))
            .count()
    };
    let mut d = Daemon::start(&env, &[], true);
    // Killed once every result came back (a result posted while the daemon is down is lost,
    // and its call is submitted again only after result_timeout_secs).
    assert!(
        wait_until(60, || submitted(&env).len() == want.len()
            && rows_by_id(&env, "insights").len() == analysed(&want)),
        "{} of {} submitted\n{}",
        submitted(&env).len(),
        want.len(),
        d.log_text()
    );
    d.child.kill().unwrap(); // SIGKILL
    d.child.wait().unwrap();
    // New calls while it was down; the restarted daemon lists the old ones again and submits
    // only the new.
    let now = now_us();
    env.sim
        .exotel()
        .calls
        .add_calls(60, now - 3 * HOUR_US, now - HOUR_US);
    let want = eligible(&env);
    let d = Daemon::start(&env, &[], true);
    assert!(
        wait_until(60, || submitted(&env).len() == want.len()
            && rows_by_id(&env, "insights").len() == analysed(&want)),
        "{} of {} submitted, {} of {} analysed\n{}",
        submitted(&env).len(),
        want.len(),
        rows_by_id(&env, "insights").len(),
        analysed(&want),
        d.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    let subs = submitted(&env);
    assert_eq!(
        subs.keys().collect::<BTreeSet<_>>(),
        want.iter().collect(),
        "exactly the completed calls with a recording were submitted"
    );
    assert!(subs.values().all(|&n| n == 1), "a call was submitted twice");
    // Each analysis row has its call's time, numbers and partition.
    let rows = rows_by_id(&env, "insights");
    let log = env.sim.exotel();
    for (id, r) in &rows {
        let c = log.calls.get(id).unwrap();
        assert_eq!(r.started_at, Some(c.start_us), "started_at of {id}");
        assert_eq!(r.ended_at, Some(c.end_us));
        assert_eq!(r.from_number.as_deref(), Some(c.from.as_str()));
        assert_eq!(r.date, day(c.start_us));
        assert!(r.summary.is_some());
    }
    drop(log);
    assert_exact(&env, &listed(&env, 0, now_us() - 300_000_000));
}

#[test]
fn the_daily_analysis_cap_holds_calls_back_and_sends_the_longest_waiting_first() {
    let (env, _) = analysis_setup(
        120,
        "analyze_max_per_day = 10\nanalyze_min_duration_secs = 60\n",
    );
    let want: BTreeSet<String> = env
        .sim
        .exotel()
        .calls
        .listed(now_us())
        .filter(|c| {
            c.status == "completed" && c.recording_url.is_some() && c.duration_secs >= Some(60)
        })
        .map(|c| c.sid.clone())
        .collect();
    assert!(want.len() > 25, "{}", want.len());
    let out = env.run(&["sync", "--source", "ex"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(submitted(&env).len(), 10, "{}", text(&out));
    let s = source_status(&env, "insights");
    assert_eq!(s["waiting_jobs"], (want.len() - 10) as u64, "{s}");
    // The same day: nothing more.
    env.sync_ok();
    assert_eq!(submitted(&env).len(), 10);
    // A larger cap lets 15 more go; no call is ever sent twice.
    let cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("analyze_max_per_day = 10", "analyze_max_per_day = 25");
    std::fs::write(&env.config, cfg).unwrap();
    env.sync_ok();
    let subs = submitted(&env);
    assert_eq!(subs.len(), 25);
    assert!(subs.values().all(|&n| n == 1));
    assert!(
        subs.keys().all(|k| want.contains(k)),
        "a filtered-out call was submitted"
    );
    let s = env.run(&["status"]);
    assert!(
        text(&s).contains(&format!("{} call(s) waiting for analysis", want.len() - 25)),
        "{}",
        text(&s)
    );
}

#[test]
fn two_sources_sharing_an_analyzer_and_a_hand_analyze_submit_each_call_once_within_the_cap() {
    const CAP: usize = 15;
    let (env, _) = analysis_setup(
        150,
        &format!("analyze_max_per_day = {CAP}\nwindow_days = 2\n"),
    );
    // A second source over the same account, analysed by the same `insights`.
    let mut cfg = std::fs::read_to_string(&env.config).unwrap();
    let now = now_us();
    cfg.push_str(
        &ex_table(
            &env,
            &day(now - 6 * DAY_US),
            &format!("analyze_with = \"insights\"\nanalyze_max_per_day = {CAP}\nwindow_days = 2\n"),
        )
        .replace("[sources.ex]", "[sources.ex2]")
        .replace("[sources.ex.http]", "[sources.ex2.http]"),
    );
    std::fs::write(&env.config, cfg).unwrap();
    let want = eligible(&env);
    assert!(want.len() > 2 * CAP, "{}", want.len());
    // Slow answers widen the window in which the three read the same waiting calls.
    env.sim.set_faults(FaultPlan::every(
        1,
        vec![FaultKind::Slow(Duration::from_millis(15))],
    ));
    // The hand run names calls the automatic ones want too.
    let hand: Vec<String> = want.iter().take(8).cloned().collect();
    let list = env.dir.path().join("hand.txt");
    std::fs::write(&list, hand.join("\n")).unwrap();
    let mut children: Vec<std::process::Child> = ["ex", "ex2"]
        .iter()
        .map(|s| env.command(&["sync", "--source", s]).spawn().unwrap())
        .collect();
    let hand_out = env
        .command(&["exotel", "analyze", "--source", "insights", "--from-file"])
        .arg(&list)
        .output()
        .unwrap();
    for c in &mut children {
        assert!(c.wait().unwrap().success());
    }
    let said = text(&hand_out);
    assert_eq!(hand_out.status.code(), Some(0), "{said}");
    let by_hand: usize = said
        .split("insights: ")
        .filter_map(|l| l.split(" submitted,").next()?.trim().parse().ok())
        .next()
        .unwrap_or_else(|| panic!("{said}"));
    env.sim.set_faults(FaultPlan::default());
    // Once more each: the day's cap is spent.
    env.sync_ok();
    let subs = submitted(&env);
    assert!(
        subs.values().all(|&n| n == 1),
        "a call was submitted twice: {:?}",
        subs.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert!(subs.keys().all(|k| want.contains(k)));
    // The automatic submissions stay within the cap whatever the hand run took; the hand run
    // is the operator's own and is counted against the same day.
    assert!(
        subs.len() <= CAP + by_hand && subs.len() >= CAP,
        "{} submitted, {by_hand} by hand, cap {CAP}",
        subs.len()
    );
    let s = source_status(&env, "insights");
    assert_eq!(
        s["waiting_jobs"].as_u64().unwrap() as usize,
        want.len() - subs.len(),
        "{s}"
    );
    eprintln!(
        "shared analyzer: {} calls submitted once each ({by_hand} by hand, cap {CAP}), {} waiting",
        subs.len(),
        want.len() - subs.len()
    );
}

#[test]
fn a_resumed_backfill_past_the_six_months_continues_from_the_oldest_day_listed() {
    let env = Env::new(VoicegainSim::new(1, 0), 100);
    let now = now_us();
    env.sim
        .exotel()
        .calls
        .add_calls(1200, now - 200 * DAY_US, now - HOUR_US);
    env.write_config(
        &ex_table(&env, &day(now - 2 * DAY_US), "window_days = 5\n"),
        100_000,
    );
    let (d1, d2) = (day(now - 170 * DAY_US), day(now - 150 * DAY_US));
    // Interrupted after its first commit: the backfill keeps its position.
    let out = env
        .command(&["backfill", "--source", "ex", "--from", &d1, "--to", &d2])
        .env("CALLSYNC_FAILPOINT", "after_commit")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    // Months pass (as the state would look): the backfill began 200 days ago and stands 195
    // days back, older than the API lists now.
    let d0 = day(now - 200 * DAY_US);
    let pos = chrono::DateTime::from_timestamp_micros(now - 195 * DAY_US)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let db = rusqlite::Connection::open(env.state_path()).unwrap();
    let n = db
        .execute(
            "UPDATE backfills SET from_day = ?1, cursor = json_set(cursor, '$.from', ?2)",
            rusqlite::params![d0, pos],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(db);
    let refused = env.sim.exotel().calls.refused;
    let out = env.run(&["backfill", "--source", "ex", "--from", &d0, "--to", &d2]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("cannot be fetched any more"), "{said}");
    assert!(said.contains(&pos), "the lost span is named: {said}");
    assert_eq!(
        env.sim.exotel().calls.refused,
        refused,
        "a refused range was asked for"
    );
    // Every call from the oldest time listed to the end of the range is in the lake.
    let oldest =
        callsync::sources::exotel_calls::oldest_listed(chrono::Utc::now()).timestamp_micros();
    let end = day_start_us(&d2) + DAY_US;
    let want = listed(&env, oldest + HOUR_US, end);
    assert!(want.len() > 100, "{}", want.len());
    let rows = rows_by_id(&env, "ex");
    let missing: Vec<&String> = want.keys().filter(|k| !rows.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} calls of the served span missing",
        missing.len()
    );
}
