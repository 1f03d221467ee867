//! The CLI commands (`sync`, `status`, `demo`) as library functions that return exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::runtime::Runtime;

use crate::config::Config;
use crate::progress;
use chrono::NaiveDate;

use crate::pipeline::{RunContext, RunMode, RunReport, RunSummary, StopFlag, run, run_sync};
use crate::simulator::{Simulator, VoicegainSim};
use crate::sources::Cursor;
use crate::state::State;

/// Exit code: every source succeeded.
pub const EXIT_OK: i32 = 0;
/// Exit code: at least one source failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: usage or config error.
pub const EXIT_USAGE: i32 = 2;

/// Reports a `--source` that the config does not have (a usage error).
fn unknown_source(cfg: &Config, name: &str, out: &mut dyn Write) -> anyhow::Result<i32> {
    let known: Vec<&str> = cfg.sources.keys().map(String::as_str).collect();
    writeln!(
        out,
        "error: no source named {name:?} in {} (configured: {})",
        cfg.file.display(),
        known.join(", ")
    )?;
    Ok(EXIT_USAGE)
}

/// Runs one incremental pass over the named sources (all when `only` is empty), each
/// independently and concurrently; prints one line per source.
pub fn sync(
    cfg: &Config,
    only: &[String],
    rt: &Runtime,
    stop: &StopFlag,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    if let Some(name) = only.iter().find(|n| !cfg.sources.contains_key(*n)) {
        return unknown_source(cfg, name, out);
    }
    // Create and migrate the state once, before the sources open it concurrently.
    State::open(&cfg.state.path)
        .with_context(|| format!("opening state {}", cfg.state.path.display()))?;
    let ctx = RunContext {
        warehouse: cfg.warehouse.clone(),
        state_path: cfg.state.path.clone(),
    };
    let mut handles = Vec::new();
    for (name, scfg) in &cfg.sources {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        let (ctx, name, scfg, stop) = (ctx.clone(), name.clone(), scfg.clone(), stop.clone());
        let handle = rt.handle().clone();
        handles.push(rt.spawn_blocking(move || run_sync(&ctx, &name, &scfg, &handle, &stop)));
    }
    let mut reports: Vec<RunReport> = Vec::new();
    for h in handles {
        reports.push(rt.block_on(h).context("a source's run panicked")?);
    }
    let mut code = EXIT_OK;
    for r in &reports {
        let s = &r.summary;
        match &r.error {
            None => writeln!(
                out,
                "{}: ok: {} calls written, {} rejected, {} already exported, {} files",
                r.source, s.rows, s.rejects, s.skipped, s.files
            )?,
            Some(e) if s.rows == 0 => {
                code = EXIT_FAILED;
                writeln!(out, "{}: FAILED: {e}", r.source)?;
            }
            Some(e) => {
                code = EXIT_FAILED;
                writeln!(
                    out,
                    "{}: FAILED: {e} ({} calls written before the failure are kept)",
                    r.source, s.rows
                )?;
            }
        }
    }
    Ok(code)
}

