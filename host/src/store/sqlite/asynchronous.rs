//! The SQLite store through [`AsyncContextStore`]: every call under its
//! [`CallContext`].
//!
//! - Reads run on the calling thread: in WAL mode a reader never waits
//!   behind the writer, so a read is short. It waits out a database that
//!   another process holds locked at most until the call's deadline.
//! - Writes go through group commit with the call's give-up time (the
//!   earlier of its deadline and [`SqliteOptions::busy_deadline`]). Where
//!   the caller's thread may not block ([`CallContext::may_block`] is
//!   `false`) and a tokio runtime is current, the write runs on a blocking
//!   thread (`spawn_blocking`) and is awaited, so that a commit never holds
//!   up an async executor; otherwise it runs inline. Its answer is awaited
//!   in full rather than cut off at the deadline: group commit answers by
//!   the give-up time unless the write is already inside a committing
//!   transaction, and then the caller learns that commit's result.
//! - [`CallContext::fence`] is ignored: an SQLite file has one process per
//!   run and no coordinator, so there is no claim to check.
//!
//! [`SqliteOptions::busy_deadline`]: super::SqliteOptions::busy_deadline

use super::ops::WriteOp;
use super::{SqliteContextStore, put_op};
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use crate::store::{AsyncContextStore, CallContext, Provenance, Stored};

impl SqliteContextStore {
    /// Runs one write under `cx`: see the [module docs](self).
    pub(super) async fn write_under(
        &self,
        cx: &CallContext,
        op: WriteOp,
    ) -> Result<(), ContextStoreError> {
        let writer = self.writer()?;
        if cx.expired() {
            return Err(ContextStoreError::Timeout(
                "the call's deadline passed before the write started; it was not applied".into(),
            ));
        }
        let give_up = cx.give_up(self.options.busy_deadline);
        if cx.may_block || tokio::runtime::Handle::try_current().is_err() {
            return writer.submit(op, give_up);
        }
        let writer = writer.clone();
        tokio::task::spawn_blocking(move || writer.submit(op, give_up))
            .await
            .map_err(|e| {
                ContextStoreError::StorageError(format!(
                    "the thread running the write failed ({e}); it may or may not be stored"
                ))
            })?
    }
}

#[async_trait::async_trait]
impl AsyncContextStore for SqliteContextStore {
    async fn put(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
        provenance: Option<&Provenance>,
    ) -> Result<(), ContextStoreError> {
        let op = put_op(flow_run_id, node_id, value, provenance);
        self.write_under(cx, op).await
    }

    async fn get(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        self.get_text_until(cx.give_up(self.options.busy_deadline), flow_run_id, node_id)
    }

    async fn get_many(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_ids: &[NodeId],
    ) -> Result<Vec<Option<JsonText>>, ContextStoreError> {
        self.get_many_until(
            cx.give_up(self.options.busy_deadline),
            flow_run_id,
            node_ids,
        )
    }

    async fn get_many_with_provenance(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_ids: &[NodeId],
    ) -> Result<Vec<Option<Stored>>, ContextStoreError> {
        self.get_many_with_provenance_until(
            cx.give_up(self.options.busy_deadline),
            flow_run_id,
            node_ids,
        )
    }

    async fn get_globals(
        &self,
        cx: &CallContext,
        keys: &[String],
    ) -> Result<Vec<Option<JsonText>>, ContextStoreError> {
        self.get_globals_until(cx.give_up(self.options.busy_deadline), keys)
    }

    async fn list_keys(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
    ) -> Result<Vec<NodeId>, ContextStoreError> {
        self.list_keys_until(cx.give_up(self.options.busy_deadline), flow_run_id)
    }

    async fn put_global(
        &self,
        cx: &CallContext,
        key: &str,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        let op = WriteOp::PutGlobal {
            key: key.to_owned(),
            value: value.clone(),
        };
        self.write_under(cx, op).await
    }

    async fn upsert_global(
        &self,
        cx: &CallContext,
        key: &str,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        let op = WriteOp::UpsertGlobal {
            key: key.to_owned(),
            value: value.clone(),
        };
        self.write_under(cx, op).await
    }

    async fn get_global(
        &self,
        cx: &CallContext,
        key: &str,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        self.get_global_until(cx.give_up(self.options.busy_deadline), key)
    }

    fn runs(&self) -> Option<&dyn crate::runs::RunIndex> {
        Some(self)
    }

    async fn provenance(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError> {
        self.provenance_until(cx.give_up(self.options.busy_deadline), flow_run_id, node_id)
    }
}
