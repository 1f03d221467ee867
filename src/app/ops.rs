//! Operators' commands: `check` (credentials and hosts), `health` (the daemon's /healthz)
//! and `exotel analyze` (submissions to ExoVoiceAnalyze).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use tokio::runtime::Runtime;

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, unknown_source};
use crate::config::Config;
use crate::state::State;

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
            Ok(what) => writeln!(out, "{name}: ok ({what}, {} ms)", t0.elapsed().as_millis())?,
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

/// Which jobs `exotel analyze` submits again: by default none (each analysis is charged, and a
/// failure such as an unreadable recording fails the same way again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resubmit {
    /// Failed and timed-out jobs are submitted again.
    pub retry_failed: bool,
    /// Queued, failed and timed-out jobs are submitted again (never an analysed call).
    pub force: bool,
}

/// `exotel analyze`: submits calls to ExoVoiceAnalyze, each recorded as a job before it is
/// sent. A call already submitted is not submitted again unless `again` says so; an analysed
/// call never is (one row per call). A refused call (400) is named with the vendor's message
/// (exit 1).
#[allow(clippy::too_many_arguments)]
pub fn exotel_analyze(
    cfg: &Config,
    source: &str,
    call_sids: &[String],
    from_file: Option<&Path>,
    again: Resubmit,
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
    let jobs = crate::pipeline::SourceState::open(&cfg.state.path, id)?;
    let analyzer = Analyzer::new(source, acfg)?;
    // What may be submitted again; checked and recorded in one state transaction per call,
    // so the daemon's automatic submissions (or another `exotel analyze`) never take the
    // same call at the same time.
    let again_statuses: &[&str] = if again.force {
        &["queued", "submitting", "failed", "timed_out"]
    } else if again.retry_failed {
        &["failed", "timed_out"]
    } else {
        &[]
    };
    let (mut submitted, mut skipped, mut failed_kept, mut refused, mut analysed) = (0, 0, 0, 0, 0);
    let mut errors = 0;
    let mut seen = std::collections::HashSet::new();
    for call in &calls {
        if !seen.insert(call.clone()) {
            continue;
        }
        use crate::sources::Jobs;
        let task_id = match jobs
            .claim(call, again_statuses)
            .map_err(|e| anyhow::anyhow!("{source}: the state's jobs: {e}"))?
        {
            Ok(task_id) => task_id,
            Err(status) => {
                match status.as_str() {
                    "done" => {
                        if again.force || again.retry_failed {
                            analysed += 1;
                            writeln!(
                                out,
                                "{source}: call {call} is already analysed and its row is in the lake (one row per call): not submitted again; for a second analysis configure another exotel_analyze source"
                            )?;
                        }
                        skipped += 1;
                    }
                    "failed" | "timed_out" => failed_kept += 1,
                    _ => skipped += 1,
                }
                continue;
            }
        };
        match rt.block_on(analyzer.send(call, &task_id, &jobs)) {
            Ok(Submitted::Queued { .. }) => submitted += 1,
            Ok(Submitted::Refused(msg)) => {
                refused += 1;
                writeln!(
                    out,
                    "{source}: call {call} refused by ExoVoiceAnalyze (HTTP 400): {msg}"
                )?;
            }
            Err(e) => {
                errors += 1;
                writeln!(
                    out,
                    "{source}: call {call} not confirmed: {e} (recorded; the daemon submits it again after result_timeout_secs)"
                )?;
            }
        }
    }
    writeln!(
        out,
        "{source}: {submitted} submitted, {skipped} already submitted or analysed (--force submits queued ones again), {failed_kept} failed before (--retry-failed submits them again), {refused} refused"
    )?;
    Ok(if refused + errors + analysed > 0 {
        EXIT_FAILED
    } else {
        EXIT_OK
    })
}
