//! Shared test helpers: a simulator, a temp warehouse, the binary, and a lake reader.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use callsync::simulator::{Simulator, VoicegainSim};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A simulator, a temp directory with a config, and the binary to run against them.
pub struct Env {
    pub sim: Simulator,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    // Declared last: the simulator's server task runs on it.
    pub rt: tokio::runtime::Runtime,
}

/// The `[sources.vg]` table pointed at the simulator, with fast retries for tests.
pub fn vg_table(name: &str, base_url: &str, token_line: &str, per_page: u32) -> String {
    format!(
        "[sources.{name}]\nkind = \"voicegain\"\nbase_url = \"{base_url}\"\n{token_line}\nper_page = {per_page}\n\
         [sources.{name}.http]\ntimeout_secs = 5\nconnect_timeout_secs = 2\nmax_attempts = 8\nbackoff_initial_ms = 10\nbackoff_max_ms = 200\n"
    )
}

impl Env {
    /// Starts the simulator with `data` and writes a config with one source `vg`.
    pub fn new(data: VoicegainSim, per_page: u32) -> Env {
        Env::with_max_rows(data, per_page, 250_000)
    }

    /// As `new`, with `[warehouse] max_rows_per_file`.
    pub fn with_max_rows(data: VoicegainSim, per_page: u32, max_rows: usize) -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let token = data.token.clone();
        let sim = rt.block_on(Simulator::start(data)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("vg.token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let config = dir.path().join("callsync.toml");
        let env = Env {
            sim,
            dir,
            config,
            rt,
        };
        let table = vg_table(
            "vg",
            &env.sim.voicegain_base_url(),
            &format!("token_file = \"{}\"", token_file.display()),
            per_page,
        );
        env.write_config(&table, max_rows);
        env
    }

    /// Writes the config: warehouse and state in the temp dir, then `sources`.
    pub fn write_config(&self, sources: &str, max_rows: usize) {
        let text = format!(
            "[warehouse]\nroot = \"{}\"\nmax_rows_per_file = {max_rows}\n[state]\npath = \"{}\"\n{sources}",
            self.warehouse().display(),
            self.state_path().display()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn warehouse(&self) -> PathBuf {
        self.dir.path().join("warehouse")
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state").join("callsync.db")
    }

    /// The binary with `--config` set and quiet-ish logs.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_callsync"));
        c.arg("--config").arg(&self.config).args(args);
        c.env("RUST_LOG", "info").env_remove("CALLSYNC_FAILPOINT");
        c
    }

    /// Runs the binary to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs `sync` and asserts it succeeded.
    pub fn sync_ok(&self) -> Output {
        let out = self.run(&["sync"]);
        assert_eq!(out.status.code(), Some(0), "sync failed:\n{}", text(&out));
        out
    }

    /// Starts the binary in the background.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Every row of the lake.
    pub fn lake(&self) -> Vec<LakeRow> {
        read_lake(&self.warehouse())
    }
}

/// stdout + stderr of a run.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One lake row, with its partition values from the path.
#[derive(Debug, Clone, PartialEq)]
pub struct LakeRow {
    pub source: String,
    pub date: String,
    pub file: PathBuf,
    pub call_id: String,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub direction: Option<String>,
    pub from_number: Option<String>,
    pub to_number: Option<String>,
    pub agent_name: Option<String>,
    pub queue_name: Option<String>,
    pub summary: Option<String>,
    pub tags: Option<Vec<String>>,
    pub vendor_status: Option<String>,
    pub raw: Option<String>,
    pub agent_id: Option<String>,
    pub campaign_id: Option<String>,
    pub language: Option<String>,
    pub recording_ref: Option<String>,
    pub survey_score: Option<f64>,
    /// (role, speaker, text, offset_ms) per turn; `None` when the column is null.
    pub transcript: Option<Vec<Turn>>,
}

/// One transcript turn as read back.
pub type Turn = (Option<String>, Option<String>, Option<String>, Option<i64>);

fn opt_strings(a: &arrow_array::StringArray) -> Vec<Option<String>> {
    (0..a.len())
        .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
        .collect()
}

/// Files below `dir` whose name ends with `suffix`.
pub fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_with_suffix(&p, suffix));
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn partition_value(path: &Path, key: &str) -> String {
    path.components()
        .filter_map(|c| c.as_os_str().to_str())
        .find_map(|c| c.strip_prefix(&format!("{key}=")).map(str::to_string))
        .unwrap_or_default()
}

fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let col = b.column_by_name(name).unwrap().as_string::<i32>();
    (0..col.len())
        .map(|i| (!col.is_null(i)).then(|| col.value(i).to_string()))
        .collect()
}