/// Backfills `[from, to]` (inclusive UTC days) of one source through the same commit path
/// as `sync`, without moving its incremental cursor; resumes where an interrupted run of the
/// same range stopped. Shows a progress bar on a terminal, log lines otherwise.
#[allow(clippy::too_many_arguments)]
pub fn backfill(
    cfg: &Config,
    source: &str,
    from: NaiveDate,
    to: NaiveDate,
    rt: &Runtime,
    stop: &StopFlag,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let Some(scfg) = cfg.sources.get(source).cloned() else {
        return unknown_source(cfg, source, out);
    };
    if from > to {
        writeln!(out, "error: --from {from} is after --to {to}")?;
        return Ok(EXIT_USAGE);
    }
    State::open(&cfg.state.path)
        .with_context(|| format!("opening state {}", cfg.state.path.display()))?;
    let ctx = RunContext {
        warehouse: cfg.warehouse.clone(),
        state_path: cfg.state.path.clone(),
    };
    let (name, stop2, handle) = (source.to_string(), stop.clone(), rt.handle().clone());
    let mode = RunMode::Backfill { from, to };
    let report = rt
        .block_on(rt.spawn_blocking(move || {
            let progress = progress::Progress::new(&name, from, to);
            let on_page = |s: &RunSummary, c: Option<&Cursor>| progress.update(s, c);
            let r = run(&ctx, &name, &scfg, &handle, &stop2, &mode, &on_page);
            progress.finish();
            r
        }))
        .context("the backfill panicked")?;
    let s = &report.summary;
    match &report.error {
        None if stop.is_stopped() => {
            writeln!(
                out,
                "{source}: backfill {from}..{to} stopped: {} calls written; run the same command to resume",
                s.rows
            )?;
            Ok(EXIT_FAILED)
        }
        None => {
            writeln!(
                out,
                "{source}: backfill {from}..{to} ok: {} calls written, {} rejected, {} already exported, {} files",
                s.rows, s.rejects, s.skipped, s.files
            )?;
            Ok(EXIT_OK)
        }
        Some(e) => {
            writeln!(
                out,
                "{source}: backfill {from}..{to} FAILED: {e} ({} calls written are kept; run the same command to resume)",
                s.rows
            )?;
            Ok(EXIT_FAILED)
        }
    }
}

/// Prints per-source status from the state database.
pub fn status(cfg: &Config, json: bool, out: &mut dyn Write) -> anyhow::Result<i32> {
    let state = State::open(&cfg.state.path)
        .with_context(|| format!("opening state {}", cfg.state.path.display()))?;
    let rows = state.status()?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(EXIT_OK);
    }
    if rows.is_empty() {
        writeln!(
            out,
            "no source has run yet (state: {})",
            cfg.state.path.display()
        )?;
    }
    for s in rows {
        let configured = if cfg.sources.contains_key(&s.name) {
            ""
        } else {
            " (not in config)"
        };
        writeln!(out, "{} [{}]{configured}", s.name, s.kind)?;
        writeln!(
            out,
            "  cursor: {}",
            s.cursor
                .map(|c| c.to_string())
                .unwrap_or_else(|| "(none)".into())
        )?;
        writeln!(
            out,
            "  exported: {} calls, {} rejects in total",
            s.rows_total, s.rejects_total
        )?;
        for j in &s.failed_jobs {
            writeln!(
                out,
                "  analysis {} of call {}: {} (after {} submission{})",
                j.status,
                j.call_sid,
                j.reason.as_deref().unwrap_or("no reason given"),
                j.submissions,
                if j.submissions == 1 { "" } else { "s" }
            )?;
        }
        if let Some(i) = &s.inbox {
            writeln!(
                out,
                "  inbox: {} deliveries not yet exported{}",
                i.depth,
                i.oldest_unexported_at
                    .as_ref()
                    .map(|t| format!(", oldest received {t}"))
                    .unwrap_or_default()
            )?;
        }
        match s.last_run {
            Some(r) => writeln!(
                out,
                "  last run: {} {} → {} {}: {} calls, {} rejects",
                r.kind,
                r.started_at,
                r.ended_at
                    .unwrap_or_else(|| "(running or interrupted)".into()),
                r.outcome,
                r.rows,
                r.rejects
            )?,
            None => writeln!(out, "  last run: (none)")?,
        }
        if let Some(e) = s.last_error {
            writeln!(out, "  last error: {e}")?;
        }
        for b in s.backfills {
            writeln!(
                out,
                "  backfill {}..{} {}: {} calls so far, at {}, updated {}",
                b.from_day,
                b.to_day,
                b.status,
                b.rows,
                b.cursor
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "(start)".into()),
                b.updated_at
            )?;
        }
    }
    Ok(EXIT_OK)
}

