//! Promise: the lake and the state agree or nothing is exported. A lost state, or an older
//! copy of it put back, makes a run refuse (naming `callsync repair`) with the lake left
//! byte-for-byte as it was; `repair` rebuilds the state from the lake and the next syncs add
//! exactly the new calls; `verify` passes on a healthy lake and names a missing and a foreign
//! file.

use std::collections::BTreeMap;
use std::path::Path;

use callsync::simulator::VoicegainSim;

use crate::helpers::*;

/// Every file under the warehouse with its bytes.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    files_with_suffix(root, "")
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p.strip_prefix(root).unwrap().display().to_string(), bytes)
        })
        .collect()
}

/// A Voicegain source `vg` and a Vonage source `vn` on one simulator.
fn two_sources() -> Env {
    let env = Env::with_max_rows(VoicegainSim::new(70, 0).with_ratios(0.01, 0.01), 200, 700);
    env.sim.voicegain().add_calls(1500);
    let now = chrono::Utc::now().timestamp_micros();
    env.sim
        .vonage()
        .add_sessions(300, now - 3 * 86_400_000_000, now - 3_600_000_000, 0.0);
    let vg_token = token_file(&env, "vg", &env.sim.voicegain().token.clone());
    let vn_key = token_file(&env, "vn", &env.sim.vonage().api_key.clone());
    let start = chrono::DateTime::from_timestamp_micros(now - 4 * 86_400_000_000)
        .unwrap()
        .format("%Y-%m-%d");
    env.write_config(
        &format!(
            "{}[sources.vn]\nkind = \"vonage_insights\"\nbase_url = \"{}\"\napi_key_file = \"{}\"\nstart_date = \"{start}\"\npage_size = 50\nwindow_days = 2\n",
            vg_table(
                "vg",
                &env.sim.voicegain_base_url(),
                &format!("token_file = \"{}\"", vg_token.display()),
                200
            ),
            env.sim.vonage_base_url(),
            vn_key.display()
        ),
        700,
    );
    env
}

fn copy_state(env: &Env, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for suffix in ["", "-wal"] {
        let from = env
            .state_path()
            .with_file_name(format!("callsync.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, to.join(format!("callsync.db{suffix}"))).unwrap();
        }
    }
}

fn put_state_back(env: &Env, from: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(
            env.state_path()
                .with_file_name(format!("callsync.db{suffix}")),
        );
    }
    for suffix in ["", "-wal"] {
        let f = from.join(format!("callsync.db{suffix}"));
        if f.exists() {
            std::fs::copy(
                &f,
                env.state_path()
                    .with_file_name(format!("callsync.db{suffix}")),
            )
            .unwrap();
        }
    }
}

fn assert_refused(env: &Env) {
    let before = snapshot(&env.warehouse());
    let out = env.run(&["sync"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for source in ["vg", "vn"] {
        assert!(
            t.contains(&format!(
                "{source}: FAILED: source {source}: the lake {}",
                env.warehouse().display()
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!("callsync repair --source {source}")),
            "{t}"
        );
    }
    assert!(t.contains(&env.state_path().display().to_string()), "{t}");
    assert!(
        snapshot(&env.warehouse()) == before,
        "a refused sync changed the lake"
    );
}

fn assert_vonage_exact(env: &Env) {
    let got: Vec<String> = rows_by_id(env, "vn").into_keys().collect();
    let mut want: Vec<String> = env
        .sim
        .vonage()
        .sessions()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_lost_or_older_state_is_refused_and_repair_rebuilds_it_without_a_duplicate() {
    let env = two_sources();
    env.sync_ok();
    let old = env.dir.path().join("old-state");
    copy_state(&env, &old);
    // More syncs after the copy.
    env.sim.voicegain().finish_pending();
    env.sim.voicegain().add_calls(400);
    let now = chrono::Utc::now().timestamp_micros();
    env.sim
        .vonage()
        .add_sessions(50, now - 10 * 3_600_000_000, now - 3_600_000_000, 0.0);
    env.sync_ok();
    let healthy = env.run(&["verify"]);
    assert_eq!(healthy.status.code(), Some(0), "{}", text(&healthy));

    // 1. The state is lost (a container started without its volume).
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(
            env.state_path()
                .with_file_name(format!("callsync.db{suffix}")),
        );
    }
    assert_refused(&env);
    // 2. An older copy of the state is put back.
    put_state_back(&env, &old);
    assert_refused(&env);
    let out = env.run(&[
        "backfill",
        "--source",
        "vg",
        "--from",
        "2025-01-01",
        "--to",
        "2025-01-02",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "backfill runs the same check: {}",
        text(&out)
    );
    assert!(text(&out).contains("callsync repair"), "{}", text(&out));

    // repair, then sync with new calls: the exact set, nothing twice.
    let out = env.run(&["repair"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("vg: rebuilt from the lake"),
        "{}",
        text(&out)
    );
    let v = env.run(&["verify"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    env.sim.voicegain().add_calls(300);
    env.sim
        .vonage()
        .add_sessions(30, now - 5 * 3_600_000_000, now - 3_600_000_000, 0.0);
    let out = env.sync_ok();
    assert!(
        text(&out).contains("vn: ok: 30 calls written"),
        "{}",
        text(&out)
    );
    assert_lake_matches_truth_of(&env, "vg");
    assert_vonage_exact(&env);
    // A second repair finds the state in agreement and leaves it alone.
    let out = env.run(&["repair", "--source", "vg"]);
    assert!(
        text(&out).contains("vg: the state agrees with the lake; left alone"),
        "{}",
        text(&out)
    );
    let v = env.run(&["verify"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
}

#[test]
fn verify_names_a_deleted_and_a_foreign_parquet_file() {
    let env = two_sources();
    env.sync_ok();
    let out = env.run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("verify: clean"), "{}", text(&out));
    let files = files_with_suffix(&env.warehouse().join("calls/source=vg"), ".parquet");
    let deleted = files[0]
        .strip_prefix(env.warehouse())
        .unwrap()
        .display()
        .to_string();
    std::fs::remove_file(&files[0]).unwrap();
    let foreign_dir = env.warehouse().join("calls/source=vn/date=2020-01-01");
    std::fs::create_dir_all(&foreign_dir).unwrap();
    let other = files_with_suffix(&env.warehouse().join("calls/source=vn"), ".parquet");
    std::fs::copy(&other[0], foreign_dir.join("part-mine-1.parquet")).unwrap();
    let out = env.run(&["verify"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let lines: Vec<&str> = t
        .lines()
        .filter(|l| !l.contains("note:") && !l.starts_with("verify:"))
        .collect();
    assert_eq!(lines.len(), 2, "{t}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("vg: missing: ") && l.contains(&deleted)),
        "{t}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("vn: foreign: ")
            && l.contains("calls/source=vn/date=2020-01-01/part-mine-1.parquet")),
        "{t}"
    );
}

#[test]
fn a_new_source_runs_beside_one_whose_state_was_lost() {
    let env = two_sources();
    let out = env.run(&["sync", "--source", "vg"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(
            env.state_path()
                .with_file_name(format!("callsync.db{suffix}")),
        );
    }
    let out = env.run(&["sync"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("vg: FAILED") && t.contains("callsync repair --source vg"),
        "{t}"
    );
    assert!(t.contains("vn: ok: 300 calls written"), "{t}");
}
