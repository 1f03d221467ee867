//! Promise: kill -9 at any moment loses and duplicates nothing. After each kill, before any
//! restart, the lake is readable (by our reader and by DuckDB when available) with no
//! duplicate; a final sync makes it exact.

use std::time::{Duration, Instant};

use callsync::simulator::{FaultKind, FaultPlan, VoicegainSim};

use crate::helpers::*;

fn parquet_count(root: &std::path::Path) -> usize {
    files_with_suffix(&root.join("calls"), ".parquet").len()
}

#[test]
fn sigkill_at_random_moments_and_right_after_a_new_file_never_loses_or_duplicates() {
    let env = Env::with_max_rows(VoicegainSim::new(40, 0).with_ratios(0.0, 0.005), 100, 300);
    env.sim.voicegain().add_calls(6000);
    // Slow pages so kills land mid-export.
    env.sim.set_faults(FaultPlan::every(
        1,
        vec![FaultKind::Slow(Duration::from_millis(15))],
    ));
    let mut rng = fastrand::Rng::with_seed(99);
    let mut kills = 0;
    for round in 0..12 {
        let before = parquet_count(&env.warehouse());
        let mut child = env.spawn(&["sync"]);
        let t0 = Instant::now();
        if round % 2 == 0 {
            // Right after a new file appears.
            while parquet_count(&env.warehouse()) == before
                && t0.elapsed() < Duration::from_secs(20)
            {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        } else {
            std::thread::sleep(Duration::from_millis(rng.u64(20..600)));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        // Before any restart: readable, no duplicates.
        let rows = env.lake();
        let ids = unique_ids(&rows);
        if let Some((n, distinct)) = duckdb_counts(&env.warehouse()) {
            assert_eq!(n, distinct, "DuckDB sees duplicates after kill {round}");
            assert_eq!(
                n as usize,
                ids.len(),
                "DuckDB and the Parquet reader disagree"
            );
        }
    }
    assert!(kills >= 6, "only {kills} runs were killed mid-export");
    env.sim.set_faults(FaultPlan::default());
    env.sync_ok();
    assert_lake_matches_truth(&env);
    assert!(staging_files(&env.warehouse()).is_empty());
    let rejected: Vec<u64> = rejects(&env.warehouse())
        .iter()
        .map(|r| r["call_id"].as_str().unwrap().parse().unwrap())
        .collect();
    let mut dedup = rejected.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(
        dedup,
        env.sim.voicegain().expected_rejected(),
        "every malformed row is rejected"
    );
}
