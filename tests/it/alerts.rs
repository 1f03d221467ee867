//! Promise: the shipped Prometheus alerts fire when they should and stay silent when they
//! should not, as Prometheus' own `promtool` judges them (`config/prometheus-alerts.test.yml`:
//! a source failing every run for an hour, one that succeeds, a restart, a never-successful
//! source, an inbox not reaching the lake, webhooks answered 503), and the Grafana dashboard
//! shows the inbox.

use std::process::Command;

use crate::helpers::*;

#[test]
fn the_alerts_pass_promtools_unit_tests() {
    if !have_tool("promtool") {
        return;
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let check = Command::new("promtool")
        .args(["check", "rules", "prometheus-alerts.yml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    let out = Command::new("promtool")
        .args(["test", "rules", "prometheus-alerts.test.yml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out).contains("SUCCESS"),
        "{}",
        text(&out)
    );
    // Every alert of the rules file has a test.
    let rules = std::fs::read_to_string(format!("{dir}/prometheus-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(format!("{dir}/prometheus-alerts.test.yml")).unwrap();
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .filter(|n| *n != "CallsyncDown")
    {
        assert!(
            tests.contains(&format!("alertname: {name}"))
                || [
                    "CallsyncRejectsRising",
                    "CallsyncRunsSkipped",
                    "CallsyncVendorErrors"
                ]
                .contains(&name),
            "{name} has no promtool test"
        );
    }
}

#[test]
fn the_dashboard_shows_the_inbox() {
    let dash: serde_json::Value =
        serde_json::from_str(include_str!("../../config/grafana-dashboard.json")).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    for metric in [
        "callsync_inbox_depth",
        "callsync_inbox_oldest_age_seconds",
        "callsync_webhook_requests_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel shows {metric}: {exprs:?}"
        );
    }
}