/// Starts the simulator with generated calls, writes a demo config under `dir`, runs a
/// sync and prints what it wrote.
/// With `daemon` (the daemon's signals), the demo runs `callsync run` instead of one sync:
/// schedules of a few seconds, new calls arriving every few seconds, the server on a free
/// port; Ctrl-C drains it.
pub fn demo(
    dir: &Path,
    calls: usize,
    daemon: Option<tokio::sync::mpsc::UnboundedReceiver<crate::daemon::Signal>>,
    rt: &Runtime,
    stop: &StopFlag,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    if calls == 0 {
        bail!("--calls must be at least 1");
    }
    let mut data = VoicegainSim::new(42, 0).with_ratios(0.0, 0.002);
    // Recent calls, about 90 s apart, ending now; the newest few are still being processed
    // by the vendor, so the consecutive export stops before them (the next sync takes them).
    data.now_secs = chrono::Utc::now().timestamp() - calls as i64 * 90;
    let pending = (calls / 100).clamp(1, 5).min(calls);
    data.add_calls(calls - pending);
    data.pending_ratio = 1.0;
    data.add_calls(pending);
    let sim = rt
        .block_on(Simulator::start(data))
        .context("starting the simulator")?;
    // Vonage insights sessions and voice-bot calls over the last five days; a few of the
    // newest are still in progress.
    let now = chrono::Utc::now();
    let (five_days_ago, an_hour_ago) = (
        now - chrono::Duration::days(5),
        now - chrono::Duration::hours(1),
    );
    let windowed = (calls / 5).max(1);
    sim.vonage().add_sessions(
        windowed,
        five_days_ago.timestamp_micros(),
        an_hour_ago.timestamp_micros(),
        0.01,
    );
    sim.voice_calls().add_calls(
        windowed,
        five_days_ago.timestamp(),
        an_hour_ago.timestamp(),
        0.01,
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let secret = |name: &str, value: String| -> anyhow::Result<String> {
        let p = dir.join(name);
        std::fs::write(&p, format!("{value}\n"))?;
        Ok(p.display().to_string())
    };
    let vg_token = secret("voicegain.token", sim.voicegain().token.clone())?;
    let vn_key = secret("vonage.key", sim.vonage().api_key.clone())?;
    let vc_token = secret("voice-calls.token", sim.voice_calls().token.clone())?;
    let config_path = dir.join("callsync.toml");
    let warehouse = dir.join("warehouse");
    let state_path = dir.join("state").join("callsync.db");
    let start_date = (now - chrono::Duration::days(7))
        .format("%Y-%m-%d")
        .to_string();
    // The daemon demo: every source every 5 s, windows settled after 5 s, a server.
    // The daemon demo: every source every 5 s, windows settled after 5 s, a server on a
    // free port (known before the start: it is the Exotel callback URL), and the Exotel push
    // sources.
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())?;
    let (server, every, settle, exotel) = if daemon.is_some() {
        let hook = secret("exotel.webhook", format!("{:032x}", fastrand::u128(..)))?;
        let key = secret("exotel.key", sim.exotel().api_key.clone())?;
        let token = secret("exotel.token", sim.exotel().api_token.clone())?;
        (
            format!("\n[server]\nlisten = \"127.0.0.1:{port}\"\n"),
            "schedule = \"*/5 * * * * *\"\n",
            "settle_secs = 5\n",
            format!(
                r#"
[sources.exotel_legs_demo]
kind = "exotel_monitor"
webhook_token_file = {hook:?}
flush_interval_secs = 5

[sources.exotel_insights_demo]
kind = "exotel_analyze"
account_sid = "exotel30m"
base_url = {base:?}
api_key_file = {key:?}
api_token_file = {token:?}
webhook_token_file = {hook:?}
callback_base_url = "http://127.0.0.1:{port}"
insight_tasks = ["summarization", "categorise", "sentiment", "transcript"]
categories = ["sales", "support"]
result_timeout_secs = 30
flush_interval_secs = 5
"#,
                base = sim.exotel_base_url(),
            ),
        )
    } else {
        (String::new(), "", "", String::new())
    };
    let text = format!(
        r#"# Written by `callsync demo`: one source of each pull kind, pointed at the built-in simulator.
{server}
[warehouse]
root = {warehouse:?}

[state]
path = {state:?}

[sources.voicegain_demo]
kind = "voicegain"
base_url = {vg_base:?}
token_file = {vg_token:?}
per_page = 1000
{every}
[sources.vonage_demo]
kind = "vonage_insights"
base_url = {vn_base:?}
api_key_file = {vn_key:?}
start_date = {start_date:?}
window_days = 7
{every}{settle}
[sources.voice_calls_demo]
kind = "voice_calls"
base_url = {vc_base:?}
token_file = {vc_token:?}
start_date = {start_date:?}
window_days = 7
{every}{settle}{exotel}"#,
        warehouse = warehouse.display().to_string(),
        state = state_path.display().to_string(),
        vg_base = sim.voicegain_base_url(),
        vn_base = sim.vonage_base_url(),
        vc_base = sim.voice_calls_base_url(),
    );
    std::fs::write(&config_path, text)?;
    let cfg = Config::load(&config_path)?;
    writeln!(
        out,
        "simulator: {} ({calls} Voicegain calls, {windowed} Vonage sessions, {windowed} voice-bot calls)",
        sim.base_url()
    )?;
    writeln!(out, "config:    {}", config_path.display())?;
    if let Some(signals) = daemon {
        writeln!(
            out,
            "daemon:    every source every 5 s; new calls arrive every 3 s, Exotel monitor legs and analysis results by webhook; Ctrl-C drains and stops it"
        )?;
        let hook = std::fs::read_to_string(dir.join("exotel.webhook"))?
            .trim()
            .to_string();
        let feeder = rt.spawn(feed(
            std::sync::Arc::new(sim),
            format!("http://127.0.0.1:{port}/webhooks/exotel_legs_demo/{hook}"),
            cfg.clone(),
        ));
        let code = crate::daemon::run(&config_path, cfg, rt, signals, out)?;
        feeder.abort();
        writeln!(
            out,
            "lake:      {} ({} Parquet files)",
            warehouse.display(),
            count_files(&warehouse.join("calls"), "parquet")
        )?;
        return Ok(code);
    }
    let code = sync(&cfg, &[], rt, stop, out)?;
    let files = count_files(&warehouse.join("calls"), "parquet");
    writeln!(
        out,
        "lake:      {} ({files} Parquet files)",
        warehouse.display()
    )?;
    writeln!(out, "\nTry it with DuckDB:")?;
    writeln!(
        out,
        "  duckdb -c \"SELECT source, date, count(*) AS calls, round(avg(duration_ms)/1000) AS avg_secs FROM read_parquet('{}/calls/**/*.parquet', hive_partitioning=true) GROUP BY ALL ORDER BY date\"",
        warehouse.display()
    )?;
    writeln!(
        out,
        "\nStatus:    callsync --config {} status",
        config_path.display()
    )?;
    Ok(code)
}

