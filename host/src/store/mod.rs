//! The [`ContextStore`] contract and its backends.

use serde_json::Value;

use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
pub use call::{CallContext, Fence};
pub use describe::{Backend, StoreInfo};
pub use provenance::{Provenance, Stored};

use std::sync::Arc;

#[cfg(feature = "async")]
pub mod async_store;
#[cfg(feature = "async")]
pub use async_store::{AsyncContextStore, to_async};

pub mod atomic;
pub mod call;
pub mod describe;

#[cfg(feature = "postgres")]
pub mod postgres;
pub mod provenance;
pub mod recording;
mod schema;
pub mod sqlite;
pub mod worldinterface;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// Durable store for flow node outputs.
///
/// Keyed by `(FlowRunId, NodeId)` for node outputs and by `String` for
/// globals; the two are separate namespaces. All methods are synchronous:
/// call them from a blocking context (or `spawn_blocking`). Implementations
/// are shared between threads, typically as `Arc<dyn ContextStore>`.
///
/// Values rest as JSON text. A backend implements the `*_text` methods,
/// which store and return a [`JsonText`] byte for byte; the
/// `serde_json::Value` methods of the original contract (`put`, `get`,
/// `put_global`, `upsert_global`, `get_global`) are provided on top of them
/// and convert only at this edge.
pub trait ContextStore: Send + Sync {
    /// Writes a node's output as text. Write-once:
    /// - the first call for a `(flow_run_id, node_id)` stores the value and returns `Ok(())`;
    /// - every later call returns [`ContextStoreError::AlreadyExists`] and keeps the first value.
    ///
    /// Of several racing calls for one pair, exactly one succeeds.
    fn put_text(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
    ) -> Result<(), ContextStoreError>;