fn i64s(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let col = b.column_by_name(name).unwrap();
    let vals: Vec<Option<i64>> = match col.data_type() {
        arrow_schema::DataType::Int64 => col.as_primitive::<Int64Type>().iter().collect(),
        _ => col
            .as_primitive::<TimestampMicrosecondType>()
            .iter()
            .collect(),
    };
    vals
}

/// Reads one Parquet file of the calls table (and checks its schema version metadata).
pub fn read_file(path: &Path) -> Vec<LakeRow> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not readable Parquet: {e}", path.display()));
    let kv = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    assert!(
        kv.iter()
            .any(|k| k.key == "callsync.schema_version" && k.value.as_deref() == Some("2")),
        "{} lacks callsync.schema_version",
        path.display()
    );
    let source = partition_value(path, "source");
    let date = partition_value(path, "date");
    let mut rows = Vec::new();
    for batch in builder.build().unwrap() {
        let b = batch.unwrap();
        let ids = strings(&b, "call_id");
        let started = i64s(&b, "started_at");
        let ended = i64s(&b, "ended_at");
        let dur = i64s(&b, "duration_ms");
        let dir = strings(&b, "direction");
        let from = strings(&b, "from_number");
        let to = strings(&b, "to_number");
        let agent = strings(&b, "agent_name");
        let queue = strings(&b, "queue_name");
        let summary = strings(&b, "summary");
        let status = strings(&b, "vendor_status");
        let raw = strings(&b, "raw");
        let tags_col = b.column_by_name("tags").unwrap().as_list::<i32>();
        let agent_id = strings(&b, "agent_id");
        let campaign = strings(&b, "campaign_id");
        let language = strings(&b, "language");
        let recording = strings(&b, "recording_ref");
        let survey = b
            .column_by_name("survey_score")
            .unwrap()
            .as_primitive::<arrow_array::types::Float64Type>();
        let tr = b.column_by_name("transcript").unwrap().as_list::<i32>();
        for i in 0..b.num_rows() {
            let tags = (!tags_col.is_null(i)).then(|| {
                let v = tags_col.value(i);
                let s = v.as_string::<i32>();
                (0..s.len()).map(|j| s.value(j).to_string()).collect()
            });
            let transcript = (!tr.is_null(i)).then(|| {
                let v = tr.value(i);
                let s = v.as_struct();
                let role = opt_strings(s.column(0).as_string::<i32>());
                let speaker = opt_strings(s.column(1).as_string::<i32>());
                let text = opt_strings(s.column(2).as_string::<i32>());
                let off = s.column(3).as_primitive::<Int64Type>();
                (0..s.len())
                    .map(|j| {
                        (
                            role[j].clone(),
                            speaker[j].clone(),
                            text[j].clone(),
                            (!off.is_null(j)).then(|| off.value(j)),
                        )
                    })
                    .collect()
            });
            rows.push(LakeRow {
                agent_id: agent_id[i].clone(),
                campaign_id: campaign[i].clone(),
                language: language[i].clone(),
                recording_ref: recording[i].clone(),
                survey_score: (!survey.is_null(i)).then(|| survey.value(i)),
                transcript,
                source: source.clone(),
                date: date.clone(),
                file: path.to_path_buf(),
                call_id: ids[i].clone().unwrap(),
                started_at: started[i],
                ended_at: ended[i],
                duration_ms: dur[i],
                direction: dir[i].clone(),
                from_number: from[i].clone(),
                to_number: to[i].clone(),
                agent_name: agent[i].clone(),
                queue_name: queue[i].clone(),
                summary: summary[i].clone(),
                tags,
                vendor_status: status[i].clone(),
                raw: raw[i].clone(),
            });
        }
    }
    rows
}

