//! [`StepState`]: what a wasmtime `Store` holds for one invocation, and the
//! glue from the generated `store` interface to [`GuestStore`].

use tracing::Instrument;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::WitStoreError;
use super::bindings::worldinterface::contextstore::{store, types};
use super::limiter::GuestLimiter;
use super::stderr::StderrRing;
use crate::guest_store::GuestStore;

/// Bytes of guest stderr kept (the last ones) for error reports.
pub const STDERR_CAPTURE: usize = 16 * 1024;

/// The per-invocation host state.
pub struct StepState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: GuestLimiter,
    /// The store as this invocation may use it; every call carries the
    /// invocation's deadline and claim.
    pub(crate) guest: GuestStore,
    pub(crate) stderr: StderrRing,
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StepState {}

/// Each call: a debug span, then [`GuestStore`]; errors become the WIT variant.
impl store::Host for StepState {
    async fn put(
        &mut self,
        flow_run_id: String,
        node_id: String,
        value: String,
    ) -> Result<(), WitStoreError> {
        let span = tracing::debug_span!("put", %flow_run_id, %node_id, bytes = value.len());
        self.guest
            .put(&flow_run_id, &node_id, value)
            .instrument(span)
            .await
            .map_err(Into::into)
    }

    async fn get(
        &mut self,
        flow_run_id: String,
        node_id: String,
    ) -> Result<Option<String>, WitStoreError> {
        let span = tracing::debug_span!("get", %flow_run_id, %node_id);
        self.guest
            .get(&flow_run_id, &node_id)
            .instrument(span)
            .await
            .map_err(Into::into)
    }

    async fn list_keys(&mut self, flow_run_id: String) -> Result<Vec<String>, WitStoreError> {
        let span = tracing::debug_span!("list_keys", %flow_run_id);
        self.guest
            .list_keys(&flow_run_id)
            .instrument(span)
            .await
            .map_err(Into::into)
    }

    async fn put_global(&mut self, key: String, value: String) -> Result<(), WitStoreError> {
        let span = tracing::debug_span!("put_global", key = key.len(), bytes = value.len());
        self.guest
            .put_global(&key, value)
            .instrument(span)
            .await
            .map_err(Into::into)
    }

    async fn upsert_global(&mut self, key: String, value: String) -> Result<(), WitStoreError> {
        let span = tracing::debug_span!("upsert_global", key = key.len(), bytes = value.len());
        self.guest
            .upsert_global(&key, value)
            .instrument(span)
            .await
            .map_err(Into::into)
    }

    async fn get_global(&mut self, key: String) -> Result<Option<String>, WitStoreError> {
        let span = tracing::debug_span!("get_global", key = key.len());
        self.guest
            .get_global(&key)
            .instrument(span)
            .await
            .map_err(Into::into)
    }
}
