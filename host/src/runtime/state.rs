//! [`StepState`]: what a wasmtime `Store` holds for one invocation, and the
//! glue from the generated `store` interface to [`GuestStore`].

use std::time::Instant;

use tracing::Instrument;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::WitStoreError;
use super::bindings::worldinterface::contextstore::{store, types};
use super::limiter::GuestLimiter;
use super::stderr::StderrRing;
use crate::guest_store::{GuestResult, GuestStore, GuestStoreError};
use crate::store::deadline;

/// Bytes of guest stderr kept (the last ones) for error reports.
pub const STDERR_CAPTURE: usize = 16 * 1024;

/// Where a guest's writes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    /// On the invocation's own thread: for the blocking entry point, whose
    /// caller's thread waits for the invocation anyway.
    Inline,
    /// On a blocking pool thread, so that an async executor is never held
    /// up by a commit waiting for the disk.
    Blocking,
}

/// The per-invocation host state.
pub struct StepState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: GuestLimiter,
    /// `None` only while a write runs on a blocking thread.
    pub(crate) guest: Option<GuestStore>,
    pub(crate) stderr: StderrRing,
    /// When the invocation's time is up: no store call waits past it.
    pub(crate) deadline: Instant,
    /// Where the guest's writes run.
    pub(crate) writes: Writes,
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

impl StepState {
    /// The guest's store, for a call made inline: reads, which never wait
    /// on the writer, run on the invocation's own thread under its deadline.
    fn read<T>(&mut self, f: impl FnOnce(&mut GuestStore) -> GuestResult<T>) -> GuestResult<T> {
        let deadline = self.deadline;
        let guest = self.guest.as_mut().ok_or_else(busy)?;
        deadline::with_deadline(deadline, || f(guest))
    }

    /// Runs a write under the invocation's deadline: inline, or on a
    /// blocking thread (a durable commit waits for the disk) without
    /// holding up the async executor. If the invocation is cancelled (its
    /// time is up), the write still finishes or fails whole on its thread,
    /// by the deadline.
    async fn write(
        &mut self,
        f: impl FnOnce(&mut GuestStore) -> GuestResult<()> + Send + 'static,
    ) -> GuestResult<()> {
        let deadline = self.deadline;
        if self.writes == Writes::Inline {
            let guest = self.guest.as_mut().ok_or_else(busy)?;
            return deadline::with_deadline(deadline, || f(guest));
        }
        let mut guest = self.guest.take().ok_or_else(busy)?;
        let joined = tokio::task::spawn_blocking(move || {
            let result = deadline::with_deadline(deadline, || f(&mut guest));
            (guest, result)
        })
        .await;
        match joined {
            Ok((guest, result)) => {
                self.guest = Some(guest);
                result
            }
            // The closure does not panic on guest data; if the store itself
            // panicked, the guest store is gone and every later call fails.
            Err(error) => Err(GuestStoreError::Storage(format!(
                "the store failed: {error}"
            ))),
        }
    }
}

fn busy() -> GuestStoreError {
    GuestStoreError::Storage("the store is unavailable after an earlier failure".into())
}

/// Each call: a debug span, then [`GuestStore`]; errors become the WIT variant.
impl store::Host for StepState {
    async fn put(
        &mut self,
        flow_run_id: String,
        node_id: String,
        value: String,
    ) -> Result<(), WitStoreError> {
        let span = tracing::debug_span!("put", %flow_run_id, %node_id, bytes = value.len());
        self.write(move |g| g.put(&flow_run_id, &node_id, value))
            .instrument(span)
            .await
            .map_err(Into::into)
    }

    async fn get(
        &mut self,
        flow_run_id: String,
        node_id: String,
    ) -> Result<Option<String>, WitStoreError> {
        let _span = tracing::debug_span!("get", %flow_run_id, %node_id).entered();
        self.read(|g| g.get(&flow_run_id, &node_id))
            .map_err(Into::into)
    }

    async fn list_keys(&mut self, flow_run_id: String) -> Result<Vec<String>, WitStoreError> {
        let _span = tracing::debug_span!("list_keys", %flow_run_id).entered();
        self.read(|g| g.list_keys(&flow_run_id)).map_err(Into::into)
    }

    async fn put_global(&mut self, key: String, value: String) -> Result<(), WitStoreError> {
        let span = tracing::debug_span!("put_global", key = key.len(), bytes = value.len());
        self.write(move |g| g.put_global(&key, value))
            .instrument(span)
            .await
            .map_err(Into::into)
    }

    async fn upsert_global(&mut self, key: String, value: String) -> Result<(), WitStoreError> {
        let span = tracing::debug_span!("upsert_global", key = key.len(), bytes = value.len());
        self.write(move |g| g.upsert_global(&key, value))
            .instrument(span)
            .await
            .map_err(Into::into)
    }

    async fn get_global(&mut self, key: String) -> Result<Option<String>, WitStoreError> {
        let _span = tracing::debug_span!("get_global", key = key.len()).entered();
        self.read(|g| g.get_global(&key)).map_err(Into::into)
    }
}
