//! Backfill progress: a bar on a terminal (days done, calls written, rate), periodic log
//! lines otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

use crate::pipeline::RunSummary;
use crate::sources::Cursor;
use crate::sources::window::parse_time;

/// Log lines are written at most this often when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Progress of one backfill.
pub struct Progress {
    source: String,
    start_us: i64,
    days: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Mutex<Instant>,
}

impl Progress {
    /// A bar on a terminal; log lines otherwise.
    pub fn new(source: &str, from: NaiveDate, to: NaiveDate) -> Progress {
        let days = (to - from).num_days().max(0) as u64 + 1;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::with_draw_target(Some(days), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} days · {msg} · {elapsed}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(source.to_string());
            b
        });
        Progress {
            source: source.to_string(),
            start_us: from
                .and_time(chrono::NaiveTime::MIN)
                .and_utc()
                .timestamp_micros(),
            days,
            bar,
            started: Instant::now(),
            last_log: Mutex::new(Instant::now()),
        }
    }

    /// After each page: the run's totals and the page's cursor (a window cursor, when the
    /// page finished a window).
    pub fn update(&self, s: &RunSummary, cursor: Option<&Cursor>) {
        let calls = s.rows + s.staged;
        let rate = calls as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let done = cursor
            .and_then(|c| c.get("from"))
            .and_then(|v| v.as_str())
            .and_then(parse_time)
            .map(|t| ((t - self.start_us).max(0) / 86_400_000_000) as u64);
        match &self.bar {
            Some(bar) => {
                if let Some(d) = done {
                    bar.set_position(d.min(self.days));
                }
                bar.set_message(format!("{calls} calls · {rate:.0}/s"));
            }
            None => {
                let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= LOG_EVERY {
                    *last = Instant::now();
                    info!(
                        source = %self.source,
                        days_done = done.unwrap_or(0),
                        days = self.days,
                        calls,
                        calls_per_sec = rate.round() as u64,
                        "Backfill progress."
                    );
                }
            }
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
