//! This worker's claims on a shared run, and the background renewal that
//! keeps them: a claim whose renewal says it was taken over, or whose lease
//! runs out on this worker's clock without a successful renewal, has its
//! invocation stopped at once (the store's fencing refuses its writes in
//! any case; stopping it saves the work and frees the node sooner).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::runner::lock;
use crate::coord::{CallContext, Coordinator, Fence, WorkerId};
use crate::id::{FlowRunId, NodeId};
use crate::runtime::{Runtime, StopSignal};

/// How this process takes part in a run that several workers share.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    /// This worker's name, shown by `flow status` (default: `host:pid`).
    /// Each run of [`flow::run`](super::run) is its own incarnation of the
    /// name, so a worker restarted under its old name is told from its
    /// predecessor.
    pub worker: String,
    /// How long a claim holds without renewal (default 30 s). A live worker
    /// renews its claims every third of it; a dead worker's nodes are taken
    /// over this long after its last renewal.
    pub lease: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        Self {
            worker: default_worker_name(),
            lease: Duration::from_secs(30),
        }
    }
}

/// `host:pid`: the host's name (from `/proc/sys/kernel/hostname` or
/// `$HOSTNAME`) and this process's id.
pub fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// One claim this worker holds while its node runs.
struct Held {
    fence: Fence,
    stop: StopSignal,
    /// Until when the lease holds for sure, on this worker's clock: the
    /// start of the call that won or last renewed it, plus the lease.
    valid_until: Instant,
    /// When the claim was known won (its call had returned): a renewal
    /// that starts later must find it.
    held_at: Instant,
}

/// The claims this worker holds, and their renewal.
pub(super) struct Leases<'a> {
    coordinator: &'a dyn Coordinator,
    runtime: &'a Runtime,
    run: FlowRunId,
    pub(super) worker: WorkerId,
    pub(super) lease: Duration,
    held: Mutex<HashMap<NodeId, Held>>,
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl<'a> Leases<'a> {
    pub(super) fn new(
        coordinator: &'a dyn Coordinator,
        runtime: &'a Runtime,
        run: FlowRunId,
        options: &LeaseOptions,
    ) -> Self {
        Self {
            coordinator,
            runtime,
            run,
            worker: WorkerId::new(options.worker.clone()),
            lease: options.lease,
            held: Mutex::new(HashMap::new()),
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        }
    }

    /// The coordinator the claims are made with.
    pub(super) fn coordinator(&self) -> &dyn Coordinator {
        self.coordinator
    }

    /// Notes a claim won by a call that started at `since`; returns the
    /// signal that stops its invocation.
    pub(super) fn hold(&self, fence: Fence, since: Instant) -> StopSignal {
        let stop = StopSignal::new();
        lock(&self.held).insert(
            fence.node_id,
            Held {
                fence,
                stop: stop.clone(),
                valid_until: since + self.lease,
                held_at: Instant::now(),
            },
        );
        stop
    }

    /// Forgets the claim on `node` (its invocation is over).
    pub(super) fn drop_claim(&self, node: NodeId) {
        lock(&self.held).remove(&node);
    }

    /// Warns when another live process holds claims in this run under this
    /// worker's name: a predecessor that died (its claims are taken over
    /// when they expire), or a second process given the same name.
    pub(super) fn check_name(&self) {
        let cx = CallContext::within(self.lease);
        let claims = match self
            .runtime
            .block_on(self.coordinator.claims(&cx, self.run))
        {
            Ok(claims) => claims,
            Err(error) => {
                tracing::debug!(%error, "could not list the run's claims");
                return;
            }
        };
        let others: Vec<_> = claims
            .iter()
            .filter(|c| {
                c.worker == self.worker.name
                    && c.incarnation != self.worker.incarnation
                    && !c.finished
                    && !c.lease_left.is_zero()
            })
            .collect();
        if let Some(longest) = others.iter().map(|c| c.lease_left).max() {
            tracing::warn!(
                worker = %self.worker,
                claims = others.len(),
                lease_left = ?longest,
                "another process of this worker's name holds live claims in this run: \
                 a predecessor whose claims this worker takes over when they expire, \
                 or a second live worker given the same name (give each its own)"
            );
        }
    }

    /// Renews this worker's claims every third of the lease until
    /// [`stop`](Self::stop), stopping the invocations whose claims were
    /// lost or ran out.
    pub(super) fn keep(&self) {
        let every = (self.lease / 3).max(Duration::from_millis(10));
        loop {
            let stopped = lock(&self.stopped);
            let (stopped, _) = self
                .wake
                .wait_timeout_while(stopped, every, |s| !*s)
                .unwrap_or_else(PoisonError::into_inner);
            if *stopped {
                return;
            }
            drop(stopped);
            self.expire();
            if lock(&self.held).is_empty() {
                continue;
            }
            self.renew();
            self.expire();
        }
    }

    /// One renewal: claims it finds still held are extended; those it does
    /// not find were taken over, and their invocations are stopped.
    fn renew(&self) {
        let started = Instant::now();
        // No later than the earliest lease still held: past it the claims
        // are stopped anyway.
        let until = lock(&self.held)
            .values()
            .map(|h| h.valid_until)
            .min()
            .unwrap_or(started + self.lease)
            .max(started + Duration::from_millis(100));
        let cx = CallContext::until(until);
        let renewed =
            self.runtime.block_on(
                self.coordinator
                    .renew(&cx, self.run, &self.worker, self.lease),
            );
        match renewed {
            Ok(renewal) => {
                let mut held = lock(&self.held);
                for (node, claim) in held.iter_mut() {
                    if renewal.held.contains(node) {
                        claim.valid_until = started + self.lease;
                    } else if claim.held_at < started && claim.stop.reason().is_none() {
                        // Won before the renewal started, yet not found by
                        // it: taken over (or expired on the database's clock).
                        tracing::warn!(node = %node, token = claim.fence.token, "claim no longer held; stopping its step");
                        claim
                            .stop
                            .stop("the node's claim was taken over by another worker");
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, worker = %self.worker, "could not renew leases; retrying");
            }
        }
    }

    /// Stops the invocations whose leases ran out on this worker's clock.
    fn expire(&self) {
        let now = Instant::now();
        for (node, claim) in lock(&self.held).iter() {
            if claim.valid_until <= now && claim.stop.reason().is_none() {
                tracing::warn!(node = %node, "lease ran out without a successful renewal; stopping its step");
                claim
                    .stop
                    .stop("the node's lease ran out without a successful renewal");
            }
        }
    }

    /// Ends [`keep`](Self::keep).
    pub(super) fn stop(&self) {
        *lock(&self.stopped) = true;
        self.wake.notify_all();
    }
}
