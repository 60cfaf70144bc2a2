//! One invocation: a fresh instance under the grant and limits, one
//! deadline over everything, the output checked in the store afterwards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;
use wasmtime::component::{ResourceTable, ResourceTableError};
use wasmtime::{Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;

use super::bindings::{StepPre, WitInvocation, WitUpstream};
use super::engines::{Allocation, EngineKind, Metering};
use super::epoch::EpochTicker;
use super::limiter::GuestLimiter;
use super::state::{STDERR_CAPTURE, StepState};
use super::stderr::StderrRing;
use super::{
    Invocation, PreparedStep, RunControl, Runtime, StepComponent, StepError, StepOutcome,
    StepStatus, pool,
};
use crate::error::ContextStoreError;
use crate::guest_store::{GuestStore, InFlight};
use crate::id::NodeId;
use crate::json::JsonText;
use crate::limits::Limits;
use crate::store::call::far_future;
use crate::store::{CallContext, Provenance, provenance};
use crate::text::{self, MAX_MESSAGE_BYTES};

/// The longest the host waits, after an invocation was stopped, for a
/// write that was already inside a commit to end.
const SETTLE: Duration = Duration::from_secs(5);

/// An invocation's error as reported: one that came from a store call
/// ending at the deadline, or that came at or after the deadline, is the
/// deadline's ([`StepError::Timeout`]).
fn at_deadline(error: StepError, deadline: Instant, limits: &Limits) -> StepError {
    match error {
        StepError::Timeout(_) | StepError::Stopped(_) => error,
        StepError::Store(ContextStoreError::Timeout(_)) => StepError::Timeout(limits.timeout),
        other if Instant::now() >= deadline => {
            tracing::debug!(error = %other, "step failed at its deadline");
            StepError::Timeout(limits.timeout)
        }
        other => other,
    }
}

impl Runtime {
    /// Runs one invocation of `step`; `may_block` when the calling thread
    /// is given over to it (the blocking entry point).
    pub(super) async fn run_with(
        &self,
        step: &PreparedStep<'_>,
        invocation: &Invocation,
        control: &RunControl,
        may_block: bool,
    ) -> Result<StepOutcome, StepError> {
        #[cfg(feature = "metrics")]
        let _in_flight = crate::metrics::invocation_started();
        let started = Instant::now();
        let limits = &step.limits;
        let deadline = started
            .checked_add(limits.timeout)
            .unwrap_or_else(far_future);
        let cx = CallContext::until(deadline)
            .fenced(control.fence)
            .blocking(may_block);
        let (run_id, node_id) = (invocation.flow_run_id, invocation.node_id);
        let span = tracing::info_span!("step", component = %step.component.name, flow_run_id = %run_id, %node_id);
        let in_flight = InFlight::default();
        let call = Call {
            step,
            invocation,
            cx,
            in_flight: &in_flight,
            control,
        };
        let stop = async {
            let Some(signal) = &control.stop else {
                return std::future::pending().await;
            };
            let reason = signal.stopped().await;
            if in_flight.output().is_some() {
                // The step's fenced put stored its output and finished its
                // claim with it: a claim no renewal finds any more is this
                // one, not lost, and nobody can take a finished node over.
                tracing::debug!(%reason, "stop ignored: the step's output is stored");
                return std::future::pending().await;
            }
            reason
        };
        let error = tokio::select! {
            ended = tokio::time::timeout_at(deadline.into(), self.invoke(&call).instrument(span)) => match ended {
                Ok(result) => return result.map_err(|error| at_deadline(error, deadline, limits)),
                Err(_elapsed) => {
                    tracing::info!(elapsed = ?started.elapsed(), "step timed out");
                    StepError::Timeout(limits.timeout)
                }
            },
            reason = stop => {
                tracing::info!(elapsed = ?started.elapsed(), %reason, "step stopped");
                StepError::Stopped(reason)
            }
        };
        // A write already inside a commit ends with that commit: wait for
        // it, so that what is reported is what the store holds.
        if !in_flight.settle(Instant::now() + SETTLE).await {
            tracing::warn!(
                "a write of the stopped step was still running {SETTLE:?} after it was stopped"
            );
        }
        // A step that stored its output before it was stopped is done. (On
        // a shared run the runner looks for an output another worker
        // stored; nothing here waits on a store that may be stalled.)
        match in_flight.output() {
            Some(output) => Ok(StepOutcome {
                output,
                status: StepStatus::Ran,
                stderr: String::new(),
                warning: Some(error),
            }),
            None => Err(error),
        }
    }

    async fn invoke(&self, call: &Call<'_>) -> Result<StepOutcome, StepError> {
        let Call {
            step,
            invocation,
            cx,
            control,
            ..
        } = *call;
        let (component, limits) = (&step.component, &step.limits);
        let started_at = provenance::unix_millis_now();
        let (run_id, node_id) = (invocation.flow_run_id, invocation.node_id);
        if let Some(error) = &invocation.invalid_params {
            return Err(StepError::InvalidParams(error.to_string()));
        }
        // One read, of what the caller does not know already: the node's
        // own output (is it done?) and its upstreams' (what the step will
        // read: stored outputs never change, so the guest's gets of them are
        // answered from these).
        let mut known = Arc::clone(&control.known_outputs);
        let mut wanted = Vec::with_capacity(1 + invocation.upstream.len());
        if !control.unfinished {
            wanted.push(node_id);
        }
        wanted.extend(
            invocation
                .upstream
                .iter()
                .map(|(_, id)| *id)
                .filter(|id| !known.contains_key(id)),
        );
        let mut stored = None;
        if !wanted.is_empty() {
            let read = step.store.get_many(&cx, run_id, &wanted).await?;
            for (id, value) in wanted.iter().zip(read) {
                match value {
                    Some(value) if *id == node_id && !control.unfinished => stored = Some(value),
                    // Copied (once) only when the read adds to what the
                    // caller knew.
                    Some(value) => {
                        Arc::make_mut(&mut known).insert(*id, value);
                    }
                    None => {}
                }
            }
        }
        if let Some(output) = stored {
            tracing::info!("output already stored; not running");
            return Ok(StepOutcome {
                output,
                status: StepStatus::AlreadyDone,
                stderr: String::new(),
                warning: None,
            });
        }
        let metering = match limits.fuel {
            None => Metering::Off,
            Some(_) => Metering::Fuel,
        };
        // A memory slot cannot grow past its size: an invocation allowed
        // more memory than the pool's slots has its instance made on demand.
        let fits_slot = self
            .pool
            .as_ref()
            .is_some_and(|pool| limits.memory_bytes <= pool.memory_bytes);
        let wanted = if fits_slot {
            self.preferred(metering)
        } else {
            self.preferred(metering).on_demand()
        };
        // Chosen before anything runs, after the done check (a finished
        // node is done whatever its engine): a component not compiled for
        // this invocation's metering fails at once, nothing compiled.
        let (mut kind, pre) = self.pre_for(component, wanted)?;
        let mut wasm = self.new_store(kind, call, started_at, Arc::clone(&known))?;
        let instance = match pre.instantiate_async(&mut wasm).await {
            Err(error)
                if kind.allocation == Allocation::Pool && pool::is_pool_exhausted(&error) =>
            {
                // Every slot is taken: this invocation gets its own allocation.
                tracing::debug!(%error, "instance pool exhausted; instantiating on demand");
                let (on_demand, pre) = self.pre_for(component, kind.on_demand())?;
                kind = on_demand;
                wasm = self.new_store(kind, call, started_at, known)?;
                pre.instantiate_async(&mut wasm).await
            }
            other => other,
        }
        .map_err(|e| match classify(e, &wasm, limits) {
            StepError::Trap { message, .. } => StepError::Instantiate(message),
            other => other,
        })?;
        let wit_invocation = to_wit(invocation);
        let result = instance.call_run(&mut wasm, &wit_invocation).await;
        let guest = &wasm.data().guest;
        tracing::info!(writes = guest.writes(), "step returned");
        if let Some(output) = guest.own_output() {
            // The output is stored: the node is done, whatever came after.
            let warning = match result {
                Ok(Ok(())) => None,
                Ok(Err(failure)) => Some(StepError::Failed(failure.into())),
                Err(error) => Some(classify(error, &wasm, limits)),
            };
            if let Some(warning) = &warning {
                tracing::info!(error = %warning, "step stored its output, then failed; the node is done");
            }
            return Ok(StepOutcome {
                output,
                status: StepStatus::Ran,
                stderr: wasm.data().stderr.contents(),
                warning,
            });
        }
        if guest.timed_out() && result.as_ref().map_or(true, Result::is_err) {
            // A store call ended at the deadline; what the step did after is
            // the deadline's doing.
            return Err(StepError::Timeout(limits.timeout));
        }
        if guest.fenced() {
            // Another worker took the node over: this invocation is over.
            return Err(StepError::Stopped(
                "a write was refused: the node's claim is no longer this worker's".into(),
            ));
        }
        let lost_race = guest.lost_race();
        if result.as_ref().map_or(true, Result::is_err) && lost_race {
            // Another invocation stored this node's output first: the node is done.
            if let Some(output) = step.store.get(&cx, run_id, node_id).await? {
                tracing::info!("another invocation finished this node first");
                return Ok(StepOutcome {
                    output,
                    status: StepStatus::AlreadyDone,
                    stderr: wasm.data().stderr.contents(),
                    warning: None,
                });
            }
        }
        match result {
            Err(error) => Err(classify(error, &wasm, limits)),
            Ok(Err(failure)) => Err(StepError::Failed(failure.into())),
            Ok(Ok(())) => match step.store.get(&cx, run_id, node_id).await? {
                Some(output) => Ok(StepOutcome {
                    output,
                    status: StepStatus::AlreadyDone,
                    stderr: wasm.data().stderr.contents(),
                    warning: None,
                }),
                None => Err(StepError::NoOutput),
            },
        }
    }

    /// The instance-pre of `component` for the engine of `kind`, or for the
    /// on-demand engine if the component does not fit the pool; with the
    /// kind it is for. Nothing is compiled here, inside the invocation's
    /// deadline: a fuel-metered variant not compiled at load is
    /// [`StepError::NotMetered`].
    fn pre_for(
        &self,
        component: &StepComponent,
        kind: EngineKind,
    ) -> Result<(EngineKind, StepPre<StepState>), StepError> {
        if kind == component.kind {
            return Ok((kind, component.pre.clone()));
        }
        if let Some(found) = self.prepared(&component.hash, kind) {
            return Ok(found);
        }
        match kind.metering {
            Metering::Fuel => Err(StepError::NotMetered {
                component: component.name.to_string(),
            }),
            // Every plain variant is made at load; missing, the component
            // was loaded by another runtime.
            Metering::Off => Err(StepError::Instantiate(format!(
                "component {} was not loaded by this runtime",
                component.name
            ))),
        }
    }

    /// A fresh wasmtime store for one invocation, on the engine of `kind`:
    /// a WASI context with nothing opened and stderr kept in a ring, the
    /// guest's view of `store`, the limiter, fuel and the epoch deadline.
    fn new_store(
        &self,
        kind: EngineKind,
        call: &Call<'_>,
        started_at: i64,
        known: Arc<HashMap<NodeId, JsonText>>,
    ) -> Result<Store<StepState>, StepError> {
        let Call {
            step,
            invocation,
            cx,
            in_flight,
            control,
        } = *call;
        let (component, limits) = (&step.component, &step.limits);
        let stderr = StderrRing::new(STDERR_CAPTURE);
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_resources);
        let state = StepState {
            wasi: WasiCtxBuilder::new().stderr(stderr.clone()).build(),
            table,
            limiter: GuestLimiter::new(limits),
            guest: GuestStore::new(
                step.store.clone(),
                cx,
                invocation.flow_run_id,
                invocation.node_id,
                step.grant.clone(),
                limits.clone(),
            )
            .with_provenance(Provenance {
                component_hash: component.content_hash(),
                params_hash: invocation.params_hash(),
                upstream_hash: invocation.upstream_hash(),
                attempt: invocation.attempt,
                host: host_name().to_owned(),
                started_at,
                ended_at: started_at,
            })
            .tracking(in_flight.clone())
            .with_upstreams(invocation.upstream.iter().map(|(_, id)| *id))
            .with_known_outputs(known)
            .sharing_slots(control.slots.clone()),
            stderr,
        };
        let mut wasm = Store::new(&self.engines(kind).engine, state);
        wasm.limiter(|state| &mut state.limiter);
        wasm.set_max_component_handles(limits.max_resources);
        if let Some(fuel) = limits.fuel {
            wasm.set_fuel(fuel)
                .map_err(|e| StepError::Instantiate(format!("{e:#}")))?;
        }
        let left = cx.left().unwrap_or(limits.timeout);
        wasm.set_epoch_deadline(EpochTicker::ticks_for(left));
        wasm.epoch_deadline_trap();
        Ok(wasm)
    }
}

