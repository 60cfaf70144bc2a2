//! Write the output, then complete the step: the original store's
//! [`AtomicWriter`], with its names and semantics.
//!
//! A step is complete only once its output is durable. The protocol:
//!
//! 1. write the output with `put`;
//! 2. if the write succeeded, call the completion callback;
//! 3. if it failed with [`ContextStoreError::AlreadyExists`], the output is
//!    already durable (an earlier attempt wrote it): call the completion
//!    callback too, so that a retried step completes idempotently;
//! 4. on any other error, do **not** complete: return the error, and the
//!    step will be retried.
//!
//! If the completion itself fails, the output stays stored; the retry's
//! write meets `AlreadyExists` and completes.

use std::sync::Arc;

use serde_json::Value;

use super::ContextStore;
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};

/// The error a completion callback returns.
pub type CompletionError = Box<dyn std::error::Error + Send + Sync>;

/// Why [`AtomicWriter::write_and_complete`] did not complete.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    /// The write failed for a reason other than `AlreadyExists`: the output
    /// is not stored and the completion was not called.
    #[error("context store write failed: {0}")]
    WriteFailed(ContextStoreError),
    /// The output is stored (now or earlier) but the completion failed. A
    /// retry meets `AlreadyExists` and calls the completion again.
    #[error("completion failed after successful write: {0}")]
    CompletionFailed(CompletionError),
}

/// Runs the write-before-complete protocol against one store. Works over
/// any backend, also a shared `Arc<dyn ContextStore>`.
pub struct AtomicWriter<S: ContextStore + ?Sized> {
    store: Arc<S>,
}

impl<S: ContextStore + ?Sized> AtomicWriter<S> {
    /// A writer over `store`.
    pub fn new(store: Arc<S>) -> Self {
        Self { store }
    }

    /// Writes `value` as the output of `(flow_run_id, node_id)`, then calls
    /// `complete` if the write succeeded or found the output already stored
    /// (an idempotent retry). Returns what `complete` returned, or the write
    /// error without calling `complete`.
    pub fn write_and_complete<F, T>(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &Value,
        complete: F,
    ) -> Result<T, AtomicWriteError>
    where
        F: FnOnce() -> Result<T, CompletionError>,
    {
        write_and_complete(self.store.as_ref(), flow_run_id, node_id, value, complete)
    }
}

/// [`AtomicWriter::write_and_complete`] over a store reference.
pub fn write_and_complete<S, F, T>(
    store: &S,
    flow_run_id: FlowRunId,
    node_id: NodeId,
    value: &Value,
    complete: F,
) -> Result<T, AtomicWriteError>
where
    S: ContextStore + ?Sized,
    F: FnOnce() -> Result<T, CompletionError>,
{
    match store.put(flow_run_id, node_id, value) {
        Ok(()) => {}
        Err(ContextStoreError::AlreadyExists { .. }) => {
            tracing::info!(%flow_run_id, %node_id, "output already stored (idempotent retry); completing");
        }
        Err(error) => return Err(AtomicWriteError::WriteFailed(error)),
    }
    complete().map_err(AtomicWriteError::CompletionFailed)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde_json::json;

    use super::*;
    use crate::SqliteContextStore;
    use crate::json::JsonText;

    fn writer() -> (Arc<dyn ContextStore>, AtomicWriter<dyn ContextStore>) {
        let store: Arc<dyn ContextStore> = Arc::new(SqliteContextStore::in_memory().unwrap());
        (store.clone(), AtomicWriter::new(store))
    }

    #[test]
    fn a_fresh_write_completes_and_stores_the_value() {
        let (store, writer) = writer();
        let (run, node) = (FlowRunId::new(), NodeId::new());
        let done = writer
            .write_and_complete(run, node, &json!({"out": 1}), || Ok("completed"))
            .unwrap();
        assert_eq!(done, "completed");
        assert_eq!(store.get(run, node).unwrap(), Some(json!({"out": 1})));
    }

    #[test]
    fn already_exists_still_completes_and_keeps_the_first_value() {
        let (store, writer) = writer();
        let (run, node) = (FlowRunId::new(), NodeId::new());
        store.put(run, node, &json!("first")).unwrap();
        let called = Cell::new(false);
        writer
            .write_and_complete(run, node, &json!("retry"), || {
                called.set(true);
                Ok(())
            })
            .unwrap();
        assert!(called.get(), "the completion was not called on a retry");
        assert_eq!(store.get(run, node).unwrap(), Some(json!("first")));
    }

    /// A store whose every write fails.
    struct FullDisk;

    impl ContextStore for FullDisk {
        fn put_text(&self, _: FlowRunId, _: NodeId, _: &JsonText) -> Result<(), ContextStoreError> {
            Err(ContextStoreError::StorageError("disk full".into()))
        }
        fn get_text(&self, _: FlowRunId, _: NodeId) -> Result<Option<JsonText>, ContextStoreError> {
            Ok(None)
        }
        fn list_keys(&self, _: FlowRunId) -> Result<Vec<NodeId>, ContextStoreError> {
            Ok(Vec::new())
        }
        fn put_global_text(&self, _: &str, _: &JsonText) -> Result<(), ContextStoreError> {
            Err(ContextStoreError::StorageError("disk full".into()))
        }
        fn upsert_global_text(&self, _: &str, _: &JsonText) -> Result<(), ContextStoreError> {
            Err(ContextStoreError::StorageError("disk full".into()))
        }
        fn get_global_text(&self, _: &str) -> Result<Option<JsonText>, ContextStoreError> {
            Ok(None)
        }
    }

    #[test]
    fn another_write_error_does_not_complete() {
        let writer = AtomicWriter::new(Arc::new(FullDisk));
        let called = Cell::new(false);
        let err = writer
            .write_and_complete(FlowRunId::new(), NodeId::new(), &json!(1), || {
                called.set(true);
                Ok(())
            })
            .unwrap_err();
        assert!(
            matches!(&err, AtomicWriteError::WriteFailed(ContextStoreError::StorageError(m)) if m == "disk full"),
            "{err:?}"
        );
        assert!(!called.get(), "completed although the write failed");
    }

    #[test]
    fn a_failed_completion_keeps_the_output_and_a_retry_completes() {
        let (store, writer) = writer();
        let (run, node) = (FlowRunId::new(), NodeId::new());
        let err = writer
            .write_and_complete(run, node, &json!("kept"), || -> Result<(), _> {
                Err("the engine crashed".into())
            })
            .unwrap_err();
        assert!(
            matches!(&err, AtomicWriteError::CompletionFailed(e) if e.to_string() == "the engine crashed"),
            "{err:?}"
        );
        assert_eq!(store.get(run, node).unwrap(), Some(json!("kept")));
        let retried = write_and_complete(store.as_ref(), run, node, &json!("kept"), || Ok(7));
        assert_eq!(retried.unwrap(), 7);
    }
}
