//! Opening the Delta tables: created on first use at protocol (1, 2) with callsync's
//! checkpoint and log-retention properties, and evolved by a metadata commit when a newer
//! schema version adds columns.

use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, DataType as DeltaType, MetadataExt, StructField, StructType};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, TableProperty};
use tracing::info;

use super::{DeltaError, DeltaTables, PARTITION_COLUMNS};
use crate::schema::Dataset;

/// The table schema: the dataset's columns, then the partition columns.
fn table_schema(ds: Dataset) -> Result<StructType, String> {
    let data: StructType = ds
        .schema()
        .as_ref()
        .try_into_kernel()
        .map_err(|e| e.to_string())?;
    let mut fields: Vec<StructField> = data.fields().cloned().collect();
    fields.push(StructField::new("source", DeltaType::STRING, false));
    fields.push(StructField::new("date", DeltaType::DATE, false));
    StructType::try_new(fields).map_err(|e| e.to_string())
}

impl DeltaTables {
    /// The table of `ds`, created when there is none (another writer may create it at the
    /// same moment: theirs is loaded) and brought up to this schema version.
    pub(super) async fn open_or_create(&self, ds: Dataset) -> Result<DeltaTable, DeltaError> {
        let log_store = self.log_store(ds)?;
        let exists = log_store
            .is_delta_table_location()
            .await
            .map_err(|e| self.err(ds, e))?;
        if !exists {
            let schema = table_schema(ds).map_err(|e| self.err(ds, e))?;
            let created = CreateBuilder::new()
                .with_log_store(log_store.clone())
                .with_table_name(ds.dir())
                .with_comment(format!(
                    "callsync {} (schema version {})",
                    ds.dir(),
                    ds.version()
                ))
                .with_columns(schema.fields().cloned())
                .with_partition_columns(PARTITION_COLUMNS)
                .with_configuration_property(
                    TableProperty::CheckpointInterval,
                    Some(self.checkpoint_interval.to_string()),
                )
                .with_configuration_property(
                    TableProperty::LogRetentionDuration,
                    Some(format!("interval {} days", self.log_retention_days)),
                )
                .with_save_mode(SaveMode::ErrorIfExists)
                .await;
            match created {
                Ok(t) => {
                    info!(table = %self.table_url(ds), "Created the Delta table.");
                    return Ok(t);
                }
                // Another writer created it first: load theirs.
                Err(e) if !log_store.is_delta_table_location().await.unwrap_or(false) => {
                    return Err(self.err(ds, e));
                }
                Err(_) => {}
            }
        }
        let mut t = DeltaTable::new(log_store);
        t.load().await.map_err(|e| self.err(ds, e))?;
        self.evolve(ds, &mut t).await?;
        Ok(t)
    }

    /// Whether a table's columns are exactly this schema version's (nothing to evolve, nothing
    /// foreign to refuse).
    pub(super) fn fits_schema(&self, ds: Dataset, have: &StructType) -> bool {
        table_schema(ds).is_ok_and(|want| {
            want.fields().count() == have.fields().count()
                && want.fields().all(|f| {
                    have.field(f.name())
                        .is_some_and(|h| h.data_type() == f.data_type())
                })
        })
    }

    /// Adds the columns a newer schema version brought (a Delta metadata change); refuses a
    /// table whose columns differ otherwise.
    async fn evolve(&self, ds: Dataset, t: &mut DeltaTable) -> Result<(), DeltaError> {
        let want = table_schema(ds).map_err(|e| self.err(ds, e))?;
        let snap = t.snapshot().map_err(|e| self.err(ds, e))?;
        let have = snap.schema();
        let missing: Vec<StructField> = want
            .fields()
            .filter(|f| have.field(f.name()).is_none())
            .cloned()
            .collect();
        for f in have.fields() {
            match want.field(f.name()) {
                Some(w) if w.data_type() == f.data_type() => {}
                _ => {
                    return Err(self.err(
                        ds,
                        format!(
                            "column {} is not one callsync writes with this type; this table was not made by this version of callsync",
                            f.name()
                        ),
                    ));
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        self.check(ds, t)?;
        let snap = t.snapshot().map_err(|e| self.err(ds, e))?;
        let mut fields: Vec<StructField> = have.fields().cloned().collect();
        fields.extend(missing.iter().cloned());
        let schema = StructType::try_new(fields).map_err(|e| self.err(ds, e))?;
        let metadata = snap
            .metadata()
            .clone()
            .with_schema(&schema)
            .map_err(|e| self.err(ds, e))?;
        CommitBuilder::from(CommitProperties::default())
            .with_actions(vec![Action::Metadata(metadata)])
            .build(
                Some(snap),
                t.log_store(),
                DeltaOperation::AddColumn { fields: missing },
            )
            .await
            .map_err(|e| self.err(ds, e))?;
        t.update_incremental(None)
            .await
            .map_err(|e| self.err(ds, e))?;
        info!(table = %self.table_url(ds), "Added the new schema version's columns to the Delta table.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use url::Url;

    use super::*;

    #[test]
    fn an_older_table_gains_the_new_columns_by_a_metadata_change() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = Url::from_directory_path(dir.path()).unwrap();
        let tables = DeltaTables::new(
            Arc::new(object_store::local::LocalFileSystem::new()),
            url,
            rt.handle().clone(),
            10,
            30,
        );
        // A table as an older schema version made it: without `category`.
        let old: Vec<StructField> = table_schema(Dataset::Calls)
            .unwrap()
            .fields()
            .filter(|f| f.name() != "category")
            .cloned()
            .collect();
        let log_store = tables.log_store(Dataset::Calls).unwrap();
        rt.block_on(
            CreateBuilder::new()
                .with_log_store(log_store)
                .with_columns(old)
                .with_partition_columns(PARTITION_COLUMNS)
                .into_future(),
        )
        .unwrap();
        // Opening it through callsync adds the column; nothing else changes.
        assert_eq!(
            tables.txn_version(Dataset::Calls, "callsync/x").unwrap(),
            None
        );
        let mut t = DeltaTable::new(tables.log_store(Dataset::Calls).unwrap());
        rt.block_on(t.load()).unwrap();
        let snap = t.snapshot().unwrap();
        assert!(snap.schema().field("category").is_some());
        assert_eq!(snap.version(), 1);
        assert_eq!(snap.protocol().min_reader_version(), 1);
        assert_eq!(snap.protocol().min_writer_version(), 2);
    }
}
