//! SIGHUP: the config is read on the scheduler's thread (a file) and its push sources are
//! registered in the state off it, so a busy state delays the new config, never the
//! scheduler or systemd's watchdog.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{Scheduler, webhook};
use crate::config::Config;

/// How long a reload waits for a busy state before it gives up (the running config stays).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// A reload's outcome, from its state work off the scheduler's thread.
pub(super) struct Reloaded {
    generation: u64,
    cfg: Config,
    /// The push sources' endpoints (`None`: no intake to configure), or why not.
    endpoints: Result<Option<webhook::Endpoints>, String>,
}

impl Scheduler {
    /// SIGHUP: reads the config here (a file), then registers its push sources in the state
    /// off this thread, retrying while the state is busy for up to `RELOAD_TIMEOUT`, so the
    /// scheduler keeps ticking and the watchdog keeps hearing from it. The new config is
    /// applied when that work is done (`reloaded`); if it cannot be, the running config stays
    /// and the log and `callsync_config_reloads_total{outcome="failed"}` say why.
    pub(super) fn reload(&mut self) {
        let mut cfg = match Config::load(&self.config_path) {
            Ok(cfg) => cfg,
            Err(e) => {
                crate::telemetry::config_reload(false);
                error!(file = %self.config_path.display(), error = %e, "Config not reloaded; the running one stays.");
                return;
            }
        };
        if cfg.state.path != self.cfg.state.path {
            // The intake, the runs and the metrics share one state: a new path is taken at
            // the next start, like a new listen address.
            warn!(
                running = %self.cfg.state.path.display(),
                configured = %cfg.state.path.display(),
                "[state] path changed; it takes effect at the next start. The running state stays."
            );
            cfg.state.path = self.cfg.state.path.clone();
        }
        self.reload_gen += 1;
        let (generation, tx) = (self.reload_gen, self.reload_tx.clone());
        let wants_intake = self.shared.intake.is_some();
        self.handle.spawn_blocking(move || {
            let deadline = Instant::now() + RELOAD_TIMEOUT;
            let endpoints = if !wants_intake {
                Ok(None)
            } else {
                loop {
                    match webhook::Intake::endpoints_for(&cfg, true) {
                        Ok(map) => break Ok(Some(map)),
                        Err(e) if Instant::now() >= deadline => break Err(e),
                        Err(e) => {
                            warn!(error = %e, "Config reload waits for the state; the running config stays meanwhile.");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            };
            let _ = tx.send(Reloaded {
                generation,
                cfg,
                endpoints,
            });
        });
    }

    /// A reload's state work ended: its config is applied, or the running one stays.
    pub(super) fn reloaded(&mut self, r: Reloaded) {
        if r.generation != self.reload_gen {
            return; // a later SIGHUP superseded it
        }
        match r.endpoints {
            Ok(endpoints) => {
                if let (Some(i), Some(map)) = (&self.shared.intake, endpoints) {
                    i.set_endpoints(map);
                }
                for (name, scfg) in &r.cfg.sources {
                    if let Some(p) = scfg.flush_policy() {
                        self.shared.metrics.add_push_source(name, p.interval_secs);
                    }
                }
                info!(file = %self.config_path.display(), sources = r.cfg.sources.len(), "Config reloaded.");
                crate::telemetry::config_reload(true);
                self.apply(r.cfg, false);
            }
            Err(e) => {
                crate::telemetry::config_reload(false);
                error!(file = %self.config_path.display(), error = %e, timeout_secs = RELOAD_TIMEOUT.as_secs(), "Config not reloaded: the state stayed busy; the running one stays.");
            }
        }
    }
}
