//! `callsync run`: the long-lived daemon. Each source runs on its cron schedule (UTC), never
//! overlapping itself, up to `max_concurrent_sources` at once; `/healthz` and `/metrics` are
//! served on `[server] listen`; SIGTERM/SIGINT drain (health 503, ticks stop, running sources
//! commit the pages they have, `STOPPING=1`, exit 0), a second signal or the grace period's end
//! exits at once; SIGHUP re-reads the config.

mod compactor;
mod health;
mod reload;
pub use health::{Shared, SourceHealth};
pub mod notify;
pub mod schedule;
pub mod server;
pub mod webhook;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::pipeline::{RunContext, RunMode, RunReport, StopFlag};
use crate::sources::SourceConfig;
use crate::state::State;
use crate::telemetry::{self, Metrics};
use schedule::Schedule;

/// What the process was told by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: drain and exit (a second one: exit at once).
    Terminate,
    /// SIGHUP: re-read the config.
    Reload,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// One source in the scheduler.
struct Slot {
    cfg: SourceConfig,
    schedule: Schedule,
    next: DateTime<Utc>,
    running: bool,
    /// Due and waiting for a free slot since this tick (the longest-waiting starts first).
    waiting: Option<DateTime<Utc>>,
}

/// A run that ended.
struct Done {
    name: String,
    report: RunReport,
    started_at: DateTime<Utc>,
    secs: f64,
    /// Where the source's cursor stands in time now (windowed kinds).
    cursor_time: Option<i64>,
    /// A compaction job ended (no run: nothing to count).
    compaction: bool,
}

