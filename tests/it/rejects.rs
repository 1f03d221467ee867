//! Promise: a reject is written once. A malformed record that the lookback lists again on
//! every sync (or a repair reads again) writes and counts nothing more; a record the vendor
//! corrects is exported, and one that changes but stays malformed is judged (rejected) again.
//! A part the vendor re-issues on every response (a signed recording URL) is no change.

use std::collections::BTreeSet;

use crate::helpers::*;
use crate::vonage::setup;

fn reject_ids(env: &Env) -> Vec<String> {
    rejects(&env.warehouse())
        .iter()
        .map(|r| r["call_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_malformed_record_listed_again_by_the_lookback_is_rejected_once() {
    // 600 sessions in the last day: all inside the one-day lookback, so every sync lists
    // them again.
    let env = setup(500, 1, 0.0, 100, 7);
    let bad: BTreeSet<String> = {
        let mut vn = env.sim.vonage();
        vn.sessions_mut()
            .iter_mut()
            .filter(|s| s.is_final())
            .step_by(25)
            .take(21)
            .map(|s| {
                s.malformed_duration = true;
                s.id.clone()
            })
            .collect()
    };
    assert_eq!(bad.len(), 21);
    let mut lines_after = Vec::new();
    for _ in 0..3 {
        env.sync_ok();
        lines_after.push(reject_ids(&env).len());
    }
    assert_eq!(
        lines_after,
        [21, 21, 21],
        "reject lines after each of three syncs"
    );
    let got: BTreeSet<String> = reject_ids(&env).into_iter().collect();
    assert_eq!(got, bad, "the rejects are the malformed sessions");
    let vn = source_status(&env, "vn");
    assert_eq!(vn["rejects_total"], 21, "{vn}");
    let rows = rows_by_id(&env, "vn");
    assert!(bad.iter().all(|id| !rows.contains_key(id)));

    // The vendor corrects one record and breaks another differently: the first is exported,
    // the second rejected again (its record changed), the rest stay silent.
    let mut ids = bad.iter();
    let (fixed, changed) = (ids.next().unwrap().clone(), ids.next().unwrap().clone());
    {
        let mut vn = env.sim.vonage();
        for s in vn.sessions_mut() {
            if s.id == fixed {
                s.malformed_duration = false;
            }
            if s.id == changed {
                s.duration_ms += 7_000;
            }
        }
    }
    env.sync_ok();
    env.sync_ok();
    let rows = rows_by_id(&env, "vn");
    assert!(rows.contains_key(&fixed), "a corrected record is exported");
    let ids = reject_ids(&env);
    assert_eq!(ids.len(), 22, "only the changed record is rejected again");
    assert_eq!(ids.iter().filter(|i| **i == changed).count(), 2);

    // A repair rebuilds what was rejected from the lake's rejects: nothing is written again.
    let out = env.run(&["repair", "--source", "vn", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    env.sync_ok();
    assert_eq!(
        reject_ids(&env).len(),
        22,
        "no reject written again after a repair"
    );
    let _ = rows_by_id(&env, "vn");
}

/// Syncs three times and returns the reject lines after each, and the rejects counted.
fn three_syncs(env: &Env, source: &str) -> (Vec<usize>, serde_json::Value) {
    let mut lines = Vec::new();
    for _ in 0..3 {
        env.sync_ok();
        lines.push(reject_ids(env).len());
    }
    (lines, source_status(env, source)["rejects_total"].clone())
}

#[test]
fn exotel_calls_whose_recording_url_is_signed_anew_are_rejected_once() {
    // Calls of the last day: the one-day lookback lists them again on every sync.
    let env = crate::exotel_calls::setup(200, 1, "");
    let bad: BTreeSet<String> = {
        let mut ex = env.sim.exotel();
        ex.calls.signed_urls = true;
        ex.calls
            .calls_mut()
            .iter_mut()
            .filter(|c| c.recording_url.is_some())
            .take(8)
            .map(|c| {
                c.malformed_duration = true;
                c.sid.clone()
            })
            .collect()
    };
    assert_eq!(bad.len(), 8);
    let (lines, counted) = three_syncs(&env, "ex");
    assert_eq!(lines, [8, 8, 8], "reject lines after each of three syncs");
    assert_eq!(counted, 8);
    let raws: Vec<String> = rejects(&env.warehouse())
        .iter()
        .map(|r| r["raw"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        raws.iter().all(|r| r.contains("Signature=")),
        "the rejected records carry signed URLs"
    );
    let got: BTreeSet<String> = reject_ids(&env).into_iter().collect();
    assert_eq!(got, bad);
    // A real change is judged again; a repair knows the rejects by their fingerprint.
    let changed = bad.iter().next().unwrap().clone();
    {
        let mut ex = env.sim.exotel();
        let c = ex
            .calls
            .calls_mut()
            .iter_mut()
            .find(|c| c.sid == changed)
            .unwrap();
        c.status = "failed".into();
    }
    env.sync_ok();
    env.sync_ok();
    assert_eq!(
        reject_ids(&env).len(),
        9,
        "only the changed call is rejected again"
    );
    let out = env.run(&["repair", "--source", "ex", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    env.sync_ok();
    assert_eq!(
        reject_ids(&env).len(),
        9,
        "no reject written again after a repair"
    );
}

#[test]
fn a_vonage_session_whose_audio_url_is_signed_anew_is_rejected_once() {
    let env = setup(300, 1, 0.0, 100, 11);
    let bad: BTreeSet<String> = {
        let mut vn = env.sim.vonage();
        vn.signed_urls = true;
        vn.sessions_mut()
            .iter_mut()
            .filter(|s| s.is_final())
            .step_by(30)
            .take(6)
            .map(|s| {
                s.malformed_duration = true;
                s.id.clone()
            })
            .collect()
    };
    assert_eq!(bad.len(), 6);
    let (lines, counted) = three_syncs(&env, "vn");
    assert_eq!(lines, [6, 6, 6], "reject lines after each of three syncs");
    assert_eq!(counted, 6);
    assert!(
        rejects(&env.warehouse())
            .iter()
            .all(|r| r["raw"].as_str().unwrap_or_default().contains("Signature=")),
        "the rejected sessions carry signed URLs"
    );
}
