//! Running a flow: dependency order, independent nodes in parallel on a
//! bounded pool of worker threads, finished nodes skipped, a failed node
//! stopping its dependents (and only them).
//!
//! When the store shares runs between processes
//! ([`ContextStore::node_claims`]), every process running the same run is a
//! worker: it claims each ready node with a lease before running it, renews
//! its leases from a background thread while it runs, and leaves a node
//! another worker holds to that worker, looking again until the node's
//! output is stored or the holder's lease expires (then it takes the node
//! over).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::store::claims::{Claim, NodeClaims};

use crate::json::JsonText;

use super::{Flow, FlowError, FlowNode, journal};
use crate::id::FlowRunId;
use crate::runtime::{Invocation, Runtime, StepComponent, StepError, StepStatus};
use crate::store::ContextStore;

/// Something that happened to a node, as it happens (from worker threads).
#[derive(Debug)]
pub enum FlowEvent<'a> {
    /// The node's step is about to run (or to find its output stored).
    Started {
        /// The node.
        node: &'a FlowNode,
    },
    /// This worker claimed the node (a store shared by several workers).
    Claimed {
        /// The node.
        node: &'a FlowNode,
        /// This worker's name.
        worker: &'a str,
        /// How many times the node has been claimed, this claim included
        /// (more than 1 after a lease expired).
        attempt: u32,
    },
    /// The node is done: it ran now, or its output was already stored.
    Finished {
        /// The node.
        node: &'a FlowNode,
        /// Whether the step ran now.
        status: StepStatus,
        /// The node's stored output.
        output: &'a JsonText,
        /// How long the invocation took.
        elapsed: Duration,
    },
    /// The node's step failed.
    Failed {
        /// The node.
        node: &'a FlowNode,
        /// Why.
        error: &'a StepError,
        /// How long the invocation took.
        elapsed: Duration,
    },
    /// The node will not run because an upstream node failed.
    Blocked {
        /// The node.
        node: &'a FlowNode,
        /// The failed node that blocks it.
        by: &'a str,
    },
}

/// How to run a flow.
pub struct RunOptions<'a> {
    /// Most nodes running at once (at least 1).
    pub jobs: usize,
    /// Called for every [`FlowEvent`], from the worker threads.
    pub on_event: &'a (dyn Fn(&FlowEvent<'_>) + Sync),
    /// This worker's name and lease, used when the store shares runs
    /// between processes.
    pub lease: LeaseOptions,
}

/// How this process takes part in a run that several workers share.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    /// This worker's name, shown by `flow status` (default: `host:pid`).
    /// Names must differ between live workers.
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

/// What became of one node.
#[derive(Debug)]
pub enum NodeResult {
    /// The node's output is stored.
    Done {
        /// Whether the step ran in this attempt.
        status: StepStatus,
        /// The output.
        output: JsonText,
        /// How long the invocation took.
        elapsed: Duration,
    },
    /// The node's step failed.
    Failed(StepError),
    /// An upstream node failed, so this one did not run.
    Blocked {
        /// The failed node.
        by: String,
    },
}

/// The result of a flow run: one [`NodeResult`] per node, in file order.
#[derive(Debug)]
pub struct FlowReport {
    /// The run.
    pub flow_run_id: FlowRunId,
    /// Node names with their results, in file order.
    pub results: Vec<(String, NodeResult)>,
}

impl FlowReport {
    /// Whether every node is done.
    pub fn is_success(&self) -> bool {
        self.results
            .iter()
            .all(|(_, r)| matches!(r, NodeResult::Done { .. }))
    }

    /// The failed nodes with their errors.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &StepError)> {
        self.results.iter().filter_map(|(name, r)| match r {
            NodeResult::Failed(error) => Some((name.as_str(), error)),
            _ => None,
        })
    }
}

/// The scheduler's shared state.
struct Board {
    /// For each node, how many upstream nodes are not done yet.
    waiting_on: Vec<usize>,
    ready: VecDeque<usize>,
    /// Nodes another worker holds, with when to look at them again.
    deferred: Vec<(usize, Instant)>,
    results: Vec<Option<NodeResult>>,
    running: usize,
}

/// What one look at a node came to.
enum Attempt {
    /// The node has its result.
    Result(NodeResult),
    /// Another worker holds the node: look again after this long.
    HeldElsewhere(Duration),
}

