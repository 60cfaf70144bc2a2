//! The store's error type.

use crate::id::{FlowRunId, NodeId};

/// Why a [`ContextStore`](crate::ContextStore) operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContextStoreError {
    /// `put` found an output already stored for this pair. The stored value
    /// is kept; a retried step reads this as "already done".
    #[error("output already exists for ({flow_run_id}, {node_id})")]
    AlreadyExists {
        /// The flow run of the refused write.
        flow_run_id: FlowRunId,
        /// The node of the refused write.
        node_id: NodeId,
    },

    /// `put_global` found the key already written (by `put_global` or
    /// `upsert_global`). The stored value is kept.
    #[error("global {key:?} already exists")]
    GlobalAlreadyExists {
        /// The key of the refused write.
        key: String,
    },

    /// A value could not be turned into JSON text.
    #[error("value could not be serialized: {0}")]
    SerializationFailed(String),

    /// A stored value could not be read back as JSON.
    #[error("stored value could not be deserialized: {0}")]
    DeserializationFailed(String),

    /// The storage backend failed (I/O, corruption, locking, schema).
    #[error("storage error: {0}")]
    StorageError(String),

    /// The call's deadline passed before it was done. A call answered
    /// this way was not applied and never will be (a write caught inside
    /// its commit is answered with the commit's result instead).
    #[error("deadline passed: {0}")]
    Timeout(String),

    /// A write made under a claim that is no longer current: another worker
    /// took the node over (its fencing token is newer), or the claim was
    /// given up. Nothing was written.
    #[error(
        "fenced: the claim on ({flow_run_id}, {node_id}) with token {token} is no longer current"
    )]
    Fenced {
        /// The run of the refused write's claim.
        flow_run_id: FlowRunId,
        /// The node of the refused write's claim.
        node_id: NodeId,
        /// The stale token the write carried.
        token: i64,
    },
}

impl ContextStoreError {
    /// Whether the error may pass if the call is tried again: the backend
    /// was unreachable, restarting or out of time, as opposed to a refusal
    /// (write-once, fencing, a bad value) that would come back the same.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::StorageError(_) | Self::Timeout(_))
    }
}

impl From<rusqlite::Error> for ContextStoreError {
    fn from(error: rusqlite::Error) -> Self {
        Self::StorageError(error.to_string())
    }
}
