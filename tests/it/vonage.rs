//! Promise: the Vonage insights source exports exactly the ended sessions of its windows,
//! splits windows too dense to page instead of paging past the 10,000th result, holds its
//! cursor at sessions in progress, and tells a refused date range from a refused key.

use std::collections::BTreeMap;

use callsync::secret::Secret;
use callsync::settings::HttpConfig;
use callsync::simulator::{FaultKind, FaultPlan, VnSession, VoicegainSim};
use callsync::sources::vonage_insights::client::VonageClient;

use crate::helpers::*;

const DAY_US: i64 = 86_400_000_000;

/// A simulator with `n` ended sessions in the `days` days before the last hour, `n / 5` more
/// in the last 12 hours of which a fraction `open` is in progress, and source `vn`.
pub(crate) fn setup(n: usize, days: i64, open: f64, page_size: u32, window_days: u32) -> Env {
    let env = Env::new(VoicegainSim::new(1, 0), 100);
    let now = chrono::Utc::now().timestamp_micros();
    {
        let mut vn = env.sim.vonage();
        vn.add_sessions(n, now - days * DAY_US, now - 3_600_000_000, 0.0);
        vn.add_sessions(n / 5, now - DAY_US / 2, now - 3_600_000_000, open);
    }
    let key = token_file(&env, "vn", &env.sim.vonage().api_key.clone());
    let start = chrono::DateTime::from_timestamp_micros(now - (days + 1) * DAY_US)
        .unwrap()
        .format("%Y-%m-%d");
    env.write_config(
        &format!(
            "[sources.vn]\nkind = \"vonage_insights\"\nbase_url = \"{}\"\napi_key_file = \"{}\"\nstart_date = \"{start}\"\n\
             page_size = {page_size}\nwindow_days = {window_days}\n\
             [sources.vn.http]\nmax_attempts = 8\nbackoff_initial_ms = 5\nbackoff_max_ms = 50\n",
            env.sim.vonage_base_url(),
            key.display()
        ),
        100_000,
    );
    env
}

/// The lake holds exactly the ended sessions that started before `settled_before_us`, plus
/// the ones still in progress after a day (exported as they are); `as_exported` lists ids
/// whose simulator state changed after they were exported (fields not compared).
pub(crate) fn assert_exact(env: &Env, settled_before_us: i64, as_exported: &[String]) {
    let got = rows_by_id(env, "vn");
    let vn = env.sim.vonage();
    let expired = now_us() - DAY_US;
    let want: BTreeMap<String, &VnSession> = vn
        .sessions()
        .iter()
        .filter(|s| (s.is_final() || s.start_us < expired) && s.start_us < settled_before_us)
        .map(|s| (s.id.clone(), s))
        .collect();
    assert_eq!(
        got.len(),
        want.len(),
        "row count differs from the ground truth"
    );
    assert!(
        got.keys().eq(want.keys()),
        "session ids differ from the ground truth"
    );
    for (id, r) in &got {
        let s = want[id];
        if as_exported.contains(id) {
            continue;
        }
        assert_eq!(r.started_at, Some(s.start_us));
        assert_eq!(r.vendor_status.as_deref(), Some(s.status.as_str()));
        let ended = s.is_final().then(|| s.start_us + s.duration_ms * 1000);
        assert_eq!(r.ended_at, ended);
        assert_eq!(r.duration_ms, s.is_final().then_some(s.duration_ms));
        assert_eq!(r.from_number.as_deref(), Some(s.source.as_str()));
        assert_eq!(r.to_number.as_deref(), Some(s.destination.as_str()));
        assert_eq!(r.agent_id.as_deref(), Some(s.agent_id.as_str()));
        assert_eq!(r.agent_name.as_deref(), Some(s.agent_name.as_str()));
        assert_eq!(r.language.as_deref(), Some(s.language.as_str()));
        assert_eq!(r.recording_ref.as_deref(), Some(s.audio_url.as_str()));
        let tags = (!s.tags.is_empty()).then(|| s.tags.clone());
        assert_eq!(r.tags, tags);
        let turns: Vec<Turn> = s
            .transcript
            .iter()
            .map(|(k, t)| {
                let role = if k == "user" || k == "client" {
                    "customer"
                } else {
                    "agent"
                };
                (
                    Some(role.to_string()),
                    Some(k.clone()),
                    Some(t.clone()),
                    None,
                )
            })
            .collect();
        assert_eq!(
            r.transcript.clone().unwrap_or_default(),
            turns,
            "transcript of {id}"
        );
    }
}

