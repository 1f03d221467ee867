//! Promise: the voice-calls source exports exactly the final calls of its windows, with
//! transcripts and surveys, whatever the list envelope or page cap; calls in progress hold
//! the cursor and are exported once they finish.

use std::collections::BTreeMap;

use callsync::simulator::voice_calls::recording_bytes;
use callsync::simulator::{Envelope, FaultKind, FaultPlan, VcCall, VoicegainSim};

use crate::helpers::*;

const DAY: i64 = 86_400;

/// What the lake must hold for a call: (survey, duration_ms, direction, campaign, turns).
type VcRow = (
    Option<f64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Vec<Turn>,
);

fn read_voice_calls(env: &Env) -> BTreeMap<String, VcRow> {
    rows_by_id(env, "vc")
        .into_iter()
        .map(|(id, r)| {
            let row = (
                r.survey_score,
                r.duration_ms,
                r.direction,
                r.campaign_id,
                r.transcript.unwrap_or_default(),
            );
            (id, row)
        })
        .collect()
}

fn expected(c: &VcCall) -> VcRow {
    let turns = c
        .turns
        .iter()
        .map(|(r, t, o)| {
            (
                Some(r.clone()),
                None,
                Some(t.clone()),
                Some(*o as i64 * 1000),
            )
        })
        .collect();
    (
        c.epa_score,
        Some(c.duration_secs as i64 * 1000),
        Some(c.direction.to_lowercase()),
        Some(c.campaign_id.clone()),
        turns,
    )
}

/// A simulator with `n` voice calls over the last five days (fraction `open` in progress,
/// all of those within the last 12 hours), and a config with source `vc`.
pub(crate) fn setup(
    n: usize,
    open: f64,
    envelope: Envelope,
    page_cap: usize,
    extra_keys: &str,
) -> Env {
    let env = Env::new(VoicegainSim::new(1, 0), 100);
    let now = chrono::Utc::now().timestamp();
    {
        let mut vc = env.sim.voice_calls();
        vc.envelope = envelope;
        vc.page_cap = page_cap;
        vc.add_calls(n, now - 5 * DAY, now - DAY / 2, 0.0);
        vc.add_calls(n / 5, now - DAY / 2, now - 3600, open);
    }
    let token = token_file(&env, "vc", &env.sim.voice_calls().token.clone());
    let start = chrono::DateTime::from_timestamp(now - 6 * DAY, 0)
        .unwrap()
        .format("%Y-%m-%d");
    env.write_config(
        &format!(
            "[sources.vc]\nkind = \"voice_calls\"\nbase_url = \"{}\"\ntoken_file = \"{}\"\nstart_date = \"{start}\"\n\
             page_size = 20\nwindow_days = 2\ndetail_concurrency = 4\n{extra_keys}\
             [sources.vc.http]\nmax_attempts = 8\nbackoff_initial_ms = 5\nbackoff_max_ms = 50\n",
            env.sim.voice_calls_base_url(),
            token.display()
        ),
        100_000,
    );
    env
}

pub(crate) fn assert_exact(env: &Env) {
    let got = read_voice_calls(env);
    let vc = env.sim.voice_calls();
    let want: BTreeMap<String, VcRow> = vc
        .calls()
        .iter()
        .filter(|c| c.is_final())
        .map(|c| (c.id.clone(), expected(c)))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "call ids differ"
    );
    assert_eq!(got, want);
}

#[test]
fn voice_calls_export_equals_the_ground_truth_with_transcripts_and_surveys() {
    let env = setup(300, 0.0, Envelope::Data, 15, "");
    env.sync_ok();
    assert_exact(&env);
    let vc = env.sim.voice_calls();
    assert!(
        vc.calls()
            .iter()
            .any(|c| c.epa_score.is_some() && !c.epa_inline),
        "some surveys are separate"
    );
    assert!(
        vc.calls().iter().any(|c| c.epa_score.is_none()),
        "some calls have no survey (404)"
    );
}

#[test]
fn voice_calls_in_progress_hold_the_cursor_and_are_exported_once_finished() {
    let env = setup(200, 0.3, Envelope::Bare, 1000, "");
    env.sync_ok();
    assert_exact(&env);
    let open = env
        .sim
        .voice_calls()
        .calls()
        .iter()
        .filter(|c| !c.is_final())
        .count();
    assert!(open > 0);
    let finished = env.sim.voice_calls().finish_open();
    assert_eq!(finished.len(), open);
    let out = env.sync_ok();
    assert_exact(&env);
    assert!(
        text(&out).contains(&format!("{open} calls written")),
        "{}",
        text(&out)
    );
    // A third, idle sync writes nothing.
    let out = env.sync_ok();
    assert!(text(&out).contains("0 calls written"), "{}", text(&out));
}

#[test]
fn voice_calls_with_faults_still_end_exact() {
    let env = setup(250, 0.0, Envelope::VoiceCalls, 1000, "");
    env.sim.set_faults(FaultPlan::every(
        3,
        vec![
            FaultKind::ServerError(502),
            FaultKind::TooManyRequests {
                retry_after_secs: 0,
            },
            FaultKind::Drop,
        ],
    ));
    env.sync_ok();
    assert_exact(&env);
}

#[test]
fn voice_calls_recordings_are_downloaded_through_the_commit_path_with_fresh_signed_urls() {
    let env = setup(
        150,
        0.0,
        Envelope::Items,
        1000,
        "download_recordings = true\n",
    );
    // Every call's first signed URL has already expired: callsync must ask for a new one.
    env.sim.voice_calls().expire_first_url = true;
    // 503s answer before any URL is issued or checked, so they leave the count of refused
    // first URLs exact (a dropped answer would hide a first URL from callsync).
    env.sim.set_faults(FaultPlan::every(
        7,
        vec![
            FaultKind::ServerError(503),
            FaultKind::Slow(std::time::Duration::from_millis(20)),
        ],
    ));
    env.sync_ok();
    assert_exact(&env);
    let rows = rows_by_id(&env, "vc");
    let vc = env.sim.voice_calls();
    let mut recordings = 0;
    for c in vc.calls().iter().filter(|c| c.is_final()) {
        let r = &rows[&c.id];
        if !c.has_recording {
            assert_eq!(r.recording_ref, None, "{}", c.id);
            continue;
        }
        recordings += 1;
        let day = chrono::DateTime::from_timestamp(c.start_secs, 0)
            .unwrap()
            .format("%Y-%m-%d");
        let want = format!("recordings/source=vc/date={day}/{}.wav", c.id);
        assert_eq!(r.recording_ref.as_deref(), Some(want.as_str()));
        let bytes = std::fs::read(env.warehouse().join(&want)).unwrap();
        assert!(
            bytes == recording_bytes(&c.id),
            "recording of {} differs",
            c.id
        );
    }
    assert!(recordings > 50);
    assert_eq!(
        vc.blob_refusals, recordings,
        "each first URL was expired and refused once"
    );
    assert_eq!(
        vc.blob_requests_with_auth, 0,
        "the API token was sent to the signed URL"
    );
    drop(vc);
    assert!(staging_files(&env.warehouse()).is_empty());
    // The signed URL is never stored.
    for path in files_with_suffix(env.dir.path(), "") {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(4).any(|w| w == b"sig="),
            "a signed URL is stored in {}",
            path.display()
        );
    }
    // A second sync downloads nothing again.
    let before = files_with_suffix(&env.warehouse().join("recordings"), ".wav").len();
    env.sync_ok();
    assert_eq!(
        files_with_suffix(&env.warehouse().join("recordings"), ".wav").len(),
        before
    );
}