/// New calls for the daemon demo: every 3 s a few of each vendor's, started seconds ago.
/// Also, every 3 s: two monitor-leg callbacks posted to the daemon's webhook (as Exotel would)
/// and one call submitted to ExoVoiceAnalyze (as `callsync exotel analyze` does).
async fn feed(sim: std::sync::Arc<Simulator>, legs_url: String, cfg: Config) {
    use crate::simulator::exotel::{MonitorLeg, deliver};
    use crate::sources::SourceConfig;
    use crate::sources::exotel_analyze::{Analyzer, Submitted};
    let client = reqwest::Client::new();
    let mut rng = fastrand::Rng::new();
    let analyzer = match cfg.sources.get("exotel_insights_demo") {
        Some(SourceConfig::ExotelAnalyze(c)) => Analyzer::new("exotel_insights_demo", c).ok(),
        _ => None,
    };
    let mut n = 0u64;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        n += 1;
        for i in 0..2 {
            let leg = MonitorLeg::random(&mut rng, n * 2 + i, 60, 19_800);
            let _ = deliver(&client, &legs_url, &leg, i == 0).await;
        }
        if let Some(a) = &analyzer {
            let call = format!("CA{:06}", 100_000 + n);
            if let Ok(Submitted::Queued { task_id, job_id }) = a.submit(&call).await
                && let Ok(state) = State::open(&cfg.state.path)
                && let Ok(row) = state.source("exotel_insights_demo", "exotel_analyze")
            {
                let _ = state.job_submitted(row.id, &call, &task_id, Some(&job_id));
            }
        }
        let now = chrono::Utc::now();
        sim.voicegain().now_secs = now.timestamp() - 30;
        sim.voicegain().add_calls(5);
        let (from, to) = (
            now - chrono::Duration::seconds(9),
            now - chrono::Duration::seconds(6),
        );
        sim.vonage()
            .add_sessions(3, from.timestamp_micros(), to.timestamp_micros(), 0.0);
        sim.voice_calls()
            .add_calls(3, from.timestamp(), to.timestamp(), 0.0);
    }
}

