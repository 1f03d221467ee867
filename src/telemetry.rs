//! Prometheus metrics of the process (`callsync_*`, a `source` label on each), kept in one
//! registry that the daemon installs and serves at `/metrics`. The pipeline and the HTTP client
//! report through the free functions here; without a daemon (a one-shot `sync`) they do nothing.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// `{source}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// `{source, outcome}`: ok, failed or skipped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub source: String,
    pub outcome: String,
}

/// `{source, status_class}`: 2xx, 3xx, 4xx, 5xx or error (no answer).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub source: String,
    pub status_class: String,
}

/// `{source, outcome}` of a webhook delivery.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub source: String,
    pub outcome: String,
}

/// `{task, outcome}` of the lake's upkeep: compaction, vacuum or checkpoint; ok or failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpkeepLabels {
    pub task: String,
    pub outcome: String,
}

/// `{outcome}` of a config reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// `{task}` of the lake's upkeep.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task: String,
}

/// `{table}`: a Delta table's folder (`calls`, `monitor_legs`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

/// The lake's upkeep tasks, every one present from start-up.
pub const UPKEEP_TASKS: &[&str] = &["compaction", "vacuum", "checkpoint"];
/// Outcomes of an upkeep task.
const UPKEEP_OUTCOMES: &[&str] = &["ok", "failed"];
/// The Delta tables, every one present from start-up.
const TABLES: &[&str] = &["calls", "monitor_legs"];

/// Webhook outcomes, every one present from start-up for push sources.
pub const WEBHOOK_OUTCOMES: &[&str] = &[
    "accepted",
    "duplicate",
    "invalid",
    "too_large",
    "unavailable",
    "wrong_token",
];

/// Run outcomes, every one present from start-up.
pub const OUTCOMES: &[&str] = &["ok", "failed", "skipped"];
/// HTTP status classes, every one present from start-up.
pub const STATUS_CLASSES: &[&str] = &["2xx", "3xx", "4xx", "5xx", "error"];
/// Buckets of `callsync_run_duration_seconds`: a tenth of a second to an hour.
const DURATION_BUCKETS: [f64; 11] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

type FloatGauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    rows: Family<SourceLabels, Counter>,
    rejects: Family<SourceLabels, Counter>,
    runs: Family<RunLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_retries: Family<SourceLabels, Counter>,
    last_success: Family<SourceLabels, FloatGauge>,
    cursor_lag: Family<SourceLabels, FloatGauge>,
    run_duration: Family<SourceLabels, Histogram, fn() -> Histogram>,
    webhooks: Family<WebhookLabels, Counter>,
    webhook_not_found: Counter,
    inbox_depth: Family<SourceLabels, Gauge>,
    inbox_oldest: Family<SourceLabels, FloatGauge>,
    inbox_flush_interval: Family<SourceLabels, FloatGauge>,
    resubmit_failures: Family<SourceLabels, Counter>,
    upkeep: Family<UpkeepLabels, Counter>,
    upkeep_last_success: Family<TaskLabels, FloatGauge>,
    commit_retries: Family<TableLabels, Counter>,
    compaction_conflicts: Family<SourceLabels, Counter>,
    partition_files: Family<SourceLabels, Gauge>,
    reloads: Family<OutcomeLabels, Counter>,
    /// Where each source's cursor stands in time (µs), for the lag computed at each scrape.
    cursor_at: Mutex<HashMap<String, i64>>,
}

fn source(name: &str) -> SourceLabels {
    SourceLabels {
        source: name.to_string(),
    }
}

