//! The [`ContextStore`] contract and its backends.

use serde_json::Value;

use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};

mod schema;
pub mod sqlite;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// Durable store for flow node outputs.
///
/// Keyed by `(FlowRunId, NodeId)` for node outputs and by `String` for
/// globals; the two are separate namespaces. All methods are synchronous:
/// call them from a blocking context (or `spawn_blocking`). Implementations
/// are shared between threads, typically as `Arc<dyn ContextStore>`.
pub trait ContextStore: Send + Sync {
    /// Writes a node's output. Write-once:
    /// - the first call for a `(flow_run_id, node_id)` stores the value and returns `Ok(())`;
    /// - every later call returns [`ContextStoreError::AlreadyExists`] and keeps the first value.
    ///
    /// Of several racing calls for one pair, exactly one succeeds.
    fn put(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &Value,
    ) -> Result<(), ContextStoreError>;

    /// Reads a node's output; `None` if not yet written.
    fn get(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Value>, ContextStoreError>;

    /// Lists the node ids that have an output in `flow_run_id` (order unspecified).
    fn list_keys(&self, flow_run_id: FlowRunId) -> Result<Vec<NodeId>, ContextStoreError>;

    /// Writes a global value, not scoped to a run. Write-once: a second write
    /// of the same key (also after [`upsert_global`](Self::upsert_global))
    /// returns [`ContextStoreError::GlobalAlreadyExists`]. Any string is a key.
    fn put_global(&self, key: &str, value: &Value) -> Result<(), ContextStoreError>;

    /// Writes or overwrites a global value (mutable metadata such as a coordinator map).
    fn upsert_global(&self, key: &str, value: &Value) -> Result<(), ContextStoreError>;

    /// Reads a global value; `None` if not yet written.
    fn get_global(&self, key: &str) -> Result<Option<Value>, ContextStoreError>;
}