pub(crate) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[test]
fn vonage_export_equals_the_ground_truth_with_transcript_roles() {
    let env = setup(600, 5, 0.0, 50, 2);
    env.sync_ok();
    assert_exact(&env, now_us(), &[]);
}

#[test]
fn vonage_sessions_in_progress_are_picked_up_by_the_next_sync_once_ended() {
    let env = setup(300, 3, 0.3, 40, 1);
    // Two sessions stuck in progress for two days: exported as they are.
    let now = now_us();
    env.sim
        .vonage()
        .add_sessions(2, now - 2 * DAY_US - 3_600_000_000, now - 2 * DAY_US, 1.0);
    env.sync_ok();
    assert_exact(&env, now_us(), &[]);
    let stuck: Vec<String> = env
        .sim
        .vonage()
        .sessions()
        .iter()
        .filter(|s| !s.is_final() && s.start_us < now - DAY_US)
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(stuck.len(), 2);
    let finished = env.sim.vonage().finish_open();
    assert!(finished > stuck.len());
    let out = env.sync_ok();
    let added = finished - stuck.len();
    assert!(
        text(&out).contains(&format!("{added} calls written")),
        "{}",
        text(&out)
    );
    assert_exact(&env, now_us(), &stuck);
}

#[test]
fn vonage_25000_sessions_in_12_days_export_completely_without_paging_past_10000() {
    // 25,000 sessions over twelve days (plus 5,000 in the last twelve hours) in 14-day
    // windows: the first window holds far more than 10,000 and must be split.
    let env = setup(25_000, 12, 0.0, 1000, 14);
    // Sessions keep arriving (starting now) while callsync pages; settled windows ignore them.
    env.sim.vonage().arrivals_per_request = 3;
    let started = now_us();
    env.sync_ok();
    assert_eq!(
        env.sim.vonage().deep_refusals,
        0,
        "a query paged past the 10,000th result"
    );
    assert_exact(&env, started - 300_000_000, &[]);
    assert_eq!(rows_by_id(&env, "vn").len(), 30_000);
}

#[test]
fn vonage_with_faults_still_ends_exact() {
    let env = setup(400, 4, 0.0, 30, 2);
    env.sim.set_faults(FaultPlan::every(
        2,
        vec![
            FaultKind::TooManyRequests {
                retry_after_secs: 0,
            },
            FaultKind::Drop,
            FaultKind::ServerError(503),
        ],
    ));
    env.sync_ok();
    assert_exact(&env, now_us(), &[]);
}

#[test]
fn vonage_a_refused_date_range_is_told_apart_from_a_refused_key() {
    let env = setup(10, 1, 0.0, 10, 1);
    let to = chrono::Utc::now();
    let from = to - chrono::Duration::days(61);
    let client = |key: &str| {
        VonageClient::new(
            "vn",
            &env.sim.vonage_base_url(),
            &HttpConfig::default(),
            Secret::new(key),
        )
        .unwrap()
    };
    let good = client(&env.sim.vonage().api_key.clone());
    let err = env
        .rt
        .block_on(good.search(from, to, 0, 10))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refused the date range") && err.contains("401"),
        "{err}"
    );
    assert!(!err.contains("credential"), "{err}");
    let bad = client("wrong-key-5d2e");
    let err = env
        .rt
        .block_on(bad.search(to - chrono::Duration::days(1), to, 0, 10))
        .unwrap_err()
        .to_string();
    assert!(err.contains("rejected the credential (HTTP 401)"), "{err}");
    assert!(!err.contains("wrong-key-5d2e"), "{err}");
}
