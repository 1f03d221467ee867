//! `[warehouse]`: where the lake lives, a local directory or object storage, and how its
//! object-store options (secrets only by reference) are read.

use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::Problems;

/// `[warehouse]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseConfig {
    /// Local directory that holds `calls/`, `_rejects/`, `recordings/` and `_staging/`
    /// (relative paths resolve against the working directory). The default when `url` is not
    /// set; set one of the two, not both.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// The lake on object storage: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`, or `file:///path` (a local directory, as `root`).
    #[serde(default)]
    pub url: Option<String>,
    /// `object_store` configuration keys for `url` (e.g. `aws_region`, `aws_endpoint`,
    /// `aws_allow_http`); they override the cloud's standard environment (`AWS_*`,
    /// `GOOGLE_*`, `AZURE_*`). A secret is given only as `<key>_env` (an environment variable)
    /// or `<key>_file` (a file), never inline.
    #[serde(default)]
    pub storage_options: std::collections::BTreeMap<String, String>,
    /// Most rows one commit stages before it is committed and published; a run commits
    /// each time this many rows are staged, and once more at its end.
    #[serde(default = "default_max_rows_per_file")]
    pub max_rows_per_file: usize,
    /// The lake's table format: `"parquet"` (a plain Hive-partitioned Parquet folder) or
    /// `"delta"` (Delta tables `calls/` and `monitor_legs/`: readers see whole commits only,
    /// several daemons may share them, and `callsync compact` can merge small files).
    #[serde(default)]
    pub format: LakeFormat,
    /// With `format = "delta"`: a checkpoint is written every this many table versions (as
    /// Spark does), so opening the table reads one checkpoint plus at most this many commits.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
    /// With `format = "delta"`: log files older than this many days are deleted once a newer
    /// checkpoint exists (time travel reaches back this far).
    #[serde(default = "default_log_retention_days")]
    pub log_retention_days: u64,
}

/// `[compaction]`: merging a Delta table's small files (`callsync compact`, and the daemon
/// on its own schedule) and deleting the files they replaced (`callsync vacuum`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionConfig {
    /// Whether the daemon compacts a Delta lake on `schedule` (`false` turns it off; `compact`
    /// and `vacuum` by hand still work). A plain lake is never compacted.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Cron schedule (6 fields, seconds first, UTC) on which the daemon compacts every
    /// source's partitions and then vacuums; unset: daily at 03:30 UTC (`DEFAULT_SCHEDULE`).
    #[serde(default)]
    pub schedule: Option<String>,
    /// The daemon compacts a partition once it holds at least this many small files.
    #[serde(default = "default_min_files")]
    pub min_files: usize,
    /// Size in MiB the merged files aim at.
    #[serde(default = "default_target_file_mb")]
    pub target_file_mb: u64,
    /// `vacuum` deletes a replaced file once it was removed from the table this many hours
    /// ago (a reader still on an older version keeps its files until then); at least 1, and
    /// below 24 a reader holding a day-old snapshot fails.
    #[serde(default = "default_retain_hours")]
    pub retain_hours: u64,
}

/// The daemon's compaction schedule of a Delta lake when `[compaction] schedule` is unset:
/// daily at a quiet hour.
pub const DEFAULT_COMPACTION_SCHEDULE: &str = "0 30 3 * * *";

/// The least `retain_hours` `vacuum` accepts.
pub const MIN_RETAIN_HOURS: u64 = 1;
/// Below this, `vacuum` warns that readers holding an older snapshot will fail.
pub const SAFE_RETAIN_HOURS: u64 = 24;

fn default_enabled() -> bool {
    true
}
fn default_min_files() -> usize {
    10
}
fn default_target_file_mb() -> u64 {
    128
}
fn default_retain_hours() -> u64 {
    168
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            enabled: default_enabled(),
            schedule: None,
            min_files: default_min_files(),
            target_file_mb: default_target_file_mb(),
            retain_hours: default_retain_hours(),
        }
    }
}

impl CompactionConfig {
    /// The schedule the daemon compacts on, if it does: a Delta lake's, unless turned off.
    pub fn effective_schedule(&self, format: LakeFormat) -> Option<&str> {
        (self.enabled && format == LakeFormat::Delta).then(|| {
            self.schedule
                .as_deref()
                .unwrap_or(DEFAULT_COMPACTION_SCHEDULE)
        })
    }

    /// Reports every problem of `[compaction]` (the lake's format decides whether it applies).
    pub(super) fn validate(&self, format: LakeFormat, problems: &mut Problems) {
        if let Some(s) = &self.schedule {
            if format != LakeFormat::Delta {
                problems.push(
                    "compaction",
                    Some("schedule"),
                    "compaction needs [warehouse] format = \"delta\": a plain Parquet lake has no atomic swap, so its readers would see rows twice or not at all",
                );
            }
            crate::settings::validate_schedule("compaction", s, problems);
        }
        if self.min_files < 2 {
            problems.push("compaction", Some("min_files"), "must be at least 2");
        }
        if self.target_file_mb == 0 {
            problems.push("compaction", Some("target_file_mb"), "must be at least 1");
        }
        if self.retain_hours < MIN_RETAIN_HOURS {
            problems.push(
                "compaction",
                Some("retain_hours"),
                "must be at least 1: a vacuum right after a compaction deletes the files queries in flight are reading",
            );
        }
    }
}

/// The table format of the lake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LakeFormat {
    /// Hive-partitioned Parquet files.
    #[default]
    Parquet,
    /// Delta Lake tables (protocol 1, 2).
    Delta,
}

