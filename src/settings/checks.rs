//! Checks of the keys every kind shares: a cron `schedule`, a `base_url`, and a secret given
//! as `<name>_env` or `<name>_file`.

use std::path::PathBuf;
use std::str::FromStr;

use super::Problems;

/// Checks a cron expression (`sec min hour day month weekday [year]`).
pub fn validate_schedule(table: &str, schedule: &str, problems: &mut Problems) {
    if let Err(e) = cron::Schedule::from_str(schedule) {
        problems.push(
            table,
            Some("schedule"),
            format!("not a valid cron expression (sec min hour day month weekday): {e}"),
        );
    }
}

/// Checks a `base_url`.
pub fn validate_base_url(table: &str, url: &str, problems: &mut Problems) {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        Ok(_) => problems.push(
            table,
            Some("base_url"),
            "must be an http:// or https:// URL",
        ),
        Err(e) => problems.push(table, Some("base_url"), format!("not a valid URL: {e}")),
    }
}

/// Checks that exactly one of `<name>_env` / `<name>_file` is set.
pub fn validate_secret(
    table: &str,
    name: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
    problems: &mut Problems,
) {
    let env_key = format!("{name}_env");
    let file_key = format!("{name}_file");
    match (env, file) {
        (Some(_), Some(_)) => problems.push(
            table,
            Some(&env_key),
            format!("set either {env_key} or {file_key}, not both"),
        ),
        (None, None) => problems.push(
            table,
            Some(&env_key),
            format!("missing: set {env_key} (an environment variable) or {file_key} (a file); secrets are never inline"),
        ),
        (Some(e), None) if e.trim().is_empty() => {
            problems.push(table, Some(&env_key), "must name an environment variable")
        }
        _ => {}
    }
}
