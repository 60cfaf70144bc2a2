//! The engine's `ContextStore` trait, implemented by delegating to
//! contextstore's SQLite store. In an engine, the `crate::engine` paths
//! below are the engine's own crates (`worldinterface_contextstore`,
//! `worldinterface_core::id`); the rest is the same.

use contextstore::{ContextStore as _, ContextStoreError as Ours, SqliteContextStore};
use serde_json::Value;

use crate::engine::id::{FlowRunId, NodeId};
use crate::engine::store::{ContextStore, ContextStoreError as Theirs};

/// The engine's store, kept in a contextstore SQLite file.
pub struct Store(pub SqliteContextStore);

impl Store {
    /// Opens (creating, or converting an engine's own database) the file.
    pub fn open(path: &std::path::Path) -> Result<Self, Theirs> {
        SqliteContextStore::open(path).map(Self).map_err(theirs)
    }
}

// Both sides' ids are UUIDs: they convert without text.
fn run(id: FlowRunId) -> contextstore::FlowRunId {
    contextstore::FlowRunId::from(*id.as_ref())
}
fn node(id: NodeId) -> contextstore::NodeId {
    contextstore::NodeId::from(*id.as_ref())
}
fn node_back(id: contextstore::NodeId) -> NodeId {
    NodeId::from(*id.as_uuid())
}

/// Variant for variant. The engine retries `StorageError` only, so that is
/// what a failure that may pass becomes (a busy or unreachable backend, a
/// deadline); a value that cannot be written or read back is not retried.
fn theirs(error: Ours) -> Theirs {
    match error {
        Ours::AlreadyExists {
            flow_run_id,
            node_id,
        } => Theirs::AlreadyExists {
            flow_run_id: FlowRunId::from(*flow_run_id.as_uuid()),
            node_id: node_back(node_id),
        },
        Ours::GlobalAlreadyExists { key } => Theirs::GlobalAlreadyExists { key },
        Ours::SerializationFailed(why) => {
            Theirs::SerializationFailed(serde::ser::Error::custom(why))
        }
        Ours::DeserializationFailed(why) => Theirs::DeserializationFailed {
            source: serde::de::Error::custom(why),
        },
        Ours::StorageError(why) => Theirs::StorageError(why),
        timeout @ Ours::Timeout(_) => Theirs::StorageError(timeout.to_string()),
        // Only a write under a worker's claim (the async interface) is
        // fenced; this trait makes none, so it does not happen here.
        fenced @ Ours::Fenced { .. } => Theirs::StorageError(fenced.to_string()),
    }
}

impl ContextStore for Store {
    fn put(&self, r: FlowRunId, n: NodeId, v: &Value) -> Result<(), Theirs> {
        self.0.put(run(r), node(n), v).map_err(theirs)
    }
    fn get(&self, r: FlowRunId, n: NodeId) -> Result<Option<Value>, Theirs> {
        self.0.get(run(r), node(n)).map_err(theirs)
    }
    fn list_keys(&self, r: FlowRunId) -> Result<Vec<NodeId>, Theirs> {
        let ids = self.0.list_keys(run(r)).map_err(theirs)?;
        Ok(ids.into_iter().map(node_back).collect())
    }
    fn put_global(&self, k: &str, v: &Value) -> Result<(), Theirs> {
        self.0.put_global(k, v).map_err(theirs)
    }
    fn upsert_global(&self, k: &str, v: &Value) -> Result<(), Theirs> {
        self.0.upsert_global(k, v).map_err(theirs)
    }
    fn get_global(&self, k: &str) -> Result<Option<Value>, Theirs> {
        self.0.get_global(k).map_err(theirs)
    }
}
