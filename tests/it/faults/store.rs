//! Stores that fail the way real ones do, decided by a seed: `FaultyStore` wraps any
//! `object_store::ObjectStore` (the local filesystem, an in-memory store, S3), `FaultyStorage`
//! wraps a local lake's file storage. A mutating call can fail before it applies, or apply and
//! then answer an error (a 500 after storing; for a conditional put, the 412 a retry of a put
//! that was already stored gets); a read or a listing can fail for a moment.
//!
//! Each decision is a hash of the seed, the kind of call, the path with its random parts
//! (commit ids) blanked, and how many times that (kind, path) was asked before: the same seed
//! makes the same decisions whatever order concurrent requests arrive in.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

use callsync::lake::storage::Storage;

/// What one call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It goes through.
    Pass,
    /// It fails before it applies.
    Before,
    /// It applies, then answers an error.
    After,
}

/// The faults injected, by kind.
#[derive(Debug, Default)]
pub struct Counts {
    pub write_before: AtomicU64,
    pub write_after: AtomicU64,
    pub read: AtomicU64,
    pub calls: AtomicU64,
}

impl Counts {
    pub fn snapshot(&self) -> [u64; 4] {
        [
            self.write_before.load(Ordering::Relaxed),
            self.write_after.load(Ordering::Relaxed),
            self.read.load(Ordering::Relaxed),
            self.calls.load(Ordering::Relaxed),
        ]
    }
}

/// How often each fault happens, and the seed that decides each call.
#[derive(Debug)]
pub struct Plan {
    pub seed: u64,
    /// Chance that a mutating call fails before it applies.
    pub p_before: f64,
    /// Chance that a mutating call applies and then fails.
    pub p_after: f64,
    /// Chance that a read or a listing fails.
    pub p_read: f64,
    enabled: AtomicBool,
    asked: Mutex<HashMap<(String, String), u64>>,
    pub counts: Counts,
    /// A prefix cut from paths before they decide (a local lake's temporary directory).
    root: Mutex<String>,
    /// Targeted faults, checked before the seed decides.
    rules: Mutex<Vec<Rule>>,
}

/// A targeted fault: the `nth` call of `kind` whose path contains `contains` and ends with
/// `suffix` gets `fault`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub kind: &'static str,
    pub contains: String,
    pub suffix: String,
    pub nth: u64,
    pub fault: Fault,
    seen: u64,
}

impl Rule {
    pub fn new(kind: &'static str, contains: &str, suffix: &str, nth: u64, fault: Fault) -> Rule {
        Rule {
            kind,
            contains: contains.to_string(),
            suffix: suffix.to_string(),
            nth,
            fault,
            seen: 0,
        }
    }
}

