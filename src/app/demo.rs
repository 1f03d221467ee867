//! `demo`: the built-in simulator, a demo config and a real lake; with `--daemon`, the daemon
//! against the simulator with calls, monitor legs and analysis results arriving.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::runtime::Runtime;

use super::sync;
use crate::config::Config;
use crate::pipeline::StopFlag;
use crate::simulator::{Simulator, VoicegainSim};

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
    // Exotel call records over the same days (a call is listed once it has ended).
    sim.exotel().calls.add_calls(
        windowed,
        five_days_ago.timestamp_micros(),
        an_hour_ago.timestamp_micros(),
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
    let exo_key = secret("exotel.key", sim.exotel().api_key.clone())?;
    let exo_token = secret("exotel.token", sim.exotel().api_token.clone())?;
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
        let (key, token) = (&exo_key, &exo_token);
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
{every}{settle}
[sources.exotel_calls_demo]
kind = "exotel_calls"
account_sid = "exotel30m"
base_url = {exo_base:?}
api_key_file = {exo_key:?}
api_token_file = {exo_token:?}
start_date = {start_date:?}
{analyze}{every}{settle}{exotel}"#,
        warehouse = warehouse.display().to_string(),
        state = state_path.display().to_string(),
        vg_base = sim.voicegain_base_url(),
        vn_base = sim.vonage_base_url(),
        vc_base = sim.voice_calls_base_url(),
        exo_base = sim.exotel_base_url(),
        // The daemon demo analyses new Exotel calls with the analysis source.
        analyze = if exotel.is_empty() {
            ""
        } else {
            "analyze_with = \"exotel_insights_demo\"\nanalyze_min_duration_secs = 10\nanalyze_max_per_day = 1000\n"
        },
    );
    std::fs::write(&config_path, text)?;
    let cfg = Config::load(&config_path)?;
    writeln!(
        out,
        "simulator: {} ({calls} Voicegain calls, {windowed} Vonage sessions, {windowed} voice-bot calls, {windowed} Exotel calls)",
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
/// and two Exotel calls that just ended (the calls source submits the completed ones with a
/// recording to ExoVoiceAnalyze, whose results come back by webhook).
async fn feed(sim: std::sync::Arc<Simulator>, legs_url: String) {
    use crate::simulator::exotel::{MonitorLeg, deliver};
    let client = reqwest::Client::new();
    let mut rng = fastrand::Rng::new();
    let mut n = 0u64;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        n += 1;
        for i in 0..2 {
            let leg = MonitorLeg::random(&mut rng, n * 2 + i, 60, 19_800);
            let _ = deliver(&client, &legs_url, &leg, i == 0).await;
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
        sim.exotel()
            .calls
            .add_calls(2, from.timestamp_micros(), to.timestamp_micros());
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