/// The scheduler loop wakes at least this often (watchdog, heartbeat).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Runs the daemon until it is drained; returns the exit code.
pub fn run(
    config_path: &Path,
    cfg: Config,
    rt: &Runtime,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<i32> {
    use anyhow::Context;
    let state = State::open(&cfg.state.path)
        .with_context(|| format!("opening state {}", cfg.state.path.display()))?;
    let metrics = telemetry::install(Arc::new(Metrics::new()));
    for (name, scfg) in &cfg.sources {
        metrics.add_source(name);
        if let Some(p) = scfg.flush_policy() {
            metrics.add_push_source(name, p.interval_secs);
        }
    }
    // Each source's last success as the state recorded it: a restart does not make a healthy
    // source look stale (nor a stale one healthy).
    let last_success: BTreeMap<String, i64> = state
        .last_successes()
        .with_context(|| format!("reading state {}", cfg.state.path.display()))?
        .into_iter()
        .filter_map(|(name, at)| Some((name, at?)))
        .filter(|(name, _)| cfg.sources.contains_key(name))
        .collect();
    for (name, at) in &last_success {
        metrics.last_success_at(name, *at);
    }
    drop(state);
    // The intake runs whenever a server does: push sources added by a reload find it there.
    let intake = match &cfg.server.listen {
        Some(_) => {
            let i = webhook::Intake::start(&cfg.state.path)
                .with_context(|| format!("opening state {}", cfg.state.path.display()))?;
            i.configure(&cfg);
            Some(i)
        }
        None => {
            if cfg.sources.values().any(|s| s.webhook().is_some()) {
                warn!(
                    "Push sources are configured but [server] listen is not: no webhook can arrive."
                );
            }
            None
        }
    };
    let health = last_success
        .iter()
        .filter_map(|(name, at)| {
            let t = DateTime::from_timestamp_micros(*at)?;
            Some((
                name.clone(),
                SourceHealth {
                    last_success_at: Some(rfc3339(t)),
                    ..SourceHealth::default()
                },
            ))
        })
        .collect();
    let shared = Arc::new(Shared {
        draining: AtomicBool::new(false),
        sources: Mutex::new(health),
        heartbeat: AtomicI64::new(Utc::now().timestamp()),
        max_sleep: MAX_SLEEP,
        state: Arc::new(server::StateProbe::new(&cfg.state.path)),
        metrics: metrics.clone(),
        intake,
    });
    let server = match &cfg.server.listen {
        Some(addr) => {
            let (bound, handle) = rt
                .block_on(server::start(addr, shared.clone()))
                .with_context(|| format!("[server] listen = {addr:?}"))?;
            writeln!(
                out,
                "listening on http://{bound} (health: http://{bound}/healthz, metrics: http://{bound}/metrics)"
            )?;
            out.flush()?;
            info!(address = %bound, "Server listening.");
            Some(handle)
        }
        None => None,
    };
    let code = rt.block_on(Scheduler::new(config_path, cfg, shared, rt).run(&mut signals));
    if let Some(h) = server {
        h.abort();
    }
    Ok(code)
}

struct Scheduler {
    config_path: PathBuf,
    cfg: Config,
    slots: BTreeMap<String, Slot>,
    shared: Arc<Shared>,
    stop: StopFlag,
    handle: tokio::runtime::Handle,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// A reload whose state work runs off this thread: its config and, once done, the
    /// webhook endpoints it registered (or why not).
    reload_tx: mpsc::UnboundedSender<reload::Reloaded>,
    reload_rx: mpsc::UnboundedReceiver<reload::Reloaded>,
    /// The number of the latest reload begun; an older one's outcome is dropped.
    reload_gen: u64,
    watchdog: Option<Duration>,
    last_ping: Instant,
    last_status: String,
    compactor: Option<compactor::Compactor>,
    /// The lake, shared by every run and compaction of this daemon: its Delta tables' latest
    /// snapshots are kept between runs and advanced from the version last read, instead of
    /// read whole by each run. Opened at the first run; again when `[warehouse]` changes.
    lake: Option<Arc<crate::lake::Lake>>,
}

impl Scheduler {
    fn new(config_path: &Path, cfg: Config, shared: Arc<Shared>, rt: &Runtime) -> Scheduler {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (reload_tx, reload_rx) = mpsc::unbounded_channel();
        let mut s = Scheduler {
            config_path: config_path.to_path_buf(),
            cfg: cfg.clone(),
            slots: BTreeMap::new(),
            shared,
            stop: StopFlag::default(),
            handle: rt.handle().clone(),
            done_tx,
            done_rx,
            reload_tx,
            reload_rx,
            reload_gen: 0,
            watchdog: sd_notify::watchdog_enabled(),
            last_ping: Instant::now(),
            last_status: String::new(),
            compactor: compactor::Compactor::of(&cfg, Utc::now()),
            lake: None,
        };
        s.apply(cfg, true);
        s
    }

    /// Takes a (new) config: sources added, removed, rescheduled or changed.
    fn apply(&mut self, cfg: Config, start: bool) {
        let now = Utc::now();
        let metrics = self.shared.metrics.clone();
        self.slots.retain(|name, slot| {
            let keep = cfg.sources.contains_key(name);
            if !keep && !start {
                info!(source = %name, running = slot.running, "Source removed from the config; no more ticks.");
                metrics.remove_source(name);
            }
            keep
        });
        for (name, scfg) in &cfg.sources {
            // Validation made sure every schedule parses.
            let Ok(schedule) = Schedule::of(scfg.trigger()) else {
                continue;
            };
            match self.slots.get_mut(name) {
                Some(slot) => {
                    if slot.cfg.trigger() != scfg.trigger() {
                        slot.next = schedule.next_after(now);
                        info!(source = %name, schedule = %scfg.trigger(), next = %rfc3339(slot.next), "Source rescheduled.");
                    }
                    slot.schedule = schedule;
                    slot.cfg = scfg.clone();
                }
                None => {
                    let next = if scfg.run_on_start() {
                        now
                    } else {
                        schedule.next_after(now)
                    };
                    if !start {
                        info!(source = %name, schedule = %scfg.trigger(), "Source added.");
                    }
                    self.shared.metrics.add_source(name);
                    self.slots.insert(
                        name.clone(),
                        Slot {
                            cfg: scfg.clone(),
                            schedule,
                            next,
                            running: false,
                            waiting: None,
                        },
                    );
                }
            }
        }
        {
            let mut health = self.shared.health();
            health.retain(|name, _| self.slots.contains_key(name));
            for (name, slot) in &self.slots {
                let h = health.entry(name.clone()).or_default();
                h.kind = slot.cfg.kind().to_string();
                h.schedule = slot.cfg.trigger().to_string();
                h.next_tick = Some(rfc3339(slot.next));
            }
        }
        if !start {
            self.compactor = compactor::Compactor::reloaded(self.compactor.take(), &cfg);
        }
        if !start && format!("{:?}", cfg.warehouse) != format!("{:?}", self.cfg.warehouse) {
            // Runs in flight keep the lake they opened; the next ones open the new one.
            self.lake = None;
        }
        if !start && cfg.server.listen != self.cfg.server.listen {
            warn!("[server] listen changed; it takes effect at the next start.");
        }
        self.cfg = cfg;
    }

    /// The daemon's lake, opened on first use (`None` when it cannot be opened: each run then
    /// opens its own and reports why).
    pub(super) fn shared_lake(&mut self) -> Option<Arc<crate::lake::Lake>> {
        if self.lake.is_none() {
            match crate::lake::Lake::open(&self.cfg.warehouse, &self.cfg.state.path, &self.handle) {
                Ok(l) => self.lake = Some(Arc::new(l)),
                Err(e) => warn!(error = %e, "The lake did not open; each run tries again."),
            }
        }
        self.lake.clone()
    }

    fn running(&self) -> usize {
        self.slots.values().filter(|s| s.running).count()
    }

    /// Marks due sources, skips ticks of running ones, starts what fits.
    fn tick(&mut self) {
        let now = Utc::now();
        for (name, slot) in self.slots.iter_mut() {
            if slot.next > now {
                continue;
            }
            // A tick missed while busy or down is not replayed: the next one is after now.
            let due_at = slot.next;
            slot.next = slot.schedule.next_after(now);
            if slot.running || slot.waiting.is_some() {
                self.shared.metrics.run_finished(name, "skipped", None);
                let mut health = self.shared.health();
                if let Some(h) = health.get_mut(name) {
                    h.skipped_ticks += 1;
                }
                warn!(source = %name, next = %rfc3339(slot.next), "Tick skipped: the previous run is still going.");
            } else {
                slot.waiting = Some(due_at);
            }
            if let Some(h) = self.shared.health().get_mut(name) {
                h.next_tick = Some(rfc3339(slot.next));
            }
        }
        let free = self
            .cfg
            .daemon
            .max_concurrent_sources
            .saturating_sub(self.running());
        // Due sources in order of how long they have waited (their schedule's due time), so a
        // saturated daemon takes every source in turn, not the first names only.
        let mut due: Vec<(DateTime<Utc>, String)> = self
            .slots
            .iter()
            .filter_map(|(n, s)| Some((s.waiting?, n.clone())))
            .collect();
        due.sort();
        let started = due.len().min(free);
        for (_, name) in due.into_iter().take(free) {
            self.start(&name);
        }
        if free > started && !self.shared.draining.load(Ordering::SeqCst) {
            self.start_compaction(now);
        }
        let mut health = self.shared.health();
        for (name, slot) in &self.slots {
            if let Some(h) = health.get_mut(name) {
                h.waiting = slot.waiting.is_some();
                h.running = slot.running;
            }
        }
    }

    fn start(&mut self, name: &str) {
        let lake = self.shared_lake();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        slot.waiting = None;
        slot.running = true;
        let mut ctx = RunContext::of(&self.cfg);
        ctx.lake = lake;
        let (name, scfg, stop, handle, tx) = (
            name.to_string(),
            slot.cfg.clone(),
            self.stop.clone(),
            self.handle.clone(),
            self.done_tx.clone(),
        );
        if let Some(h) = self.shared.health().get_mut(&name) {
            h.running = true;
        }
        let mode = if self.shared.draining.load(Ordering::SeqCst) {
            RunMode::Drain
        } else {
            RunMode::Tick
        };
        // The run and every state query about it stay on a blocking thread.
        self.handle.spawn_blocking(move || {
            let (started_at, t0) = (Utc::now(), Instant::now());
            let report =
                crate::pipeline::run(&ctx, &name, &scfg, &handle, &stop, &mode, &|_, _| {});
            let cursor_time = (!report.idle)
                .then(|| {
                    let state = State::open(&ctx.state_path).ok()?;
                    let id = state.source_id(&name).ok()??;
                    let cursor = state.cursor(id).ok()??;
                    scfg.cursor_time(&cursor)
                })
                .flatten();
            let _ = tx.send(Done {
                name,
                report,
                started_at,
                secs: t0.elapsed().as_secs_f64(),
                cursor_time,
                compaction: false,
            });
        });
    }

    fn finished(&mut self, d: Done) {
        if let Some(slot) = self.slots.get_mut(&d.name) {
            slot.running = false;
        }
        if d.compaction {
            if let Some(c) = self.compactor.as_mut() {
                c.active = false;
            }
            return;
        }
        let now = rfc3339(Utc::now());
        if d.report.idle {
            // A push source with nothing due: healthy, and nothing ran.
            self.shared.metrics.succeeded(&d.name);
            if let Some(h) = self.shared.health().get_mut(&d.name) {
                h.running = false;
                h.last_success_at = Some(now);
            }
            return;
        }
        let outcome = if d.report.error.is_none() {
            "ok"
        } else {
            "failed"
        };
        self.shared
            .metrics
            .run_finished(&d.name, outcome, Some(d.secs));
        if let Some(t) = d.cursor_time {
            self.shared.metrics.cursor_at(&d.name, t);
        }
        let mut health = self.shared.health();
        if let Some(h) = health.get_mut(&d.name) {
            h.running = false;
            h.last_run_started_at = Some(rfc3339(d.started_at));
            h.last_run_ended_at = Some(now.clone());
            h.last_outcome = Some(outcome.to_string());
            h.last_rows = d.report.summary.rows;
            match &d.report.error {
                None => {
                    h.consecutive_failures = 0;
                    h.last_success_at = Some(now);
                }
                Some(e) => {
                    h.consecutive_failures += 1;
                    h.last_error = Some(e.to_string());
                    error!(source = %d.name, failures = h.consecutive_failures, error = %e, "Run failed; trying again at the next tick.");
                }
            }
        }
    }

    fn status_line(&self) -> String {
        let running: Vec<&str> = self
            .slots
            .iter()
            .filter(|(_, s)| s.running)
            .map(|(n, _)| n.as_str())
            .collect();
        let next = self
            .slots
            .iter()
            .filter(|(_, s)| !s.running)
            .min_by_key(|(_, s)| s.next);
        match (running.is_empty(), next) {
            (false, _) => format!("Exporting {}", running.join(", ")),
            (true, Some((n, s))) => format!("Idle; next: {n} at {}", rfc3339(s.next)),
            (true, None) => "Idle; no source configured".to_string(),
        }
    }

    fn keepalive(&mut self) {
        self.shared
            .heartbeat
            .store(Utc::now().timestamp(), Ordering::SeqCst);
        if let Some(w) = self.watchdog
            && self.last_ping.elapsed() >= w / 2
        {
            notify::watchdog();
            self.last_ping = Instant::now();
        }
        let status = self.status_line();
        if status != self.last_status {
            notify::status(&status);
            self.last_status = status;
        }
    }

    /// How long to sleep: until the next tick, at most `MAX_SLEEP` (and a quarter of the
    /// watchdog: a ping is due every half, so the longest gap stays near three quarters).
    fn sleep_for(&self) -> Duration {
        let now = Utc::now();
        let mut d = MAX_SLEEP;
        if let Some(w) = self.watchdog {
            d = d.min(w / 4);
        }
        for s in self.slots.values().filter(|s| s.waiting.is_none()) {
            let until = (s.next - now).to_std().unwrap_or(Duration::ZERO);
            d = d.min(until);
        }
        d
    }

    async fn run(mut self, signals: &mut mpsc::UnboundedReceiver<Signal>) -> i32 {
        notify::ready(&self.status_line());
        info!(sources = self.slots.len(), "Daemon running.");
        loop {
            self.tick();
            self.keepalive();
            let sleep = self.sleep_for();
            tokio::select! {
                sig = signals.recv() => match sig {
                    Some(Signal::Reload) => self.reload(),
                    Some(Signal::Terminate) | None => break,
                },
                Some(r) = self.reload_rx.recv() => self.reloaded(r),
                Some(d) = self.done_rx.recv() => self.finished(d),
                () = tokio::time::sleep(sleep) => {}
            }
        }
        self.drain(signals).await
    }

    /// Health 503, no more ticks, running sources commit what they have; exit 0 when they
    /// ended within the grace period, at once (1) past it or on a second signal.
    async fn drain(mut self, signals: &mut mpsc::UnboundedReceiver<Signal>) -> i32 {
        self.shared.draining.store(true, Ordering::SeqCst);
        // systemd hears of the stop as it begins (its stop timeout is running already).
        notify::stopping();
        self.stop.stop();
        let grace = Duration::from_secs(self.cfg.daemon.shutdown_grace_secs);
        let deadline = tokio::time::Instant::now() + grace;
        info!(
            running = self.running(),
            grace_secs = grace.as_secs(),
            "Draining: committing what the running sources have read."
        );
        notify::status("Draining");
        for slot in self.slots.values_mut() {
            slot.waiting = None;
        }
        let mut listening = true;
        while self.running() > 0 {
            tokio::select! {
                sig = signals.recv(), if listening => match sig {
                    Some(Signal::Terminate) => {
                        warn!("Second signal: exiting at once; what is committed stays, the rest is fetched again next time.");
                        return 1;
                    }
                    Some(Signal::Reload) => info!("Reload ignored while draining."),
                    None => listening = false,
                },
                Some(d) = self.done_rx.recv() => self.finished(d),
                () = tokio::time::sleep_until(deadline) => {
                    error!(grace_secs = grace.as_secs(), running = self.running(), "Drain took longer than shutdown_grace_secs: exiting at once; what is committed stays.");
                    return 1;
                }
                () = tokio::time::sleep(MAX_SLEEP) => self.keepalive(),
            }
        }
        // Deliveries acknowledged before the drain began go to the lake now.
        let push: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| s.cfg.webhook().is_some())
            .map(|(n, _)| n.clone())
            .collect();
        if !push.is_empty() {
            self.stop = StopFlag::default();
            for name in push {
                self.start(&name);
            }
            while self.running() > 0 {
                tokio::select! {
                    sig = signals.recv(), if listening => match sig {
                        Some(Signal::Terminate) => {
                            warn!("Second signal: exiting at once; the inbox keeps what was acknowledged.");
                            return 1;
                        }
                        None => listening = false,
                        _ => {}
                    },
                    Some(d) = self.done_rx.recv() => self.finished(d),
                    () = tokio::time::sleep_until(deadline) => {
                        error!("The inbox flush took longer than shutdown_grace_secs: exiting; the inbox keeps what was acknowledged.");
                        return 1;
                    }
                    () = tokio::time::sleep(MAX_SLEEP) => self.keepalive(),
                }
            }
        }
        info!("Drained; exiting.");
        0
    }
}