/// `path` with its random parts blanked: runs of 12 or more hex digits (commit and
/// compaction ids, uuids).
fn shape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut run = String::new();
    for c in path.chars().chain(std::iter::once('/')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() >= 12 && !run.chars().all(|c| c.is_ascii_digit()) {
            out.push('#');
        } else {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finalizer.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl Plan {
    pub fn new(seed: u64, p_before: f64, p_after: f64, p_read: f64) -> Plan {
        Plan {
            seed,
            p_before,
            p_after,
            p_read,
            enabled: AtomicBool::new(false),
            asked: Mutex::new(HashMap::new()),
            counts: Counts::default(),
            root: Mutex::new(String::new()),
            rules: Mutex::new(Vec::new()),
        }
    }

    /// Adds a targeted fault (it applies while faults are enabled).
    pub fn rule(&self, rule: Rule) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rule);
    }

    /// How many targeted faults have fired.
    pub fn rules_fired(&self) -> u64 {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|r| r.seen >= r.nth)
            .count() as u64
    }

    fn ruled(&self, kind: &str, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        for r in rules.iter_mut() {
            if r.kind == kind && path.contains(&r.contains) && path.ends_with(&r.suffix) {
                r.seen += 1;
                if r.seen == r.nth {
                    return Some(r.fault);
                }
            }
        }
        None
    }

    /// Paths below `root` decide by their part below it (so a run in another temporary
    /// directory makes the same decisions).
    pub fn set_root(&self, root: &str) {
        *self.root.lock().unwrap_or_else(|p| p.into_inner()) =
            root.trim_start_matches('/').to_string();
    }

    /// Faults happen only while enabled (the driver's steps), never while it checks.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }

    /// A number in [0, 1) for the n-th call of `kind` on `path`.
    fn draw(&self, kind: &str, path: &str) -> f64 {
        let path = {
            let root = self.root.lock().unwrap_or_else(|p| p.into_inner());
            match path.trim_start_matches('/').strip_prefix(root.as_str()) {
                Some(rest) if !root.is_empty() => rest.to_string(),
                _ => path.to_string(),
            }
        };
        let key = (kind.to_string(), shape(&path));
        let n = {
            let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
            let n = asked.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let h = mix(self.seed ^ mix(hash_str(&key.0) ^ mix(hash_str(&key.1) ^ n)));
        (h >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The fate of a mutating call.
    pub fn write(&self, kind: &str, path: &str) -> Fault {
        self.counts.calls.fetch_add(1, Ordering::Relaxed);
        if !self.enabled.load(Ordering::SeqCst) {
            return Fault::Pass;
        }
        if let Some(f) = self.ruled(kind, path) {
            match f {
                Fault::Before => self.counts.write_before.fetch_add(1, Ordering::Relaxed),
                Fault::After => self.counts.write_after.fetch_add(1, Ordering::Relaxed),
                Fault::Pass => 0,
            };
            return f;
        }
        let x = self.draw(kind, path);
        if x < self.p_before {
            self.counts.write_before.fetch_add(1, Ordering::Relaxed);
            Fault::Before
        } else if x < self.p_before + self.p_after {
            self.counts.write_after.fetch_add(1, Ordering::Relaxed);
            Fault::After
        } else {
            Fault::Pass
        }
    }

    /// Whether a read fails.
    pub fn read(&self, kind: &str, path: &str) -> bool {
        self.counts.calls.fetch_add(1, Ordering::Relaxed);
        if !self.enabled.load(Ordering::SeqCst) {
            return false;
        }
        let fail = self.draw(kind, path) < self.p_read;
        if fail {
            self.counts.read.fetch_add(1, Ordering::Relaxed);
        }
        fail
    }
}

/// An injected object-store error (the store's answer, as object_store reports a 5xx).
fn injected(path: &str, when: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "Faulty",
        source: format!("injected fault {when} {path}: HTTP 500 Internal Server Error").into(),
    }
}

/// An object store that fails as `Plan` decides.
pub struct FaultyStore {
    pub inner: Arc<dyn ObjectStore>,
    pub plan: Arc<Plan>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

/// A multipart upload whose completion can fail before or after it applies.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    plan: Arc<Plan>,
    path: String,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        match self.plan.write("complete", &self.path) {
            Fault::Before => Err(injected(&self.path, "before")),
            Fault::After => {
                self.inner.complete().await?;
                Err(injected(&self.path, "after"))
            }
            Fault::Pass => self.inner.complete().await,
        }
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let create = matches!(opts.mode, PutMode::Create);
        match self.plan.write("put", location.as_ref()) {
            Fault::Before => Err(injected(location.as_ref(), "before")),
            Fault::After => {
                self.inner.put_opts(location, payload, opts).await?;
                if create {
                    // What object_store answers when its retry of a stored conditional put
                    // finds the object there: 412, read as "already exists".
                    Err(object_store::Error::AlreadyExists {
                        path: location.to_string(),
                        source: "injected: the retry of a stored conditional put got 412".into(),
                    })
                } else {
                    Err(injected(location.as_ref(), "after"))
                }
            }
            Fault::Pass => self.inner.put_opts(location, payload, opts).await,
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            plan: self.plan.clone(),
            path: location.to_string(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if self.plan.read("get", location.as_ref()) {
            return Err(injected(location.as_ref(), "on read"));
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        if self.plan.read("get", location.as_ref()) {
            return Err(injected(location.as_ref(), "on read"));
        }
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let inner = self.inner.clone();
        let plan = self.plan.clone();
        locations
            .then(move |p| {
                let inner = inner.clone();
                let plan = plan.clone();
                async move {
                    let p = p?;
                    match plan.write("delete", p.as_ref()) {
                        Fault::Before => Err(injected(p.as_ref(), "before")),
                        Fault::After => {
                            inner.delete(&p).await?;
                            Err(injected(p.as_ref(), "after"))
                        }
                        Fault::Pass => inner.delete(&p).await.map(|()| p),
                    }
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let p = prefix.map(|p| p.to_string()).unwrap_or_default();
        if self.plan.read("list", &p) {
            return futures_util::stream::once(async move { Err(injected(&p, "on list")) }).boxed();
        }
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let p = prefix.map(|p| p.to_string()).unwrap_or_default();
        if self.plan.read("list", &p) {
            return futures_util::stream::once(async move { Err(injected(&p, "on list")) }).boxed();
        }
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let p = prefix.map(|p| p.to_string()).unwrap_or_default();
        if self.plan.read("list", &p) {
            return Err(injected(&p, "on list"));
        }
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        match self.plan.write("copy", to.as_ref()) {
            Fault::Before => Err(injected(to.as_ref(), "before")),
            Fault::After => {
                self.inner.copy_opts(from, to, options).await?;
                Err(injected(to.as_ref(), "after"))
            }
            Fault::Pass => self.inner.copy_opts(from, to, options).await,
        }
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        match self.plan.write("rename", to.as_ref()) {
            Fault::Before => Err(injected(to.as_ref(), "before")),
            Fault::After => {
                self.inner.rename_opts(from, to, options).await?;
                Err(injected(to.as_ref(), "after"))
            }
            Fault::Pass => self.inner.rename_opts(from, to, options).await,
        }
    }
}

/// An injected I/O error of the local disk.
fn io_injected(rel: &str, when: &str) -> io::Error {
    io::Error::other(format!("injected fault {when} {rel}: Input/output error"))
}

/// A local lake's file storage that fails as `Plan` decides.
pub struct FaultyStorage {
    pub inner: Box<dyn Storage>,
    pub plan: Arc<Plan>,
}

impl FaultyStorage {
    fn write<T>(&self, kind: &str, rel: &str, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        match self.plan.write(kind, rel) {
            Fault::Before => Err(io_injected(rel, "before")),
            Fault::After => {
                f()?;
                Err(io_injected(rel, "after"))
            }
            Fault::Pass => f(),
        }
    }

    fn read<T>(&self, kind: &str, rel: &str, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        if self.plan.read(kind, rel) {
            return Err(io_injected(rel, "on read"));
        }
        f()
    }
}

impl Storage for FaultyStorage {
    fn create_staged(&self, rel: &str) -> io::Result<File> {
        match self.plan.write("create", rel) {
            Fault::Pass => self.inner.create_staged(rel),
            _ => Err(io_injected(rel, "before")),
        }
    }

    fn seal_staged(&self, rel: &str, file: File) -> io::Result<u64> {
        self.write("seal", rel, || self.inner.seal_staged(rel, file))
    }

    fn sync_dir(&self, rel_dir: &str) -> io::Result<()> {
        self.write("sync", rel_dir, || self.inner.sync_dir(rel_dir))
    }

    fn publish(&self, staged_rel: &str, final_rel: &str) -> io::Result<()> {
        self.write("publish", final_rel, || {
            self.inner.publish(staged_rel, final_rel)
        })
    }

    fn exists(&self, rel: &str) -> io::Result<bool> {
        self.read("exists", rel, || self.inner.exists(rel))
    }

    fn list(&self, rel_dir: &str) -> io::Result<Vec<String>> {
        self.read("list", rel_dir, || self.inner.list(rel_dir))
    }

    fn list_dirs(&self, rel_dir: &str) -> io::Result<Vec<String>> {
        self.read("list", rel_dir, || self.inner.list_dirs(rel_dir))
    }

    fn delete(&self, rel: &str) -> io::Result<()> {
        self.write("delete", rel, || self.inner.delete(rel))
    }

    fn read(&self, rel: &str) -> io::Result<Option<Vec<u8>>> {
        self.read("read", rel, || self.inner.read(rel))
    }

    fn put(&self, rel: &str, bytes: &[u8]) -> io::Result<()> {
        self.write("put", rel, || self.inner.put(rel, bytes))
    }

    fn walk(&self, rel_dir: &str) -> io::Result<Vec<(String, u64)>> {
        self.read("list", rel_dir, || self.inner.walk(rel_dir))
    }

    fn first_file(&self, rel_dir: &str, suffix: &str) -> io::Result<Option<String>> {
        self.read("list", rel_dir, || self.inner.first_file(rel_dir, suffix))
    }

    fn size(&self, rel: &str) -> io::Result<Option<u64>> {
        self.read("head", rel, || self.inner.size(rel))
    }

    fn open(&self, rel: &str) -> io::Result<File> {
        self.read("get", rel, || self.inner.open(rel))
    }

    fn spool_root(&self) -> PathBuf {
        self.inner.spool_root()
    }

    fn adopt_spooled(&self, rel: &str) -> io::Result<u64> {
        self.write("seal", rel, || self.inner.adopt_spooled(rel))
    }

    fn clear_spool(&self, source: &str) -> io::Result<usize> {
        self.inner.clear_spool(source)
    }
}

/// The layer a faulty lake is opened with: every object store wrapped (or, `memory`,
/// replaced by one in-memory store that outlives each "process"), and a local lake's storage.
pub struct FaultLayer {
    pub plan: Arc<Plan>,
    /// The in-memory store standing in for the lake's object store, when there is one.
    pub memory: Option<Arc<dyn ObjectStore>>,
}

impl callsync::lake::StoreLayer for FaultLayer {
    fn object_store(&self, inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(FaultyStore {
            inner: self.memory.clone().unwrap_or(inner),
            plan: self.plan.clone(),
        })
    }

    fn storage(&self, inner: Box<dyn Storage>) -> Box<dyn Storage> {
        Box::new(FaultyStorage {
            inner,
            plan: self.plan.clone(),
        })
    }
}

/// The lake's stores without faults (what the driver checks through).
pub struct CleanLayer {
    pub memory: Option<Arc<dyn ObjectStore>>,
}

impl callsync::lake::StoreLayer for CleanLayer {
    fn object_store(&self, inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        self.memory.clone().unwrap_or(inner)
    }

    fn storage(&self, inner: Box<dyn Storage>) -> Box<dyn Storage> {
        inner
    }
}

#[test]
fn fault_decisions_depend_on_the_seed_and_the_path_shape_not_on_ids() {
    assert_eq!(
        shape("calls/source=vg/date=2024-01-01/part-0192abcdef0123456789abcdef012345-3.parquet"),
        "calls/source=vg/date=2024-01-01/part-#-3.parquet"
    );
    assert_eq!(
        shape("calls/_delta_log/00000000000000000012.json"),
        "calls/_delta_log/00000000000000000012.json"
    );
    let draws = |seed| {
        let p = Plan::new(seed, 0.3, 0.3, 0.3);
        p.set_enabled(true);
        (0..50)
            .map(|i| p.write("put", &format!("x/part-{:032x}-{}", i * 7919, i % 3)))
            .collect::<Vec<_>>()
    };
    assert_eq!(draws(7), draws(7));
    assert_ne!(draws(7), draws(8));
}
