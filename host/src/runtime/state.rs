//! [`StepState`]: what a wasmtime `Store` holds for one invocation, and the
//! glue from the generated `store` interface to [`GuestStore`].

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::WitStoreError;
use super::bindings::worldinterface::contextstore::{store, types};
use super::memory::MemoryLimiter;
use crate::guest_store::GuestStore;

/// Bytes of guest stderr kept for error reports.
pub const STDERR_CAPTURE: usize = 16 * 1024;

/// The per-invocation host state.
pub struct StepState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) guest: GuestStore,
    pub(crate) stderr: MemoryOutputPipe,
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
    fn put(
        &mut self,
        flow_run_id: String,
        node_id: String,
        value: String,
    ) -> Result<(), WitStoreError> {
        let _span =
            tracing::debug_span!("put", %flow_run_id, %node_id, bytes = value.len()).entered();
        self.guest
            .put(&flow_run_id, &node_id, &value)
            .map_err(Into::into)
    }

    fn get(
        &mut self,
        flow_run_id: String,
        node_id: String,
    ) -> Result<Option<String>, WitStoreError> {
        let _span = tracing::debug_span!("get", %flow_run_id, %node_id).entered();
        self.guest.get(&flow_run_id, &node_id).map_err(Into::into)
    }

    fn list_keys(&mut self, flow_run_id: String) -> Result<Vec<String>, WitStoreError> {
        let _span = tracing::debug_span!("list_keys", %flow_run_id).entered();
        self.guest.list_keys(&flow_run_id).map_err(Into::into)
    }

    fn put_global(&mut self, key: String, value: String) -> Result<(), WitStoreError> {
        let _span =
            tracing::debug_span!("put_global", key = key.len(), bytes = value.len()).entered();
        self.guest.put_global(&key, &value).map_err(Into::into)
    }

    fn upsert_global(&mut self, key: String, value: String) -> Result<(), WitStoreError> {
        let _span =
            tracing::debug_span!("upsert_global", key = key.len(), bytes = value.len()).entered();
        self.guest.upsert_global(&key, &value).map_err(Into::into)
    }

    fn get_global(&mut self, key: String) -> Result<Option<String>, WitStoreError> {
        let _span = tracing::debug_span!("get_global", key = key.len()).entered();
        self.guest.get_global(&key).map_err(Into::into)
    }
}
