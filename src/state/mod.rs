//! SQLite state: migrations, per-source cursors, the file manifest, exported keys (runs and
//! backfills in runs.rs, push sources' inbox and jobs in push.rs).
//! One transaction records a commit's files, keys, counts and cursor together.

pub mod compaction;
pub mod keys;
pub mod lock;
mod manifest;
mod migrations;
mod push;
mod rebuild;
mod runs;
mod status;

pub use manifest::{Adopted, Forget, TableCheck};
pub use push::NewDelivery;
pub use rebuild::Rebuild;
pub use status::{BackfillInfo, InboxStatus, RunInfo, SourceStatus};

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::shared::Cursor;

/// A state operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create the state directory {path}: {error}")]
    Dir { path: String, error: std::io::Error },
    #[error(
        "state database is at schema version {found}, newer than this callsync ({known}); upgrade callsync"
    )]
    TooNew { found: i64, known: i64 },
    #[error(
        "source {name} was recorded as kind {stored}, but the config says {configured}; use a new source name for a new kind"
    )]
    KindChanged {
        name: String,
        stored: String,
        configured: String,
    },
    #[error("stored cursor of source {0} is not valid JSON: {1}")]
    Cursor(String, String),
}

/// A source's row.
#[derive(Debug, Clone)]
pub struct SourceRow {
    pub id: i64,
    pub cursor: Option<Cursor>,
}

/// A staged file and where it goes when its commit is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFile {
    /// Lake-relative staged path (`_staging/<source>/<commit>-<n>.tmp`).
    pub staged: String,
    /// Lake-relative final path.
    pub final_path: String,
    /// Rows (calls or rejects) in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// A data file's Delta statistics (JSON), from its Parquet footer.
    pub stats: Option<String>,
}

/// One manifest row: a staged file, its final path, and what a Delta table's add action
/// needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    pub staged: String,
    pub final_path: String,
    /// The sequence number of its commit within the source (0 for commits made before it
    /// was kept).
    pub seq: i64,
    pub bytes: u64,
    /// Delta statistics JSON of a data file.
    pub stats: Option<String>,
}

pub use crate::shared::Job;

/// A manifest row with what `verify` compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub staged: String,
    pub final_path: String,
    pub commit_id: String,
    pub rows: u64,
    pub bytes: u64,
    pub published: bool,
    /// Delta statistics JSON of a data file, when recorded.
    pub stats: Option<String>,
}

/// Everything one commit records, in one transaction.
#[derive(Debug)]
pub struct Commit<'a> {
    pub commit_id: &'a str,
    pub source_id: i64,
    pub run_id: i64,
    pub files: &'a [StagedFile],
    /// The exported keys, each with its partition day (UTC days since the epoch).
    pub keys: &'a [(&'a str, i32)],
    /// The cursor to store; `None` keeps the current one.
    pub cursor: Option<&'a Cursor>,
    /// The backfill this commit belongs to: its cursor is stored there, and the source's
    /// incremental cursor is left alone.
    pub backfill_id: Option<i64>,
    pub rows: u64,
    pub rejects: u64,
    /// The rejects written, as `(key, hash of the raw record)`: remembered so that the same
    /// record is not rejected again.
    pub rejected: &'a [(String, i64)],
}

/// Call ids per lookup or insert statement (one statement per chunk, not per call).
const KEY_CHUNK: usize = 500;

pub use crate::record::KeySet;

/// `SELECT call_id … IN (?2, …)` for `n` ids (`?1` is the source id).
fn lookup_sql(n: usize) -> String {
    let marks: Vec<String> = (2..n + 2).map(|i| format!("?{i}")).collect();
    format!(
        "SELECT call_id FROM exported WHERE source_id = ?1 AND call_id IN ({})",
        marks.join(",")
    )
}

/// `?1` = the source id, then the ids, bound without copying them.
fn key_args<'a>(
    source_id: i64,
    ids: &'a [&'a str],
) -> impl Iterator<Item = rusqlite::types::ToSqlOutput<'a>> + 'a {
    use rusqlite::types::{ToSqlOutput, Value, ValueRef};
    std::iter::once(ToSqlOutput::Owned(Value::Integer(source_id))).chain(
        ids.iter()
            .map(|id| ToSqlOutput::Borrowed(ValueRef::Text(id.as_bytes()))),
    )
}

/// A multi-row `INSERT OR IGNORE` of `n` (id, day) pairs (`?1` is the source id).
fn insert_sql(n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|i| format!("(?1,?{},?{})", 2 + 2 * i, 3 + 2 * i))
        .collect();
    format!(
        "INSERT OR IGNORE INTO exported (source_id, call_id, day) VALUES {}",
        rows.join(",")
    )
}