/// Every row of every visible Parquet file under `<root>/calls`.
pub fn read_lake(root: &Path) -> Vec<LakeRow> {
    files_with_suffix(&root.join("calls"), ".parquet")
        .iter()
        .flat_map(|p| read_file(p))
        .collect()
}

/// The rows of one source, keyed by call id, asserting there is no duplicate.
pub fn rows_by_id(env: &Env, source: &str) -> BTreeMap<String, LakeRow> {
    let mut out = BTreeMap::new();
    for r in env.lake().into_iter().filter(|r| r.source == source) {
        let id = r.call_id.clone();
        if let Some(prev) = out.insert(id.clone(), r) {
            panic!(
                "call {id} is in the lake twice (one in {})",
                prev.file.display()
            );
        }
    }
    out
}

/// Writes a token file for a source and returns its path.
pub fn token_file(env: &Env, name: &str, token: &str) -> PathBuf {
    let p = env.dir.path().join(format!("{name}.token"));
    std::fs::write(&p, token).unwrap();
    p
}

/// Call ids of the lake, asserting there is no duplicate.
pub fn unique_ids(rows: &[LakeRow]) -> Vec<u64> {
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for r in rows {
        if let Some(prev) = seen.insert(&r.call_id, &r.file) {
            panic!(
                "call {} is in the lake twice ({} and {})",
                r.call_id,
                prev.display(),
                r.file.display()
            );
        }
    }
    let mut ids: Vec<u64> = rows.iter().map(|r| r.call_id.parse().unwrap()).collect();
    ids.sort();
    ids
}

