//! What every source does with a page of vendor records: drop the ones already exported before
//! any work, parse the rest into the vendor's model, normalize them into a batch of the call
//! schema, keep every failure as a reject with its reason, and hand the pipeline a `Page`.

use arrow_array::RecordBatch;
use serde::de::DeserializeOwned;

use crate::record::{CallBatchBuilder, Reject, Volatile};

use super::{Cursor, OpenContext, Page, SourceError};

/// The finished batch of `builder` (`None` when it holds no row).
pub fn finish_batch(
    source_name: &str,
    mut builder: CallBatchBuilder,
) -> Result<Option<RecordBatch>, SourceError> {
    if builder.is_empty() {
        return Ok(None);
    }
    builder
        .finish(chrono::Utc::now().timestamp_micros())
        .map(Some)
        .map_err(|e| SourceError::Protocol {
            source_name: source_name.to_string(),
            reason: format!("building the batch: {e}"),
        })
}

/// One page of JSON records as call rows.
pub struct JsonRecords {
    pub builder: CallBatchBuilder,
    pub rejects: Vec<Reject>,
    /// Records dropped because they were already exported.
    pub known: u64,
}

impl JsonRecords {
    /// Reads `records`: a record whose `id_field` is already exported is dropped before it is
    /// parsed; any other is parsed as `T` (else a reject: "not a {what}: …") and handed to
    /// `take` with its JSON text, which appends it to the batch, skips it (`Ok` without a row)
    /// or rejects it (`Err` is the reason).
    /// `volatile` names the parts of a record the vendor re-issues on every response: a
    /// reject's fingerprint leaves them out, so a re-listed malformed record whose only change
    /// is one of them is the same reject.
    #[allow(clippy::too_many_arguments)]
    pub fn read<T: DeserializeOwned>(
        ctx: &OpenContext,
        source_name: &str,
        records: &[serde_json::Value],
        id_field: &str,
        what: &str,
        volatile: &[Volatile],
        mut take: impl FnMut(&mut CallBatchBuilder, &T, &str) -> Result<(), String>,
    ) -> Result<JsonRecords, SourceError> {
        fn id<'a>(r: &'a serde_json::Value, field: &str) -> Option<&'a str> {
            r.get(field).and_then(|v| v.as_str())
        }
        let ids: Vec<&str> = records.iter().filter_map(|r| id(r, id_field)).collect();
        let known = ctx.known_among(source_name, &ids)?;
        let mut out = JsonRecords {
            builder: CallBatchBuilder::new(),
            rejects: Vec::new(),
            known: 0,
        };
        for record in records {
            let call_id = id(record, id_field);
            if call_id.is_some_and(|i| known.contains(i)) {
                out.known += 1;
                continue;
            }
            let raw = record.to_string();
            let error = match serde_json::from_value::<T>(record.clone()) {
                Ok(parsed) => match take(&mut out.builder, &parsed, &raw) {
                    Ok(()) => continue,
                    Err(reason) => reason,
                },
                Err(e) => format!("not a {what}: {e}"),
            };
            out.rejects.push(Reject {
                call_id: call_id.map(str::to_string),
                error,
                raw,
                fingerprint: (!volatile.is_empty())
                    .then(|| crate::record::stable_fingerprint(record, volatile)),
            });
        }
        Ok(out)
    }

    /// The page of these rows, storing `cursor` once committed.
    pub fn into_page(self, source_name: &str, cursor: Option<Cursor>) -> Result<Page, SourceError> {
        Ok(Page {
            dataset: Default::default(),
            calls: finish_batch(source_name, self.builder)?,
            rejects: self.rejects,
            files: Vec::new(),
            cursor,
            known: self.known,
        })
    }
}
