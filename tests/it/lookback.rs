//! Promise: windowed sources re-list their lookback on every sync, so calls the vendor lists
//! late are exported; calls older than the lookback are left to `backfill`, which exports
//! them exactly; an idle re-sync costs list requests only.

use std::collections::BTreeSet;

use callsync::simulator::Envelope;

use crate::helpers::*;
use crate::{voice_calls, vonage};

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

fn day(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

fn vonage_ids(env: &Env) -> BTreeSet<String> {
    env.sim
        .vonage()
        .sessions()
        .iter()
        .map(|s| s.id.clone())
        .collect()
}

fn voice_call_ids(env: &Env) -> BTreeSet<String> {
    env.sim
        .voice_calls()
        .calls()
        .iter()
        .map(|c| c.id.clone())
        .collect()
}

fn lake_ids(env: &Env, source: &str) -> BTreeSet<String> {
    rows_by_id(env, source).into_keys().collect()
}

#[test]
fn vonage_sessions_listed_late_inside_the_lookback_are_exported_and_older_ones_by_backfill() {
    let env = vonage::setup(300, 3, 0.0, 50, 2);
    env.sync_ok();
    let now = chrono::Utc::now().timestamp();
    let before = vonage_ids(&env);
    // The vendor now lists sessions that started 20 to 2 hours ago (after the sync passed
    // them) and some that started three days ago.
    env.sim.vonage().add_sessions(
        40,
        (now - 20 * HOUR) * 1_000_000,
        (now - 2 * HOUR) * 1_000_000,
        0.0,
    );
    let late = &vonage_ids(&env) - &before;
    let (old_from, old_to) = (now - 3 * DAY - 6 * HOUR, now - 3 * DAY);
    env.sim
        .vonage()
        .add_sessions(25, old_from * 1_000_000, old_to * 1_000_000, 0.0);
    let old = &(&vonage_ids(&env) - &before) - &late;
    assert_eq!((late.len(), old.len()), (40, 25));
    let out = env.sync_ok();
    assert!(
        text(&out).contains("vn: ok: 40 calls written"),
        "{}",
        text(&out)
    );
    let got = lake_ids(&env, "vn");
    assert!(
        late.is_subset(&got),
        "a late session inside the lookback is missing"
    );
    assert!(
        old.is_disjoint(&got),
        "a session older than the lookback was re-listed"
    );
    // A backfill of their days exports them, and nothing twice.
    let out = env.run(&[
        "backfill",
        "--source",
        "vn",
        "--from",
        &day(old_from),
        "--to",
        &day(old_to),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("ok: 25 calls written"),
        "{}",
        text(&out)
    );
    vonage::assert_exact(&env, vonage::now_us(), &[]);
}

#[test]
fn voice_calls_listed_late_inside_the_lookback_are_exported_and_older_ones_by_backfill() {
    let env = voice_calls::setup(200, 0.0, Envelope::Items, 1000, "");
    env.sync_ok();
    let now = chrono::Utc::now().timestamp();
    let before = voice_call_ids(&env);
    env.sim
        .voice_calls()
        .add_calls(30, now - 20 * HOUR, now - 2 * HOUR, 0.0);
    let late = &voice_call_ids(&env) - &before;
    let (old_from, old_to) = (now - 4 * DAY, now - 3 * DAY - 12 * HOUR);
    env.sim.voice_calls().add_calls(20, old_from, old_to, 0.0);
    let old = &(&voice_call_ids(&env) - &before) - &late;
    let out = env.sync_ok();
    assert!(
        text(&out).contains("vc: ok: 30 calls written"),
        "{}",
        text(&out)
    );
    let got = lake_ids(&env, "vc");
    assert!(late.is_subset(&got));
    assert!(old.is_disjoint(&got));
    // The old calls were never asked about, one by one.
    let asked: Vec<String> = env
        .sim
        .voice_calls()
        .per_call_requests
        .keys()
        .filter(|id| old.contains(*id))
        .cloned()
        .collect();
    assert!(asked.is_empty(), "{asked:?}");
    let out = env.run(&[
        "backfill",
        "--source",
        "vc",
        "--from",
        &day(old_from),
        "--to",
        &day(old_to),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("ok: 20 calls written"),
        "{}",
        text(&out)
    );
    voice_calls::assert_exact(&env);
}

#[test]
fn an_idle_resync_of_each_windowed_source_makes_list_requests_only() {
    // voice-calls: per-call requests are counted by id.
    let env = voice_calls::setup(
        200,
        0.0,
        Envelope::Items,
        1000,
        "download_recordings = true\n",
    );
    env.sync_ok();
    let (lists, per_call) = {
        let vc = env.sim.voice_calls();
        (vc.list_requests, vc.per_call_requests.clone())
    };
    let files = files_with_suffix(&env.warehouse(), "");
    let out = env.sync_ok();
    let vc = env.sim.voice_calls();
    assert!(vc.list_requests > lists, "the lookback was not re-listed");
    assert_eq!(
        vc.per_call_requests, per_call,
        "an idle re-sync asked for the detail, survey or recording of an exported call"
    );
    // The re-listed calls were counted as already exported, and nothing was written.
    assert!(
        text(&out).contains("vc: ok: 0 calls written"),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains(" 0 already exported"),
        "{}",
        text(&out)
    );
    drop(vc);
    assert_eq!(files_with_suffix(&env.warehouse(), ""), files);

    // Vonage: only searches exist; re-listed sessions are dropped before normalizing.
    let env = vonage::setup(300, 3, 0.0, 50, 2);
    env.sync_ok();
    let files = files_with_suffix(&env.warehouse(), "");
    let searches = env.sim.vonage().searches;
    let out = env.sync_ok();
    assert!(env.sim.vonage().searches > searches);
    assert!(
        text(&out).contains("vn: ok: 0 calls written"),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains(" 0 already exported"),
        "{}",
        text(&out)
    );
    assert_eq!(files_with_suffix(&env.warehouse(), ""), files);
}
