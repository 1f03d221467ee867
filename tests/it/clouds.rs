//! Promise: on Azure Blob Storage and Google Cloud Storage the lake keeps the promise it keeps
//! on S3. Both are run for real, against emulators on loopback that `.ci/run` installs:
//! Azurite (npm `azurite`) and `gcp-storage-emulator` (PyPI). On each, the plain lake's kill
//! test, and a Delta table appended across kills, compacted and vacuumed, read back by
//! third-party readers equal to the simulator's truth.
//!
//! What an emulator does not serve, measured by the probe test below:
//! - Azurite serves every request callsync makes (puts, conditional puts, multipart, ranged
//!   gets, listings, copies, deletes) but one: it ignores `startFrom`, Azure's "list from
//!   this key". object_store filters such a listing on its own side only in emulator mode
//!   (`azure_storage_use_emulator`), so the lakes here use that mode. With an explicit
//!   endpoint instead, the Delta log's listing from a version comes back whole and `vacuum`
//!   fails with "Invalid table version" (real Azure honours `startFrom`). The readers are
//!   the `deltalake` package, Polars and pyarrow; DuckDB's `delta_scan` is run on the local
//!   and S3 lakes only.
//! - gcp-storage-emulator (2026.7.19) implements Google's JSON API, while object_store's GCS
//!   client speaks the XML API. Of its requests the emulator answers HEAD, DELETE, listings
//!   and multipart uploads with 501, a PUT without the `ETag` header object_store requires
//!   and a GET without `Last-Modified`: nothing of a lake can live on it, so neither the kill
//!   test nor a Delta table runs there. No GCS emulator that speaks the XML API is on a
//!   registry `.ci/run` may use (fake-gcs-server ships as a Go binary or a container image).
//!   What is checked on it is what a user meets with such a store: `sync` fails naming the
//!   source and the `gs://` lake, exports nothing and keeps its cursor, and the same state
//!   pointed at a working store then exports every call once.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use callsync::simulator::VoicegainSim;
use futures_util::TryStreamExt;

use crate::delta::{Readers, truth, use_delta};
use crate::helpers::*;
use crate::object_store::{Cloud, kills_then_exact};

