//! The lake on object storage (S3, GCS, Azure) through `object_store`: the same storage seam
//! as a local directory, so the commit protocol keeps its order. A staged file is written to a
//! local spool, then put under `<prefix>/_staging/<source>/` (multipart when large) when it is
//! sealed; the SQLite commit follows; publish copies it to its final key and deletes the staged
//! object (a copy is atomic: a reader sees the whole object or none). Recovery finishes or
//! deletes staged objects exactly as on local disk.
//!
//! Credentials and endpoints come from each cloud's standard environment (`AWS_*`, `GOOGLE_*`,
//! `AZURE_*`), overridden by `[warehouse.storage_options]` (object_store's own keys).

use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::runtime::Handle;

use super::storage::Storage;

/// Files up to this size are put in one request; larger ones are uploaded in parts.
const SINGLE_PUT_MAX: u64 = 16 << 20;
/// Size of each part of a multipart upload.
const PART_BYTES: usize = 8 << 20;
/// Parts in flight at once (bounded, so memory stays flat whatever the file's size).
const PARTS_IN_FLIGHT: usize = 2;

/// Runs a request to completion from a blocking thread (off the async workers when called on
/// one).
pub(crate) fn block_on<F: Future>(rt: &Handle, f: F) -> F::Output {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| rt.block_on(f))
        }
        _ => rt.block_on(f),
    }
}

/// A lake in an object store under a key prefix.
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// Key prefix, without leading or trailing `/` (may be empty).
    prefix: String,
    /// Local directory where staged files are written before they are put.
    spool: PathBuf,
    /// The runtime that drives the store's requests (callers are blocking threads).
    rt: Handle,
    /// The lake's URL, for messages.
    url: String,
}

/// An `object_store` error as an I/O error (NotFound kept), naming the lake but no secret.
fn io_error(url: &str, e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        other => io::Error::other(format!("object store {url}: {other}")),
    }
}

