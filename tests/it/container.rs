//! Promise: the container image starts the way the README runs it, in a real engine (Podman):
//! named volumes for the state and the lake, the config and secrets mounted read-only, its
//! HEALTHCHECK healthy, a webhook delivery reaches the lake in the volume, and `podman stop`
//! drains it to exit 0.
//!
//! No base image can be pulled here, so the test builds only the `runtime` stage of
//! `config/Containerfile`: the `build` stage is replaced by a build context holding the binary
//! cargo built, and `gcr.io/distroless/cc-debian12:nonroot` by a stand-in imported from a
//! tarball of that binary's shared libraries and an `/etc/passwd` with user 65532 (a real
//! image of that name, where present, is used as it is). What it cannot prove: the real base
//! images, and the Rust build stage.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::helpers::*;

const BASE: &str = "gcr.io/distroless/cc-debian12:nonroot";

/// `podman` with this machine's settings (runc, cgroupfs, no default ulimits).
fn podman(conf: &Path, args: &[&str]) -> Output {
    Command::new("podman")
        .env("CONTAINERS_CONF", conf)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Removes what the test created, whatever happens.
struct Cleanup {
    conf: PathBuf,
    container: String,
    volumes: Vec<String>,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman(&self.conf, &["rm", "-f", &self.container]);
        for v in &self.volumes {
            let _ = podman(&self.conf, &["volume", "rm", "-f", v]);
        }
        let _ = podman(&self.conf, &["rmi", "-f", &self.image]);
    }
}

/// Imports the stand-in base: the binary's shared libraries (from `ldd`) and user 65532.
fn stand_in_base(conf: &Path, dir: &Path, bin: &str) {
    if podman(conf, &["image", "exists", BASE]).status.success() {
        return;
    }
    let root = dir.join("base");
    for d in ["etc", "tmp", "home/nonroot"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n").unwrap();
    let tar = dir.join("base.tar");
    let t = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    ok(t, "tar of the stand-in base");
    ok(
        podman(conf, &["import", tar.to_str().unwrap(), BASE]),
        "podman import",
    );
}

#[test]
fn the_container_starts_with_named_volumes_is_healthy_exports_a_webhook_and_stops_cleanly() {
    if !have_tool("podman") || !have_tool("runc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_callsync");
    stand_in_base(&conf, dir.path(), bin);
    // The build context stands in for the `build` stage: /out as that stage leaves it.
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("out/usr/local/bin")).unwrap();
    std::fs::copy(bin, ctx.join("out/usr/local/bin/callsync")).unwrap();
    for (d, mode) in [("state", 0o700), ("warehouse", 0o750)] {
        let p = ctx.join(format!("out/var/lib/callsync/{d}"));
        std::fs::create_dir_all(&p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let id = format!("callsync-it-{}", std::process::id());
    let clean = Cleanup {
        conf: conf.clone(),
        container: id.clone(),
        volumes: vec![format!("{id}-state"), format!("{id}-lake")],
        image: format!("localhost/{id}:latest"),
    };
    let containerfile = concat!(env!("CARGO_MANIFEST_DIR"), "/config/Containerfile");
    ok(
        podman(
            &conf,
            &[
                "build",
                "--format",
                "docker",
                "-f",
                containerfile,
                "--target",
                "runtime",
                "--build-context",
                &format!("build={}", ctx.display()),
                "-t",
                &clean.image,
                ctx.to_str().unwrap(),
            ],
        ),
        "podman build",
    );
    // Config and secrets as the README mounts them.
    let token = "container-hook-5b1e";
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("legs"), token).unwrap();
    let cfg = dir.path().join("callsync.toml");
    std::fs::write(
        &cfg,
        "[warehouse]\nroot = \"/var/lib/callsync/warehouse\"\n[state]\npath = \"/var/lib/callsync/state/callsync.db\"\n\
         [server]\nlisten = \"0.0.0.0:9187\"\n[sources.legs]\nkind = \"exotel_monitor\"\n\
         webhook_token_file = \"/run/secrets/legs\"\nflush_interval_secs = 1\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    ok(
        podman(
            &conf,
            &[
                "run",
                "-d",
                "--name",
                &id,
                "--stop-timeout",
                "45",
                "-v",
                &format!("{}:/etc/callsync/callsync.toml:ro", cfg.display()),
                "-v",
                &format!("{}:/run/secrets:ro", secrets.display()),
                "-v",
                &format!("{}:/var/lib/callsync/state", clean.volumes[0]),
                "-v",
                &format!("{}:/var/lib/callsync/warehouse", clean.volumes[1]),
                "-p",
                &format!("127.0.0.1:{port}:9187"),
                &clean.image,
            ],
        ),
        "podman run",
    );
    let logs = || text(&podman(&conf, &["logs", &id]));
    assert!(
        wait_until(30, || podman(&conf, &["healthcheck", "run", &id])
            .status
            .success()),
        "HEALTHCHECK never healthy:\n{}",
        logs()
    );
    // A monitor-leg callback, as Exotel posts it.
    let leg = callsync::simulator::exotel::MonitorLeg::random(
        &mut fastrand::Rng::with_seed(5),
        1,
        120,
        19_800,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = rt.block_on(callsync::simulator::exotel::deliver(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{port}/webhooks/legs/{token}"),
        &leg,
        true,
    ));
    assert_eq!(code, Some(200), "{}", logs());
    let lake = PathBuf::from(ok(
        podman(
            &conf,
            &[
                "volume",
                "inspect",
                &clean.volumes[1],
                "--format",
                "{{.Mountpoint}}",
            ],
        ),
        "volume inspect",
    ));
    assert!(
        wait_until(20, || !files_with_suffix(
            &lake.join("monitor_legs"),
            ".parquet"
        )
        .is_empty()),
        "the delivery never reached the lake volume:\n{}",
        logs()
    );
    let t0 = std::time::Instant::now();
    ok(podman(&conf, &["stop", &id]), "podman stop");
    let took = t0.elapsed();
    let exit = ok(
        podman(&conf, &["inspect", &id, "--format", "{{.State.ExitCode}}"]),
        "inspect",
    );
    assert_eq!(
        exit,
        "0",
        "podman stop did not drain to exit 0:\n{}",
        logs()
    );
    assert!(took < Duration::from_secs(30), "stop took {took:?}");
    assert!(logs().contains("Drained; exiting."), "{}", logs());
    // Every log line is JSON (the image sets CALLSYNC_LOG_FORMAT=json).
    for line in logs().lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    // The state volume belongs to the image's user: SQLite created its files there.
    let state = PathBuf::from(ok(
        podman(
            &conf,
            &[
                "volume",
                "inspect",
                &clean.volumes[0],
                "--format",
                "{{.Mountpoint}}",
            ],
        ),
        "volume inspect",
    ));
    use std::os::unix::fs::MetadataExt;
    let db = std::fs::metadata(state.join("callsync.db")).unwrap();
    assert_eq!(db.uid(), 65532);
    eprintln!(
        "container: healthy, 1 delivery in the lake volume, podman stop → exit 0 in {took:?}"
    );
}
