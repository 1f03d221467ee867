//! The driver: one seed is one world (a simulator, a lake, two writers with their own state
//! files) and one schedule of steps (syncs of either writer, compactions, vacuums, new calls
//! at the vendor), each step run in-process through the library with the lake's stores
//! failing as the seed decides and, sometimes, the "process" crashing at a named point of the
//! commit protocol. After every step, with faults off, the invariants are checked:
//!
//! 1. every reader opens the lake: the table (or the folders) lists its files, and every file
//!    it lists reads as Parquet;
//! 2. no call is visible twice, and every visible call is one the vendor has;
//! 3. nothing is lost: every exported key is visible or in a committed file still pending,
//!    and every visible call is exported (else a later sync would write it twice);
//! 4. every file the table references exists with its recorded size;
//! 5. the state and the table agree: the state's published data files are the table's;
//! 6. `verify` exits 0 exactly when 1–5 hold.
//!
//! 1, 2, 4 and "every visible call is exported" hold after every step. "Every exported call
//! is visible" and 5 may lag after a fault that only the next run can settle (a log entry
//! the table lost, a plain lake switched to Delta, a rebuilt state naming files the table has
//! yet to adopt), but only while `verify` names it. While a writer's state is lost and not
//! yet repaired, callsync refuses its runs and only what holds whatever the state is checked.
//! At the end, with faults off, a lost state is repaired and both writers sync once more:
//! then everything holds, each writer's rows equal the vendor's calls exactly, and `verify`
//! is clean.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use object_store::ObjectStore;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use callsync::config::Config;
use callsync::lake::Lake;
use callsync::lake::compact::CompactOptions;
use callsync::pipeline::{RunContext, RunMode, StopFlag};
use callsync::simulator::{Simulator, VoicegainSim};
use callsync::state::State;

use super::store::{CleanLayer, FaultLayer, Plan};
use crate::object_store::Moto;

/// Where the lake lives and what format it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    PlainLocal,
    DeltaLocal,
    PlainMemory,
    DeltaMemory,
    PlainS3,
    DeltaS3,
    /// A local plain lake whose config is switched to Delta at a step the seed picks.
    PlainToDelta,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::PlainLocal => "plain-local",
            Mode::DeltaLocal => "delta-local",
            Mode::PlainMemory => "plain-memory",
            Mode::DeltaMemory => "delta-memory",
            Mode::PlainS3 => "plain-s3",
            Mode::DeltaS3 => "delta-s3",
            Mode::PlainToDelta => "plain-to-delta",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [
            Mode::PlainLocal,
            Mode::DeltaLocal,
            Mode::PlainMemory,
            Mode::DeltaMemory,
            Mode::PlainS3,
            Mode::DeltaS3,
            Mode::PlainToDelta,
        ]
        .into_iter()
        .find(|m| m.name() == s)
    }

    pub fn delta(self) -> bool {
        matches!(self, Mode::DeltaLocal | Mode::DeltaMemory | Mode::DeltaS3)
    }

    pub fn s3(self) -> bool {
        matches!(self, Mode::PlainS3 | Mode::DeltaS3)
    }
}

/// A crash of the in-process "process" at a failpoint (the payload of its panic).
pub struct Crash(pub String);

/// Silences the expected panics of simulated crashes (once per test process).
fn quiet_crashes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Crash>().is_none() {
                default(info);
            }
        }));
    });
}

/// The two writers of the lake: `vg` (the daemon under test) and `vg2` (a second daemon
/// with its own state, writing the same tables).
const WRITERS: [&str; 2] = ["vg", "vg2"];

/// One step of a schedule.
#[derive(Debug, Clone)]
pub enum Step {
    /// The vendor gets `n` new calls.
    AddCalls(usize),
    Sync(usize),
    Compact(usize),
    Vacuum,
    /// `repair` of a writer (`--force` or not).
    Repair(usize, bool),
    /// A writer's state database is lost (a container started without its volume).
    LoseState(usize),
    /// The config is switched from the plain layout to Delta.
    SwitchToDelta,
}

