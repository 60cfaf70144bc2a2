//! [`AsyncContextStore`]: the store as the runtime and the flow runner use
//! it. Every call is async and carries its [`CallContext`] (deadline, and
//! on a shared run the claim it runs under) explicitly.
//!
//! The rule for every backend: a call answered with an error because its
//! deadline passed is never applied afterwards, and a call answered `Ok` is
//! durable. A write already inside a committing transaction when the
//! deadline passes is answered with that commit's result.
//!
//! The seed's synchronous [`ContextStore`] stays for embedders; the
//! backends of this crate implement both. [`to_async`] gives the async view
//! of any `Arc<dyn ContextStore>`: the backend's own when it has one
//! ([`ContextStore::into_async`]), else an adapter that runs each call on a
//! blocking thread (such a store cannot be stopped inside a call: the
//! adapter stops waiting at the deadline, but the call may still finish).

use std::sync::Arc;

use crate::coord::Coordinator;
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use crate::runs::RunIndex;
use crate::store::{CallContext, ContextStore, Provenance, Stored};

/// The store's calls, async, each with its context. See the [module docs](self).
#[async_trait::async_trait]
pub trait AsyncContextStore: Send + Sync {
    /// Writes a node's output, write-once (see [`ContextStore::put_text`]),
    /// with its provenance if given. Under a fence, refused with
    /// [`ContextStoreError::Fenced`] unless the claim is current, and the
    /// claim is finished in the same transaction.
    async fn put(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
        provenance: Option<&Provenance>,
    ) -> Result<(), ContextStoreError>;

    /// Reads a node's output as the exact text written.
    async fn get(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError>;

    /// Reads the outputs of several nodes of one run, in the order asked:
    /// one round trip (one query, one read transaction) where the backend
    /// can, instead of one a node. A node without an output is `None`.
    async fn get_many(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_ids: &[NodeId],
    ) -> Result<Vec<Option<JsonText>>, ContextStoreError> {
        let mut values = Vec::with_capacity(node_ids.len());
        for node_id in node_ids {
            values.push(self.get(cx, flow_run_id, *node_id).await?);
        }
        Ok(values)
    }

    /// Reads the outputs of several nodes of one run with their provenance
    /// (`None` for an output stored without it), in the order asked, in one
    /// round trip where the backend can: what a worker checks of the nodes
    /// another worker finished.
    async fn get_many_with_provenance(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_ids: &[NodeId],
    ) -> Result<Vec<Option<Stored>>, ContextStoreError> {
        let mut found = Vec::with_capacity(node_ids.len());
        for node_id in node_ids {
            let value = self.get(cx, flow_run_id, *node_id).await?;
            found.push(match value {
                Some(value) => Some(Stored {
                    value,
                    provenance: self.provenance(cx, flow_run_id, *node_id).await?,
                }),
                None => None,
            });
        }
        Ok(found)
    }

    /// Reads several globals, in the order asked, in one round trip where
    /// the backend can (as [`get_many`](Self::get_many)).
    async fn get_globals(
        &self,
        cx: &CallContext,
        keys: &[String],
    ) -> Result<Vec<Option<JsonText>>, ContextStoreError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get_global(cx, key).await?);
        }
        Ok(values)
    }

    /// The node ids with an output in `flow_run_id`.
    async fn list_keys(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
    ) -> Result<Vec<NodeId>, ContextStoreError>;

    /// Writes a global, write-once (fenced as [`put`](Self::put)).
    async fn put_global(
        &self,
        cx: &CallContext,
        key: &str,
        value: &JsonText,
    ) -> Result<(), ContextStoreError>;

    /// Writes or overwrites a global (fenced as [`put`](Self::put)).
    async fn upsert_global(
        &self,
        cx: &CallContext,
        key: &str,
        value: &JsonText,
    ) -> Result<(), ContextStoreError>;

    /// Reads a global as the exact text written.
    async fn get_global(
        &self,
        cx: &CallContext,
        key: &str,
    ) -> Result<Option<JsonText>, ContextStoreError>;

    /// Where a node's output came from (see [`ContextStore::provenance`]).
    async fn provenance(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError>;

    /// The coordination of workers sharing runs, for a backend that many
    /// processes share; `None` (the default) when every run has one process.
    fn coordinator(&self) -> Option<&dyn Coordinator> {
        None
    }

    /// The runs index ([`crate::runs`]), for a backend that keeps one
    /// (this crate's do); `None` by default.
    fn runs(&self) -> Option<&dyn RunIndex> {
        None
    }
}

