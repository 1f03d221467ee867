//! Promise: a sync exports exactly the vendor's final calls, once, with their fields; later
//! syncs add exactly what finished since; faults do not change the result.

use std::time::Duration;

use callsync::simulator::{FaultKind, FaultPlan, VoicegainSim};

use crate::helpers::*;

#[test]
fn a_full_sync_equals_the_ground_truth() {
    let env = Env::new(VoicegainSim::new(1, 0).with_ratios(0.0, 0.01), 500);
    env.sim.voicegain().add_calls(2500);
    let out = env.sync_ok();
    assert_lake_matches_truth(&env);
    assert!(text(&out).contains("vg: ok"), "{}", text(&out));
    assert!(staging_files(&env.warehouse()).is_empty());
    // Small export, one commit: one file per partition day, not one per page.
    let files = files_with_suffix(&env.warehouse().join("calls"), ".parquet");
    let days: std::collections::BTreeSet<String> = env.lake().into_iter().map(|r| r.date).collect();
    assert_eq!(files.len(), days.len());
}

#[test]
fn malformed_rows_land_in_rejects_with_their_reason() {
    let env = Env::new(VoicegainSim::new(2, 0).with_ratios(0.0, 0.05), 200);
    env.sim.voicegain().add_calls(600);
    env.sync_ok();
    let want = env.sim.voicegain().expected_rejected();
    assert!(!want.is_empty());
    let rejects = rejects(&env.warehouse());
    let mut got: Vec<u64> = rejects
        .iter()
        .map(|r| r["call_id"].as_str().unwrap().parse().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, want);
    for r in &rejects {
        assert_eq!(r["source"], "vg");
        assert!(r["error"].as_str().unwrap().contains("startTime"), "{r}");
        let raw: serde_json::Value = serde_json::from_str(r["raw"].as_str().unwrap()).unwrap();
        assert_eq!(raw["callId"], r["call_id"]);
    }
    // The export went on past them.
    assert_lake_matches_truth(&env);
    let status = env.run(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s[0]["rejects_total"].as_u64(), Some(want.len() as u64));
}

#[test]
fn pending_calls_that_finish_are_added_by_the_next_sync_exactly() {
    let env = Env::new(VoicegainSim::new(3, 0).with_ratios(0.02, 0.0), 100);
    env.sim.voicegain().add_calls(1500);
    env.sync_ok();
    let first = unique_ids(&env.lake());
    assert_lake_matches_truth(&env);
    let total_final = env.sim.voicegain().calls().filter(|c| c.is_final()).count();
    assert!(
        first.len() < total_final,
        "the export must stop at the first pending call"
    );

    let finished = env.sim.voicegain().finish_pending();
    assert!(!finished.is_empty());
    env.sim.voicegain().pending_ratio = 0.0;
    env.sim.voicegain().add_calls(50);
    let out = env.sync_ok();
    assert_lake_matches_truth(&env);
    let second = unique_ids(&env.lake());
    let all = env.sim.voicegain().calls().count();
    assert_eq!(second.len(), all);
    let added = second.len() - first.len();
    assert!(
        text(&out).contains(&format!("{added} calls written")),
        "{}",
        text(&out)
    );
}

#[test]
fn an_idle_resync_asks_the_api_at_most_twice_and_writes_nothing() {
    let env = Env::new(VoicegainSim::new(4, 0), 1000);
    env.sim.voicegain().add_calls(1200);
    env.sync_ok();
    let files = files_with_suffix(env.warehouse().as_path(), "");
    let before = env.sim.requests();
    let out = env.sync_ok();
    assert!(
        env.sim.requests() - before <= 2,
        "idle sync made {} requests",
        env.sim.requests() - before
    );
    assert_eq!(files_with_suffix(env.warehouse().as_path(), ""), files);
    assert!(text(&out).contains("0 calls written"));
    assert_lake_matches_truth(&env);
}

#[test]
fn faults_429_5xx_slow_and_dropped_connections_still_end_exact() {
    let env = Env::new(VoicegainSim::new(5, 0).with_ratios(0.0, 0.01), 200);
    env.sim.voicegain().add_calls(3000);
    env.sim.set_faults(FaultPlan::every(
        2,
        vec![
            FaultKind::TooManyRequests {
                retry_after_secs: 0,
            },
            FaultKind::ServerError(503),
            FaultKind::Drop,
            FaultKind::Slow(Duration::from_millis(30)),
            FaultKind::ServerError(500),
            FaultKind::TooManyRequests {
                retry_after_secs: 1,
            },
        ],
    ));
    let out = env.sync_ok();
    assert!(
        text(&out).contains("retrying"),
        "faults should have been retried:\n{}",
        text(&out)
    );
    assert_lake_matches_truth(&env);
}

#[test]
fn the_vendor_refuses_sorting_with_consecutive_and_callsync_never_sends_it() {
    // The simulator answers 400 to sort parameters with consecutive=true (as the vendor
    // does); a clean sync therefore proves callsync's requests never carry them.
    let env = Env::new(VoicegainSim::new(6, 0), 50);
    env.sim.voicegain().add_calls(120);
    env.sync_ok();
    assert_lake_matches_truth(&env);
    let url = format!(
        "{}/sa/call?format=csv&consecutive=true&sort_by=time",
        env.sim.voicegain_base_url()
    );
    let token = env.sim.voicegain().token.clone();
    let status = env.rt.block_on(async {
        reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status.as_u16(), 400);
}

#[test]
fn parquet_files_are_zstd_with_statistics_where_queries_prune() {
    use parquet::basic::Compression;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::statistics::Statistics;

    let env = Env::new(VoicegainSim::new(4, 0), 300);
    env.sim.voicegain().add_calls(900);
    env.sync_ok();
    let files = files_with_suffix(&env.warehouse().join("calls"), ".parquet");
    assert!(!files.is_empty());
    for f in files {
        let day = f
            .components()
            .filter_map(|c| c.as_os_str().to_str()?.strip_prefix("date="))
            .next()
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .unwrap_or_else(|| panic!("{} has no date partition", f.display()));
        let day_start = day
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_micros();
        let reader = SerializedFileReader::new(std::fs::File::open(&f).unwrap()).unwrap();
        for rg in reader.metadata().row_groups() {
            let col = |name: &str| {
                rg.columns()
                    .iter()
                    .find(|c| c.column_path().string() == name)
                    .unwrap_or_else(|| panic!("no column {name}"))
            };
            for c in rg.columns() {
                assert!(
                    matches!(c.compression(), Compression::ZSTD(_)),
                    "{} in {} is {:?}",
                    c.column_path(),
                    f.display(),
                    c.compression()
                );
            }
            // Readers prune on the start time: its min/max lie within the partition's day.
            match col("started_at").statistics() {
                Some(Statistics::Int64(s)) => {
                    let (min, max) = (*s.min_opt().unwrap(), *s.max_opt().unwrap());
                    assert!(day_start <= min && min <= max && max < day_start + 86_400_000_000);
                }
                other => panic!("started_at statistics: {other:?}"),
            }
            assert!(col("call_id").statistics().is_some());
            // Free text carries none: they would cost a comparison per value and prune nothing.
            assert!(col("raw").statistics().is_none());
            assert!(col("summary").statistics().is_none());
        }
    }
}