impl ObjectStorage {
    /// A lake at `prefix` in `store`; staged files are spooled under `spool`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        spool: &Path,
        rt: Handle,
        url: &str,
    ) -> io::Result<ObjectStorage> {
        fs::create_dir_all(spool)?;
        Ok(ObjectStorage {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            spool: spool.to_path_buf(),
            rt,
            url: url.to_string(),
        })
    }

    fn key(&self, rel: &str) -> Key {
        let rel = rel.trim_matches('/');
        if self.prefix.is_empty() {
            Key::from(rel)
        } else if rel.is_empty() {
            Key::from(self.prefix.as_str())
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// The lake-relative path of a key below the prefix.
    fn rel(&self, key: &Key) -> String {
        let k = key.as_ref();
        if self.prefix.is_empty() {
            k.to_string()
        } else {
            k.strip_prefix(&self.prefix)
                .map(|r| r.trim_start_matches('/').to_string())
                .unwrap_or_else(|| k.to_string())
        }
    }

    fn spooled(&self, rel: &str) -> PathBuf {
        self.spool.join(rel)
    }

    fn block<F: Future>(&self, f: F) -> F::Output {
        block_on(&self.rt, f)
    }

    fn err(&self, e: object_store::Error) -> io::Error {
        io_error(&self.url, e)
    }

    /// Puts a local file at `key`: one request when small, else parts of `PART_BYTES`.
    fn upload(&self, local: &Path, key: &Key) -> io::Result<u64> {
        let size = fs::metadata(local)?.len();
        if size <= SINGLE_PUT_MAX {
            let bytes = fs::read(local)?;
            self.block(self.store.put(key, PutPayload::from(bytes)))
                .map_err(|e| self.err(e))?;
            return Ok(size);
        }
        let mut file = File::open(local)?;
        self.block(async {
            let upload = self.store.put_multipart(key).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut buf = vec![0u8; PART_BYTES];
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| object_store::Error::Generic {
                        store: "spool",
                        source: Box::new(e),
                    })?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                w.write(&buf[..n]);
            }
            w.finish().await
        })
        .map_err(|e| self.err(e))?;
        Ok(size)
    }

    /// Deletes an object; a missing one is not an error.
    fn delete_key(&self, key: &Key) -> io::Result<()> {
        match self.block(self.store.delete(key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    fn list_level(&self, rel_dir: &str) -> io::Result<object_store::ListResult> {
        let key = self.key(rel_dir);
        self.block(self.store.list_with_delimiter(Some(&key)))
            .map_err(|e| self.err(e))
    }
}

impl Storage for ObjectStorage {
    fn create_staged(&self, rel: &str) -> io::Result<File> {
        let p = self.spooled(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        // A spool file left by a crash is scratch: start it afresh.
        File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
    }

    fn seal_staged(&self, rel: &str, file: File) -> io::Result<u64> {
        drop(file);
        let local = self.spooled(rel);
        let size = self.upload(&local, &self.key(rel))?;
        let _ = fs::remove_file(&local);
        Ok(size)
    }

    fn sync_dir(&self, _rel_dir: &str) -> io::Result<()> {
        // A completed put is durable in the store.
        Ok(())
    }

    fn publish(&self, staged_rel: &str, final_rel: &str) -> io::Result<()> {
        let (from, to) = (self.key(staged_rel), self.key(final_rel));
        self.block(self.store.copy(&from, &to))
            .map_err(|e| self.err(e))?;
        self.delete_key(&from)
    }

    fn exists(&self, rel: &str) -> io::Result<bool> {
        Ok(self.size(rel)?.is_some())
    }

    fn list(&self, rel_dir: &str) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list_level(rel_dir)?
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    fn list_dirs(&self, rel_dir: &str) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list_level(rel_dir)?
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    fn delete(&self, rel: &str) -> io::Result<()> {
        // A source's spooled download (not yet staged) goes too.
        let _ = fs::remove_file(self.spooled(rel));
        self.delete_key(&self.key(rel))
    }

    fn read(&self, rel: &str) -> io::Result<Option<Vec<u8>>> {
        let key = self.key(rel);
        let got = self.block(async {
            match self.store.get(&key).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map(|b| b.map(|b| b.to_vec())).map_err(|e| self.err(e))
    }

    fn put(&self, rel: &str, bytes: &[u8]) -> io::Result<()> {
        self.block(
            self.store
                .put(&self.key(rel), PutPayload::from(bytes.to_vec())),
        )
        .map(|_| ())
        .map_err(|e| self.err(e))
    }

    fn walk(&self, rel_dir: &str) -> io::Result<Vec<(String, u64)>> {
        let key = self.key(rel_dir);
        let metas = self
            .block(async {
                let mut out = Vec::new();
                let mut s = self.store.list(Some(&key));
                while let Some(m) = s.next().await {
                    out.push(m?);
                }
                Ok::<_, object_store::Error>(out)
            })
            .map_err(|e| self.err(e))?;
        let mut out: Vec<(String, u64)> = metas
            .iter()
            .map(|m| (self.rel(&m.location), m.size))
            .collect();
        out.sort();
        Ok(out)
    }

    fn first_file(&self, rel_dir: &str, suffix: &str) -> io::Result<Option<String>> {
        let key = self.key(rel_dir);
        let found = self
            .block(async {
                let mut s = self.store.list(Some(&key));
                while let Some(m) = s.next().await {
                    let m = m?;
                    if m.location.as_ref().ends_with(suffix) {
                        return Ok(Some(m.location));
                    }
                }
                Ok::<_, object_store::Error>(None)
            })
            .map_err(|e| self.err(e))?;
        Ok(found.map(|k| self.rel(&k)))
    }

    fn size(&self, rel: &str) -> io::Result<Option<u64>> {
        match self.block(self.store.head(&self.key(rel))) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    fn open(&self, rel: &str) -> io::Result<File> {
        // Streamed to the spool (memory stays flat whatever the file's size) and unlinked once
        // open: the file lives while it is read.
        let local = self.spool.join("_read").join(rel);
        if let Some(parent) = local.parent() {
            fs::create_dir_all(parent)?;
        }
        let key = self.key(rel);
        let mut out = File::create(&local)?;
        let copied = self.block(async {
            use std::io::Write;
            let mut stream = self.store.get(&key).await?.into_stream();
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk?)
                    .map_err(|e| object_store::Error::Generic {
                        store: "spool",
                        source: Box::new(e),
                    })?;
            }
            Ok::<_, object_store::Error>(())
        });
        drop(out);
        let opened = copied
            .map_err(|e| self.err(e))
            .and_then(|()| File::open(&local));
        let _ = fs::remove_file(&local);
        opened
    }

    fn spool_root(&self) -> PathBuf {
        self.spool.clone()
    }

    fn clear_spool(&self, source: &str) -> io::Result<usize> {
        let dir = self.spool.join("_staging").join(source);
        let n = fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(n),
        }
    }

    fn adopt_spooled(&self, rel: &str) -> io::Result<u64> {
        let local = self.spooled(rel);
        let size = self.upload(&local, &self.key(rel))?;
        let _ = fs::remove_file(&local);
        Ok(size)
    }
}

/// Builds the object store of a `[warehouse] url`: the cloud's environment first, then
/// `storage_options` (object_store's keys) over it. Errors name the option, never a value.
pub fn build_store(
    scheme: &str,
    bucket: &str,
    options: &[(String, String)],
) -> Result<Arc<dyn ObjectStore>, String> {
    fn apply<B, K: std::str::FromStr>(
        mut b: B,
        options: &[(String, String)],
        with: impl Fn(B, K, &str) -> B,
    ) -> Result<B, String> {
        for (k, v) in options {
            let key: K = k.to_ascii_lowercase().parse().map_err(|_| {
                format!("[warehouse.storage_options] {k}: not an object_store option of this store")
            })?;
            b = with(b, key, v);
        }
        Ok(b)
    }
    let built: Result<Arc<dyn ObjectStore>, object_store::Error> = match scheme {
        "s3" => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
            let b = apply(
                AmazonS3Builder::from_env().with_bucket_name(bucket),
                options,
                |b: AmazonS3Builder, k: AmazonS3ConfigKey, v| b.with_config(k, v),
            )?;
            b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        }
        "gs" => {
            use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
            let b = apply(
                GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket),
                options,
                |b: GoogleCloudStorageBuilder, k: GoogleConfigKey, v| b.with_config(k, v),
            )?;
            b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        }
        "az" => {
            use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
            let b = apply(
                MicrosoftAzureBuilder::from_env().with_container_name(bucket),
                options,
                |b: MicrosoftAzureBuilder, k: AzureConfigKey, v| b.with_config(k, v),
            )?;
            b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        }
        other => return Err(format!("unsupported object store scheme {other:?}")),
    };
    built.map_err(|e| format!("cannot configure the object store: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_large_staged_file_goes_up_in_parts_and_publishes_whole() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let spool = tempfile::tempdir().unwrap();
        let mem: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let s = ObjectStorage::new(
            mem.clone(),
            "p/q",
            spool.path(),
            rt.handle().clone(),
            "mem://",
        )
        .unwrap();
        // 20 MiB of varied bytes: more than one put, several parts.
        let big: Vec<u8> = (0..20u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let staged = "_staging/vg/c1-1.tmp";
        let mut f = s.create_staged(staged).unwrap();
        f.write_all(&big).unwrap();
        assert_eq!(s.seal_staged(staged, f).unwrap(), big.len() as u64);
        assert!(
            !spool.path().join(staged).exists(),
            "the spool copy is gone once put"
        );
        assert_eq!(s.list("_staging/vg").unwrap(), ["c1-1.tmp"]);
        let fin = "calls/source=vg/date=2026-01-01/part-c1-1.parquet";
        s.publish(staged, fin).unwrap();
        assert_eq!(s.read(fin).unwrap().unwrap(), big);
        assert!(!s.exists(staged).unwrap());
        assert_eq!(s.size(fin).unwrap(), Some(big.len() as u64));
        assert_eq!(
            s.walk("calls").unwrap(),
            [(fin.to_string(), big.len() as u64)]
        );
        assert_eq!(s.list_dirs("calls").unwrap(), ["source=vg"]);
        assert_eq!(
            s.first_file("calls/source=vg", ".parquet")
                .unwrap()
                .as_deref(),
            Some(fin)
        );
        // Keys live under the prefix.
        let key = Key::from(format!("p/q/{fin}"));
        assert!(rt.block_on(mem.head(&key)).is_ok());
        // Small files, delete, a missing file.
        s.put("_callsync/vg.json", b"{}").unwrap();
        assert_eq!(s.read("_callsync/vg.json").unwrap().unwrap(), b"{}");
        s.delete("_callsync/vg.json").unwrap();
        s.delete("_callsync/vg.json").unwrap();
        assert_eq!(s.read("_callsync/vg.json").unwrap(), None);
        let mut opened = String::new();
        s.put("x/y.txt", b"hello").unwrap();
        s.open("x/y.txt")
            .unwrap()
            .read_to_string(&mut opened)
            .unwrap();
        assert_eq!(opened, "hello");
    }
}
