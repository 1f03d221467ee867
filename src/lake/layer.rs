//! The seam where a test wraps every store a lake uses: the object store (an object-store
//! lake's data and Delta log, or a local lake's Delta log) and a local lake's file storage.
//! The fault-injecting stores of `tests/it/faults/` come in here; production opens a lake
//! without a layer.

use std::sync::Arc;

use object_store::ObjectStore;

use super::storage::Storage;

/// Wraps the stores a lake opens.
pub trait StoreLayer: Send + Sync {
    /// The object store (the bucket's root, or the local filesystem's root for a local Delta
    /// log), once, before the lake uses it.
    fn object_store(&self, inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>;
    /// A local lake's file storage.
    fn storage(&self, inner: Box<dyn Storage>) -> Box<dyn Storage>;
}