fn count_files(dir: &PathBuf, ext: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p, ext)
            } else {
                usize::from(p.extension().is_some_and(|x| x == ext))
            }
        })
        .sum()
}

/// Rebuilds the state of the named sources (all configured ones when `only` is empty) from
/// their lake, each under its lock. A source whose state agrees with the lake is left alone
/// unless `force`.
pub fn repair(
    cfg: &Config,
    only: &[String],
    force: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    if let Some(name) = only.iter().find(|n| !cfg.sources.contains_key(*n)) {
        return unknown_source(cfg, name, out);
    }
    State::open(&cfg.state.path)
        .with_context(|| format!("opening state {}", cfg.state.path.display()))?;
    let mut code = EXIT_OK;
    for (name, scfg) in &cfg.sources {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        match repair_one(cfg, name, scfg, force) {
            Ok(line) => writeln!(out, "{name}: {line}")?,
            Err(e) => {
                code = EXIT_FAILED;
                writeln!(out, "{name}: FAILED: {e:#}")?;
            }
        }
    }
    Ok(code)
}

fn repair_one(
    cfg: &Config,
    name: &str,
    scfg: &crate::sources::SourceConfig,
    force: bool,
) -> anyhow::Result<String> {
    use crate::lake::storage::LocalStorage;
    use crate::lake::{marker, repair};
    let _lock = crate::state::lock::SourceLock::try_acquire(&cfg.state.path, name)?;
    let mut state = State::open(&cfg.state.path)?;
    let row = state.source(name, scfg.kind())?;
    let storage = LocalStorage::new(&cfg.warehouse.root)?;
    let disagreement = marker::disagreement(&storage, &state, row.id, name)?;
    if disagreement.is_none() {
        if !force {
            return Ok(if state.last_commit(row.id)?.is_none() {
                "nothing to repair: the state has no commit of it and the lake no file".into()
            } else {
                "the state agrees with the lake; left alone (--force rebuilds it anyway)".into()
            });
        }
        // The state is right: finish its interrupted publishes before reading the lake.
        crate::lake::recover(&storage, &state, row.id, name)?;
    }
    let r = repair::rebuild(&storage, &mut state, row.id, name, |facts, m| {
        scfg.repair_cursor(facts, m)
    })?;
    tracing::info!(source = %name, rows = r.rows, rejects = r.rejects, files = r.data_files, "State rebuilt from the lake.");
    Ok(format!(
        "rebuilt from the lake: {} data files, {} calls, {} rejects, {} other files; cursor {}; {} staged files deleted",
        r.data_files,
        r.rows,
        r.rejects,
        r.other_files,
        r.cursor
            .map(|c| c.to_string())
            .unwrap_or_else(|| "(start)".into()),
        r.staged_deleted
    ))
}

