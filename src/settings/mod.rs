//! The pieces every config table is built from: the list of problems a file has, typed
//! tables that name the key they fail on, `[.http]`, and the checks of keys several kinds
//! share. It imports neither `config`, `sources` nor `http`, so all three can stand on it.

use std::fmt;

mod checks;
mod http;

pub use checks::{validate_base_url, validate_schedule, validate_secret};
pub use http::HttpConfig;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The TOML table, e.g. `sources.voicegain`.
    pub table: String,
    /// The key inside the table, when the problem is about one key.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Every problem found while loading one file.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// Records a problem.
    pub fn push(&mut self, table: &str, key: Option<&str>, message: impl Into<String>) {
        self.0.push(Problem {
            table: table.to_string(),
            key: key.map(str::to_string),
            message: message.into(),
        });
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "[{}] key `{}`: {}", self.table, k, self.message),
            None => write!(f, "[{}]: {}", self.table, self.message),
        }
    }
}

/// Deserializes one table, turning a serde error into a problem that names the key.
pub fn typed<T: serde::de::DeserializeOwned>(
    table: &str,
    value: toml::Value,
    problems: &mut Problems,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let inner = inner.trim().to_string();
            // Unknown/missing keys name themselves in the message; the path then points at
            // the table that holds them.
            let named = between_backticks(&inner);
            let mut segments: Vec<&str> = if path == "." || path.is_empty() {
                Vec::new()
            } else {
                path.split('.').collect()
            };
            let key = if inner.starts_with("unknown field") || inner.starts_with("missing field") {
                // The message names the key; the path may or may not end with it.
                if segments.last().copied() == named.as_deref() {
                    segments.pop();
                }
                named
            } else {
                segments.pop().map(str::to_string)
            };
            let table = std::iter::once(table)
                .chain(segments)
                .collect::<Vec<_>>()
                .join(".");
            problems.push(&table, key.as_deref(), inner);
            None
        }
    }
}

fn between_backticks(s: &str) -> Option<String> {
    let start = s.find('`')? + 1;
    let len = s[start..].find('`')?;
    Some(s[start..start + len].to_string())
}
