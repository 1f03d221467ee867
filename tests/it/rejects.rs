//! Promise: a reject is written once. A malformed record that the lookback lists again on
//! every sync (or a repair reads again) writes and counts nothing more; a record the vendor
//! corrects is exported, and one that changes but stays malformed is judged (rejected) again.

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
