//! TOML configuration: typed, defaulted, validated once, every problem named by file, table and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::settings::{Problem, Problems, typed};
use crate::sources::SourceConfig;

mod warehouse;
pub use warehouse::{
    CompactionConfig, DEFAULT_COMPACTION_SCHEDULE, LakeFormat, LakeLocation, MIN_RETAIN_HOURS,
    SAFE_RETAIN_HOURS, WarehouseConfig,
};

/// The default config file, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/callsync.toml";

/// The whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (for messages).
    pub file: PathBuf,
    /// `[warehouse]`: where the lake lives.
    pub warehouse: WarehouseConfig,
    /// `[state]`: where the SQLite state lives.
    pub state: StateConfig,
    /// `[sources.<name>]`: one table per source, keyed by source name.
    pub sources: BTreeMap<String, SourceConfig>,
    /// `[daemon]`: how `callsync run` schedules and stops.
    pub daemon: DaemonConfig,
    /// `[server]`: the daemon's HTTP server (health, metrics).
    pub server: ServerConfig,
    /// `[compaction]`: merging a Delta table's small files.
    pub compaction: CompactionConfig,
}

/// `[daemon]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Sources that may run at once; a due source waits for a free slot.
    #[serde(default = "default_max_concurrent_sources")]
    pub max_concurrent_sources: usize,
    /// Seconds a drain (SIGTERM/SIGINT) may take before the process exits at once.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
}

fn default_max_concurrent_sources() -> usize {
    4
}
fn default_shutdown_grace_secs() -> u64 {
    30
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            max_concurrent_sources: default_max_concurrent_sources(),
            shutdown_grace_secs: default_shutdown_grace_secs(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the daemon's HTTP server listens on, e.g. `"127.0.0.1:9187"` (port 0 picks a
    /// free one). Unset: no server.
    #[serde(default)]
    pub listen: Option<String>,
}

/// `[state]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Path of the SQLite state database (cursors, file manifest, exported keys, runs).
    #[serde(default = "default_state_path")]
    pub path: PathBuf,
    /// Run records (`status`'s history) older than this many days are deleted.
    #[serde(default = "default_runs_retention_days")]
    pub runs_retention_days: u64,
}

fn default_state_path() -> PathBuf {
    PathBuf::from("state/callsync.db")
}

/// A month of run records.
fn default_runs_retention_days() -> u64 {
    30
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: default_state_path(),
            runs_retention_days: default_runs_retention_days(),
        }
    }
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(file, problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render(file: &Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "config file {} has {} problem{}:",
        file.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str(&format!("\n  {p}"));
    }
    out
}