/// The async view of `store`: its own ([`ContextStore::as_async`]), or an
/// adapter that runs its synchronous calls on blocking threads.
pub fn to_async(store: Arc<dyn ContextStore>) -> Arc<dyn AsyncContextStore> {
    match store.clone().into_async() {
        Some(native) => native,
        None => Arc::new(Adapter(store)),
    }
}

/// A synchronous store seen through the async interface: a store without
/// one of its own ([`ContextStore::into_async`] is `None`), every call run
/// on a blocking thread.
struct Adapter(Arc<dyn ContextStore>);

/// Runs `f` on a blocking thread, waiting at most until the call's
/// deadline; runs it inline where the caller may block.
async fn blocking<T: Send + 'static>(
    cx: &CallContext,
    store: &Arc<dyn ContextStore>,
    f: impl FnOnce(&dyn ContextStore) -> Result<T, ContextStoreError> + Send + 'static,
) -> Result<T, ContextStoreError> {
    if cx.expired() {
        return Err(ContextStoreError::Timeout(
            "the call's deadline passed before it started".into(),
        ));
    }
    if cx.may_block || tokio::runtime::Handle::try_current().is_err() {
        return f(store.as_ref());
    }
    let store = store.clone();
    let task = tokio::task::spawn_blocking(move || f(store.as_ref()));
    let joined = match cx.deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline.into(), task).await {
            Ok(joined) => joined,
            Err(_) => {
                return Err(ContextStoreError::Timeout(
                    "the store did not answer by the call's deadline".into(),
                ));
            }
        },
        None => task.await,
    };
    joined.map_err(|e| ContextStoreError::StorageError(format!("the store call failed: {e}")))?
}

#[async_trait::async_trait]
impl AsyncContextStore for Adapter {
    async fn put(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
        provenance: Option<&Provenance>,
    ) -> Result<(), ContextStoreError> {
        let (value, provenance) = (value.clone(), provenance.cloned());
        blocking(cx, &self.0, move |store| match &provenance {
            Some(p) => store.put_text_with_provenance(flow_run_id, node_id, &value, p),
            None => store.put_text(flow_run_id, node_id, &value),
        })
        .await
    }

    async fn get(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        blocking(cx, &self.0, move |store| {
            store.get_text(flow_run_id, node_id)
        })
        .await
    }

    async fn list_keys(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
    ) -> Result<Vec<NodeId>, ContextStoreError> {
        blocking(cx, &self.0, move |store| store.list_keys(flow_run_id)).await
    }

    async fn put_global(
        &self,
        cx: &CallContext,
        key: &str,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        let (key, value) = (key.to_owned(), value.clone());
        blocking(cx, &self.0, move |store| {
            store.put_global_text(&key, &value)
        })
        .await
    }

    async fn upsert_global(
        &self,
        cx: &CallContext,
        key: &str,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        let (key, value) = (key.to_owned(), value.clone());
        blocking(cx, &self.0, move |store| {
            store.upsert_global_text(&key, &value)
        })
        .await
    }

    async fn get_global(
        &self,
        cx: &CallContext,
        key: &str,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        let key = key.to_owned();
        blocking(cx, &self.0, move |store| store.get_global_text(&key)).await
    }

    async fn provenance(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError> {
        blocking(cx, &self.0, move |store| {
            store.provenance(flow_run_id, node_id)
        })
        .await
    }
}