/// `?1` = the source id, then (id, day) pairs, the ids bound without copying them.
fn pair_args<'a>(
    source_id: i64,
    keys: &'a [(&'a str, Option<i32>)],
) -> impl Iterator<Item = rusqlite::types::ToSqlOutput<'a>> + 'a {
    use rusqlite::types::{ToSqlOutput, Value, ValueRef};
    std::iter::once(ToSqlOutput::Owned(Value::Integer(source_id))).chain(keys.iter().flat_map(
        |(id, day)| {
            [
                ToSqlOutput::Borrowed(ValueRef::Text(id.as_bytes())),
                match day {
                    Some(d) => ToSqlOutput::Owned(Value::Integer(*d as i64)),
                    None => ToSqlOutput::Owned(Value::Null),
                },
            ]
        },
    ))
}

/// Inserts exported keys with their partition days, in statements of `KEY_CHUNK`.
fn insert_keys(
    tx: &rusqlite::Connection,
    source_id: i64,
    keys: &[(&str, Option<i32>)],
) -> Result<(), StateError> {
    for chunk in keys.chunks(KEY_CHUNK) {
        let mut k = tx.prepare_cached(&insert_sql(chunk.len()))?;
        k.execute(rusqlite::params_from_iter(pair_args(source_id, chunk)))?;
    }
    Ok(())
}