impl Metrics {
    /// A registry with every `callsync_*` family.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            rows: Family::default(),
            rejects: Family::default(),
            runs: Family::default(),
            http_requests: Family::default(),
            http_retries: Family::default(),
            last_success: Family::default(),
            cursor_lag: Family::default(),
            run_duration: Family::new_with_constructor(duration_histogram),
            webhooks: Family::default(),
            webhook_not_found: Counter::default(),
            inbox_depth: Family::default(),
            inbox_oldest: Family::default(),
            inbox_flush_interval: Family::default(),
            resubmit_failures: Family::default(),
            upkeep: Family::default(),
            upkeep_last_success: Family::default(),
            commit_retries: Family::default(),
            compaction_conflicts: Family::default(),
            partition_files: Family::default(),
            reloads: Family::default(),
            cursor_at: Mutex::new(HashMap::new()),
        };
        for task in UPKEEP_TASKS {
            for outcome in UPKEEP_OUTCOMES {
                let _ = m.upkeep.get_or_create(&UpkeepLabels {
                    task: task.to_string(),
                    outcome: outcome.to_string(),
                });
            }
            let _ = m.upkeep_last_success.get_or_create(&TaskLabels {
                task: task.to_string(),
            });
        }
        for outcome in ["ok", "failed"] {
            let _ = m.reloads.get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            });
        }
        for table in TABLES {
            let _ = m.commit_retries.get_or_create(&TableLabels {
                table: table.to_string(),
            });
        }
        registry.register(
            "callsync_rows_exported",
            "Calls committed to the lake (equals what the lake gained)",
            m.rows.clone(),
        );
        registry.register(
            "callsync_rejects",
            "Records written to the rejects area",
            m.rejects.clone(),
        );
        registry.register(
            "callsync_runs",
            "Runs of a source by outcome (skipped: a tick found the previous run still going)",
            m.runs.clone(),
        );
        registry.register(
            "callsync_http_requests",
            "HTTP requests to vendors by status class (error: no answer)",
            m.http_requests.clone(),
        );
        registry.register(
            "callsync_http_retries",
            "HTTP requests retried (429, 5xx, timeouts, dropped connections)",
            m.http_retries.clone(),
        );
        registry.register(
            "callsync_source_last_success_timestamp_seconds",
            "When a run of the source last succeeded (Unix time); alert on time() - this",
            m.last_success.clone(),
        );
        registry.register(
            "callsync_source_cursor_lag_seconds",
            "How far the source's cursor trails now, for kinds whose cursor is a time",
            m.cursor_lag.clone(),
        );
        registry.register(
            "callsync_run_duration_seconds",
            "Duration of a source's runs",
            m.run_duration.clone(),
        );
        registry.register(
            "callsync_webhook_requests",
            "Webhook deliveries by outcome (accepted only once persisted)",
            m.webhooks.clone(),
        );
        registry.register(
            "callsync_webhook_not_found",
            "Webhook requests for an unknown source (answered 404)",
            m.webhook_not_found.clone(),
        );
        registry.register(
            "callsync_inbox_depth",
            "Webhook deliveries received but not yet exported to the lake",
            m.inbox_depth.clone(),
        );
        registry.register(
            "callsync_inbox_oldest_age_seconds",
            "Age of the oldest delivery not yet exported (0 when none)",
            m.inbox_oldest.clone(),
        );
        registry.register(
            "callsync_inbox_flush_interval_seconds",
            "A push source's flush_interval_secs: its inbox is exported once the oldest delivery is this old",
            m.inbox_flush_interval.clone(),
        );
        registry.register(
            "callsync_analysis_resubmit_failures",
            "Resubmissions of overdue analysis jobs that failed (5xx, timeout); tried again at the next flush",
            m.resubmit_failures.clone(),
        );
        registry.register(
            "callsync_upkeep_runs",
            "The lake's upkeep by task (compaction, vacuum, checkpoint) and outcome (ok, failed)",
            m.upkeep.clone(),
        );
        registry.register(
            "callsync_upkeep_last_success_timestamp_seconds",
            "When an upkeep task last succeeded (Unix time, 0 before its first success in this process); alert on time() - this",
            m.upkeep_last_success.clone(),
        );
        registry.register(
            "callsync_delta_commit_retries",
            "Delta commits tried again because another writer took the log version first",
            m.commit_retries.clone(),
        );
        registry.register(
            "callsync_compaction_conflicts",
            "Compactions of a partition that lost to another compaction and changed nothing",
            m.compaction_conflicts.clone(),
        );
        registry.register(
            "callsync_partition_files_max",
            "The most files one past day's partition of the source holds (readers pay for each), as of the last compaction",
            m.partition_files.clone(),
        );
        registry.register(
            "callsync_config_reloads",
            "SIGHUP reloads of the config by outcome: ok, or failed (the running config stays; the log says why)",
            m.reloads.clone(),
        );
        registry.register(
            "callsync_build",
            "This build of callsync",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics { registry, ..m }
    }

    /// Creates every series of `name` at 0, so a source that never ran is visible.
    pub fn add_source(&self, name: &str) {
        let s = source(name);
        let _ = self.rows.get_or_create(&s);
        let _ = self.rejects.get_or_create(&s);
        let _ = self.http_retries.get_or_create(&s);
        let _ = self.last_success.get_or_create(&s);
        let _ = self.run_duration.get_or_create(&s);
        let _ = self.compaction_conflicts.get_or_create(&s);
        let _ = self.partition_files.get_or_create(&s);
        for o in OUTCOMES {
            let _ = self.runs.get_or_create(&RunLabels {
                source: name.to_string(),
                outcome: o.to_string(),
            });
        }
        for c in STATUS_CLASSES {
            let _ = self.http_requests.get_or_create(&HttpLabels {
                source: name.to_string(),
                status_class: c.to_string(),
            });
        }
    }

    /// Removes every series of a source that left the config (a reload), so no alert stays
    /// on a source that no longer exists.
    pub fn remove_source(&self, name: &str) {
        let s = source(name);
        self.rows.remove(&s);
        self.rejects.remove(&s);
        self.http_retries.remove(&s);
        self.last_success.remove(&s);
        self.cursor_lag.remove(&s);
        self.run_duration.remove(&s);
        self.inbox_depth.remove(&s);
        self.inbox_oldest.remove(&s);
        self.inbox_flush_interval.remove(&s);
        self.resubmit_failures.remove(&s);
        self.compaction_conflicts.remove(&s);
        self.partition_files.remove(&s);
        lock(&self.cursor_at).remove(name);
        for o in OUTCOMES {
            self.runs.remove(&RunLabels {
                source: name.to_string(),
                outcome: o.to_string(),
            });
        }
        for c in STATUS_CLASSES {
            self.http_requests.remove(&HttpLabels {
                source: name.to_string(),
                status_class: c.to_string(),
            });
        }
        for o in WEBHOOK_OUTCOMES {
            self.webhooks.remove(&WebhookLabels {
                source: name.to_string(),
                outcome: o.to_string(),
            });
        }
    }

    /// The source's last success as the state recorded it (at start-up: the series tells the
    /// truth across restarts instead of starting at 0).
    pub fn last_success_at(&self, name: &str, at_us: i64) {
        self.last_success
            .get_or_create(&source(name))
            .set(at_us as f64 / 1e6);
    }

    /// An overdue analysis job could not be resubmitted.
    pub fn resubmit_failed(&self, name: &str) {
        self.resubmit_failures.get_or_create(&source(name)).inc();
    }

    /// Creates a push source's webhook and inbox series at 0, with its flush interval.
    pub fn add_push_source(&self, name: &str, flush_interval_secs: u64) {
        self.inbox_flush_interval
            .get_or_create(&source(name))
            .set(flush_interval_secs as f64);
        let _ = self.resubmit_failures.get_or_create(&source(name));
        for o in WEBHOOK_OUTCOMES {
            let _ = self.webhooks.get_or_create(&WebhookLabels {
                source: name.to_string(),
                outcome: o.to_string(),
            });
        }
        let _ = self.inbox_depth.get_or_create(&source(name));
        let _ = self.inbox_oldest.get_or_create(&source(name));
    }

    /// A webhook request ended with `outcome` (`None` source: no such source).
    pub fn webhook(&self, name: Option<&str>, outcome: &str) {
        match name {
            Some(n) => {
                self.webhooks
                    .get_or_create(&WebhookLabels {
                        source: n.to_string(),
                        outcome: outcome.to_string(),
                    })
                    .inc();
            }
            None => {
                self.webhook_not_found.inc();
            }
        }
    }

    /// A push source's inbox: deliveries waiting, and the oldest one's age.
    pub fn inbox(&self, name: &str, depth: u64, oldest_age_secs: f64) {
        self.inbox_depth
            .get_or_create(&source(name))
            .set(depth as i64);
        self.inbox_oldest
            .get_or_create(&source(name))
            .set(oldest_age_secs);
    }

    /// A run ended: its outcome and, for `ok`/`failed`, its duration.
    pub fn run_finished(&self, name: &str, outcome: &str, secs: Option<f64>) {
        self.runs
            .get_or_create(&RunLabels {
                source: name.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        if let Some(secs) = secs {
            self.run_duration.get_or_create(&source(name)).observe(secs);
        }
        if outcome == "ok" {
            self.succeeded(name);
        }
    }

    /// The source succeeded now (a run, or a push source's flush that found nothing to do).
    pub fn succeeded(&self, name: &str) {
        self.last_success_at(name, chrono::Utc::now().timestamp_micros());
    }

    /// Where the source's cursor stands in time (µs since the epoch).
    pub fn cursor_at(&self, name: &str, at_us: i64) {
        lock(&self.cursor_at).insert(name.to_string(), at_us);
    }

    /// The registry as Prometheus text (the lag gauges computed for now).
    pub fn encode(&self) -> String {
        let now = chrono::Utc::now().timestamp_micros();
        for (name, at) in lock(&self.cursor_at).iter() {
            self.cursor_lag
                .get_or_create(&source(name))
                .set((now - at) as f64 / 1e6);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Registers more metrics (the daemon's own) in the same registry, before it is shared.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();

/// Makes `m` the process's metrics (once; the daemon does it at start-up).
pub fn install(m: Arc<Metrics>) -> Arc<Metrics> {
    METRICS.get_or_init(|| m).clone()
}

fn get() -> Option<&'static Arc<Metrics>> {
    METRICS.get()
}

/// A commit of `source` published `rows` calls and `rejects` rejects.
pub fn committed(source_name: &str, rows: u64, rejects: u64) {
    if let Some(m) = get() {
        m.rows.get_or_create(&source(source_name)).inc_by(rows);
        m.rejects
            .get_or_create(&source(source_name))
            .inc_by(rejects);
    }
}

/// An upkeep task (`compaction`, `vacuum`, `checkpoint`) ended.
pub fn upkeep(task: &str, ok: bool) {
    if let Some(m) = get() {
        m.upkeep
            .get_or_create(&UpkeepLabels {
                task: task.to_string(),
                outcome: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
        if ok {
            m.upkeep_last_success
                .get_or_create(&TaskLabels {
                    task: task.to_string(),
                })
                .set(chrono::Utc::now().timestamp_micros() as f64 / 1e6);
        }
    }
}

/// A SIGHUP reload ended: applied, or not (the running config stays).
pub fn config_reload(ok: bool) {
    if let Some(m) = get() {
        m.reloads
            .get_or_create(&OutcomeLabels {
                outcome: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
    }
}

/// A Delta commit to `table` is tried again: another writer took the version first.
pub fn delta_commit_retry(table: &str) {
    if let Some(m) = get() {
        m.commit_retries
            .get_or_create(&TableLabels {
                table: table.to_string(),
            })
            .inc();
    }
}

/// A compaction of `source` lost to another one.
pub fn compaction_conflict(source_name: &str) {
    if let Some(m) = get() {
        m.compaction_conflicts
            .get_or_create(&source(source_name))
            .inc();
    }
}

/// The most files one past partition of `source` holds.
pub fn partition_files_max(source_name: &str, files: u64) {
    if let Some(m) = get() {
        m.partition_files
            .get_or_create(&source(source_name))
            .set(files as i64);
    }
}

/// A vendor answered `status` (`None`: no answer: timeout, refused or dropped connection).
pub fn http_response(source_name: &str, status: Option<u16>) {
    if let Some(m) = get() {
        let class = match status {
            None => "error",
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(_) => "5xx",
        };
        m.http_requests
            .get_or_create(&HttpLabels {
                source: source_name.to_string(),
                status_class: class.to_string(),
            })
            .inc();
    }
}

/// A resubmission of an overdue analysis job of `source` failed.
pub fn resubmit_failed(source_name: &str) {
    if let Some(m) = get() {
        m.resubmit_failed(source_name);
    }
}

/// A request of `source` is retried.
pub fn http_retry(source_name: &str) {
    if let Some(m) = get() {
        m.http_retries.get_or_create(&source(source_name)).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_alerts_and_dashboard_use_only_metrics_that_exist() {
        let m = Metrics::new();
        m.add_source("vg");
        m.add_push_source("legs", 300);
        m.cursor_at("vg", 0);
        let text = m.encode();
        for (file, body) in [
            (
                "prometheus-alerts.yml",
                include_str!("../config/prometheus-alerts.yml"),
            ),
            (
                "grafana-dashboard.json",
                include_str!("../config/grafana-dashboard.json"),
            ),
        ] {
            let mut found = 0;
            for (i, _) in body.match_indices("callsync_") {
                let name: String = body[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                found += 1;
                assert!(
                    text.contains(&format!("\n{name}{{")) || text.contains(&format!("\n{name} ")),
                    "{file} uses {name}, which /metrics does not have"
                );
            }
            assert!(found >= 5, "{file}");
        }
    }

    #[test]
    fn every_source_series_exists_at_zero_with_the_documented_names() {
        let m = Metrics::new();
        m.add_source("vg");
        let text = m.encode();
        for line in [
            "callsync_rows_exported_total{source=\"vg\"} 0",
            "callsync_rejects_total{source=\"vg\"} 0",
            "callsync_runs_total{source=\"vg\",outcome=\"skipped\"} 0",
            "callsync_http_requests_total{source=\"vg\",status_class=\"5xx\"} 0",
            "callsync_http_retries_total{source=\"vg\"} 0",
            "callsync_source_last_success_timestamp_seconds{source=\"vg\"} 0",
            "callsync_run_duration_seconds_count{source=\"vg\"} 0",
            "callsync_build_info{version=",
            "callsync_upkeep_runs_total{task=\"compaction\",outcome=\"failed\"} 0",
            "callsync_upkeep_last_success_timestamp_seconds{task=\"checkpoint\"} 0",
            "callsync_delta_commit_retries_total{table=\"calls\"} 0",
            "callsync_compaction_conflicts_total{source=\"vg\"} 0",
            "callsync_partition_files_max{source=\"vg\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        m.run_finished("vg", "ok", Some(1.5));
        m.cursor_at("vg", chrono::Utc::now().timestamp_micros() - 60_000_000);
        let text = m.encode();
        assert!(
            text.contains("callsync_runs_total{source=\"vg\",outcome=\"ok\"} 1"),
            "{text}"
        );
        let lag = text
            .lines()
            .find(|l| l.starts_with("callsync_source_cursor_lag_seconds{"))
            .unwrap();
        let v: f64 = lag.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((59.0..70.0).contains(&v), "{lag}");
    }
}