/// One seeded world.
pub struct World {
    pub mode: Mode,
    pub seed: u64,
    /// Holds the lake and the states (removed when the world is dropped).
    _dir: tempfile::TempDir,
    configs: [Config; 2],
    pub plan: Arc<Plan>,
    memory: Option<Arc<dyn ObjectStore>>,
    sim: Simulator,
    /// The S3 endpoint, in the S3 modes.
    endpoint: Option<String>,
    rt: tokio::runtime::Runtime,
    /// What happened, step by step (printed when an invariant breaks).
    pub log: Vec<String>,
    /// Writers whose state was lost and not yet repaired: callsync refuses their runs (the
    /// lake and the state disagree), and the state-side invariants wait for the repair.
    lost_state: [bool; 2],
}

/// A seed's schedule and fault rates, derived from the seed alone.
fn rates(seed: u64) -> (f64, f64, f64) {
    let mut r = fastrand::Rng::with_seed(seed ^ 0x5eed);
    let pick = |r: &mut fastrand::Rng, xs: &[f64]| xs[r.usize(0..xs.len())];
    (
        pick(&mut r, &[0.0, 0.02, 0.05, 0.1]),
        pick(&mut r, &[0.0, 0.02, 0.05, 0.1, 0.2]),
        pick(&mut r, &[0.0, 0.01, 0.03]),
    )
}

impl World {
    /// A new world for `seed` (a fresh bucket prefix on `moto` for the S3 modes).
    pub fn new(mode: Mode, seed: u64, moto: Option<&Moto>) -> World {
        let (b, a, r) = rates(seed);
        World::with_rates(mode, seed, moto, (b, a, r))
    }

    /// A world whose store fails only where a test's rules say.
    pub fn quiet(mode: Mode, seed: u64) -> World {
        World::with_rates(mode, seed, None, (0.0, 0.0, 0.0))
    }

    fn with_rates(mode: Mode, seed: u64, moto: Option<&Moto>, (b, a, r): (f64, f64, f64)) -> World {
        quiet_crashes();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sim = rt
            .block_on(Simulator::start(
                VoicegainSim::new(seed, 60).with_ratios(0.0, 0.02),
            ))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("vg.token");
        std::fs::write(&token, sim.voicegain().token.clone()).unwrap();
        let secret = dir.path().join("s3.secret");
        std::fs::write(&secret, "testing").unwrap();
        let warehouse = match mode {
            Mode::PlainLocal | Mode::DeltaLocal | Mode::PlainToDelta => {
                format!("root = \"{}\"\n", dir.path().join("lake").display())
            }
            Mode::PlainMemory | Mode::DeltaMemory => format!(
                "url = \"s3://memory/lake-{seed}\"\n[warehouse.storage_options]\naws_region = \"us-east-1\"\naws_access_key_id = \"x\"\naws_secret_access_key_file = \"{}\"\naws_endpoint = \"http://127.0.0.1:9\"\naws_allow_http = \"true\"\n",
                secret.display()
            ),
            Mode::PlainS3 | Mode::DeltaS3 => {
                let moto = moto.expect("the S3 modes need the moto server");
                format!(
                    "url = \"s3://lake/faults-{seed}\"\n[warehouse.storage_options]\naws_endpoint = \"{}\"\naws_allow_http = \"true\"\naws_region = \"us-east-1\"\naws_access_key_id = \"testing\"\naws_secret_access_key_file = \"{}\"\n",
                    moto.endpoint(),
                    secret.display()
                )
            }
        };
        let format = if mode.delta() { "delta" } else { "parquet" };
        let configs = WRITERS.map(|name| {
            let text = format!(
                "[warehouse]\nformat = \"{format}\"\ncheckpoint_interval = 5\nmax_rows_per_file = 40\n{warehouse}\
                 [state]\npath = \"{}\"\n\
                 [sources.{name}]\nkind = \"voicegain\"\nbase_url = \"{}\"\ntoken_file = \"{}\"\nper_page = 25\n\
                 [sources.{name}.http]\ntimeout_secs = 5\nconnect_timeout_secs = 2\nmax_attempts = 3\nbackoff_initial_ms = 5\nbackoff_max_ms = 20\n",
                dir.path().join(format!("state-{name}")).join("callsync.db").display(),
                sim.voicegain_base_url(),
                token.display()
            );
            // The warehouse table must come first in TOML order: its storage options are a
            // sub-table, so the state and sources follow them.
            let text = reorder(&text);
            let file = dir.path().join(format!("{name}.toml"));
            std::fs::write(&file, &text).unwrap();
            Config::load(&file).unwrap_or_else(|e| panic!("{e}\n{text}"))
        });
        let plan = Arc::new(Plan::new(seed, b, a, r));
        plan.set_root(&dir.path().canonicalize().unwrap().to_string_lossy());
        World {
            mode,
            seed,
            _dir: dir,
            configs,
            plan,
            memory: matches!(mode, Mode::PlainMemory | Mode::DeltaMemory)
                .then(|| Arc::new(object_store::memory::InMemory::new()) as Arc<dyn ObjectStore>),
            sim,
            endpoint: moto.map(|m| m.endpoint()),
            rt,
            log: Vec::new(),
            lost_state: [false; 2],
        }
    }

