//! Promise: `backfill --from --to` exports exactly the final calls started in those UTC days,
//! for every pull kind, through the same commit path: it never duplicates what a sync wrote
//! (or the reverse), never moves the incremental cursor, and resumes after a kill -9.

use std::time::Duration;

use callsync::simulator::{FaultKind, FaultPlan, VoicegainSim};

use crate::helpers::*;

const DAY: i64 = 86_400;

fn day(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// Voicegain calls whose backfill of `[from, to]` must be exported: final, well formed.
fn vg_expected(env: &Env, from: &str, to: &str) -> Vec<u64> {
    let vg = env.sim.voicegain();
    vg.calls()
        .filter(|c| c.is_final() && !c.malformed)
        .filter(|c| (from..=to).contains(&day(c.start_secs).as_str()))
        .map(|c| c.id)
        .collect()
}

fn backfill(env: &Env, source: &str, from: &str, to: &str) -> std::process::Output {
    env.run(&["backfill", "--source", source, "--from", from, "--to", to])
}

/// About 3,000 Voicegain calls over four days, a fraction `pending` unfinished and a few
/// malformed; returns the second and third day.
fn vg_env(max_rows: usize, pending: f64) -> (Env, String, String) {
    let env = Env::with_max_rows(
        VoicegainSim::new(50, 0).with_ratios(pending, 0.01),
        200,
        max_rows,
    );
    env.sim.voicegain().add_calls(3000);
    let first = env.sim.voicegain().calls().next().unwrap().start_secs;
    (env, day(first + DAY), day(first + 2 * DAY))
}

#[test]
fn a_voicegain_backfill_gives_exactly_the_final_calls_started_in_the_range() {
    let (env, from, to) = vg_env(100_000, 0.02);
    let out = backfill(&env, "vg", &from, &to);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(unique_ids(&env.lake()), vg_expected(&env, &from, &to));
    // The incremental cursor did not move.
    let s: serde_json::Value =
        serde_json::from_slice(&env.run(&["status", "--json"]).stdout).unwrap();
    assert!(s[0]["cursor"].is_null(), "{s}");
    assert_eq!(
        s[0]["backfills"].as_array().map(Vec::len),
        Some(0),
        "a finished backfill is not listed"
    );
}

#[test]
fn backfill_then_sync_and_sync_then_backfill_keep_one_row_per_call() {
    // No unfinished calls: the consecutive export then covers every day.
    let (env, from, to) = vg_env(100_000, 0.0);
    assert_eq!(backfill(&env, "vg", &from, &to).status.code(), Some(0));
    env.sync_ok();
    assert_lake_matches_truth(&env); // every consecutive-export call, once
    let out = backfill(&env, "vg", &from, &to);
    assert!(text(&out).contains("ok: 0 calls written"), "{}", text(&out));
    assert_lake_matches_truth(&env);

    let (env, from, to) = vg_env(100_000, 0.0);
    env.sync_ok();
    let out = backfill(&env, "vg", &from, &to);
    assert!(text(&out).contains("ok: 0 calls written"), "{}", text(&out));
    assert_lake_matches_truth(&env);
}

#[test]
fn a_backfill_killed_with_sigkill_resumes_and_ends_exact() {
    let (env, from, to) = vg_env(100, 0.02);
    env.sim.set_faults(FaultPlan::every(
        1,
        vec![FaultKind::Slow(Duration::from_millis(40))],
    ));
    let mut child = env.spawn(&["backfill", "--source", "vg", "--from", &from, "--to", &to]);
    wait_until(30, || {
        files_with_suffix(&env.warehouse().join("calls"), ".parquet").len() >= 2
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "the backfill ended before it could be killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let before = unique_ids(&env.lake()).len();
    assert!(before > 0);
    let status = env.run(&["status"]);
    assert!(
        text(&status).contains(&format!("backfill {from}..{to} running")),
        "{}",
        text(&status)
    );
    env.sim.set_faults(FaultPlan::every(
        3,
        vec![FaultKind::ServerError(503), FaultKind::Drop],
    ));
    let out = backfill(&env, "vg", &from, &to);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(unique_ids(&env.lake()), vg_expected(&env, &from, &to));
    assert!(staging_files(&env.warehouse()).is_empty());
}

#[test]
fn windowed_sources_backfill_exactly_their_range() {
    let env = Env::new(VoicegainSim::new(1, 0), 100);
    let now = chrono::Utc::now().timestamp();
    env.sim
        .voice_calls()
        .add_calls(400, now - 6 * DAY, now - 3600, 0.0);
    env.sim.vonage().add_sessions(
        400,
        (now - 6 * DAY) * 1_000_000,
        (now - 3600) * 1_000_000,
        0.0,
    );
    let vc_token = token_file(&env, "vc", &env.sim.voice_calls().token.clone());
    let vn_token = token_file(&env, "vn", &env.sim.vonage().api_key.clone());
    env.write_config(
        &format!(
            "[sources.vc]\nkind = \"voice_calls\"\nbase_url = \"{}\"\ntoken_file = \"{}\"\nstart_date = \"2020-01-01\"\npage_size = 25\nwindow_days = 1\n\
             [sources.vn]\nkind = \"vonage_insights\"\nbase_url = \"{}\"\napi_key_file = \"{}\"\nstart_date = \"2020-01-01\"\npage_size = 25\nwindow_days = 1\n",
            env.sim.voice_calls_base_url(),
            vc_token.display(),
            env.sim.vonage_base_url(),
            vn_token.display()
        ),
        100_000,
    );
    let (from, to) = (day(now - 5 * DAY), day(now - 3 * DAY));
    for source in ["vc", "vn"] {
        let out = backfill(&env, source, &from, &to);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let in_range = |secs: i64| (from.as_str()..=to.as_str()).contains(&day(secs).as_str());
    let mut want_vc: Vec<String> = env
        .sim
        .voice_calls()
        .calls()
        .iter()
        .filter(|c| c.is_final() && in_range(c.start_secs))
        .map(|c| c.id.clone())
        .collect();
    want_vc.sort();
    let got_vc: Vec<String> = rows_by_id(&env, "vc").into_keys().collect();
    assert_eq!(got_vc, want_vc);
    let mut want_vn: Vec<String> = env
        .sim
        .vonage()
        .sessions()
        .iter()
        .filter(|s| s.is_final() && in_range(s.start_us.div_euclid(1_000_000)))
        .map(|s| s.id.clone())
        .collect();
    want_vn.sort();
    let got_vn: Vec<String> = rows_by_id(&env, "vn").into_keys().collect();
    assert_eq!(got_vn, want_vn);
    // A sync afterwards adds the rest of each source, nothing twice.
    env.sync_ok();
    assert_eq!(
        rows_by_id(&env, "vc").len(),
        env.sim.voice_calls().calls().len()
    );
    assert_eq!(
        rows_by_id(&env, "vn").len(),
        env.sim.vonage().sessions().len()
    );
    // And a backfill after the sync adds nothing.
    for source in ["vc", "vn"] {
        let out = backfill(&env, source, &from, &to);
        assert!(text(&out).contains("ok: 0 calls written"), "{}", text(&out));
    }
    assert_eq!(
        rows_by_id(&env, "vc").len(),
        env.sim.voice_calls().calls().len()
    );
}
