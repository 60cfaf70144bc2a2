//! [`PreparedStep`]: a step component bound once to the store it runs
//! against, its grant and its limits, ready for any number of invocations.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Invocation, Runtime, StepComponent, StepError, StepOutcome, StopSignal};
use crate::grant::Grant;
use crate::id::NodeId;
use crate::json::JsonText;
use crate::limits::Limits;
use crate::store::{AsyncContextStore, Fence};

/// What the caller controls of one invocation beyond its arguments: the
/// claim it runs under, and a signal that stops it from outside.
#[derive(Clone, Debug, Default)]
pub struct RunControl {
    /// On a run shared by workers, the claim the invocation runs under:
    /// every write it makes carries it, and is refused once the claim is
    /// no longer current.
    pub fence: Option<Fence>,
    /// Stops the invocation at once, as its deadline would: nothing it
    /// writes afterwards is stored. The runner gives it when the claim is
    /// lost or its lease runs out.
    pub stop: Option<StopSignal>,
    /// The job slots the caller holds one of while the invocation runs:
    /// given back while a write of the step waits for its commit (see
    /// [`JobSlots`](crate::slots::JobSlots)). For the blocking entry points.
    pub slots: Option<crate::slots::JobSlots>,
    /// Outputs of the invocation's run the caller knows are stored (its
    /// upstreams', say, which it wrote or read): the runtime does not read
    /// them again, and the step's `get`s of them are answered from here.
    /// Stored outputs never change, so the answer is the store's. Shared,
    /// so that handing them to the invocation copies no value.
    pub known_outputs: Arc<HashMap<NodeId, JsonText>>,
    /// The caller knows the node's own output is not stored (its claim is
    /// unfinished, or it is the run's only writer and found none at
    /// start): the runtime does not look for it before running the step. A
    /// `put` that finds one stored all the same (written meanwhile by
    /// someone else) ends the invocation as already done.
    pub unfinished: bool,
}

/// A component bound to a store, a grant and limits: what does not change
/// from one invocation of a node to the next. Made by [`Runtime::prepare`]
/// or [`Runtime::prepare_async`]; cheap to make, and it borrows the runtime.
pub struct PreparedStep<'r> {
    pub(super) runtime: &'r Runtime,
    pub(super) component: StepComponent,
    pub(super) store: Arc<dyn AsyncContextStore>,
    pub(super) grant: Grant,
    pub(super) limits: Limits,
}

impl<'r> PreparedStep<'r> {
    pub(super) fn new(
        runtime: &'r Runtime,
        component: StepComponent,
        store: Arc<dyn AsyncContextStore>,
        grant: Grant,
        limits: Limits,
    ) -> Self {
        Self {
            runtime,
            component,
            store,
            grant,
            limits,
        }
    }

    /// The component.
    pub fn component(&self) -> &StepComponent {
        &self.component
    }

    /// The limits every invocation runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs one invocation, blocking the calling thread until it is done.
    /// For callers without an async runtime; from async code use
    /// [`run_async`](Self::run_async) (this one panics inside a tokio
    /// runtime). The calling thread is given over to the invocation, so the
    /// store's calls may run on it directly.
    pub fn run(&self, invocation: &Invocation) -> Result<StepOutcome, StepError> {
        self.run_controlled(invocation, &RunControl::default())
    }

    /// [`run`](Self::run) under `control`.
    pub fn run_controlled(
        &self,
        invocation: &Invocation,
        control: &RunControl,
    ) -> Result<StepOutcome, StepError> {
        self.runtime
            .block_on(self.runtime.run_with(self, invocation, control, true))
    }

    /// Runs one invocation.
    ///
    /// If the node's output is already stored, the step is not run and the
    /// stored output is returned ([`StepStatus::AlreadyDone`](super::StepStatus::AlreadyDone)).
    /// Otherwise the step runs in a fresh instance under the grant and
    /// limits; it succeeds only if `run` returns `ok` *and* the node's
    /// output is then in the store.
    ///
    /// One deadline, [`Limits::timeout`] from now, covers everything:
    /// instantiation, wasm code (interrupted by epochs), WASI calls, and
    /// store calls (each carries it to the backend). Past it the invocation
    /// is [`StepError::Timeout`], unless its output was stored first. A
    /// write that was still in flight at the deadline is waited for before
    /// the answer is given, so a step reported as failed has stored nothing
    /// afterwards. Needs a tokio runtime with timers enabled.
    ///
    /// With a fuel budget ([`Limits::fuel`]) the component's fuel-metered
    /// variant runs; it must have been compiled before
    /// ([`LoadOptions::fuel`](super::LoadOptions::fuel),
    /// [`Runtime::prepare_metered`]), else the invocation fails at once
    /// with [`StepError::NotMetered`]: nothing is compiled inside the
    /// deadline.
    pub async fn run_async(&self, invocation: &Invocation) -> Result<StepOutcome, StepError> {
        self.run_async_controlled(invocation, &RunControl::default())
            .await
    }

    /// [`run_async`](Self::run_async) under `control`.
    pub async fn run_async_controlled(
        &self,
        invocation: &Invocation,
        control: &RunControl,
    ) -> Result<StepOutcome, StepError> {
        self.runtime
            .run_with(self, invocation, control, false)
            .await
    }
}

impl Runtime {
    /// Binds `component` to an async store, `grant` and `limits` (see
    /// [`prepare`](Self::prepare) for a synchronous [`ContextStore`](crate::ContextStore)).
    pub fn prepare_async(
        &self,
        component: &StepComponent,
        store: Arc<dyn AsyncContextStore>,
        grant: &Grant,
        limits: &Limits,
    ) -> PreparedStep<'_> {
        PreparedStep::new(
            self,
            component.clone(),
            store,
            grant.clone(),
            limits.clone(),
        )
    }
}