/// One invocation's arguments, as [`Runtime::run_with`] received them.
#[derive(Clone, Copy)]
struct Call<'a> {
    step: &'a PreparedStep<'a>,
    invocation: &'a Invocation,
    cx: CallContext,
    in_flight: &'a InFlight,
    /// What the caller controls: its claim, stop signal, job slots and
    /// the outputs it knows.
    control: &'a RunControl,
}

/// Most bytes kept of a trap's report and of the guest's stderr, once
/// neutralised (stderr is captured as its last 16 KiB; escaping its control
/// characters can make it longer).
const MAX_REPORT_BYTES: usize = 64 * 1024;

/// This machine's host name, read once.
fn host_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| gethostname::gethostname().to_string_lossy().into_owned())
}

fn to_wit(invocation: &Invocation) -> WitInvocation {
    WitInvocation {
        flow_run_id: invocation.flow_run_id.to_string(),
        node_id: invocation.node_id.to_string(),
        params: invocation.params.as_str().to_owned(),
        upstream: invocation
            .upstream
            .iter()
            .map(|(name, node_id)| WitUpstream {
                name: name.clone(),
                node_id: node_id.to_string(),
            })
            .collect(),
    }
}

/// Turns a wasmtime error from instantiate or `run` into a [`StepError`].
fn classify(error: wasmtime::Error, wasm: &Store<StepState>, limits: &Limits) -> StepError {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => return StepError::Timeout(limits.timeout),
        Some(Trap::OutOfFuel) => return StepError::OutOfFuel(limits.fuel.unwrap_or(u64::MAX)),
        _ => {}
    }
    if wasm.data().limiter.memory_hit() {
        return StepError::OutOfMemory {
            limit_bytes: limits.memory_bytes,
        };
    }
    if resources_exhausted(&error) {
        return StepError::TooManyResources {
            limit: limits.max_resources,
        };
    }
    // Guest text all: a trap message can quote the guest, the report names
    // its functions (from its own name section), stderr is what it wrote.
    StepError::Trap {
        message: text::for_terminal(&error.root_cause().to_string(), MAX_MESSAGE_BYTES),
        report: text::lines_for_terminal(&format!("{error:?}"), MAX_REPORT_BYTES),
        stderr: text::lines_for_terminal(&wasm.data().stderr.contents(), MAX_REPORT_BYTES),
    }
}

/// Whether `error` is a resource table or handle table that reached
/// [`Limits::max_resources`]: the host's WASI table refusing a push, or
/// wasmtime's store-wide component handle limit.
fn resources_exhausted(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ResourceTableError>(),
            Some(ResourceTableError::Full)
        ) || cause.to_string().contains("store handle limit exceeded")
    })
}