/// Holds the lake against the state: prints one line per problem (naming the file) and per
/// note; exit 0 when there is no problem. Sources: the named ones, or every source that is
/// configured, in the state or in the lake.
pub fn verify(cfg: &Config, only: &[String], out: &mut dyn Write) -> anyhow::Result<i32> {
    use crate::lake::repair;
    use crate::lake::storage::LocalStorage;
    let state = State::open(&cfg.state.path)
        .with_context(|| format!("opening state {}", cfg.state.path.display()))?;
    let storage = LocalStorage::new(&cfg.warehouse.root)?;
    let mut names: std::collections::BTreeSet<String> = only.iter().cloned().collect();
    if only.is_empty() {
        names.extend(cfg.sources.keys().cloned());
        names.extend(state.source_names()?);
        names.extend(repair::lake_sources(&storage)?);
    }
    let (mut problems, mut files) = (0usize, 0usize);
    for name in &names {
        let id = state.source_id(name)?;
        // With the lock held nothing is in flight, so staging can be judged too.
        let lock = crate::state::lock::SourceLock::try_acquire(&cfg.state.path, name).ok();
        let found = repair::verify(&storage, &state, id, name, lock.is_some())?;
        if lock.is_none() {
            writeln!(
                out,
                "{name}: note: a run is in progress; staging not checked"
            )?;
        }
        if let Some(id) = id {
            files += state.manifest(id)?.len();
        }
        for f in found {
            if f.problem {
                problems += 1;
                writeln!(out, "{name}: {}", f.text)?;
            } else {
                writeln!(out, "{name}: note: {}", f.text)?;
            }
        }
    }
    if problems == 0 {
        writeln!(
            out,
            "verify: clean: {} sources, {files} committed files, lake {}",
            names.len(),
            cfg.warehouse.root.display()
        )?;
        Ok(EXIT_OK)
    } else {
        writeln!(
            out,
            "verify: {problems} problem{} in lake {} against state {}",
            if problems == 1 { "" } else { "s" },
            cfg.warehouse.root.display(),
            cfg.state.path.display()
        )?;
        Ok(EXIT_FAILED)
    }
}

/// `check`: one cheap authenticated request per source (nothing exported, no state written);
/// prints ok or the status and what it means. Exit 0 when every source passes.
pub fn check(
    cfg: &Config,
    only: &[String],
    rt: &Runtime,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    if let Some(name) = only.iter().find(|n| !cfg.sources.contains_key(*n)) {
        return unknown_source(cfg, name, out);
    }
    let mut code = EXIT_OK;
    for (name, scfg) in &cfg.sources {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        let t0 = std::time::Instant::now();
        match rt.block_on(scfg.check(name)) {
            Ok(()) => writeln!(
                out,
                "{name}: ok ({} reached, credential accepted, {} ms)",
                scfg.kind(),
                t0.elapsed().as_millis()
            )?,
            Err(e) => {
                code = EXIT_FAILED;
                let meaning = match (&e, e.status()) {
                    (_, Some(401 | 403)) if e.to_string().contains("date range") => {
                        "the vendor refused the date range".to_string()
                    }
                    (_, Some(s @ (401 | 403))) => format!("HTTP {s}: the credential was rejected"),
                    (_, Some(404)) => "HTTP 404: wrong base_url (no such endpoint)".into(),
                    (_, Some(s)) => format!("HTTP {s}"),
                    (crate::sources::SourceError::Secret { .. }, None) => {
                        "the credential cannot be read".into()
                    }
                    (
                        crate::sources::SourceError::Http(crate::http::HttpError::Exhausted {
                            ..
                        }),
                        None,
                    ) => "the host is unreachable or not answering".into(),
                    _ => "failed".into(),
                };
                writeln!(out, "{name}: FAILED: {meaning}: {e}")?;
            }
        }
    }
    Ok(code)
}