    /// Compacts writer `w`'s partitions now (faults as `faults` says), as `compact` would.
    pub fn compact_now(
        &mut self,
        w: usize,
        faults: bool,
    ) -> anyhow::Result<callsync::lake::compact::Compacted> {
        let cfg = &self.configs[w];
        let layer = self.layer();
        let lake = Lake::open_with(
            &cfg.warehouse,
            &cfg.state.path,
            self.rt.handle(),
            Some(layer.as_ref()),
        )?;
        let opts = CompactOptions {
            target_bytes: 8 << 20,
            min_files: 2,
            dates: None,
        };
        self.plan.set_enabled(faults);
        let r = callsync::app::compact_one(cfg, WRITERS[w], &lake, &opts);
        self.plan.set_enabled(false);
        r
    }

    fn layer(&self) -> Arc<FaultLayer> {
        Arc::new(FaultLayer {
            plan: self.plan.clone(),
            memory: self.memory.clone(),
        })
    }

    /// Writer `w`'s config with its state copied to another file: a second process given
    /// the same source (a copy of the state put back on another host, say).
    pub fn state_copy(&self, w: usize) -> Config {
        let cfg = &self.configs[w];
        let copy = self
            ._dir
            .path()
            .join(format!("copy-{}", WRITERS[w]))
            .join("callsync.db");
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        // A consistent copy of the database (the WAL folded in).
        let conn = rusqlite::Connection::open(&cfg.state.path).unwrap();
        conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()])
            .unwrap();
        let mut c = cfg.clone();
        c.state.path = copy;
        c
    }

    /// A compaction of writer `w` with `cfg` (another process), without faults, to run later
    /// (from a failpoint hook, say).
    pub fn compaction_as(
        &self,
        cfg: Config,
        w: usize,
    ) -> impl Fn() -> callsync::lake::compact::Compacted + 'static {
        let (handle, memory) = (self.rt.handle().clone(), self.memory.clone());
        move || {
            let lake = Lake::open_with(
                &cfg.warehouse,
                &cfg.state.path,
                &handle,
                Some(&CleanLayer {
                    memory: memory.clone(),
                }),
            )
            .unwrap();
            let opts = CompactOptions {
                target_bytes: 8 << 20,
                min_files: 2,
                dates: None,
            };
            callsync::app::compact_one(&cfg, WRITERS[w], &lake, &opts).unwrap()
        }
    }

    fn clean_lake(&self) -> Lake {
        let cfg = &self.configs[0];
        Lake::open_with(
            &cfg.warehouse,
            &cfg.state.path,
            self.rt.handle(),
            Some(&CleanLayer {
                memory: self.memory.clone(),
            }),
        )
        .unwrap()
    }

    /// The faults injected so far: (before, after, read, calls).
    pub fn counts(&self) -> [u64; 4] {
        self.plan.counts.snapshot()
    }

    /// Runs one step with faults on and, when `crash` says so, a crash at the k-th time a
    /// failpoint is reached. Returns what it came to, for the log.
    pub fn run(&mut self, step: &Step, crash: Option<(&'static str, u32)>, faults: bool) -> String {
        match step {
            Step::AddCalls(n) => {
                self.sim.voicegain().add_calls(*n);
                return format!("{n} new calls at the vendor");
            }
            Step::LoseState(w) => {
                self.lost_state[*w] = true;
                let db = self.configs[*w].state.path.clone();
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
                }
                return "state lost".into();
            }
            Step::SwitchToDelta => {
                for c in &mut self.configs {
                    c.warehouse.format = callsync::config::LakeFormat::Delta;
                }
                return "config switched to format = \"delta\"".into();
            }
            _ => {}
        }
        if let Some((point, k)) = crash {
            let seen = std::cell::Cell::new(0);
            callsync::failpoint::set_hook(Some(Box::new(move |name| {
                if name == point {
                    seen.set(seen.get() + 1);
                    if seen.get() == k {
                        std::panic::panic_any(Crash(name.to_string()));
                    }
                }
            })));
        }
        self.plan.set_enabled(faults);
        let layer = self.layer();
        let handle = self.rt.handle().clone();
        let configs = &self.configs;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<String, String> {
            match step {
                Step::Sync(w) => {
                    let cfg = &configs[*w];
                    let mut ctx = RunContext::of(cfg);
                    ctx.layer = Some(layer.clone());
                    let name = WRITERS[*w];
                    let report = callsync::pipeline::run(
                        &ctx,
                        name,
                        &cfg.sources[name],
                        &handle,
                        &StopFlag::default(),
                        &RunMode::Sync,
                        &|_, _| {},
                    );
                    match report.error {
                        None => Ok(format!(
                            "{} rows, {} commits",
                            report.summary.rows, report.summary.commits
                        )),
                        Some(e) => Err(e.to_string()),
                    }
                }
                Step::Compact(w) => {
                    let cfg = &configs[*w];
                    let lake = Lake::open_with(
                        &cfg.warehouse,
                        &cfg.state.path,
                        &handle,
                        Some(layer.as_ref()),
                    )
                    .map_err(|e| e.to_string())?;
                    let opts = CompactOptions {
                        target_bytes: 8 << 20,
                        min_files: 2,
                        dates: None,
                    };
                    callsync::app::compact_one(cfg, WRITERS[*w], &lake, &opts)
                        .map(|c| {
                            format!(
                                "{} partitions, {} -> {} files, {} lost",
                                c.partitions, c.files_before, c.files_after, c.lost
                            )
                        })
                        .map_err(|e| format!("{e:#}"))
                }
                Step::Vacuum => {
                    let cfg = &configs[0];
                    let lake = Lake::open_with(
                        &cfg.warehouse,
                        &cfg.state.path,
                        &handle,
                        Some(layer.as_ref()),
                    )
                    .map_err(|e| e.to_string())?;
                    lake.table()
                        .vacuum(0, false)
                        .map(|v| {
                            format!(
                                "{} files deleted",
                                v.iter().map(|(_, f)| f.len()).sum::<usize>()
                            )
                        })
                        .map_err(|e| e.to_string())
                }
                Step::Repair(w, force) => {
                    let cfg = &configs[*w];
                    let lake = Lake::open_with(
                        &cfg.warehouse,
                        &cfg.state.path,
                        &handle,
                        Some(layer.as_ref()),
                    )
                    .map_err(|e| e.to_string())?;
                    let mut out = Vec::new();
                    let code = callsync::app::repair_lake(
                        cfg,
                        &lake,
                        &[WRITERS[*w].to_string()],
                        *force,
                        &mut out,
                    )
                    .map_err(|e| format!("{e:#}"))?;
                    let text = String::from_utf8_lossy(&out).trim().to_string();
                    if code == 0 { Ok(text) } else { Err(text) }
                }
                Step::AddCalls(_) | Step::LoseState(_) | Step::SwitchToDelta => unreachable!(),
            }
        }));
        self.plan.set_enabled(false);
        callsync::failpoint::set_hook(None);
        // A run that succeeded proves its state and the lake agree (else it is refused).
        if let (Step::Repair(w, _) | Step::Sync(w), Ok(Ok(_))) = (step, &result) {
            self.lost_state[*w] = false;
        }
        match result {
            Ok(Ok(s)) => format!("ok: {s}"),
            Ok(Err(e)) => format!("failed: {e}"),
            Err(p) => match p.downcast::<Crash>() {
                Ok(c) => format!("crashed at {}", c.0),
                Err(p) => std::panic::resume_unwind(p),
            },
        }
    }

    /// The vendor's finished calls (what each writer must end up with).
    fn truth(&self) -> BTreeSet<String> {
        self.sim
            .voicegain()
            .expected_exported()
            .iter()
            .map(|c| c.id.to_string())
            .collect()
    }

    /// Checks the invariants of the module's doc; `Err` names the first broken one. With
    /// `exact`, each writer's rows must also equal the vendor's calls.
    pub fn check(&self, exact: bool) -> Result<(), String> {
        let lake = self.clean_lake();
        let storage = lake.storage();
        let truth = self.truth();
        // What must hold after every step (1, 2, 4, and that nothing visible is unexported)…
        let mut broken: Vec<String> = Vec::new();
        // …and what a fault may leave for the next run to settle (every exported call visible,
        // the state and the table agreeing): allowed only while `verify` names it, and never
        // after the final clean syncs.
        let mut settling: Vec<String> = Vec::new();
        for (w, name) in WRITERS.iter().enumerate() {
            let cfg = &self.configs[w];
            let state = State::open(&cfg.state.path).map_err(|e| e.to_string())?;
            let Some(id) = state.source_id(name).map_err(|e| e.to_string())? else {
                continue;
            };
            // 1 and 4: readers open it; every referenced file is there with its size.
            let active = match lake.table().active_files(storage, name) {
                Ok(a) => a,
                Err(e) => {
                    broken.push(format!("{name}: the lake does not open: {e}"));
                    continue;
                }
            };
            let mut visible: HashMap<String, usize> = HashMap::new();
            for f in &active {
                match storage.size(&f.path) {
                    Ok(Some(n)) if n == f.size => {}
                    Ok(other) => {
                        broken.push(format!(
                            "{name}: {} is referenced with {} bytes but is {other:?}",
                            f.path, f.size
                        ));
                        continue;
                    }
                    Err(e) => broken.push(format!("{name}: {}: {e}", f.path)),
                }
                match ids_of(storage, &f.path) {
                    Ok(ids) => {
                        for i in ids {
                            *visible.entry(i).or_default() += 1;
                        }
                    }
                    Err(e) => broken.push(format!("{name}: a reader fails on {}: {e}", f.path)),
                }
            }
            // 2: no duplicate, nothing the vendor does not have.
            let dups: Vec<&String> = visible
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(k, _)| k)
                .take(3)
                .collect();
            if !dups.is_empty() {
                broken.push(format!("{name}: calls visible twice: {dups:?}"));
            }
            let strangers: Vec<&String> = visible
                .keys()
                .filter(|k| !truth.contains(*k))
                .take(3)
                .collect();
            if !strangers.is_empty() {
                broken.push(format!(
                    "{name}: calls the vendor does not have: {strangers:?}"
                ));
            }
            if self.lost_state[w] && !exact {
                // Until a run of it succeeds (`repair`, or a sync where the lake held nothing
                // of it), the state-side invariants and `verify`'s verdict wait; 1, 2 and 4
                // hold whatever the state.
                continue;
            }
            // The lake's marker names a commit the state knows (else every run is refused).
            if let Ok(Some(bytes)) = storage.read(&format!("_callsync/{name}.json"))
                && let Ok(m) = serde_json::from_slice::<serde_json::Value>(&bytes)
                && let Some(commit) = m["commit_id"].as_str()
                && !knows_commit(&cfg.state.path, commit)
            {
                broken.push(format!(
                    "{name}: the lake's marker names commit {commit}, which the state does not know"
                ));
            }
            // 3: nothing lost.
            let manifest = state.manifest(id).map_err(|e| e.to_string())?;
            let mut pending: HashSet<String> = HashSet::new();
            for m in manifest
                .iter()
                .filter(|m| !m.published && m.final_path.ends_with(".parquet"))
            {
                let at = if storage.size(&m.final_path).ok().flatten() == Some(m.bytes) {
                    Some(&m.final_path)
                } else if storage.exists(&m.staged).unwrap_or(false) {
                    Some(&m.staged)
                } else {
                    None
                };
                if let Some(p) = at
                    && let Ok(ids) = ids_of(storage, p)
                {
                    pending.extend(ids);
                }
            }
            let exported = exported_keys(&cfg.state.path, id);
            let lost: Vec<&String> = exported
                .iter()
                .filter(|k| !visible.contains_key(*k) && !pending.contains(*k))
                .take(3)
                .collect();
            if !lost.is_empty() {
                settling.push(format!("{name}: exported but in no file: {lost:?}"));
            }
            let unrecorded: Vec<&String> = visible
                .keys()
                .filter(|k| !exported.contains(*k))
                .take(3)
                .collect();
            if !unrecorded.is_empty() {
                broken.push(format!("{name}: visible but not exported (a later sync would write them twice): {unrecorded:?}"));
            }
            // 5: the state and the table agree (pending work aside).
            let mut in_flight: HashSet<String> = manifest
                .iter()
                .filter(|m| !m.published)
                .map(|m| m.final_path.clone())
                .collect();
            for c in state.pending_compactions(id).map_err(|e| e.to_string())? {
                in_flight.extend(c.removed);
                in_flight.extend(c.added.into_iter().flatten().map(|f| f.path));
            }
            let published: BTreeSet<&str> = manifest
                .iter()
                .filter(|m| {
                    m.published
                        && m.final_path.ends_with(".parquet")
                        && !in_flight.contains(&m.final_path)
                })
                .map(|m| m.final_path.as_str())
                .collect();
            let seen: BTreeSet<&str> = active
                .iter()
                .filter(|f| !in_flight.contains(&f.path))
                .map(|f| f.path.as_str())
                .collect();
            if published != seen {
                let a: Vec<_> = published.difference(&seen).take(3).collect();
                let b: Vec<_> = seen.difference(&published).take(3).collect();
                settling.push(format!("{name}: state and table differ: only in the state {a:?}, only in the table {b:?}"));
            }
            if exact {
                let got: BTreeSet<String> = visible.keys().cloned().collect();
                if got != truth {
                    let missing: Vec<_> = truth.difference(&got).take(3).collect();
                    broken.push(format!(
                        "{name}: after a clean sync {} of {} calls are visible (missing e.g. {missing:?})",
                        got.len(),
                        truth.len()
                    ));
                }
            }
            // 6: verify tells the truth.
            let mut out = Vec::new();
            let code =
                match callsync::app::verify_lake(cfg, &lake, &state, &[name.to_string()], &mut out)
                {
                    Ok(code) => code,
                    Err(e) => {
                        broken.push(format!("{name}: verify failed to run: {e:#}"));
                        continue;
                    }
                };
            let text = String::from_utf8_lossy(&out);
            let mine = |v: &Vec<String>| v.iter().any(|b| b.starts_with(&format!("{name}:")));
            let (hard, soft) = (mine(&broken), mine(&settling));
            if exact || hard {
                // In the end (and for what must hold after every step) nothing may be off.
                broken.append(&mut settling);
            }
            if (hard || soft) == (code == 0) {
                broken.push(format!(
                    "{name}: verify exits {code} while the invariants {}:\n{text}",
                    if hard || soft { "are broken" } else { "hold" }
                ));
            }
            settling.retain(|b| !b.starts_with(&format!("{name}:")));
        }
        if broken.is_empty() {
            Ok(())
        } else {
            Err(broken.join("\n"))
        }
    }

    /// Runs the seed's schedule; `Err` has the report of the first broken invariant.
    pub fn play(&mut self, steps: usize) -> Result<(), String> {
        let mut r = fastrand::Rng::with_seed(self.seed);
        let mut delta = self.mode.delta();
        let switch_at = (self.mode == Mode::PlainToDelta).then(|| r.usize(2..steps.max(3)));
        let mut queued: Option<Step> = None;
        for i in 0..steps {
            let step = if switch_at == Some(i) {
                delta = true;
                Step::SwitchToDelta
            } else if let Some(s) = queued.take() {
                s
            } else {
                match r.u32(0..14) {
                    0..=1 => Step::AddCalls(r.usize(20..120)),
                    2..=5 => Step::Sync(0),
                    6..=7 => Step::Sync(1),
                    8..=9 if delta => Step::Compact(r.usize(0..2)),
                    10 if delta => Step::Vacuum,
                    11 => Step::Repair(r.usize(0..2), r.bool()),
                    12 if r.u32(0..3) == 0 => {
                        let w = r.usize(0..2);
                        // The operator answers a refused sync with `repair` (and runs it again
                        // if it fails: see below).
                        queued = Some(Step::Repair(w, false));
                        Step::LoseState(w)
                    }
                    _ => Step::AddCalls(r.usize(5..40)),
                }
            };
            let points: &[&str] = match step {
                Step::Sync(_) => &[
                    "after_stage",
                    "after_commit",
                    "after_publish",
                    "after_table_commit",
                    "readd_before_commit",
                ],
                Step::Compact(_) => &[
                    "compact_written",
                    "compact_before_commit",
                    "after_table_commit",
                    "compact_after_commit",
                ],
                _ => &[],
            };
            let crash = (!points.is_empty() && r.f64() < 0.3)
                .then(|| (points[r.usize(0..points.len())], r.u32(1..3)));
            let what = self.run(&step, crash, true);
            if let Step::Repair(w, _) = step
                && self.lost_state[w]
                && queued.is_none()
            {
                queued = Some(Step::Repair(w, false));
            }
            self.log.push(format!(
                "step {i}: {step:?}{}: {what}",
                crash
                    .map(|(p, k)| format!(" (crash at {p} #{k})"))
                    .unwrap_or_default()
            ));
            self.check(false).map_err(|e| self.report(&e))?;
        }
        // A clean end: the operator repairs a lost state, then both writers sync without
        // faults, and each holds exactly the vendor's calls.
        for (w, name) in WRITERS.iter().enumerate() {
            if self.lost_state[w] {
                let what = self.run(&Step::Repair(w, false), None, false);
                self.log.push(format!("final repair of {name}: {what}"));
            }
        }
        for (w, name) in WRITERS.iter().enumerate() {
            let what = self.run(&Step::Sync(w), None, false);
            self.log.push(format!("final sync of {name}: {what}"));
        }
        self.check(true).map_err(|e| self.report(&e))?;
        if self.seed.is_multiple_of(10) {
            let read = std::panic::catch_unwind(AssertUnwindSafe(|| self.third_party()));
            match read {
                Ok(Ok(())) => self.log.push("third-party readers: exact".into()),
                Ok(Err(e)) => return Err(self.report(&e)),
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    return Err(self.report(&format!("a third-party reader failed: {msg}")));
                }
            }
        }
        Ok(())
    }

    /// The readers users run hold exactly each writer's calls: the `deltalake` package,
    /// Polars and DuckDB's `delta_scan` on a Delta lake (local or S3), DuckDB's
    /// `read_parquet` on a local plain one.
    fn third_party(&self) -> Result<(), String> {
        let truth = self.truth();
        match self.mode {
            Mode::DeltaLocal | Mode::DeltaS3 | Mode::PlainToDelta => {
                let Some(readers) = crate::delta::Readers::get() else {
                    return Ok(());
                };
                let want: BTreeSet<String> = WRITERS
                    .iter()
                    .flat_map(|w| truth.iter().map(move |t| format!("{w}:{t}")))
                    .collect();
                let (uri, options) = match &self.endpoint {
                    None => (
                        self._dir.path().join("lake/calls").display().to_string(),
                        None,
                    ),
                    Some(endpoint) => (
                        format!("s3://lake/faults-{}/calls", self.seed),
                        Some(serde_json::json!({
                            "aws_endpoint": endpoint,
                            "aws_allow_http": "true",
                            "aws_region": "us-east-1",
                            "aws_access_key_id": "testing",
                            "aws_secret_access_key": "testing",
                            "aws_conditional_put": "etag",
                        })),
                    ),
                };
                for line in readers.read_with(
                    &uri,
                    "call_id",
                    options.as_ref(),
                    &[("DELTA_KEY_WITH_SOURCE", "1")],
                ) {
                    let got = crate::delta::ids_once(&line);
                    if got != want {
                        return Err(format!(
                            "{} reads {} rows, the writers hold {}",
                            line["reader"],
                            got.len(),
                            want.len()
                        ));
                    }
                }
                Ok(())
            }
            Mode::PlainLocal => {
                let Some(python) = crate::helpers::test_python() else {
                    return Ok(());
                };
                let root = self._dir.path().join("lake");
                let script = format!(
                    "import duckdb\nfor s, n, d in duckdb.connect().execute(\"SELECT source, count(*), count(DISTINCT call_id) FROM read_parquet('{}/calls/**/*.parquet', hive_partitioning=true) GROUP BY source ORDER BY source\").fetchall():\n    print(s, n, d)",
                    root.display()
                );
                let out = std::process::Command::new(python)
                    .arg("-c")
                    .arg(script)
                    .output()
                    .map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!(
                        "DuckDB cannot read the lake: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let want: String = WRITERS
                    .iter()
                    .map(|w| format!("{w} {} {}\n", truth.len(), truth.len()))
                    .collect();
                if text != want {
                    return Err(format!(
                        "DuckDB reads (source, rows, distinct ids):\n{text}the writers hold:\n{want}"
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn report(&self, broken: &str) -> String {
        let [b, a, r, calls] = self.counts();
        format!(
            "seed {} ({}) broke an invariant:\n{broken}\nsteps:\n  {}\nfaults injected: {b} before, {a} after, {r} reads, of {calls} store calls\nreplay: {}",
            self.seed,
            self.mode.name(),
            self.log.join("\n  "),
            replay_command(self.mode, self.seed)
        )
    }
}

/// The one command that replays a seed.
pub fn replay_command(mode: Mode, seed: u64) -> String {
    format!(
        "CALLSYNC_FAULT_MODE={} CALLSYNC_FAULT_SEED={seed} cargo nextest run --locked -E 'test(faults::a_seed_replays)'",
        mode.name()
    )
}

/// Puts `[warehouse.storage_options]` after every other key of `[warehouse]` and before the
/// next table (TOML: a sub-table's keys end at the next header).
fn reorder(text: &str) -> String {
    let mut warehouse = Vec::new();
    let mut options = Vec::new();
    let mut rest = Vec::new();
    let mut section = "";
    for line in text.lines() {
        if line.starts_with('[') {
            section = if line == "[warehouse]" {
                "w"
            } else if line == "[warehouse.storage_options]" {
                "o"
            } else {
                "r"
            };
        }
        match section {
            "w" => warehouse.push(line),
            "o" => options.push(line),
            _ => rest.push(line),
        }
    }
    let mut out: Vec<&str> = warehouse;
    out.extend(options);
    out.extend(rest);
    out.join("\n") + "\n"
}

/// The key column of a data file.
fn ids_of(
    storage: &dyn callsync::lake::storage::Storage,
    path: &str,
) -> Result<Vec<String>, String> {
    let file = storage.open(path).map_err(|e| e.to_string())?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string())?;
    let col = builder
        .schema()
        .index_of("call_id")
        .map_err(|e| e.to_string())?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [col]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        out.extend(
            batch
                .column(0)
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string),
        );
    }
    Ok(out)
}

/// A source's exported keys, read straight from the state database.
fn exported_keys(state: &std::path::Path, source_id: i64) -> HashSet<String> {
    let conn = rusqlite::Connection::open(state).unwrap();
    let mut stmt = conn
        .prepare("SELECT call_id FROM exported WHERE source_id = ?1")
        .unwrap();
    stmt.query_map([source_id], |r| r.get(0))
        .unwrap()
        .collect::<Result<HashSet<String>, _>>()
        .unwrap()
}

/// Whether the state database has the commit `id`.
fn knows_commit(state: &std::path::Path, id: &str) -> bool {
    let conn = rusqlite::Connection::open(state).unwrap();
    conn.query_row("SELECT count(*) FROM commits WHERE id = ?1", [id], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap()
        > 0
}

/// What a batch of seeds found.
#[derive(Debug, Default)]
pub struct Tally {
    pub seeds: u64,
    pub failures: Vec<String>,
    /// Faults injected: before, after, reads, store calls.
    pub faults: [u64; 4],
    pub steps: u64,
}

/// Runs seeds `first..` in `mode` until `count` are done or `secs` have passed.
pub fn run_seeds(
    mode: Mode,
    first: u64,
    count: u64,
    secs: u64,
    steps: usize,
    moto: Option<&Moto>,
) -> Tally {
    let t0 = std::time::Instant::now();
    let mut tally = Tally::default();
    let mut by_seed: BTreeMap<u64, String> = BTreeMap::new();
    for seed in first..first + count {
        if t0.elapsed().as_secs() >= secs {
            break;
        }
        let mut world = World::new(mode, seed, moto);
        if let Err(report) = world.play(steps) {
            by_seed.insert(seed, report);
        }
        for (t, c) in tally.faults.iter_mut().zip(world.counts()) {
            *t += c;
        }
        tally.steps += world.log.len() as u64;
        tally.seeds += 1;
    }
    tally.failures = by_seed.into_values().collect();
    tally
}
