//! The daemon's compaction (`[compaction] schedule`, Delta lakes only): at each tick every
//! source is queued, and one at a time, while the source itself is not running, its
//! partitions with at least `min_files` small files are compacted under its lock (its own
//! ticks meanwhile are skipped, as during a long run); after the last source, `vacuum`.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use std::time::Instant;

use super::schedule::Schedule;
use super::{Done, RunReport};
use crate::config::Config;
use crate::lake::compact::CompactOptions;

/// Where the daemon's compaction stands.
pub(super) struct Compactor {
    expr: String,
    schedule: Schedule,
    next: DateTime<Utc>,
    queue: VecDeque<String>,
    /// A compaction job is running.
    pub(super) active: bool,
}

impl Compactor {
    /// The compactor of a config, when it schedules compaction of a Delta lake.
    pub(super) fn of(cfg: &Config, now: DateTime<Utc>) -> Option<Compactor> {
        let expr = cfg
            .compaction
            .effective_schedule(cfg.warehouse.format)?
            .to_string();
        let schedule = Schedule::parse(&expr).ok()?;
        Some(Compactor {
            next: schedule.next_after(now),
            expr,
            schedule,
            queue: VecDeque::new(),
            active: false,
        })
    }

    /// Takes a reloaded config's compactor, keeping the queue when the schedule is the same.
    pub(super) fn reloaded(old: Option<Compactor>, cfg: &Config) -> Option<Compactor> {
        let mut new = Compactor::of(cfg, Utc::now())?;
        if let Some(old) = old {
            new.active = old.active;
            if old.expr == new.expr {
                new.next = old.next;
                new.queue = old.queue;
            }
        }
        Some(new)
    }

    /// Queues every source when the schedule is due (a tick missed is not replayed).
    pub(super) fn tick(&mut self, now: DateTime<Utc>, sources: impl Iterator<Item = String>) {
        if self.next > now {
            return;
        }
        self.next = self.schedule.next_after(now);
        if self.queue.is_empty() {
            self.queue.extend(sources);
            info!(sources = self.queue.len(), "Compaction due.");
        }
    }

    /// The next queued source that is free now (`None` while a job runs); whether it is the
    /// last of the queue.
    pub(super) fn take(&mut self, free: impl Fn(&str) -> bool) -> Option<(String, bool)> {
        if self.active {
            return None;
        }
        let i = self.queue.iter().position(|n| free(n))?;
        let name = self.queue.remove(i)?;
        Some((name, self.queue.is_empty()))
    }
}

impl super::Scheduler {
    /// Starts the next queued compaction job whose source is free.
    pub(super) fn start_compaction(&mut self, now: DateTime<Utc>) {
        let Some(c) = self.compactor.as_mut() else {
            return;
        };
        c.tick(now, self.slots.keys().cloned());
        let slots = &self.slots;
        let Some((name, last)) = c.take(|n| {
            slots
                .get(n)
                .is_some_and(|s| !s.running && s.waiting.is_none())
        }) else {
            return;
        };
        c.active = true;
        if let Some(slot) = self.slots.get_mut(&name) {
            slot.running = true;
        }
        let lake = self.shared_lake();
        let (cfg, handle, tx) = (self.cfg.clone(), self.handle.clone(), self.done_tx.clone());
        self.handle.spawn_blocking(move || {
            let (started_at, t0) = (Utc::now(), Instant::now());
            run_job(&cfg, &name, last, &handle, lake);
            let _ = tx.send(Done {
                report: RunReport {
                    source: name.clone(),
                    summary: Default::default(),
                    error: None,
                    idle: true,
                },
                name,
                started_at,
                secs: t0.elapsed().as_secs_f64(),
                cursor_time: None,
                compaction: true,
            });
        });
    }
}