/// Runs (or resumes) `flow` as run `flow_run_id`. Components are loaded
/// first, so a broken one fails the run before any step runs.
pub fn run(
    runtime: &Runtime,
    store: &Arc<dyn ContextStore>,
    flow: &Flow,
    flow_run_id: FlowRunId,
    options: &RunOptions<'_>,
) -> Result<FlowReport, FlowError> {
    let components = flow
        .nodes
        .iter()
        .map(|node| {
            runtime
                .load_file(&node.component)
                .map_err(|source| FlowError::Component {
                    node: node.name.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<StepComponent>, FlowError>>()?;
    let dependents = flow.dependents();
    let waiting_on: Vec<usize> = flow.nodes.iter().map(|n| n.upstream.len()).collect();
    let ready = (0..flow.nodes.len())
        .filter(|i| waiting_on[*i] == 0)
        .collect();
    let board = Mutex::new(Board {
        waiting_on,
        ready,
        deferred: Vec::new(),
        results: (0..flow.nodes.len()).map(|_| None).collect(),
        running: 0,
    });
    let wake = Condvar::new();
    let worker = Worker {
        runtime,
        store,
        flow,
        flow_run_id,
        components: &components,
        dependents: &dependents,
        options,
    };
    let workers = options.jobs.clamp(1, flow.nodes.len().max(1));
    let renewing = Renewal::default();
    std::thread::scope(|scope| {
        if let Some(claims) = store.node_claims() {
            scope.spawn(|| renewing.run(claims, flow_run_id, &options.lease));
        }
        let threads: Vec<_> = (0..workers)
            .map(|_| scope.spawn(|| worker.work(&board, &wake)))
            .collect();
        for thread in threads {
            if let Err(panic) = thread.join() {
                renewing.stop();
                std::panic::resume_unwind(panic);
            }
        }
        renewing.stop();
    });
    let board = board.into_inner().unwrap_or_else(PoisonError::into_inner);
    let results = flow
        .nodes
        .iter()
        .zip(board.results)
        .map(|(node, result)| {
            // Every node gets a result: it ran, failed, or was blocked.
            let result = result.unwrap_or_else(|| NodeResult::Blocked {
                by: "an earlier failure".into(),
            });
            (node.name.clone(), result)
        })
        .collect();
    Ok(FlowReport {
        flow_run_id,
        results,
    })
}

struct Worker<'a> {
    runtime: &'a Runtime,
    store: &'a Arc<dyn ContextStore>,
    flow: &'a Flow,
    flow_run_id: FlowRunId,
    components: &'a [StepComponent],
    dependents: &'a [Vec<usize>],
    options: &'a RunOptions<'a>,
}

/// The background renewal of this worker's leases.
#[derive(Default)]
struct Renewal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Renewal {
    /// Renews every lease this worker holds in the run every third of the
    /// lease, until stopped.
    fn run(&self, claims: &dyn NodeClaims, run: FlowRunId, lease: &LeaseOptions) {
        let every = lease.lease / 3;
        loop {
            let stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
            let (stopped, _) = self
                .wake
                .wait_timeout_while(stopped, every, |s| !*s)
                .unwrap_or_else(PoisonError::into_inner);
            if *stopped {
                return;
            }
            drop(stopped);
            if let Err(error) = claims.renew(run, &lease.worker, lease.lease) {
                tracing::warn!(%error, worker = %lease.worker, "could not renew leases");
            }
        }
    }

    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }
}

impl Worker<'_> {
    fn work(&self, board: &Mutex<Board>, wake: &Condvar) {
        while let Some(i) = self.next(board, wake) {
            let result = match self.attempt(i) {
                Attempt::Result(result) => result,
                Attempt::HeldElsewhere(after) => {
                    let mut b = board.lock().unwrap_or_else(PoisonError::into_inner);
                    b.deferred.push((i, Instant::now() + after));
                    b.running -= 1;
                    wake.notify_all();
                    continue;
                }
            };
            let mut b = board.lock().unwrap_or_else(PoisonError::into_inner);
            match &result {
                NodeResult::Done { .. } => {
                    for &d in &self.dependents[i] {
                        b.waiting_on[d] -= 1;
                        if b.waiting_on[d] == 0 && b.results[d].is_none() {
                            b.ready.push_back(d);
                        }
                    }
                }
                _ => self.block_dependents(&mut b, i),
            }
            b.results[i] = Some(result);
            b.running -= 1;
            wake.notify_all();
        }
    }

    /// The next ready node (or a node held elsewhere, due for another
    /// look), or `None` when nothing is ready, deferred or running.
    fn next(&self, board: &Mutex<Board>, wake: &Condvar) -> Option<usize> {
        let mut b = board.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(i) = b.ready.pop_front() {
                b.running += 1;
                return Some(i);
            }
            let due = b
                .deferred
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(pos, (_, at))| (pos, *at));
            if let Some((pos, at)) = due {
                let now = Instant::now();
                if at <= now {
                    let (i, _) = b.deferred.swap_remove(pos);
                    b.running += 1;
                    return Some(i);
                }
                b = wake
                    .wait_timeout(b, at - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            if b.running == 0 {
                return None;
            }
            b = wake.wait(b).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Runs node `i`, claiming it first when the store is shared.
    fn attempt(&self, i: usize) -> Attempt {
        let Some(claims) = self.store.node_claims() else {
            return Attempt::Result(self.run_node(i));
        };
        let node = &self.flow.nodes[i];
        let lease = &self.options.lease;
        // A node done elsewhere needs no claim: the runtime finds its output.
        match self.store.get_text(self.flow_run_id, node.node_id) {
            Ok(Some(_)) => return Attempt::Result(self.run_node(i)),
            Ok(None) => {}
            Err(error) => return Attempt::Result(self.store_failure(i, error)),
        }
        match claims.claim(self.flow_run_id, node.node_id, &lease.worker, lease.lease) {
            Ok(Claim::Won { attempt }) => {
                (self.options.on_event)(&FlowEvent::Claimed {
                    node,
                    worker: &lease.worker,
                    attempt,
                });
                let result = self.run_node(i);
                let done = match result {
                    NodeResult::Done { .. } => {
                        claims.finish(self.flow_run_id, node.node_id, &lease.worker)
                    }
                    _ => claims.release(self.flow_run_id, node.node_id, &lease.worker),
                };
                if let Err(error) = done {
                    tracing::warn!(node = %node.name, %error, "could not update the node's claim");
                }
                Attempt::Result(result)
            }
            // Finished elsewhere after the look above: the output is stored.
            Ok(Claim::Finished { .. }) => Attempt::Result(self.run_node(i)),
            Ok(Claim::Held { lease_left, .. }) => {
                // Look again soon (the holder may finish any moment), and
                // no later than when the lease would expire.
                let poll =
                    (lease.lease / 20).clamp(Duration::from_millis(20), Duration::from_millis(500));
                Attempt::HeldElsewhere(poll.min(lease_left + Duration::from_millis(1)))
            }
            Err(error) => Attempt::Result(self.store_failure(i, error)),
        }
    }

    /// Node `i` failed because the store did, outside its step.
    fn store_failure(&self, i: usize, error: crate::error::ContextStoreError) -> NodeResult {
        let node = &self.flow.nodes[i];
        let error = StepError::Store(error);
        (self.options.on_event)(&FlowEvent::Failed {
            node,
            error: &error,
            elapsed: Duration::ZERO,
        });
        NodeResult::Failed(error)
    }

    fn run_node(&self, i: usize) -> NodeResult {
        let node = &self.flow.nodes[i];
        (self.options.on_event)(&FlowEvent::Started { node });
        let mut invocation =
            Invocation::new(self.flow_run_id, node.node_id).with_params(node.params.clone());
        for up in &node.upstream {
            if let Some(u) = self.flow.index_of(up) {
                invocation = invocation.with_upstream(up.clone(), self.flow.nodes[u].node_id);
            }
        }
        let started = Instant::now();
        let result = self.runtime.run(
            &self.components[i],
            self.store,
            &invocation,
            &node.grant,
            &node.limits,
        );
        let elapsed = started.elapsed();
        match result {
            Ok(outcome) => {
                let event = FlowEvent::Finished {
                    node,
                    status: outcome.status,
                    output: &outcome.output,
                    elapsed,
                };
                (self.options.on_event)(&event);
                NodeResult::Done {
                    status: outcome.status,
                    output: outcome.output,
                    elapsed,
                }
            }
            Err(error) => {
                if let Err(journal_error) = journal::record_failure(
                    self.store.as_ref(),
                    self.flow_run_id,
                    node.node_id,
                    &error.to_string(),
                ) {
                    tracing::warn!(node = %node.name, %journal_error, "could not record the failure");
                }
                (self.options.on_event)(&FlowEvent::Failed {
                    node,
                    error: &error,
                    elapsed,
                });
                NodeResult::Failed(error)
            }
        }
    }

    /// Marks every node downstream of `failed` as blocked by it.
    fn block_dependents(&self, b: &mut Board, failed: usize) {
        let by = &self.flow.nodes[failed].name;
        let mut stack: Vec<usize> = self.dependents[failed].clone();
        while let Some(d) = stack.pop() {
            if b.results[d].is_some() {
                continue;
            }
            b.results[d] = Some(NodeResult::Blocked { by: by.clone() });
            (self.options.on_event)(&FlowEvent::Blocked {
                node: &self.flow.nodes[d],
                by,
            });
            stack.extend(&self.dependents[d]);
        }
    }
}