/// An open state database.
pub struct State {
    conn: Connection,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl State {
    /// Opens (creating and migrating) the state database.
    pub fn open(path: &Path) -> Result<State, StateError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The state is the service's own: a directory it creates is private (0700), even
            // where the umask lets a group of readers into the lake beside it.
            let mut dir = std::fs::DirBuilder::new();
            dir.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
            dir.create(parent).map_err(|error| StateError::Dir {
                path: parent.display().to_string(),
                error,
            })?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        // Switching the journal mode takes an exclusive lock: only do it on a new database,
        // so processes and threads opening a shared state concurrently never contend for it.
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.pragma_update(None, "journal_mode", "WAL")?;
        }
        // FULL: a commit is durable before its files are published.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mut state = State { conn };
        state.migrate()?;
        Ok(state)
    }

    /// Opens an existing state for the server's questions (health, metrics): no migration,
    /// no write transaction, and a short busy timeout so an answer never waits on a writer
    /// for long. `read_only` opens it read-only (WAL readers never wait for a writer).
    pub fn open_for_server(path: &Path, read_only: bool) -> Result<State, StateError> {
        use rusqlite::OpenFlags;
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(std::time::Duration::from_millis(500))?;
        Ok(State { conn })
    }

    /// Whether the state takes a write now: `BEGIN IMMEDIATE`, then roll back (nothing is
    /// written). Busy past the connection's timeout is an error naming the lock.
    pub fn probe_write(&self) -> Result<(), StateError> {
        self.conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
        Ok(())
    }

    fn migrate(&mut self) -> Result<(), StateError> {
        // Most opens find the schema current: a read tells, and no write lock is taken.
        let current: Option<i64> = self
            .conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .optional()
            .ok()
            .flatten()
            .flatten();
        if current == Some(migrations::MIGRATIONS.len() as i64) {
            return Ok(());
        }
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL);",
        )?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )?;
        let known = migrations::MIGRATIONS.len() as i64;
        if current > known {
            return Err(StateError::TooNew {
                found: current,
                known,
            });
        }
        for (i, sql) in migrations::MIGRATIONS
            .iter()
            .enumerate()
            .skip(current as usize)
        {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
                params![i as i64 + 1, now()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The row of `name`, created on first use; refuses a changed kind.
    pub fn source(&self, name: &str, kind: &str) -> Result<SourceRow, StateError> {
        let read = |conn: &rusqlite::Connection| {
            conn.query_row(
                "SELECT id, kind, cursor FROM sources WHERE name = ?1",
                [name],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                },
            )
        };
        // A known source is only read: no write lock is waited for (a daemon's reload must
        // not queue behind a long transaction for what it already has).
        let (id, stored, cursor) = match read(&self.conn) {
            Ok(row) => row,
            Err(rusqlite::Error::QueryReturnedNoRows) => {
                self.conn.execute(
                    "INSERT INTO sources (name, kind) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
                    params![name, kind],
                )?;
                read(&self.conn)?
            }
            Err(e) => return Err(e.into()),
        };
        if stored != kind {
            return Err(StateError::KindChanged {
                name: name.to_string(),
                stored,
                configured: kind.to_string(),
            });
        }
        let cursor = cursor
            .map(|c| {
                serde_json::from_str(&c)
                    .map_err(|e| StateError::Cursor(name.to_string(), e.to_string()))
            })
            .transpose()?;
        Ok(SourceRow { id, cursor })
    }

    /// Which of `call_ids` have been exported for the source, looked up in one read
    /// transaction (one lock round trip per page instead of one per call).
    pub fn exported_among<'a>(
        &self,
        source_id: i64,
        call_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<KeySet, StateError> {
        let ids: Vec<&str> = call_ids.into_iter().collect();
        let (Some(&least), Some(&greatest)) = (ids.iter().min(), ids.iter().max()) else {
            return Ok(KeySet::default());
        };
        let tx = self.conn.unchecked_transaction()?;
        // Where ids grow (most vendors', and any first export), few or no exported keys lie
        // between a page's least and greatest id, so one range read answers the whole page.
        // Otherwise (random ids after a backfill, say) each id is looked up.
        let limit = ids.len() * 2;
        let in_range: Vec<String> = tx
            .prepare_cached(
                "SELECT call_id FROM exported WHERE source_id = ?1 AND call_id BETWEEN ?2 AND ?3 LIMIT ?4",
            )?
            .query_map(params![source_id, least, greatest, limit as i64 + 1], |r| {
                r.get(0)
            })?
            .collect::<Result<_, _>>()?;
        let found = if in_range.is_empty() {
            KeySet::default()
        } else if in_range.len() <= limit {
            let wanted: HashSet<&str, foldhash::fast::RandomState> = ids.iter().copied().collect();
            in_range
                .into_iter()
                .filter(|k| wanted.contains(k.as_str()))
                .collect()
        } else {
            let mut found = KeySet::default();
            for chunk in ids.chunks(KEY_CHUNK) {
                let mut stmt = tx.prepare_cached(&lookup_sql(chunk.len()))?;
                let mut rows =
                    stmt.query(rusqlite::params_from_iter(key_args(source_id, chunk)))?;
                while let Some(row) = rows.next()? {
                    found.insert(row.get::<_, String>(0)?);
                }
            }
            found
        };
        tx.commit()?;
        Ok(found)
    }

    /// The rejects already recorded among `keys`: key → hash of the raw record rejected.
    pub fn rejected_among<'a>(
        &self,
        source_id: i64,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashMap<String, i64>, StateError> {
        let mut out = HashMap::new();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT hash FROM rejected WHERE source_id = ?1 AND reject_key = ?2")?;
        for k in keys {
            if let Some(h) = stmt
                .query_row(params![source_id, k], |r| r.get::<_, i64>(0))
                .optional()?
            {
                out.insert(k.to_string(), h);
            }
        }
        Ok(out)
    }

    /// Records a commit: manifest rows, exported keys, counts and cursor, in one transaction.
    /// Returns the commit's sequence number within its source.
    pub fn commit(&mut self, c: &Commit<'_>) -> Result<i64, StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let cursor_text = c.cursor.map(|v| v.to_string());
        let seq: i64 = tx.query_row(
            "UPDATE sources SET commit_seq = commit_seq + 1 WHERE id = ?1 RETURNING commit_seq",
            [c.source_id],
            |r| r.get(0),
        )?;
        {
            let mut m = tx.prepare_cached(
                "INSERT INTO manifest (staged, final_path, source_id, commit_id, rows, bytes, stats) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for f in c.files {
                m.execute(params![
                    f.staged,
                    f.final_path,
                    c.source_id,
                    c.commit_id,
                    f.rows as i64,
                    f.bytes as i64,
                    f.stats
                ])?;
            }
            // In key order, the B-tree grows at its edge instead of splitting pages all over.
            let mut keys: Vec<(&str, Option<i32>)> =
                c.keys.iter().map(|(k, d)| (*k, Some(*d))).collect();
            keys.sort_unstable();
            insert_keys(&tx, c.source_id, &keys)?;
        }
        {
            let mut r = tx.prepare_cached(
                "INSERT INTO rejected (source_id, reject_key, hash) VALUES (?1, ?2, ?3)
                 ON CONFLICT(source_id, reject_key) DO UPDATE SET hash = excluded.hash",
            )?;
            for (key, hash) in c.rejected {
                r.execute(params![c.source_id, key, hash])?;
            }
        }
        tx.execute(
            "INSERT INTO commits (id, source_id, run_id, committed_at, rows, rejects, cursor, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![c.commit_id, c.source_id, c.run_id, now(), c.rows as i64, c.rejects as i64, cursor_text, seq],
        )?;
        match c.backfill_id {
            None => tx.execute(
                "UPDATE sources SET cursor = COALESCE(?2, cursor), rows_total = rows_total + ?3, rejects_total = rejects_total + ?4 WHERE id = ?1",
                params![c.source_id, cursor_text, c.rows as i64, c.rejects as i64],
            )?,
            Some(b) => {
                tx.execute(
                    "UPDATE backfills SET cursor = COALESCE(?2, cursor), rows = rows + ?3, updated_at = ?4 WHERE id = ?1",
                    params![b, cursor_text, c.rows as i64, now()],
                )?;
                tx.execute(
                    "UPDATE sources SET rows_total = rows_total + ?2, rejects_total = rejects_total + ?3 WHERE id = ?1",
                    params![c.source_id, c.rows as i64, c.rejects as i64],
                )?
            }
        };
        tx.execute(
            "UPDATE runs SET rows = rows + ?2, rejects = rejects + ?3 WHERE id = ?1",
            params![c.run_id, c.rows as i64, c.rejects as i64],
        )?;
        tx.commit()?;
        Ok(seq)
    }

    /// Raises the source's commit counter to at least `floor` (a Delta table already holds
    /// commits up to it, e.g. after the state was rebuilt): the next commit gets a higher
    /// sequence number than any the table holds.
    pub fn raise_commit_seq(&self, source_id: i64, floor: i64) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE sources SET commit_seq = ?2 WHERE id = ?1 AND commit_seq < ?2",
            params![source_id, floor],
        )?;
        Ok(())
    }

    /// Whether `commit_id` is a commit of the source.
    pub fn knows_commit(&self, source_id: i64, commit_id: &str) -> Result<bool, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM commits WHERE id = ?1 AND source_id = ?2",
                params![commit_id, source_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// The source's last commit, if any.
    pub fn last_commit(&self, source_id: i64) -> Result<Option<String>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id FROM commits WHERE source_id = ?1 ORDER BY rowid DESC LIMIT 1",
                [source_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The source's incremental cursor.
    pub fn cursor(&self, source_id: i64) -> Result<Option<Cursor>, StateError> {
        let text: Option<String> = self.conn.query_row(
            "SELECT cursor FROM sources WHERE id = ?1",
            [source_id],
            |r| r.get(0),
        )?;
        text.map(|c| {
            serde_json::from_str(&c)
                .map_err(|e| StateError::Cursor(source_id.to_string(), e.to_string()))
        })
        .transpose()
    }

    /// The source id of `name`, if the state has it.
    pub fn source_id(&self, name: &str) -> Result<Option<i64>, StateError> {
        Ok(self
            .conn
            .query_row("SELECT id FROM sources WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Every source name the state has.
    pub fn source_names(&self) -> Result<Vec<String>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM sources ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_keys_are_found_across_statement_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::open(&dir.path().join("s.db")).unwrap();
        let src = s.source("vg", "voicegain").unwrap().id;
        let other = s.source("other", "voicegain").unwrap().id;
        let run = s.start_run(src, "sync").unwrap();
        let keys: Vec<String> = (0..1234)
            .filter(|i| i % 3 == 0)
            .map(|i| format!("c{i}"))
            .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let pairs: Vec<(&str, i32)> = keys.iter().map(|k| (*k, 20_000)).collect();
        let cursor = serde_json::json!({"after_call_id": 7});
        s.commit(&Commit {
            commit_id: "c1",
            source_id: src,
            run_id: run,
            files: &[],
            keys: &pairs,
            cursor: Some(&cursor),
            backfill_id: None,
            rows: keys.len() as u64,
            rejects: 0,
            rejected: &[],
        })
        .unwrap();
        let asked: Vec<String> = (0..1234).map(|i| format!("c{i}")).collect();
        let found = s
            .exported_among(src, asked.iter().map(String::as_str))
            .unwrap();
        assert_eq!(found.len(), keys.len());
        assert!(keys.iter().all(|k| found.contains(*k)));
        // A few ids spread over many exported keys: looked up one by one, same answer.
        let spread = ["c0", "c1", "c999", "c1230", "zz"];
        let found = s.exported_among(src, spread).unwrap();
        let mut found: Vec<&str> = found.iter().map(String::as_str).collect();
        found.sort_unstable();
        assert_eq!(found, ["c0", "c1230", "c999"]);
        assert!(s.exported_among(src, []).unwrap().is_empty());
        assert!(
            s.exported_among(other, asked.iter().map(String::as_str))
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.source("vg", "voicegain").unwrap().cursor, Some(cursor));
        assert!(matches!(
            s.source("vg", "vonage_insights"),
            Err(StateError::KindChanged { .. })
        ));
    }
}