/// Lines of every rejects file, parsed.
pub fn rejects(root: &Path) -> Vec<serde_json::Value> {
    files_with_suffix(&root.join("_rejects"), ".jsonl")
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The lake equals the simulator's consecutive-export ground truth, field by field.
pub fn assert_lake_matches_truth(env: &Env) {
    assert_lake_matches_truth_of(env, "vg")
}

/// As `assert_lake_matches_truth`, for the Voicegain source `source` among others.
pub fn assert_lake_matches_truth_of(env: &Env, source: &str) {
    let rows: Vec<LakeRow> = env
        .lake()
        .into_iter()
        .filter(|r| r.source == source)
        .collect();
    let got = unique_ids(&rows);
    let sim = env.sim.voicegain();
    let truth: BTreeMap<u64, callsync::simulator::VgCall> = sim
        .expected_exported()
        .into_iter()
        .map(|c| (c.id, c.clone()))
        .collect();
    let want: Vec<u64> = truth.keys().copied().collect();
    assert_eq!(
        got.len(),
        want.len(),
        "row count differs from the ground truth"
    );
    assert_eq!(got, want, "call ids differ from the ground truth");
    for r in &rows {
        let c = &truth[&r.call_id.parse::<u64>().unwrap()];
        assert_eq!(r.source, source);
        assert_eq!(
            r.started_at,
            Some(c.start_secs * 1_000_000),
            "started_at of {}",
            c.id
        );
        assert_eq!(
            r.ended_at,
            Some((c.start_secs + c.duration_secs as i64) * 1_000_000)
        );
        assert_eq!(r.duration_ms, Some(c.duration_secs as i64 * 1000));
        assert_eq!(r.direction.as_deref(), Some(c.direction.as_str()));
        assert_eq!(r.from_number.as_deref(), Some(c.external.as_str()));
        assert_eq!(r.to_number.as_deref(), Some(c.internal.as_str()));
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        assert_eq!(r.agent_name, some(&c.agent_name));
        assert_eq!(r.agent_id, some(&c.agent_id));
        assert_eq!(r.queue_name, some(&c.queue_name));
        assert_eq!(
            r.summary,
            some(&c.notes),
            "summary keeps new lines and quotes"
        );
        let tags = (!c.tags.is_empty()).then(|| c.tags.clone());
        assert_eq!(r.tags, tags);
        assert_eq!(r.vendor_status.as_deref(), Some(c.phase.as_str()));
        let day = chrono::DateTime::from_timestamp(c.start_secs, 0)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string();
        assert_eq!(r.date, day, "partition date of {}", c.id);
        let raw: serde_json::Value = serde_json::from_str(r.raw.as_deref().unwrap()).unwrap();
        assert_eq!(raw["callId"], c.id.to_string());
        // Empty CSV fields are left out of `raw`, present ones kept as sent.
        assert_eq!(
            raw.get("agent.name").and_then(|v| v.as_str()),
            some(&c.agent_name).as_deref()
        );
        assert!(raw.as_object().unwrap().values().all(|v| v != ""), "{raw}");
        assert_eq!(raw["numAudioChannels"], "2");
    }
}

/// Polls `done` every few milliseconds until it holds or `secs` pass; returns whether it held.
pub fn wait_until(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while !done() {
        if t0.elapsed() > std::time::Duration::from_secs(secs) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

/// No staged file is left behind.
pub fn staging_files(root: &Path) -> Vec<PathBuf> {
    files_with_suffix(&root.join("_staging"), ".tmp")
}

/// DuckDB reads the lake: (rows, distinct call ids). `None` when no Python with duckdb is
/// configured (`CALLSYNC_TEST_PYTHON`; `.ci/run` sets it).
pub fn duckdb_counts(root: &std::path::Path) -> Option<(u64, u64)> {
    let python = test_python()?;
    if files_with_suffix(&root.join("calls"), ".parquet").is_empty() {
        return Some((0, 0));
    }
    let script = format!(
        "import duckdb\nr = duckdb.connect().execute(\"SELECT count(*), count(DISTINCT call_id) FROM read_parquet('{}/calls/**/*.parquet', hive_partitioning=true)\").fetchall()[0]\nprint(r[0], r[1])",
        root.display()
    );
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "DuckDB could not read the lake: {}",
        text(&out)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    Some((it.next().unwrap(), it.next().unwrap()))
}

/// Whether this run is CI's (`CI=true`): there a test never skips for a missing tool.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A test cannot run here (`reason`): on a developer's machine it says so and passes; under
/// `CI=true` it fails, since a test that skips proves nothing (`.ci/run` installs the tools).
pub fn skip(reason: &str) {
    assert!(!under_ci(), "CI=true: {reason}; .ci/run must provide it");
    eprintln!("skipped: {reason}");
}

/// Whether `tool` runs here (`tool --version`); when not, `skip`s (a failure under CI).
pub fn have_tool(tool: &str) -> bool {
    let ok = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(&format!("needs {tool}"));
    }
    ok
}

/// The Python with duckdb, pyarrow and prometheus_client (`CALLSYNC_TEST_PYTHON`, set by
/// `.ci/run`); `None` on a developer's machine without it, a failure under CI.
pub fn test_python() -> Option<String> {
    let p = std::env::var("CALLSYNC_TEST_PYTHON").ok();
    if p.is_none() {
        skip("CALLSYNC_TEST_PYTHON is not set (the Python checks)");
    }
    p
}

/// One source's entry of `status --json` (`Null` when the state has no such source).
pub fn source_status(env: &Env, name: &str) -> serde_json::Value {
    let out = env.run(&["status", "--json"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", text(&out)));
    all.as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}
