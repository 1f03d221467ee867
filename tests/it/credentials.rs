//! Promise: a rejected or missing credential fails that source only, with a message naming
//! the source and the status; the secret never appears in output, state or lake.

use callsync::simulator::VoicegainSim;

use crate::helpers::*;

fn all_bytes_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    files_with_suffix(dir, "")
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_wrong_token_fails_that_source_with_its_status_and_others_still_export() {
    let env = Env::new(VoicegainSim::new(30, 0), 100);
    env.sim.voicegain().add_calls(300);
    let base = env.sim.voicegain_base_url();
    let good = std::fs::read_to_string(&env.config).unwrap();
    let good = good[good.find("[sources.vg]").unwrap()..].to_string();
    let bad = vg_table("bad", &base, "token_env = \"CALLSYNC_TEST_BAD_TOKEN\"", 100);
    let unset = vg_table(
        "unset",
        &base,
        "token_env = \"CALLSYNC_TEST_UNSET_TOKEN\"",
        100,
    );
    env.write_config(&format!("{good}{bad}{unset}"), 100_000);
    let out = env
        .command(&["sync"])
        .env("CALLSYNC_TEST_BAD_TOKEN", "wrong-secret-7c1d")
        .env_remove("CALLSYNC_TEST_UNSET_TOKEN")
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("bad: FAILED: source bad: the vendor rejected the credential (HTTP 401)"),
        "{t}"
    );
    assert!(
        t.contains("unset: FAILED") && t.contains("CALLSYNC_TEST_UNSET_TOKEN is not set"),
        "{t}"
    );
    assert!(!t.contains("wrong-secret-7c1d"), "the secret leaked:\n{t}");
    assert!(t.contains("vg: ok"), "{t}");
    assert_lake_matches_truth(&env);
    let status = env.run(&["status"]);
    assert!(text(&status).contains("HTTP 401"), "{}", text(&status));
}

#[test]
fn the_token_appears_in_no_output_at_any_log_level_nor_in_state_or_lake() {
    let mut data = VoicegainSim::new(31, 0).with_ratios(0.0, 0.02);
    data.token = "tok-SECRET-91f3e7a2".to_string();
    let env = Env::new(data, 50);
    env.sim.voicegain().add_calls(400);
    // Once from token_file (the default helper config), once from token_env.
    for (i, via_env) in [false, true].into_iter().enumerate() {
        if via_env {
            let cfg = std::fs::read_to_string(&env.config).unwrap();
            let start = cfg.find("token_file").unwrap();
            let end = start + cfg[start..].find('\n').unwrap();
            let cfg = format!(
                "{}token_env = \"CALLSYNC_TEST_TOKEN\"{}",
                &cfg[..start],
                &cfg[end..]
            );
            std::fs::write(&env.config, cfg).unwrap();
            env.sim.voicegain().add_calls(100);
        }
        let out = env
            .command(&["sync"])
            .env("RUST_LOG", "trace")
            .env("CALLSYNC_TEST_TOKEN", "tok-SECRET-91f3e7a2")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "run {i}: {}", text(&out));
        let t = text(&out);
        assert!(
            t.contains("TRACE") || t.contains("DEBUG"),
            "trace logging was not on"
        );
        assert!(
            !t.contains("SECRET-91f3e7a2"),
            "the token leaked into output:\n{t}"
        );
        let status = env.run(&["status", "--json"]);
        assert!(!text(&status).contains("SECRET-91f3e7a2"));
    }
    assert_lake_matches_truth(&env);
    let token_file = env.dir.path().join("vg.token");
    for (path, bytes) in all_bytes_under(env.dir.path()) {
        if path == token_file || path == env.config {
            continue;
        }
        assert!(
            !contains(&bytes, b"SECRET-91f3e7a2"),
            "the token is in {}",
            path.display()
        );
    }
}