/// Whether `name` is a valid source name: `[a-z0-9_-]{1,64}`. Source names become path
/// segments, so nothing else is allowed.
pub fn valid_source_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Config::parse(file, &text)
    }

    /// Parses and validates config text; `file` is only used in messages.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut problems = Problems::default();
        let invalid = |problems: Vec<Problem>| ConfigError::Invalid {
            file: file.to_path_buf(),
            problems,
        };
        let doc: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                let mut p = Problems::default();
                p.push("", None, format!("not valid TOML: {}", e.message()));
                if let Some(span) = e.span() {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    p.0[0].message.push_str(&format!(" (line {line})"));
                }
                return Err(invalid(p.0));
            }
        };
        let mut warehouse = WarehouseConfig::default();
        let mut state = StateConfig::default();
        let mut sources = BTreeMap::new();
        let mut daemon = DaemonConfig::default();
        let mut server = ServerConfig::default();
        let mut compaction = CompactionConfig::default();
        for (key, value) in doc {
            match key.as_str() {
                "warehouse" => {
                    if let Some(w) = typed::<WarehouseConfig>("warehouse", value, &mut problems) {
                        warehouse = w;
                    }
                }
                "state" => {
                    if let Some(s) = typed::<StateConfig>("state", value, &mut problems) {
                        state = s;
                    }
                }
                "daemon" => {
                    if let Some(d) = typed::<DaemonConfig>("daemon", value, &mut problems) {
                        daemon = d;
                    }
                }
                "server" => {
                    if let Some(s) = typed::<ServerConfig>("server", value, &mut problems) {
                        server = s;
                    }
                }
                "compaction" => {
                    if let Some(c) = typed::<CompactionConfig>("compaction", value, &mut problems)
                    {
                        compaction = c;
                    }
                }
                "sources" => {
                    let toml::Value::Table(table) = value else {
                        problems.push(
                            "sources",
                            None,
                            "must be a table of [sources.<name>] tables",
                        );
                        continue;
                    };
                    for (name, value) in table {
                        let t = format!("sources.{name}");
                        if !valid_source_name(&name) {
                            problems.push(
                                &t,
                                None,
                                "source names must match [a-z0-9_-]{1,64} (they become path segments)",
                            );
                        }
                        if let Some(s) = SourceConfig::from_toml(&t, value, &mut problems) {
                            s.validate(&t, &mut problems);
                            sources.insert(name, s);
                        }
                    }
                }
                other => problems.push(
                    other,
                    None,
                    "unknown table (expected [warehouse], [state], [daemon], [server], [compaction] or [sources.<name>])",
                ),
            }
        }
        SourceConfig::link_all(&mut sources, &mut problems);
        warehouse.validate(&mut problems);
        compaction.validate(warehouse.format, &mut problems);
        if !(1..=64).contains(&daemon.max_concurrent_sources) {
            problems.push(
                "daemon",
                Some("max_concurrent_sources"),
                "must be between 1 and 64",
            );
        }
        if let Some(l) = &server.listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            problems.push(
                "server",
                Some("listen"),
                format!("{l:?} is not an address and port, e.g. \"127.0.0.1:9187\""),
            );
        }
        if problems.0.is_empty() {
            Ok(Config {
                file: file.to_path_buf(),
                warehouse,
                state,
                sources,
                daemon,
                server,
                compaction,
            })
        } else {
            Err(invalid(problems.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        match Config::parse(Path::new("x.toml"), text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn a_misspelt_key_is_named_with_its_table() {
        let p = problems(
            "[warehouse]\nroot='w'\n[sources.vg]\nkind='voicegain'\ntoken_env='T'\nper_pge=10\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].table, "sources.vg");
        assert_eq!(p[0].key.as_deref(), Some("per_pge"));
    }

    #[test]
    fn analyze_with_must_name_an_analysis_source_of_the_same_account() {
        let calls = |target: &str, sid: &str| {
            format!(
                "[sources.ex]\nkind='exotel_calls'\naccount_sid='{sid}'\napi_key_env='K'\napi_token_env='T'\n\
                 start_date='2026-11-01'\nwindow_days=32\npage_size=101\nanalyze_with='{target}'\n"
            )
        };
        let analysis = "[sources.ai]\nkind='exotel_analyze'\naccount_sid='acct'\napi_key_env='K'\napi_token_env='T'\n\
                        webhook_token_env='W'\ncallback_base_url='https://cs.example.com'\n\
                        [sources.vg]\nkind='voicegain'\ntoken_env='T'\n";
        let all = |text: String| {
            problems(&text)
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let p = all(format!("{}{analysis}", calls("nobody", "acct")));
        assert!(
            p.contains("[sources.ex] key `window_days`: must be between 1 and 31"),
            "{p}"
        );
        assert!(
            p.contains("[sources.ex] key `page_size`: must be between 1 and 100"),
            "{p}"
        );
        assert!(
            p.contains("[sources.ex] key `analyze_with`: no source named \"nobody\""),
            "{p}"
        );
        let p = all(format!("{}{analysis}", calls("vg", "acct")));
        assert!(
            p.contains("source vg is of kind voicegain, not exotel_analyze"),
            "{p}"
        );
        let p = all(format!("{}{analysis}", calls("ai", "other")));
        assert!(
            p.contains("source ai analyses account \"acct\", not this source's \"other\""),
            "{p}"
        );
        let ok = format!("{}{analysis}", calls("ai", "acct"))
            .replace("window_days=32", "window_days=31")
            .replace("page_size=101", "page_size=100");
        let cfg = Config::parse(Path::new("x.toml"), &ok).unwrap();
        let Some(SourceConfig::ExotelCalls(c)) = cfg.sources.get("ex") else {
            panic!("no exotel_calls source");
        };
        assert_eq!(c.analyzer.as_ref().map(|a| a.0.as_str()), Some("ai"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let p = problems(
            "[warehouse]\nroots='w'\n[sources.Bad]\nkind='voicegain'\ntoken_env='T'\nper_page=0\n[sources.x]\nkind='nope'\n[sources.y]\nkind='voicegain'\nschedule='whenever'\n",
        );
        let text: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        let all = text.join("\n");
        assert!(all.contains("[warehouse] key `roots`"), "{all}");
        assert!(all.contains("[sources.Bad]: source names"), "{all}");
        assert!(all.contains("[sources.Bad] key `per_page`"), "{all}");
        assert!(all.contains("[sources.x] key `kind`"), "{all}");
        assert!(all.contains("[sources.y] key `schedule`"), "{all}");
        assert!(all.contains("[sources.y] key `token_env`"), "{all}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let p = problems("[sources.vg]\nkind='voicegain'\ntoken_env='T'\nper_page='many'\n");
        assert_eq!(p[0].key.as_deref(), Some("per_page"), "{p:?}");
        let p = problems(
            "[sources.vg]\nkind='voicegain'\ntoken_env='T'\n[sources.vg.http]\nmax_attempts='x'\n",
        );
        assert_eq!(p[0].table, "sources.vg.http", "{p:?}");
        assert_eq!(p[0].key.as_deref(), Some("max_attempts"), "{p:?}");
    }

    #[test]
    fn source_names_are_path_safe() {
        assert!(valid_source_name("voicegain_eu-1"));
        assert!(!valid_source_name("../etc"));
        assert!(!valid_source_name(""));
        assert!(!valid_source_name("UPPER"));
    }
}