/// Azurite's well-known development account and key (public, documented by Microsoft).
const AZ_ACCOUNT: &str = "devstoreaccount1";
const AZ_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A tool `.ci/run` installs: the path in `var`, else where `.ci/run` puts it under `target/`;
/// `None` (a skip, a failure under CI) when neither exists.
fn installed(var: &str, under_target: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).join(under_target)
    });
    if p.exists() {
        Some(p)
    } else {
        skip(&format!("{} is not installed (set {var})", p.display()));
        None
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An emulator process, stopped on drop.
struct Server {
    child: Child,
    port: u16,
    /// Its data directory (Azurite) or scratch files (the GCS credentials file).
    dir: tempfile::TempDir,
}

impl Server {
    fn spawn(mut c: Command, port: u16, dir: tempfile::TempDir, what: &str) -> Server {
        let child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
        let s = Server { child, port, dir };
        assert!(
            wait_until(60, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "{what} did not listen on 127.0.0.1:{port}"
        );
        s
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every key under `prefix` of the bucket `lake`, listed through object_store as callsync
/// builds it for `[warehouse] url` with these options.
fn store_keys(env: &Env, scheme: &str, options: &[(String, String)], prefix: &str) -> Vec<String> {
    let store = callsync::lake::object::build_store(scheme, "lake", options).unwrap();
    // object_store lists whole path segments: list the prefix's folder, keep what it starts.
    let folder = prefix.rsplit_once('/').map_or("", |(f, _)| f);
    env.rt.block_on(async {
        store
            .list(Some(&folder.into()))
            .map_ok(|m| m.location.to_string())
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect()
    })
}

/// Azurite's blob service on a free loopback port, telemetry off.
pub(crate) struct Azurite(Server);

impl Azurite {
    pub(crate) fn start() -> Option<Azurite> {
        let bin = installed(
            "CALLSYNC_TEST_AZURITE",
            "azurite/node_modules/.bin/azurite-blob",
        )?;
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut c = Command::new(bin);
        c.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path())
            .args([
                "--silent",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ]);
        Some(Azurite(Server::spawn(c, port, dir, "Azurite")))
    }

    /// The options of an ordinary Azure account at an explicit endpoint (what the probe and
    /// the tests' own listings use).
    fn options(&self) -> Vec<(String, String)> {
        [
            ("azure_storage_account_name", AZ_ACCOUNT.to_string()),
            ("azure_storage_account_key", AZ_KEY.to_string()),
            (
                "azure_storage_endpoint",
                format!("{}/{AZ_ACCOUNT}", self.0.endpoint()),
            ),
            ("azure_allow_http", "true".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec()
    }
}

impl Cloud for Azurite {
    fn name(&self) -> &'static str {
        "azure (Azurite)"
    }
    fn create_bucket(&self, _env: &Env) {
        // A container is made by pyarrow's Azure filesystem (object_store cannot make one).
        let script = format!(
            "import pyarrow.fs as pafs\n{}fs.create_dir('lake')\n",
            self.pyarrow_fs()
        );
        let out = Command::new(test_python().unwrap())
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(out.status.success(), "create container: {}", text(&out));
    }
    /// object_store's emulator mode (`azure_storage_use_emulator`, the server's URL in
    /// `AZURITE_BLOB_STORAGE_URL`): the one way around Azurite ignoring `startFrom`, which
    /// the Delta log's listings need (see the probe). The account key is still given, by
    /// reference, as a user of a real account would.
    fn warehouse(&self, prefix: &str, max_rows: usize) -> String {
        format!(
            "[warehouse]\nurl = \"az://lake/{prefix}\"\nmax_rows_per_file = {max_rows}\n\
             [warehouse.storage_options]\nazure_storage_use_emulator = \"true\"\n\
             azure_storage_account_name = \"{AZ_ACCOUNT}\"\n\
             azure_storage_account_key_env = \"AZURITE_KEY\"\n"
        )
    }
    fn secrets(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURITE_KEY", AZ_KEY.to_string()),
            ("AZURITE_BLOB_STORAGE_URL", self.0.endpoint()),
        ]
    }
    fn keys(&self, env: &Env, prefix: &str) -> Vec<String> {
        store_keys(env, "az", &self.options(), prefix)
    }
    fn pyarrow_fs(&self) -> String {
        let authority = format!("127.0.0.1:{}", self.0.port);
        format!(
            "fs = pafs.AzureFileSystem(account_name='{AZ_ACCOUNT}', account_key='{AZ_KEY}', \
             blob_storage_authority='{authority}', blob_storage_scheme='http', \
             dfs_storage_authority='{authority}', dfs_storage_scheme='http')\n"
        )
    }
    fn delta_table(&self, prefix: &str, dataset: &str) -> (String, serde_json::Value) {
        (
            format!("az://lake/{prefix}/{dataset}"),
            serde_json::json!({"azure_storage_use_emulator": "true"}),
        )
    }
}

/// gcp-storage-emulator on a free loopback port, in memory, with the bucket `lake`.
pub(crate) struct GcsEmulator(Server);

impl GcsEmulator {
    pub(crate) fn start() -> Option<GcsEmulator> {
        let bin = installed(
            "CALLSYNC_TEST_GCS_EMULATOR",
            "gcsemu/bin/gcp-storage-emulator",
        )?;
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        // object_store's documented way to an emulator: a service-account file that turns
        // OAuth off and names the base URL.
        std::fs::write(
            dir.path().join("fake-service-account.json"),
            r#"{"private_key": "none", "private_key_id": "none", "client_email": "callsync@test", "disable_oauth": true}"#,
        )
        .unwrap();
        let mut c = Command::new(bin);
        c.args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--default-bucket", "lake", "--in-memory", "--quiet"]);
        Some(GcsEmulator(Server::spawn(
            c,
            port,
            dir,
            "gcp-storage-emulator",
        )))
    }

    fn account_file(&self) -> String {
        self.0
            .dir
            .path()
            .join("fake-service-account.json")
            .display()
            .to_string()
    }

    fn options(&self) -> Vec<(String, String)> {
        [
            ("google_service_account", self.account_file()),
            ("google_base_url", self.0.endpoint()),
            ("google_allow_http", "true".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec()
    }
}

impl Cloud for GcsEmulator {
    fn name(&self) -> &'static str {
        "gcs (gcp-storage-emulator)"
    }
    fn create_bucket(&self, _env: &Env) {
        // Made at start (`--default-bucket lake`).
    }
    fn warehouse(&self, prefix: &str, max_rows: usize) -> String {
        format!(
            "[warehouse]\nurl = \"gs://lake/{prefix}\"\nmax_rows_per_file = {max_rows}\n\
             [warehouse.storage_options]\ngoogle_service_account = \"{}\"\n\
             google_base_url = \"{}\"\ngoogle_allow_http = \"true\"\n",
            self.account_file(),
            self.0.endpoint()
        )
    }
    fn secrets(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    fn keys(&self, env: &Env, prefix: &str) -> Vec<String> {
        store_keys(env, "gs", &self.options(), prefix)
    }
    fn pyarrow_fs(&self) -> String {
        format!(
            "fs = pafs.GcsFileSystem(anonymous=True, endpoint_override='127.0.0.1:{}', scheme='http')\n",
            self.0.port
        )
    }
    fn delta_table(&self, prefix: &str, dataset: &str) -> (String, serde_json::Value) {
        let options: serde_json::Map<String, serde_json::Value> = self
            .options()
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        (format!("gs://lake/{prefix}/{dataset}"), options.into())
    }
}

/// What the store does with each kind of request callsync makes (through object_store and
/// delta-rs): "ok", or what went wrong.
fn probe(env: &Env, scheme: &str, options: &[(String, String)]) -> BTreeMap<&'static str, String> {
    use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, path::Path};
    let store = callsync::lake::object::build_store(scheme, "lake", options).unwrap();
    let mut seen = BTreeMap::new();
    let body = PutPayload::from_static(b"0123456789");
    env.rt.block_on(async {
        let a = Path::from("probe/a.bin");
        let b = Path::from("probe/b.bin");
        let c = Path::from("probe/dir/c.bin");
        let r = store.put(&a, body.clone()).await;
        seen.insert(
            "put",
            r.map(|_| "ok".into()).unwrap_or_else(|e| e.to_string()),
        );
        let r = store.get(&a).await;
        let got = match r {
            Ok(g) => g.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
            Err(e) => e.to_string().into_bytes(),
        };
        seen.insert(
            "get",
            if got == b"0123456789" {
                "ok".into()
            } else {
                format!("read {got:?}")
            },
        );
        let r = store.get_range(&a, 2..5).await;
        seen.insert(
            "get_range",
            match r {
                Ok(b) if b.as_ref() == b"234" => "ok".into(),
                Ok(b) => format!("read {b:?}"),
                Err(e) => e.to_string(),
            },
        );
        let r = store.head(&a).await;
        seen.insert(
            "head",
            match r {
                Ok(m) if m.size == 10 => "ok".into(),
                Ok(m) => format!("size {}", m.size),
                Err(e) => e.to_string(),
            },
        );
        let create = PutOptions::from(PutMode::Create);
        let r = store.put_opts(&b, body.clone(), create.clone()).await;
        seen.insert(
            "put if absent (new)",
            r.map(|_| "ok".into()).unwrap_or_else(|e| e.to_string()),
        );
        let r = store.put_opts(&b, body.clone(), create).await;
        seen.insert(
            "put if absent (exists)",
            match r {
                Err(object_store::Error::AlreadyExists { .. }) => "ok".into(),
                Ok(_) => "overwrote an existing object".into(),
                Err(e) => e.to_string(),
            },
        );
        let mut up = match store.put_multipart(&c).await {
            Ok(u) => Some(u),
            Err(e) => {
                seen.insert("multipart", e.to_string());
                None
            }
        };
        if let Some(u) = up.as_mut() {
            let part = vec![7u8; 5 << 20];
            let r = async {
                u.put_part(part.clone().into()).await?;
                u.put_part(part.into()).await?;
                u.complete().await
            }
            .await;
            let size = store.head(&c).await.map(|m| m.size).unwrap_or(0);
            seen.insert(
                "multipart",
                match r {
                    Ok(_) if size == 10 << 20 => "ok".into(),
                    Ok(_) => format!("size {size}"),
                    Err(e) => e.to_string(),
                },
            );
        }
        let r = store.list_with_delimiter(Some(&Path::from("probe"))).await;
        seen.insert(
            "list with delimiter",
            match r {
                Ok(l) if l.objects.len() == 2 && l.common_prefixes.len() == 1 => "ok".into(),
                Ok(l) => format!(
                    "{} objects, {} prefixes",
                    l.objects.len(),
                    l.common_prefixes.len()
                ),
                Err(e) => e.to_string(),
            },
        );
        let r: Result<Vec<_>, _> = store.list(Some(&Path::from("probe"))).try_collect().await;
        seen.insert(
            "list",
            match r {
                Ok(l) if l.len() == 3 => "ok".into(),
                Ok(l) => format!("{} objects", l.len()),
                Err(e) => e.to_string(),
            },
        );
        let r: Result<Vec<_>, _> = store
            .list_with_offset(Some(&Path::from("probe")), &b)
            .try_collect()
            .await;
        seen.insert(
            "list from an offset",
            match r {
                Ok(l) if l.len() == 1 && l.iter().all(|m| m.location > b) => "ok".into(),
                Ok(l) => format!("{} objects after {b}, of 1", l.len()),
                Err(e) => e.to_string(),
            },
        );
        let d = Path::from("probe/copied.bin");
        let r = store.copy(&a, &d).await;
        let copied = store.head(&d).await.map(|m| m.size).unwrap_or(u64::MAX);
        seen.insert(
            "copy",
            match r {
                Ok(_) if copied == 10 => "ok".into(),
                Ok(_) => format!("the copy holds {copied} bytes of 10"),
                Err(e) => e.to_string(),
            },
        );
        let r = store.delete(&a).await;
        let gone = matches!(
            store.head(&a).await,
            Err(object_store::Error::NotFound { .. })
        );
        seen.insert(
            "delete",
            match r {
                Ok(_) if gone => "ok".into(),
                Ok(_) => "the object is still there".into(),
                Err(e) => e.to_string(),
            },
        );
    });
    seen
}

fn all_ok(seen: &BTreeMap<&'static str, String>) -> Vec<String> {
    seen.iter()
        .filter(|(_, v)| *v != "ok")
        .map(|(k, v)| format!("{k}: {v}"))
        .collect()
}

#[test]
fn azurite_serves_every_request_callsync_makes_and_the_gcs_emulators_gaps_are_named() {
    let (Some(az), Some(gcs)) = (Azurite::start(), GcsEmulator::start()) else {
        return;
    };
    let env = Env::new(VoicegainSim::new(900, 0), 50);
    az.create_bucket(&env);
    let seen = probe(&env, "az", &az.options());
    eprintln!("azurite: {seen:?}");
    // Azurite ignores `startFrom`: object_store lists from an offset by filtering on its own
    // side only in emulator mode, which the lakes below use.
    assert_eq!(
        all_ok(&seen),
        [format!(
            "list from an offset: {}",
            seen["list from an offset"]
        )],
        "Azurite"
    );
    assert!(seen["list from an offset"].ends_with("of 1"), "{seen:?}");
    let seen = probe(&env, "gs", &gcs.options());
    eprintln!("gcp-storage-emulator: {seen:?}");
    // Exactly the gaps the module's doc names; a change means what the tests below check
    // must be looked at again.
    for kind in [
        "head",
        "delete",
        "list",
        "list with delimiter",
        "list from an offset",
        "multipart",
    ] {
        assert!(
            seen[kind].contains("501 Not Implemented"),
            "{kind}: {}",
            seen[kind]
        );
    }
    for kind in ["put", "put if absent (new)"] {
        assert!(
            seen[kind].contains("ETag Header missing"),
            "{kind}: {}",
            seen[kind]
        );
    }
    assert!(
        seen["get_range"].contains("Last-Modified Header missing"),
        "{}",
        seen["get_range"]
    );
    assert!(
        all_ok(&seen).len() == seen.len(),
        "the GCS emulator now serves some: {seen:?}"
    );
}

#[test]
fn a_lake_on_a_gcs_store_that_cannot_serve_it_fails_naming_the_lake_and_loses_nothing() {
    let Some(gcs) = GcsEmulator::start() else {
        return;
    };
    let env = Env::new(VoicegainSim::new(914, 0), 50);
    env.sim.voicegain().add_calls(400);
    let local = std::fs::read_to_string(&env.config).unwrap();
    let state = local.find("[state]").unwrap();
    std::fs::write(
        &env.config,
        format!("{}{}", gcs.warehouse("gcs-lake", 300), &local[state..]),
    )
    .unwrap();
    let out = env.run(&["sync"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("vg: FAILED") && said.contains("gs://lake/gcs-lake"),
        "{said}"
    );
    let status = source_status(&env, "vg");
    assert!(
        status.is_null() || (status["rows_total"] == 0 && status["cursor"].is_null()),
        "nothing is counted and the cursor stays on a store that failed: {status}"
    );
    // The same state, pointed at a working store: every call once.
    std::fs::write(&env.config, local).unwrap();
    env.sync_ok();
    let ids: std::collections::BTreeSet<String> = rows_by_id(&env, "vg").into_keys().collect();
    assert_eq!(ids, truth(&env));
}

#[test]
fn a_plain_lake_on_azurite_is_exact_after_kills_and_holds_no_staged_object() {
    let Some(az) = Azurite::start() else {
        return;
    };
    kills_then_exact(&az, 911);
}

/// A Delta lake on `cloud`: appended across kills (every reader exact after each), then many
/// small syncs, `compact` (also killed before and after its commit) and `vacuum`; every row
/// kept, one file per partition, the replaced files deleted, `verify` clean throughout.
fn delta_appended_compacted_vacuumed(cloud: &dyn Cloud, readers: &Readers, seed: u64) {
    let env = Env::new(VoicegainSim::new(seed, 0).with_ratios(0.0, 0.01), 50);
    env.sim.voicegain().add_calls(3000);
    cloud.create_bucket(&env);
    let prefix = "delta-lake";
    use_delta(&env, &cloud.warehouse(prefix, 300));
    let (uri, options) = cloud.delta_table(prefix, "calls");
    let secrets = cloud.secrets();
    let vars: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let log_len = || {
        cloud
            .keys(&env, &format!("{prefix}/calls/_delta_log/"))
            .len()
    };
    crate::delta::kill_loop_then_exact(&env, readers, &uri, Some(&options), &log_len, &vars);
    let cmd = |args: &[&str]| {
        let mut c = env.command(args);
        c.envs(vars.iter().copied());
        c
    };
    for _ in 0..12 {
        env.sim.voicegain().add_calls(20);
        let out = cmd(&["sync"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let view = || crate::compaction::table_view_at(&env, readers, &uri, Some(&options));
    let (files_before, hash_before) = view();
    for point in ["compact_before_commit", "compact_after_commit"] {
        let mut c = cmd(&["compact"]);
        let out = c.env("CALLSYNC_FAILPOINT", point).output().unwrap();
        assert_ne!(out.status.code(), Some(0), "{point}: {}", text(&out));
        assert_eq!(view().1, hash_before, "{point}: rows changed");
        let v = cmd(&["verify"]).output().unwrap();
        assert_eq!(v.status.code(), Some(0), "{point}: {}", text(&v));
    }
    let out = cmd(&["compact"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (files_after, hash_after) = view();
    assert_eq!(hash_after, hash_before, "compaction changed rows");
    assert!(
        files_after.values().all(|n| *n == 1),
        "{}: a partition holds more than one file: {files_after:?}",
        cloud.name()
    );
    let data_objects = || cloud.keys(&env, &format!("{prefix}/calls/source=")).len();
    let total_after: u64 = files_after.values().sum();
    assert!(data_objects() as u64 > total_after);
    let out = cmd(&["vacuum", "--retain-hours", "1"])
        .env("CALLSYNC_TEST_CLOCK_AHEAD_HOURS", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(data_objects() as u64, total_after, "{}", text(&out));
    assert_eq!(view().1, hash_before, "vacuum changed rows");
    let v = cmd(&["verify"]).output().unwrap();
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    eprintln!(
        "{}: delta {} files in {} partitions compacted to {total_after}, vacuumed",
        cloud.name(),
        files_before.values().sum::<u64>(),
        files_before.len()
    );
}

#[test]
fn a_delta_lake_on_azurite_is_exact_across_kills_compaction_and_vacuum() {
    let (Some(readers), Some(az)) = (Readers::get(), Azurite::start()) else {
        return;
    };
    let vars = az
        .secrets()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    delta_appended_compacted_vacuumed(&az, &readers.without_duckdb(vars), 912);
}
