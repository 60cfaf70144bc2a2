//! What the adapter implements: local copies of the WorldInterface engine's
//! `ContextStore` trait, its error type and its ids, of the same shape as
//! the engine's (`worldinterface_contextstore` and
//! `worldinterface_core::id`), so that the adapter is compiled and tested
//! here as an engine would use it.

/// The engine's ids: newtypes over a UUID, made from one with `From` and
/// read with `AsRef`, shown and parsed as hyphenated text.
pub mod id {
    use std::fmt;

    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    macro_rules! engine_id {
        ($(#[$doc:meta])* $name:ident) => {
            $(#[$doc])*
            #[derive(
                Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            )]
            #[serde(transparent)]
            pub struct $name(Uuid);

            impl $name {
                /// A new random id.
                pub fn new() -> Self {
                    Self(Uuid::new_v4())
                }
            }

            impl Default for $name {
                fn default() -> Self {
                    Self::new()
                }
            }

            impl From<Uuid> for $name {
                fn from(uuid: Uuid) -> Self {
                    Self(uuid)
                }
            }

            impl AsRef<Uuid> for $name {
                fn as_ref(&self) -> &Uuid {
                    &self.0
                }
            }

            impl fmt::Display for $name {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    write!(f, "{}", self.0)
                }
            }
        };
    }

    engine_id!(
        /// A flow execution.
        FlowRunId
    );
    engine_id!(
        /// A node of a flow.
        NodeId
    );
}

/// The engine's store contract and its errors.
pub mod store {
    use serde_json::Value;

    use super::id::{FlowRunId, NodeId};

    /// The engine's store errors. Its step handler retries a step that
    /// failed with [`StorageError`](Self::StorageError) and fails it for
    /// good on the others ([`is_retryable`]).
    #[derive(Debug, thiserror::Error)]
    pub enum ContextStoreError {
        /// A write to a key that already has a value (a retried step: done).
        #[error("output already exists for ({flow_run_id}, {node_id})")]
        AlreadyExists {
            /// The run written to.
            flow_run_id: FlowRunId,
            /// The node written to.
            node_id: NodeId,
        },
        /// A write to a global key that already has a value.
        #[error("global key already exists: {key}")]
        GlobalAlreadyExists {
            /// The key written to.
            key: String,
        },
        /// The value could not be turned into bytes for storage.
        #[error("serialization failed: {0}")]
        SerializationFailed(#[from] serde_json::Error),
        /// The stored bytes could not be read back as a value.
        #[error("deserialization failed: {source}")]
        DeserializationFailed {
            /// Why.
            #[source]
            source: serde_json::Error,
        },
        /// The storage failed (I/O, locking, a deadline).
        #[error("storage error: {0}")]
        StorageError(String),
    }

    /// The engine's rule: only a storage failure may pass on a retry.
    pub fn is_retryable(error: &ContextStoreError) -> bool {
        matches!(error, ContextStoreError::StorageError(_))
    }

    /// The engine's durable store of node outputs and globals.
    pub trait ContextStore: Send + Sync {
        /// Writes a node's output, once.
        fn put(
            &self,
            flow_run_id: FlowRunId,
            node_id: NodeId,
            value: &Value,
        ) -> Result<(), ContextStoreError>;
        /// Reads a node's output.
        fn get(
            &self,
            flow_run_id: FlowRunId,
            node_id: NodeId,
        ) -> Result<Option<Value>, ContextStoreError>;
        /// The nodes of a run that have an output.
        fn list_keys(&self, flow_run_id: FlowRunId) -> Result<Vec<NodeId>, ContextStoreError>;
        /// Writes a global, once.
        fn put_global(&self, key: &str, value: &Value) -> Result<(), ContextStoreError>;
        /// Writes or overwrites a global.
        fn upsert_global(&self, key: &str, value: &Value) -> Result<(), ContextStoreError>;
        /// Reads a global.
        fn get_global(&self, key: &str) -> Result<Option<Value>, ContextStoreError>;
    }
}