/// `health`: exit 0 when the configured daemon's `/healthz` answers 200 (for a container's
/// HEALTHCHECK: no shell tools needed).
pub fn health(cfg: &Config, rt: &Runtime, out: &mut dyn Write) -> anyhow::Result<i32> {
    let Some(listen) = &cfg.server.listen else {
        writeln!(out, "error: {} has no [server] listen", cfg.file.display())?;
        return Ok(EXIT_USAGE);
    };
    let mut addr: std::net::SocketAddr = listen.parse()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/healthz");
    let answer = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()?;
        let r = client.get(&url).send().await?;
        let status = r.status();
        Ok::<_, reqwest::Error>((status, r.text().await.unwrap_or_default()))
    });
    match answer {
        Ok((s, body)) if s.is_success() => {
            writeln!(out, "healthy: {url}")?;
            let _ = body;
            Ok(EXIT_OK)
        }
        Ok((s, body)) => {
            writeln!(out, "unhealthy: {url} answered {s}: {body}")?;
            Ok(EXIT_FAILED)
        }
        Err(e) => {
            writeln!(out, "unhealthy: {url}: {e}")?;
            Ok(EXIT_FAILED)
        }
    }
}

/// `exotel analyze`: submits calls to ExoVoiceAnalyze and records each job. A call already
/// queued or analysed is not submitted again unless `force`; a refused call (400) is named
/// with the vendor's message (exit 1).
pub fn exotel_analyze(
    cfg: &Config,
    source: &str,
    call_sids: &[String],
    from_file: Option<&Path>,
    force: bool,
    rt: &Runtime,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    use crate::sources::SourceConfig;
    use crate::sources::exotel_analyze::{Analyzer, Submitted};
    let Some(scfg) = cfg.sources.get(source) else {
        return unknown_source(cfg, source, out);
    };
    let SourceConfig::ExotelAnalyze(acfg) = scfg else {
        writeln!(
            out,
            "error: source {source} is of kind {}, not exotel_analyze",
            scfg.kind()
        )?;
        return Ok(EXIT_USAGE);
    };
    let mut calls: Vec<String> = call_sids.to_vec();
    if let Some(f) = from_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        calls.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    if calls.is_empty() {
        writeln!(
            out,
            "error: no call sid given (--call-sid SID or --from-file FILE)"
        )?;
        return Ok(EXIT_USAGE);
    }
    let state = State::open(&cfg.state.path)
        .with_context(|| format!("opening state {}", cfg.state.path.display()))?;
    let id = state.source(source, scfg.kind())?.id;
    let known: std::collections::HashMap<String, String> = state
        .jobs(id, None)?
        .into_iter()
        .map(|j| (j.call_sid, j.status))
        .collect();
    let analyzer = Analyzer::new(source, acfg)?;
    let (mut submitted, mut skipped, mut refused) = (0, 0, 0);
    let mut seen = std::collections::HashSet::new();
    for call in &calls {
        if !seen.insert(call.clone()) {
            continue;
        }
        if !force && matches!(known.get(call).map(String::as_str), Some("queued" | "done")) {
            skipped += 1;
            continue;
        }
        match rt.block_on(analyzer.submit(call))? {
            Submitted::Queued { task_id, job_id } => {
                state.job_submitted(id, call, &task_id, Some(&job_id))?;
                submitted += 1;
            }
            Submitted::Refused(msg) => {
                refused += 1;
                writeln!(
                    out,
                    "{source}: call {call} refused by ExoVoiceAnalyze (HTTP 400): {msg}"
                )?;
            }
        }
    }
    writeln!(
        out,
        "{source}: {submitted} submitted, {skipped} already queued or analysed (--force submits them again), {refused} refused"
    )?;
    Ok(if refused > 0 { EXIT_FAILED } else { EXIT_OK })
}