    /// Reads a node's output as the exact text written; `None` if not yet written.
    fn get_text(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError>;

    /// Lists the node ids that have an output in `flow_run_id` (order unspecified).
    fn list_keys(&self, flow_run_id: FlowRunId) -> Result<Vec<NodeId>, ContextStoreError>;

    /// Writes a global value as text, not scoped to a run. Write-once: a
    /// second write of the same key (also after
    /// [`upsert_global_text`](Self::upsert_global_text)) returns
    /// [`ContextStoreError::GlobalAlreadyExists`]. Any string is a key.
    fn put_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError>;

    /// Writes or overwrites a global value as text.
    fn upsert_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError>;

    /// Reads a global value as the exact text written; `None` if not yet written.
    fn get_global_text(&self, key: &str) -> Result<Option<JsonText>, ContextStoreError>;

    /// Writes a node's output with where it came from. Write-once, as
    /// [`put_text`](Self::put_text); the provenance is stored only with the
    /// value that wins. The default stores the value and drops the
    /// provenance: a backend that keeps it overrides this and
    /// [`provenance`](Self::provenance) together.
    fn put_text_with_provenance(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
        provenance: &Provenance,
    ) -> Result<(), ContextStoreError> {
        let _ = provenance;
        self.put_text(flow_run_id, node_id, value)
    }

    /// Where a node's output came from: `None` if there is no output, or it
    /// was written without provenance (by `put`, or before provenance was
    /// recorded). The default knows none.
    fn provenance(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError> {
        let _ = (flow_run_id, node_id);
        Ok(None)
    }

    /// Writes a node's output. Write-once, as [`put_text`](Self::put_text).
    fn put(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &Value,
    ) -> Result<(), ContextStoreError> {
        self.put_text(flow_run_id, node_id, &encode(value)?)
    }

    /// Reads a node's output; `None` if not yet written.
    fn get(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Value>, ContextStoreError> {
        decode(self.get_text(flow_run_id, node_id)?)
    }

    /// Writes a global value. Write-once, as [`put_global_text`](Self::put_global_text).
    fn put_global(&self, key: &str, value: &Value) -> Result<(), ContextStoreError> {
        self.put_global_text(key, &encode(value)?)
    }

    /// Writes or overwrites a global value (mutable metadata such as a coordinator map).
    fn upsert_global(&self, key: &str, value: &Value) -> Result<(), ContextStoreError> {
        self.upsert_global_text(key, &encode(value)?)
    }

    /// Reads a global value; `None` if not yet written.
    fn get_global(&self, key: &str) -> Result<Option<Value>, ContextStoreError> {
        decode(self.get_global_text(key)?)
    }

    /// What this store is: backend, location, durability, journal mode,
    /// schema version, group commit, read from the open store (see
    /// [`StoreInfo`]). This crate's backends answer it; a store that does
    /// not (the default) fails with a [`ContextStoreError::StorageError`].
    fn describe(&self) -> Result<StoreInfo, ContextStoreError> {
        Err(ContextStoreError::StorageError(
            "this store does not describe itself".into(),
        ))
    }

    /// The backend's own async interface, borrowed, where it has one (this
    /// crate's backends do): for callers that hold a `&dyn ContextStore`
    /// (`flow status` finds the coordinator through it). `None` by default.
    #[cfg(feature = "async")]
    fn as_async(&self) -> Option<&dyn AsyncContextStore> {
        None
    }

    /// The same store as an `Arc` of its own async interface, where it has
    /// one: what [`to_async`] hands out, so that an async call reaches the
    /// backend without going through an adapter. `None` by default; a
    /// backend that overrides [`as_async`](Self::as_async) overrides this
    /// too (`Some(self)`).
    #[cfg(feature = "async")]
    fn into_async(self: Arc<Self>) -> Option<Arc<dyn AsyncContextStore>> {
        None
    }
}

/// Whether `url` names a PostgreSQL database (`postgres://…` or `postgresql://…`).
pub fn is_postgres_url(url: &str) -> bool {
    let lower = url.get(..13).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// Opens the store a URL names: `postgres://…` or `postgresql://…` a
/// PostgreSQL database ([`postgres::PostgresContextStore::connect`], with
/// the `postgres` feature), anything else an SQLite file path
/// ([`sqlite::SqliteContextStore::open`]).
pub fn open_url(url: &str) -> Result<Arc<dyn ContextStore>, ContextStoreError> {
    if is_postgres_url(url) {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(postgres::PostgresContextStore::connect(url)?));
        #[cfg(not(feature = "postgres"))]
        return Err(ContextStoreError::StorageError(
            "this build has no PostgreSQL support (the `postgres` feature)".into(),
        ));
    }
    Ok(Arc::new(sqlite::SqliteContextStore::open(url)?))
}

/// Opens the store that `url` names for reading only: nothing is created
/// or migrated. For an SQLite file a read-only file works (see
/// [`SqliteContextStore::open_read_only`](sqlite::SqliteContextStore::open_read_only));
/// a PostgreSQL database must already hold this build's schema
/// ([`postgres::PostgresContextStore::connect_read_only`]): no DDL runs.
pub fn open_url_read_only(url: &str) -> Result<Arc<dyn ContextStore>, ContextStoreError> {
    if is_postgres_url(url) {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(postgres::PostgresContextStore::connect_read_only(
            url,
        )?));
        #[cfg(not(feature = "postgres"))]
        return Err(ContextStoreError::StorageError(
            "this build has no PostgreSQL support (the `postgres` feature)".into(),
        ));
    }
    Ok(Arc::new(sqlite::SqliteContextStore::open_read_only(
        url,
        sqlite::SqliteOptions::default(),
    )?))
}

/// A value's text for the store: [`ContextStoreError::SerializationFailed`]
/// if it cannot be written (deeper than [`crate::json::MAX_DEPTH`]).
pub fn encode(value: &Value) -> Result<JsonText, ContextStoreError> {
    JsonText::from_value(value).map_err(|e| ContextStoreError::SerializationFailed(e.to_string()))
}

/// Stored text as a value: [`ContextStoreError::DeserializationFailed`] if
/// it does not parse.
pub fn decode(text: Option<JsonText>) -> Result<Option<Value>, ContextStoreError> {
    text.map(|t| {
        t.to_value()
            .map_err(|e| ContextStoreError::DeserializationFailed(e.to_string()))
    })
    .transpose()
}
