//! Helpers the benchmarks share: realistic Voicegain data, the release binary run as a child
//! with its CPU and peak RSS measured, configs, and the Python with the checkers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use callsync::simulator::{Simulator, VoicegainSim};

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` calls spread over the `days` days before now (a call every `days × 86400 / n` seconds
/// on average), with the simulator's realistic 43-column rows.
pub fn generate(n: usize, days: i64, seed: u64) -> VoicegainSim {
    let mut sim = VoicegainSim::new(seed, 0);
    let mean = (days * 86_400 / n.max(1) as i64).max(1);
    sim.spacing_secs = 1..(2 * mean).max(2);
    sim.now_secs = chrono::Utc::now().timestamp() - days * 86_400;
    sim.add_calls(n);
    // The vendor's servers do not share callsync's cores in production: render the pages
    // ahead so the simulator's work during the export is little more than sending bytes.
    sim.prerender();
    sim
}

pub struct ChildRun {
    pub wall: f64,
    pub cpu: f64,
    /// Of which in the kernel.
    pub sys: f64,
    pub max_rss_mb: f64,
}

/// Peak RSS (VmHWM) of a live process in KiB. `ru_maxrss` is no use here: a child forked
/// from this (large) bench process reports the parent's pages until it execs.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the release binary to completion, sampling its peak RSS, and reads its CPU time.
/// (Reaped with `wait4`, not `Child::wait`, to read its rusage.)
#[allow(clippy::zombie_processes)]
pub fn run_child(cmd: &mut Command) -> ChildRun {
    let t0 = Instant::now();
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let id = child.id();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Some(k) = vm_hwm_kib(id) {
                    peak = peak.max(k);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is a zeroed POD struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // Sample until the process is a zombie (exited, not yet reaped): VmHWM is then gone,
    // so the last sample is the peak.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak_kib = sampler.join().unwrap();
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "callsync failed"
    );
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    ChildRun {
        wall: t0.elapsed().as_secs_f64(),
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        sys: tv(ru.ru_stime),
        max_rss_mb: peak_kib as f64 / 1024.0,
    }
}

/// `callsync --config <config> sync` with the release binary, measured.
pub fn sync_child(config: &Path) -> ChildRun {
    run_child(
        Command::new(env!("CARGO_BIN_EXE_callsync"))
            .arg("--config")
            .arg(config)
            .arg("sync")
            .env("RUST_LOG", "warn")
            .env("MOTO_SECRET", "testing")
            .stdout(std::process::Stdio::null()),
    )
}

/// The Python with duckdb and moto (`CALLSYNC_TEST_PYTHON`, else `target/pyenv`).
pub fn python() -> String {
    std::env::var("CALLSYNC_TEST_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/pyenv/bin/python").to_string()
    })
}

/// As `write_config`, with its own `[warehouse]` table.
pub fn write_config_with(dir: &Path, sim: &Simulator, token: &str, warehouse: &str) -> PathBuf {
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    let config = dir.join("callsync.toml");
    std::fs::write(
        &config,
        format!(
            "{warehouse}[state]\npath = \"{}\"\n[sources.vg]\nkind = \"voicegain\"\nbase_url = \"{}\"\ntoken_file = \"{}\"\nper_page = 1000\n",
            dir.join("state.db").display(),
            sim.voicegain_base_url(),
            token_file.display()
        ),
    )
    .unwrap();
    config
}

pub fn count_parquet(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        count_parquet(&p)
                    } else {
                        usize::from(p.extension().is_some_and(|x| x == "parquet"))
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The moto S3 server on a free loopback port (the bench Python's `moto[server]`), stopped
/// on drop.
pub struct MotoServer {
    child: std::process::Child,
    pub endpoint: String,
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("a Python with moto[server] (target/pyenv from .ci/run)");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(30), "moto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        MotoServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Creates bucket `name`; returns a `[warehouse]` table for a lake in it.
    pub fn warehouse(&self, rt: &tokio::runtime::Runtime, name: &str, max_rows: usize) -> String {
        rt.block_on(async {
            reqwest::Client::new()
                .put(format!("{}/{name}", self.endpoint))
                .send()
                .await
                .unwrap()
        });
        format!(
            "[warehouse]\nurl = \"s3://{name}/lake\"\nmax_rows_per_file = {max_rows}\n\
             [warehouse.storage_options]\naws_endpoint = \"{}\"\naws_allow_http = \"true\"\n\
             aws_region = \"us-east-1\"\naws_access_key_id = \"testing\"\naws_secret_access_key_env = \"MOTO_SECRET\"\n",
            self.endpoint
        )
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