/// One compaction job (blocking): the source's partitions, then `vacuum` after the last.
/// `lake`: the daemon's (one is opened when it has none).
pub(super) fn run_job(
    cfg: &Config,
    name: &str,
    last: bool,
    rt: &tokio::runtime::Handle,
    lake: Option<std::sync::Arc<crate::lake::Lake>>,
) {
    let opened = match lake {
        Some(l) => Ok(l),
        None => {
            crate::lake::Lake::open(&cfg.warehouse, &cfg.state.path, rt).map(std::sync::Arc::new)
        }
    };
    let lake = match opened {
        Ok(l) => l,
        Err(e) => {
            crate::telemetry::upkeep("compaction", false);
            warn!(source = %name, error = %e, "Compaction skipped: the lake did not open.");
            return;
        }
    };
    let opts = CompactOptions {
        target_bytes: cfg.compaction.target_file_mb << 20,
        min_files: cfg.compaction.min_files,
        dates: None,
    };
    match crate::app::compact_one(cfg, name, lake.as_ref(), &opts) {
        Ok(c) => {
            crate::telemetry::upkeep("compaction", true);
            if c.partitions > 0 {
                info!(source = %name, partitions = c.partitions, files_before = c.files_before, files_after = c.files_after, rows = c.rows, "Compaction done.")
            }
        }
        Err(e) => {
            crate::telemetry::upkeep("compaction", false);
            warn!(source = %name, error = format!("{e:#}"), "Compaction failed; trying again at its next tick.")
        }
    }
    match most_files_in_a_past_partition(lake.as_ref(), name) {
        Ok(n) => crate::telemetry::partition_files_max(name, n),
        Err(e) => warn!(source = %name, error = %e, "Could not count the files of its partitions."),
    }
    if last {
        // `retain_hours` is at least 1 (the config refuses less): a file is deleted only once
        // it was removed that long ago, never right after the compaction that removed it.
        if cfg.compaction.retain_hours < crate::config::SAFE_RETAIN_HOURS {
            warn!(
                retain_hours = cfg.compaction.retain_hours,
                "Vacuum keeps removed files less than a day: a reader holding an older snapshot fails on the files deleted under it."
            );
        }
        match lake.table().vacuum(cfg.compaction.retain_hours, false) {
            Ok(tables) => {
                crate::telemetry::upkeep("vacuum", true);
                for (table, files) in tables {
                    if !files.is_empty() {
                        info!(
                            table,
                            deleted = files.len(),
                            "Vacuum deleted replaced files."
                        )
                    }
                }
            }
            Err(e) => {
                crate::telemetry::upkeep("vacuum", false);
                warn!(error = %e, "Vacuum failed; trying again after the next compaction.")
            }
        }
    }
}

/// The most files one partition of `source` holds among the days before today (UTC): after
/// a compaction, one or two; more means compaction is off, failing or not keeping up.
fn most_files_in_a_past_partition(
    lake: &crate::lake::Lake,
    source: &str,
) -> Result<u64, crate::lake::LakeError> {
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let mut per_day: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for f in lake.table().active_files(lake.storage(), source)? {
        if f.date < today {
            *per_day.entry(f.date).or_default() += 1;
        }
    }
    Ok(per_day.into_values().max().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(std::path::Path::new("t.toml"), text).unwrap()
    }

    #[test]
    fn a_delta_lake_is_compacted_daily_unless_turned_off_and_a_plain_one_never() {
        let delta = config("[warehouse]\nroot = \"/tmp/x\"\nformat = \"delta\"\n");
        let now = chrono::Utc::now();
        let c = Compactor::of(&delta, now).expect("on by default");
        assert_eq!(c.expr, crate::config::DEFAULT_COMPACTION_SCHEDULE);
        assert!(c.next > now && c.next - now <= chrono::Duration::days(1));
        let off = config(
            "[warehouse]\nroot = \"/tmp/x\"\nformat = \"delta\"\n[compaction]\nenabled = false\n",
        );
        assert!(Compactor::of(&off, now).is_none());
        let plain = config("[warehouse]\nroot = \"/tmp/x\"\n");
        assert!(Compactor::of(&plain, now).is_none());
        let hourly = config(
            "[warehouse]\nroot = \"/tmp/x\"\nformat = \"delta\"\n[compaction]\nschedule = \"0 0 * * * *\"\n",
        );
        assert_eq!(Compactor::of(&hourly, now).unwrap().expr, "0 0 * * * *");
    }
}
