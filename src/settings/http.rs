//! `[sources.<name>.http]`: timeouts and retries, the HTTP behaviour every pull source shares.

use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// `[sources.<name>.http]`: the HTTP behaviour of one source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Seconds allowed to open a connection.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Seconds allowed for one whole request, body included.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Attempts per request (first try included) before the source fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubles per attempt, with jitter.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest retry delay in milliseconds (also caps a vendor's `Retry-After`).
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

fn default_connect_timeout_secs() -> u64 {
    10
}
fn default_timeout_secs() -> u64 {
    60
}
fn default_max_attempts() -> u32 {
    6
}
fn default_backoff_initial_ms() -> u64 {
    500
}
fn default_backoff_max_ms() -> u64 {
    60_000
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout_secs: default_connect_timeout_secs(),
            timeout_secs: default_timeout_secs(),
            max_attempts: default_max_attempts(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
        }
    }
}

impl HttpConfig {
    /// Reports out-of-range values under `table`.
    pub fn validate(&self, table: &str, problems: &mut Problems) {
        let t = format!("{table}.http");
        if self.connect_timeout_secs == 0 {
            problems.push(&t, Some("connect_timeout_secs"), "must be at least 1");
        }
        if self.timeout_secs == 0 {
            problems.push(&t, Some("timeout_secs"), "must be at least 1");
        }
        if !(1..=100).contains(&self.max_attempts) {
            problems.push(&t, Some("max_attempts"), "must be between 1 and 100");
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            problems.push(
                &t,
                Some("backoff_max_ms"),
                "must be at least backoff_initial_ms",
            );
        }
    }

    /// Connect timeout as a `Duration`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// Request timeout as a `Duration`.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}