fn default_checkpoint_interval() -> u64 {
    10
}
fn default_log_retention_days() -> u64 {
    30
}

fn default_root() -> PathBuf {
    PathBuf::from("warehouse")
}
fn default_max_rows_per_file() -> usize {
    100_000
}

impl Default for WarehouseConfig {
    fn default() -> Self {
        WarehouseConfig {
            root: None,
            url: None,
            storage_options: Default::default(),
            max_rows_per_file: default_max_rows_per_file(),
            format: LakeFormat::default(),
            checkpoint_interval: default_checkpoint_interval(),
            log_retention_days: default_log_retention_days(),
        }
    }
}

/// `storage_options` keys whose values are secrets: given only as `<key>_env` / `<key>_file`.
const SECRET_WORDS: &[&str] = &[
    "secret",
    "password",
    "token",
    "access_key",
    "account_key",
    "sas",
    "private_key",
    "service_account_key",
    "client_secret",
];

/// Where the lake lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LakeLocation {
    /// A local directory.
    Local(PathBuf),
    /// An object store: the URL's scheme (`s3`, `gs`, `az`), bucket, and key prefix (no
    /// leading or trailing `/`).
    Object {
        url: String,
        scheme: String,
        bucket: String,
        prefix: String,
    },
}

impl WarehouseConfig {
    /// Where the lake lives (validation made sure the URL parses).
    pub fn location(&self) -> LakeLocation {
        match (&self.url, &self.root) {
            (Some(u), _) => match reqwest::Url::parse(u) {
                Ok(url) if url.scheme() == "file" => LakeLocation::Local(PathBuf::from(url.path())),
                Ok(url) => LakeLocation::Object {
                    url: u.clone(),
                    scheme: url.scheme().to_string(),
                    bucket: url.host_str().unwrap_or_default().to_string(),
                    prefix: url.path().trim_matches('/').to_string(),
                },
                Err(_) => LakeLocation::Local(default_root()),
            },
            (None, Some(r)) => LakeLocation::Local(r.clone()),
            (None, None) => LakeLocation::Local(default_root()),
        }
    }

    /// The lake as a user names it: its directory or its URL.
    pub fn display(&self) -> String {
        match self.location() {
            LakeLocation::Local(p) => p.display().to_string(),
            LakeLocation::Object { url, .. } => url,
        }
    }

    /// The local directory of a local lake (`None` on object storage).
    pub fn local_root(&self) -> Option<PathBuf> {
        match self.location() {
            LakeLocation::Local(p) => Some(p),
            LakeLocation::Object { .. } => None,
        }
    }

    /// `storage_options` with every `<key>_env` / `<key>_file` resolved to `<key>`; the error
    /// names the key (never a value).
    pub fn resolved_storage_options(&self) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for (k, v) in &self.storage_options {
            if let Some(key) = k.strip_suffix("_env") {
                let value = std::env::var(v).map_err(|_| {
                    format!("[warehouse.storage_options] {k}: environment variable {v} is not set")
                })?;
                out.push((key.to_string(), value));
            } else if let Some(key) = k.strip_suffix("_file") {
                let value = std::fs::read_to_string(v).map_err(|e| {
                    format!("[warehouse.storage_options] {k}: cannot read {v}: {e}")
                })?;
                out.push((
                    key.to_string(),
                    value.trim_end_matches(['\n', '\r']).to_string(),
                ));
            } else {
                out.push((k.clone(), v.clone()));
            }
        }
        Ok(out)
    }

    /// Reports every problem of `[warehouse]`.
    pub(super) fn validate(&self, problems: &mut Problems) {
        if self.max_rows_per_file == 0 {
            problems.push("warehouse", Some("max_rows_per_file"), "must be at least 1");
        }
        if self.checkpoint_interval == 0 {
            problems.push(
                "warehouse",
                Some("checkpoint_interval"),
                "must be at least 1",
            );
        }
        if self.log_retention_days == 0 {
            problems.push(
                "warehouse",
                Some("log_retention_days"),
                "must be at least 1",
            );
        }
        if self.url.is_some() && self.root.is_some() {
            problems.push(
                "warehouse",
                Some("url"),
                "set either root (a local directory) or url (object storage), not both",
            );
        }
        if let Some(u) = &self.url {
            match reqwest::Url::parse(u) {
                Ok(url) => match url.scheme() {
                    "s3" | "gs" | "az" => {
                        if url.host_str().is_none_or(str::is_empty) {
                            problems.push(
                                "warehouse",
                                Some("url"),
                                format!("{u:?} names no bucket (e.g. s3://bucket/prefix)"),
                            );
                        }
                    }
                    "file" => {}
                    other => problems.push(
                        "warehouse",
                        Some("url"),
                        format!("scheme {other:?} is not supported (s3://, gs://, az://, file://)"),
                    ),
                },
                Err(e) => problems.push("warehouse", Some("url"), format!("not a URL: {e}")),
            }
        } else if !self.storage_options.is_empty() {
            problems.push(
                "warehouse",
                Some("storage_options"),
                "only applies with url (object storage)",
            );
        }
        for k in self.storage_options.keys() {
            // An id (e.g. `aws_access_key_id`) is no secret; the key that goes with it is.
            let plain = !(k.ends_with("_env") || k.ends_with("_file") || k.ends_with("_id"));
            if plain && SECRET_WORDS.iter().any(|w| k.contains(w)) {
                problems.push(
                    "warehouse.storage_options",
                    Some(k),
                    format!("a secret is never inline: give it as {k}_env (an environment variable) or {k}_file (a file)"),
                );
            }
        }
    }
}
