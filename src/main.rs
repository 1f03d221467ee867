//! The `callsync` binary: CLI parsing, logging and signals; the work is in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::{Parser, Subcommand};

use callsync::app::{self, EXIT_USAGE};
use callsync::config::{Config, DEFAULT_CONFIG_PATH};
use callsync::logs;
use callsync::pipeline::StopFlag;

/// Exports call records from voice and contact-center platforms into a Parquet lake.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "CALLSYNC_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Log format on stderr: text, or JSON lines for log shippers.
    #[arg(long, global = true, env = "CALLSYNC_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum ExotelCommand {
    /// Submits calls for analysis; each becomes a job whose result the daemon receives.
    Analyze {
        /// The exotel_analyze source.
        #[arg(long = "source", value_name = "NAME")]
        source: String,
        /// A call to analyse (repeatable).
        #[arg(long = "call-sid", value_name = "SID")]
        call_sids: Vec<String>,
        /// A file with one call sid per line.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Submit failed and timed-out analyses again (each submission is charged).
        #[arg(long)]
        retry_failed: bool,
        /// Submit queued, failed and timed-out jobs again (never an analysed call: one row
        /// per call).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// One incremental pass over every configured source (or the named ones).
    Sync {
        /// Only this source (repeatable).
        #[arg(long = "source", value_name = "NAME")]
        sources: Vec<String>,
    },
    /// Exports the calls started in an explicit range of UTC days (inclusive), without
    /// moving the incremental cursor; rerun the same command to resume an interrupted one.
    Backfill {
        /// The source to backfill.
        #[arg(long = "source", value_name = "NAME")]
        source: String,
        /// First day, YYYY-MM-DD.
        #[arg(long, value_name = "YYYY-MM-DD")]
        from: NaiveDate,
        /// Last day (inclusive), YYYY-MM-DD.
        #[arg(long, value_name = "YYYY-MM-DD")]
        to: NaiveDate,
    },
    /// Per-source cursor, last run, totals, last error and unfinished backfills.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Runs the daemon: every source on its schedule, `/healthz` and `/metrics` on
    /// `[server] listen`; SIGTERM/SIGINT drain, SIGHUP re-reads the config.
    Run,
    /// Exit 0 when the configured daemon's `/healthz` answers 200 (a container HEALTHCHECK).
    Health,
    /// One cheap authenticated request per source: credentials, host and parameters work.
    Check {
        /// Only this source (repeatable).
        #[arg(long = "source", value_name = "NAME")]
        sources: Vec<String>,
    },
    /// Exotel: submit calls to ExoVoiceAnalyze (results arrive at the daemon's webhook).
    Exotel {
        #[command(subcommand)]
        command: ExotelCommand,
    },
    /// Rebuilds a source's state from its lake (after the state was lost or restored from an
    /// older copy): manifest, exported keys, a safe cursor and the lake marker.
    Repair {
        /// Only this source (repeatable); all configured sources otherwise.
        #[arg(long = "source", value_name = "NAME")]
        sources: Vec<String>,
        /// Rebuild even a source whose state agrees with the lake.
        #[arg(long)]
        force: bool,
    },
    /// Holds the lake against the state: every committed file present with its size, no
    /// data file no commit names; exit 0 when clean, 1 with one line per problem.
    Verify {
        /// Only this source (repeatable).
        #[arg(long = "source", value_name = "NAME")]
        sources: Vec<String>,
    },
    /// Delta lakes: rewrites each partition's small files into files near the target size,
    /// one atomic commit per partition; rows are copied, never changed.
    Compact {
        /// Only this source (repeatable).
        #[arg(long = "source", value_name = "NAME")]
        sources: Vec<String>,
        /// Only this day's partitions.
        #[arg(long, value_name = "YYYY-MM-DD", conflicts_with_all = ["from", "to"])]
        date: Option<NaiveDate>,
        /// First day of a range (with --to).
        #[arg(long, value_name = "YYYY-MM-DD", requires = "to")]
        from: Option<NaiveDate>,
        /// Last day of a range (inclusive, with --from).
        #[arg(long, value_name = "YYYY-MM-DD", requires = "from")]
        to: Option<NaiveDate>,
        /// Size the new files aim at, in MiB ([compaction] target_file_mb by default).
        #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u64).range(1..))]
        target_file_mb: Option<u64>,
    },
    /// Delta lakes: deletes the files compaction replaced once they were removed more than
    /// `[compaction] retain_hours` ago.
    Vacuum {
        /// Hours a removed file is kept (overrides [compaction] retain_hours).
        #[arg(long, value_name = "HOURS")]
        retain_hours: Option<u64>,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Runs the built-in simulator and syncs it into a demo lake: no credentials, no network.
    Demo {
        /// Directory for the demo config, state and lake.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
        /// Calls the simulator generates.
        #[arg(long, default_value_t = 5000)]
        calls: usize,
        /// Run the daemon (`callsync run`) against the simulator instead of one sync, with new
        /// calls arriving; Ctrl-C drains it.
        #[arg(long)]
        daemon: bool,
    },
}

fn main() -> ExitCode {
    callsync::alloc::tune();
    let cli = Cli::parse();
    let json = cli.log_format == "json";
    logs::init(json);
    let code = match run(cli, json) {
        Ok(code) => code,
        Err(e) => {
            report(json, &format!("error: {e:#}"));
            app::EXIT_FAILED
        }
    };
    ExitCode::from(code as u8)
}

/// An error for the user on stderr: plain text, or a JSON event in JSON mode.
fn report(json: bool, text: &str) {
    if json {
        tracing::error!("{text}");
    } else {
        eprintln!("{text}");
    }
}

/// Where a command's report goes: stdout, as JSON events in JSON mode for the commands whose
/// stdout is a log (the daemon, sync, backfill, repair, demo); the others print their product
/// (status, verify, check) as it is.
fn stdout_for(command: &Command, json: bool) -> Box<dyn Write> {
    let logged = matches!(
        command,
        Command::Run
            | Command::Sync { .. }
            | Command::Backfill { .. }
            | Command::Repair { .. }
            | Command::Compact { .. }
            | Command::Vacuum { .. }
            | Command::Demo { .. }
    );
    if json && logged {
        Box::new(logs::JsonLines::new(std::io::stdout()))
    } else {
        Box::new(std::io::stdout())
    }
}

fn run(cli: Cli, json: bool) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("callsync-worker")
        .enable_all()
        .build()?;
    let mut out = stdout_for(&cli.command, json);
    if let Command::Demo {
        dir,
        calls,
        daemon: true,
    } = &cli.command
    {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        rt.spawn(forward_signals(tx));
        let code = app::demo(dir, *calls, Some(rx), &rt, &StopFlag::default(), &mut out);
        rt.shutdown_background();
        return code;
    }
    if let Command::Run = &cli.command {
        let cfg = match Config::load(&cli.config) {
            Ok(c) => c,
            Err(e) => {
                report(json, &format!("error: {e}"));
                return Ok(EXIT_USAGE);
            }
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        rt.spawn(forward_signals(tx));
        let code = callsync::daemon::run(&cli.config, cfg, &rt, rx, &mut out);
        // A drain cut short leaves runs on blocking threads: exit without waiting for them
        // (what they committed stays; the rest is fetched again next time).
        rt.shutdown_background();
        return code;
    }
    let stop = StopFlag::default();
    {
        let stop = stop.clone();
        rt.spawn(async move {
            wait_for_signal().await;
            tracing::warn!("Signal received; finishing the current page and committing.");
            stop.stop();
        });
    }
    if let Command::Demo { dir, calls, daemon } = &cli.command {
        let _ = daemon;
        return app::demo(dir, *calls, None, &rt, &stop, &mut out);
    }
    let cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            report(json, &format!("error: {e}"));
            return Ok(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Sync { sources } => app::sync(&cfg, &sources, &rt, &stop, &mut out),
        Command::Status { json } => app::status(&cfg, json, &mut out),
        Command::Backfill { source, from, to } => {
            app::backfill(&cfg, &source, from, to, &rt, &stop, &mut out)
        }
        Command::Repair { sources, force } => app::repair(&cfg, &sources, force, &rt, &mut out),
        Command::Verify { sources } => app::verify(&cfg, &sources, &rt, &mut out),
        Command::Health => app::health(&cfg, &rt, &mut out),
        Command::Exotel {
            command:
                ExotelCommand::Analyze {
                    source,
                    call_sids,
                    from_file,
                    retry_failed,
                    force,
                },
        } => app::exotel_analyze(
            &cfg,
            &source,
            &call_sids,
            from_file.as_deref(),
            app::Resubmit {
                retry_failed,
                force,
            },
            &rt,
            &mut out,
        ),
        Command::Check { sources } => app::check(&cfg, &sources, &rt, &mut out),
        Command::Compact {
            sources,
            date,
            from,
            to,
            target_file_mb,
        } => {
            let dates = date.map(|d| (d, d)).or(from.zip(to));
            let req = app::CompactRequest {
                sources,
                dates,
                target_file_mb,
                min_files: 2,
            };
            app::compact(&cfg, &req, &rt, &mut out)
        }
        Command::Vacuum {
            retain_hours,
            dry_run,
        } => app::vacuum(&cfg, retain_hours, dry_run, &rt, &mut out),
        Command::Demo { .. } | Command::Run => unreachable!("handled above"),
    }
}

/// SIGTERM/SIGINT → Terminate, SIGHUP → Reload, for the daemon.
async fn forward_signals(tx: tokio::sync::mpsc::UnboundedSender<callsync::daemon::Signal>) {
    use callsync::daemon::Signal;
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("Cannot install signal handlers.");
        return;
    };
    loop {
        let sig = tokio::select! {
            _ = term.recv() => Signal::Terminate,
            _ = int.recv() => Signal::Terminate,
            _ = hup.recv() => Signal::Reload,
        };
        tracing::info!(signal = ?sig, "Signal received.");
        if tx.send(sig).is_err() {
            return;
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
