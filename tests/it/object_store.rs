//! Promise: on object storage (S3, here the moto server on loopback) the lake is written
//! exactly once, through the same stage → commit → publish order: killed at random moments,
//! right after a new object appears, and at the commit protocol's failpoints, the next sync
//! is exact; pyarrow's S3 filesystem reads the lake back equal to the simulator's truth, no
//! object is left under `_staging/`, and `verify` and `repair` work on the store.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callsync::simulator::{FaultKind, FaultPlan, VoicegainSim};

use crate::helpers::*;

const BUCKET: &str = "lake";
const PREFIX: &str = "team/calls-lake";

/// The moto S3 server on a free loopback port, stopped on drop.
pub(crate) struct Moto {
    child: Child,
    pub(crate) port: u16,
}

impl Moto {
    /// Starts it with the test Python (`None` where there is none: a skip, or a failure in CI).
    pub(crate) fn start() -> Option<Moto> {
        let python = test_python()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let m = Moto { child, port };
        assert!(
            wait_until(30, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "the moto server did not start (pip install 'moto[server]')"
        );
        Some(m)
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket.
    pub(crate) fn bucket(&self, env: &Env, name: &str) {
        let url = format!("{}/{name}", self.endpoint());
        let code = env.rt.block_on(async {
            reqwest::Client::new()
                .put(&url)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
        assert_eq!(code, 200, "create bucket {name}");
    }

    /// Every key under `prefix` in `bucket` (moto answers ListObjectsV2 unsigned).
    pub(crate) fn keys(&self, env: &Env, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("{}/{bucket}?list-type=2&prefix={prefix}", self.endpoint());
            if let Some(t) = &token {
                url.push_str(&format!("&continuation-token={t}"));
            }
            let body = env
                .rt
                .block_on(async { reqwest::get(&url).await.unwrap().text().await.unwrap() });
            keys.extend(between(&body, "<Key>", "</Key>"));
            token = between(&body, "<NextContinuationToken>", "</NextContinuationToken>")
                .into_iter()
                .next();
            if token.is_none() {
                return keys;
            }
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn between(text: &str, open: &str, close: &str) -> Vec<String> {
    text.split(open)
        .skip(1)
        .filter_map(|s| s.split(close).next())
        .map(str::to_string)
        .collect()
}

/// The `[warehouse]` table of a lake on the moto server.
pub(crate) fn s3_warehouse(moto: &Moto, prefix: &str, max_rows: usize) -> String {
    format!(
        "[warehouse]\nurl = \"s3://{BUCKET}/{prefix}\"\nmax_rows_per_file = {max_rows}\n\
         [warehouse.storage_options]\naws_endpoint = \"{}\"\naws_allow_http = \"true\"\n\
         aws_region = \"us-east-1\"\naws_access_key_id = \"testing\"\naws_secret_access_key_env = \"MOTO_SECRET\"\n",
        moto.endpoint()
    )
}

/// An object store on loopback that a lake can live on (the moto S3 server, Azurite, the GCS
/// emulator), with the bucket `lake`.
pub(crate) trait Cloud {
    /// Its name in messages.
    fn name(&self) -> &'static str;
    /// Creates the bucket `lake` (where the server does not start with it).
    fn create_bucket(&self, env: &Env);
    /// The `[warehouse]` table of a lake under `prefix` of the bucket.
    fn warehouse(&self, prefix: &str, max_rows: usize) -> String;
    /// The environment callsync needs with that table (the secrets it names by `_env`).
    fn secrets(&self) -> Vec<(&'static str, String)>;
    /// Every key under `prefix` of the bucket.
    fn keys(&self, env: &Env, prefix: &str) -> Vec<String>;
    /// Python lines that bind `fs` to pyarrow's filesystem of this store.
    fn pyarrow_fs(&self) -> String;
    /// The table URI of `<prefix>/<dataset>` and the delta-rs storage options readers need.
    fn delta_table(&self, prefix: &str, dataset: &str) -> (String, serde_json::Value);
}

impl Cloud for Moto {
    fn name(&self) -> &'static str {
        "s3 (moto)"
    }
    fn create_bucket(&self, env: &Env) {
        self.bucket(env, BUCKET);
    }
    fn warehouse(&self, prefix: &str, max_rows: usize) -> String {
        s3_warehouse(self, prefix, max_rows)
    }
    fn secrets(&self) -> Vec<(&'static str, String)> {
        vec![("MOTO_SECRET", "testing".into())]
    }
    fn keys(&self, env: &Env, prefix: &str) -> Vec<String> {
        Moto::keys(self, env, BUCKET, prefix)
    }
    fn pyarrow_fs(&self) -> String {
        format!(
            "fs = pafs.S3FileSystem(endpoint_override='127.0.0.1:{}', scheme='http', access_key='testing', secret_key='testing', region='us-east-1')\n",
            self.port
        )
    }
    fn delta_table(&self, prefix: &str, dataset: &str) -> (String, serde_json::Value) {
        (
            format!("s3://{BUCKET}/{prefix}/{dataset}"),
            serde_json::json!({
                "aws_endpoint": self.endpoint(),
                "aws_allow_http": "true",
                "aws_region": "us-east-1",
                "aws_access_key_id": "testing",
                "aws_secret_access_key": "testing",
                "aws_conditional_put": "etag",
            }),
        )
    }
}

/// Call ids of the lake as pyarrow reads them from the store: (rows, distinct ids), asserting
/// every row is of the one source `source` the lake holds.
pub(crate) fn pyarrow_ids_of(
    cloud: &dyn Cloud,
    prefix: &str,
    source: &str,
) -> (usize, BTreeSet<String>) {
    let python = test_python().unwrap();
    let script = format!(
        "import pyarrow.dataset as ds, pyarrow.fs as pafs\n{}\
         t = ds.dataset('{BUCKET}/{prefix}/calls', filesystem=fs, format='parquet', partitioning='hive').to_table(columns=['call_id', 'source'])\n\
         ids = t.column('call_id').to_pylist()\n\
         assert set(t.column('source').to_pylist()) <= {{'{source}'}}, t.column('source').unique()\n\
         print(len(ids)); print(' '.join(ids))",
        cloud.pyarrow_fs()
    );
    let out = Command::new(python).arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "pyarrow could not read the lake on {}: {}",
        cloud.name(),
        text(&out)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let mut lines = s.lines();
    let n: usize = lines.next().unwrap().parse().unwrap();
    let ids = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    (n, ids)
}

/// The lake on the store as pyarrow reads it equals the simulator's Voicegain truth: every
/// call once. Returns the rows.
fn assert_exact_on(env: &Env, cloud: &dyn Cloud, prefix: &str) -> usize {
    let truth: BTreeSet<String> = env
        .sim
        .voicegain()
        .expected_exported()
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    let (rows, ids) = pyarrow_ids_of(cloud, prefix, "vg");
    assert_eq!(rows, truth.len(), "{}: rows (duplicates?)", cloud.name());
    assert_eq!(ids, truth, "{}", cloud.name());
    rows
}

/// The kill test of a plain lake on `cloud`: syncs killed at the commit protocol's failpoints,
/// at random moments and right after a new object appears; then one sync is exact as pyarrow
/// reads it, nothing is left under `_staging/`, `verify` is clean, a lost state is refused and
/// `repair` rebuilds it so that new calls land once.
pub(crate) fn kills_then_exact(cloud: &dyn Cloud, seed: u64) {
    let env = Env::new(VoicegainSim::new(seed, 0).with_ratios(0.0, 0.01), 50);
    env.sim.voicegain().add_calls(4000);
    cloud.create_bucket(&env);
    let token = token_file(&env, "vg-cloud", &env.sim.voicegain().token.clone());
    let config = format!(
        "{}[state]\npath = \"{}\"\n{}",
        cloud.warehouse(PREFIX, 300),
        env.state_path().display(),
        vg_table(
            "vg",
            &env.sim.voicegain_base_url(),
            &format!("token_file = \"{}\"", token.display()),
            50
        )
    );
    std::fs::write(&env.config, config).unwrap();
    let secrets = cloud.secrets();
    let command = |args: &[&str]| {
        let mut c = env.command(args);
        c.envs(secrets.iter().map(|(k, v)| (k, v)));
        c
    };
    let run = |extra: &[(&str, &str)]| {
        let mut c = command(&["sync"]);
        c.envs(extra.iter().copied());
        c
    };
    // The commit protocol's own failpoints: a crash after staging, and after the commit.
    for point in ["after_stage", "after_commit"] {
        let out = run(&[("CALLSYNC_FAILPOINT", point)]).output().unwrap();
        assert_ne!(out.status.code(), Some(0), "{point}: {}", text(&out));
    }
    // SIGKILL at random moments, and right after a new object appears in the lake, while
    // every vendor request takes 20 ms (a run takes a few seconds).
    env.sim.set_faults(FaultPlan::every(
        1,
        vec![FaultKind::Slow(Duration::from_millis(20))],
    ));
    let mut rng = fastrand::Rng::with_seed(17);
    let mut kills = 0;
    for round in 0..10 {
        let mut child = run(&[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(rng.u64(50..600)));
        } else {
            let before = cloud.keys(&env, PREFIX).len();
            let t0 = Instant::now();
            while cloud.keys(&env, PREFIX).len() == before
                && t0.elapsed() < Duration::from_secs(10)
                && child.try_wait().unwrap().is_none()
            {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        kills >= 8,
        "{}: only {kills} runs were killed mid-way",
        cloud.name()
    );
    env.sim.set_faults(FaultPlan::default());
    let out = run(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // pyarrow reads the lake on the store: every call of the truth, once.
    assert_exact_on(&env, cloud, PREFIX);
    let staged = cloud.keys(&env, &format!("{PREFIX}/_staging/"));
    assert!(
        staged.is_empty(),
        "{}: objects left under _staging/: {staged:?}",
        cloud.name()
    );
    assert!(
        !cloud
            .keys(&env, &format!("{PREFIX}/_callsync/vg.json"))
            .is_empty()
    );
    // verify and repair on the store.
    let v = command(&["verify"]).output().unwrap();
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    std::fs::remove_file(env.state_path()).unwrap();
    let refused = run(&[]).output().unwrap();
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a lost state is refused on {} too",
        cloud.name()
    );
    let r = command(&["repair"]).output().unwrap();
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    env.sim.voicegain().add_calls(300);
    let out = run(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows = assert_exact_on(&env, cloud, PREFIX);
    eprintln!("{}: {kills} kills, then exact: {rows} rows", cloud.name());
}

#[test]
fn a_lake_on_s3_is_exact_after_kills_at_random_moments_and_holds_no_staged_object() {
    let Some(moto) = Moto::start() else {
        return;
    };
    kills_then_exact(&moto, 301);
}

#[test]
fn a_secret_storage_option_inline_is_refused_naming_the_key() {
    let env = Env::new(VoicegainSim::new(302, 0), 50);
    std::fs::write(
        &env.config,
        "[warehouse]\nurl = \"s3://lake/x\"\nroot = \"w\"\n[warehouse.storage_options]\naws_secret_access_key = \"abc123secret\"\n",
    )
    .unwrap();
    let out = env.run(&["sync"]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    assert!(t.contains("[warehouse] key `url`"), "{t}");
    assert!(t.contains("aws_secret_access_key_env"), "{t}");
    assert!(!t.contains("abc123secret"), "{t}");
}

#[test]
fn the_daemon_writes_calls_and_recordings_to_s3_once_across_a_kill_9() {
    use crate::daemon::Daemon;
    let Some(moto) = Moto::start() else {
        return;
    };
    let env = crate::voice_calls::setup(
        120,
        0.0,
        callsync::simulator::Envelope::Items,
        1000,
        "download_recordings = true\n",
    );
    moto.bucket(&env, BUCKET);
    let prefix = "daemon-lake";
    // The same sources on S3 instead of the local root.
    let local_cfg = std::fs::read_to_string(&env.config).unwrap();
    let table_end = local_cfg.find("[state]").unwrap();
    let s3_cfg = format!(
        "{}{}",
        s3_warehouse(&moto, prefix, 25),
        &local_cfg[table_end..]
    );
    std::fs::write(&env.config, s3_cfg).unwrap();
    // Slow enough to be caught mid-export: every vendor request takes 15 ms.
    env.sim.set_faults(FaultPlan::every(
        1,
        vec![FaultKind::Slow(Duration::from_millis(15))],
    ));
    let secret = [("MOTO_SECRET", "testing")];
    let d = Daemon::start(&env, &secret, false);
    let objects = || moto.keys(&env, BUCKET, &format!("{prefix}/calls/")).len();
    assert!(wait_until(30, || objects() >= 2), "{}", d.log_text());
    drop(d); // kill -9
    env.sim.set_faults(FaultPlan::default());
    let mut d = Daemon::start(&env, &secret, false);
    let want: BTreeSet<String> = env
        .sim
        .voice_calls()
        .calls()
        .iter()
        .filter(|c| c.is_final())
        .map(|c| c.id.clone())
        .collect();
    assert!(
        wait_until(60, || pyarrow_ids_of(&moto, prefix, "vc").1 == want),
        "{}",
        d.log_text()
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(20).0, Some(0), "{}", d.log_text());
    let (rows, ids) = pyarrow_ids_of(&moto, prefix, "vc");
    assert_eq!((rows, ids), (want.len(), want));
    // Every recording is in the bucket, byte for byte, under its call's lake path (fetched
    // with pyarrow's S3 filesystem).
    let local = env.dir.path().join("fetched");
    let script = format!(
        "import pyarrow.fs as fs, os\n\
         s3 = fs.S3FileSystem(endpoint_override='127.0.0.1:{}', scheme='http', access_key='testing', secret_key='testing', region='us-east-1')\n\
         for i in s3.get_file_info(fs.FileSelector('{BUCKET}/{prefix}/recordings', recursive=True)):\n\
         \x20   if i.type == fs.FileType.File:\n\
         \x20       out = os.path.join('{}', os.path.relpath(i.path, '{BUCKET}/{prefix}'))\n\
         \x20       os.makedirs(os.path.dirname(out), exist_ok=True)\n\
         \x20       open(out, 'wb').write(s3.open_input_stream(i.path).read())\n",
        moto.port,
        local.display()
    );
    let out = Command::new(test_python().unwrap())
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let vc = env.sim.voice_calls();
    let mut n = 0;
    for c in vc
        .calls()
        .iter()
        .filter(|c| c.is_final() && c.has_recording)
    {
        let day = chrono::DateTime::from_timestamp(c.start_secs, 0)
            .unwrap()
            .format("%Y-%m-%d");
        let path = local.join(format!("recordings/source=vc/date={day}/{}.wav", c.id));
        let got = std::fs::read(&path).unwrap_or_default();
        assert!(
            got == callsync::simulator::voice_calls::recording_bytes(&c.id),
            "recording of {} differs or is missing ({} bytes)",
            c.id,
            got.len()
        );
        n += 1;
    }
    assert!(n > 30, "{n} recordings");
    let staged = moto.keys(&env, BUCKET, &format!("{prefix}/_staging/"));
    assert!(staged.is_empty(), "{staged:?}");
    let spool = files_with_suffix(&env.dir.path().join("state"), ".tmp");
    assert!(spool.is_empty(), "spooled files left: {spool:?}");
}

#[test]
fn credentials_and_the_endpoint_come_from_the_aws_environment() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let env = Env::new(VoicegainSim::new(303, 0), 100);
    env.sim.voicegain().add_calls(500);
    moto.bucket(&env, BUCKET);
    let token = token_file(&env, "vg-env", &env.sim.voicegain().token.clone());
    std::fs::write(
        &env.config,
        format!(
            "[warehouse]\nurl = \"s3://{BUCKET}/from-env\"\n[state]\npath = \"{}\"\n{}",
            env.state_path().display(),
            vg_table(
                "vg",
                &env.sim.voicegain_base_url(),
                &format!("token_file = \"{}\"", token.display()),
                100
            )
        ),
    )
    .unwrap();
    let out = env
        .command(&["sync"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ALLOW_HTTP", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_exact_on(&env, &moto, "from-env");
    // Without the environment the store cannot be reached: the error names the lake and the
    // source, never a secret.
    let out = env
        .command(&["sync"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "very-secret-value")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ALLOW_HTTP", "true")
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("vg: FAILED") && said.contains("s3://lake/from-env"),
        "{said}"
    );
    assert!(!said.contains("very-secret-value"), "{said}");
}
