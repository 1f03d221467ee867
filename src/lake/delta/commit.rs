//! One commit to a Delta table whose outcome is always settled by the table, never guessed
//! from an error.
//!
//! Each attempt reads the table's latest version, checks its protocol, asks the guard whether
//! the commit is still wanted (an append the table already holds, a compaction whose files
//! another writer replaced), and puts the log entry at the next version with `If-None-Match`.
//! Any error on that put (a 412 from the store retrying a put it had already stored, a 500
//! after storing, a dropped connection) is settled by reading that version back: it is ours
//! (its `commitInfo` carries this commit's id), another writer's (retry after a backoff), or
//! absent (the put did not apply: put it again). Only when the read-back itself fails is the
//! outcome unknown, and the caller then deletes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use deltalake::kernel::transaction::CommitData;
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::logstore::CommitOrBytes;
use deltalake::protocol::DeltaOperation;
use futures_util::TryStreamExt;
use tracing::warn;

use super::{COMMIT_RETRIES, DeltaError, DeltaTables, MAX_ATTEMPTS, backoff};
use crate::schema::Dataset;

/// The key in `commitInfo` that names the callsync commit a log entry is.
pub(super) const COMMIT_ID_KEY: &str = "callsyncCommit";

/// When a commit is still wanted.
pub(super) enum Guard<'a> {
    /// An append of a source's commit `seq`: held once the table's `app` transaction is at
    /// `seq` or beyond. `fresh`: the commit was never tried before this call (publish right
    /// after the state commit), so the table cannot hold it: every earlier attempt of this
    /// call was settled as not ours, and the question costs a read of the log.
    Txn { app: &'a str, seq: i64, fresh: bool },
    /// Files added again: held once every one is active; only the missing ones are added.
    Missing,
    /// A compaction replacing `removes` (table-relative): held once its first new file is
    /// active, lost once any file it replaces is not.
    Replace { removes: &'a [String] },
    /// Files the table references that are gone from storage, removed (`dataChange = true`,
    /// their rows are lost): held once none is active.
    Drop { paths: &'a [String] },
}

/// What a commit came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It landed, at this version.
    Landed(u64),
    /// The table held it already (an earlier attempt or run landed it).
    Held,
    /// Another writer changed what it was about; it made no change.
    Lost,
}

/// What one put at a version came to.
enum Put {
    Ours,
    Taken,
    NotApplied,
}

/// The callsync commit id in a log entry's `commitInfo`, if any.
pub(super) fn commit_id_of(entry: &[u8]) -> Option<String> {
    for line in entry.split(|b| *b == b'\n') {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(info) = v.get("commitInfo") {
            return info
                .get(COMMIT_ID_KEY)
                .and_then(|c| c.as_str())
                .map(str::to_string);
        }
    }
    None
}

/// The paths a log entry adds (table-relative).
pub(super) fn added_paths(entry: &[u8]) -> Vec<String> {
    entry
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter_map(|v| {
            v.get("add")
                .and_then(|a| a.get("path"))
                .and_then(|p| p.as_str())
                .map(str::to_string)
        })
        .collect()
}

impl DeltaTables {
    /// Makes one commit of `adds` (plus, for a compaction, the removes its guard names) with
    /// `operation` and the app transaction `txn`, settled as the module says. `id` names it in
    /// the log.
    pub(super) async fn commit(
        &self,
        ds: Dataset,
        guard: Guard<'_>,
        adds: &[Add],
        operation: &DeltaOperation,
        txn: Transaction,
        id: &str,
    ) -> Result<Outcome, DeltaError> {
        let mut attempt = 0u32;
        loop {
            // A fresh append needs only the latest version and the protocol: read without the
            // table's files. Every other commit asks about files.
            let fresh = matches!(guard, Guard::Txn { fresh: true, .. });
            let log_store = self.log_store(ds)?;
            let mut table = None;
            let (version, actions): (u64, Vec<Action>) = if fresh {
                let snap = self.lean(ds).await?;
                self.check_protocol(ds, snap.protocol(), snap.schema().as_ref())?;
                (
                    snap.version() + 1,
                    adds.iter().cloned().map(Action::Add).collect(),
                )
            } else {
                let t_guard = self.latest(ds).await?;
                let t = t_guard.as_ref().expect("loaded");
                self.check(ds, t)?;
                let snap = t.snapshot().map_err(|e| self.err(ds, e))?;
                let version = snap.version() + 1;
                let actions = match self.decide(ds, &guard, t, adds).await? {
                    Decision::Go(a) => a,
                    Decision::Held => return Ok(Outcome::Held),
                    Decision::Lost => return Ok(Outcome::Lost),
                };
                table = Some(t_guard);
                (version, actions)
            };
            let data = CommitData::new(
                actions,
                operation.clone(),
                HashMap::from([
                    (
                        "clientVersion".to_string(),
                        serde_json::Value::from(concat!("callsync-", env!("CARGO_PKG_VERSION"))),
                    ),
                    (COMMIT_ID_KEY.to_string(), serde_json::Value::from(id)),
                ]),
                vec![txn.clone()],
            );
            let bytes = data.get_bytes().map_err(|e| self.err(ds, e))?;
            let put = match log_store
                .write_commit_entry(
                    version,
                    CommitOrBytes::LogBytes(bytes),
                    uuid::Uuid::new_v4(),
                )
                .await
            {
                Ok(()) => Put::Ours,
                Err(e) => match self.read_commit(ds, version).await {
                    Ok(Some(entry)) if commit_id_of(&entry).as_deref() == Some(id) => Put::Ours,
                    Ok(Some(_)) => Put::Taken,
                    Ok(None) => {
                        warn!(table = %self.table_url(ds), version, error = %e, "A Delta commit did not apply; putting it again.");
                        Put::NotApplied
                    }
                    Err(read) => {
                        return Err(DeltaError::Unknown {
                            table: self.table_url(ds).to_string(),
                            version,
                            message: format!("{e}; then {read}"),
                        });
                    }
                },
            };
            match put {
                Put::Ours => {
                    fail_point_after_commit();
                    if (version + 1).is_multiple_of(self.checkpoint_interval) {
                        let mut t_guard = match table {
                            Some(g) => g,
                            None => self.latest(ds).await?,
                        };
                        let t = t_guard.as_mut().expect("loaded");
                        match t.update_incremental(Some(version)).await {
                            Ok(()) => self.after_commit(ds, t, version).await,
                            Err(e) => {
                                warn!(table = %self.table_url(ds), version, error = %e, "Checkpoint skipped; the next one will cover it.")
                            }
                        }
                    }
                    return Ok(Outcome::Landed(version));
                }
                Put::Taken | Put::NotApplied => {
                    attempt += 1;
                    if attempt >= MAX_ATTEMPTS {
                        return Err(self.err(
                            ds,
                            format!(
                                "the commit did not land after {MAX_ATTEMPTS} attempts (other writers kept taking the next version, or the store kept failing); nothing was changed"
                            ),
                        ));
                    }
                    if matches!(put, Put::Taken) {
                        COMMIT_RETRIES.fetch_add(1, Ordering::Relaxed);
                        crate::telemetry::delta_commit_retry(ds.dir());
                    }
                    drop(table);
                    let wait = backoff(attempt);
                    warn!(table = %self.table_url(ds), attempt, wait_ms = wait.as_millis() as u64, "The Delta commit did not land at the version it tried; retrying.");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// What a guard says of a commit, against the table with its files.
enum Decision {
    Go(Vec<Action>),
    Held,
    Lost,
}

impl DeltaTables {
    /// Asks the guard whether the commit of `adds` is still wanted, against `t`'s latest
    /// version; returns its actions when it is.
    async fn decide(
        &self,
        ds: Dataset,
        guard: &Guard<'_>,
        t: &deltalake::DeltaTable,
        adds: &[Add],
    ) -> Result<Decision, DeltaError> {
        let log_store = t.log_store();
        let snap = t.snapshot().map_err(|e| self.err(ds, e))?;
        if let Guard::Txn { app, seq, .. } = guard {
            let held = snap
                .transaction_version(log_store.as_ref(), *app)
                .await
                .map_err(|e| self.err(ds, e))?;
            if held.is_some_and(|v| v >= *seq) {
                return Ok(Decision::Held);
            }
            return Ok(Decision::Go(
                adds.iter().cloned().map(Action::Add).collect(),
            ));
        }
        let views: Vec<_> = snap
            .snapshot()
            .file_views(log_store.as_ref(), None)
            .try_collect()
            .await
            .map_err(|e| self.err(ds, e))?;
        let active: HashMap<String, _> = views.iter().map(|v| (v.path().to_string(), v)).collect();
        Ok(match guard {
            Guard::Txn { .. } => unreachable!("answered above"),
            Guard::Missing => {
                let missing: Vec<Action> = adds
                    .iter()
                    .filter(|a| !active.contains_key(&a.path))
                    .cloned()
                    .map(Action::Add)
                    .collect();
                if missing.is_empty() {
                    Decision::Held
                } else {
                    Decision::Go(missing)
                }
            }
            Guard::Replace { removes } => {
                if adds.first().is_some_and(|a| active.contains_key(&a.path)) {
                    return Ok(Decision::Held);
                }
                let wanted: HashSet<&str> = removes.iter().map(String::as_str).collect();
                let found: Vec<Action> = wanted
                    .iter()
                    .filter_map(|p| active.get(*p))
                    .map(|v| Action::Remove(v.remove_action(false)))
                    .collect();
                if found.len() != wanted.len() {
                    return Ok(Decision::Lost);
                }
                let mut actions = found;
                actions.extend(adds.iter().cloned().map(Action::Add));
                Decision::Go(actions)
            }
            Guard::Drop { paths } => {
                let found: Vec<Action> = paths
                    .iter()
                    .filter_map(|p| active.get(p))
                    .map(|v| Action::Remove(v.remove_action(true)))
                    .collect();
                if found.is_empty() {
                    Decision::Held
                } else {
                    Decision::Go(found)
                }
            }
        })
    }
}

/// The failpoint right after a table commit landed (nothing recorded of it yet).
fn fail_point_after_commit() {
    crate::failpoint::hit("after_table_commit");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_entry_names_its_commit_and_its_adds() {
        let entry = br#"{"commitInfo":{"timestamp":1,"callsyncCommit":"c-1","operation":"WRITE"}}
{"add":{"path":"source=a/date=2024-01-01/part-1.parquet","size":3}}
{"txn":{"appId":"callsync/a","version":4}}"#;
        assert_eq!(commit_id_of(entry).as_deref(), Some("c-1"));
        assert_eq!(
            added_paths(entry),
            ["source=a/date=2024-01-01/part-1.parquet"]
        );
        assert_eq!(commit_id_of(br#"{"commitInfo":{"timestamp":1}}"#), None);
        assert_eq!(commit_id_of(b""), None);
    }
}
