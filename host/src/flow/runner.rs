//! Running a flow: dependency order, independent nodes in parallel on a
//! bounded pool of worker threads, finished nodes skipped, a failed node
//! stopping its dependents (and only them).
//!
//! When the store shares runs between processes (it has a
//! [`Coordinator`]), every process running the same run is a worker: it
//! claims each ready node with a lease before running it, runs it under the
//! claim's fence, renews its leases from a background thread while it
//! runs ([`lease`](super::lease)), and leaves a node another worker holds
//! to that worker, looking again until the node's output is stored or the
//! holder's lease expires (then it takes the node over). A step whose claim
//! is lost is stopped and its node looked at again; a store call that
//! fails for a passing reason (a database restart) is tried again.
//!
//! Every output this worker uses that it did not write itself is checked
//! against its own flow first (its provenance): a run is never finished
//! with outputs of another flow.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::json::JsonText;

use super::index::RunEntry;
use super::lease::{LeaseOptions, Leases};
use super::resume::{check_unchanged, compare};
use super::{Flow, FlowError, FlowNode, journal};
use crate::coord::{Claim, Fence, Stored, WorkerId};
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::runs::{WorkerOutcome, WorkerStatus};
use crate::runtime::{RunControl, Runtime, StepComponent, StepError, StepStatus, StopSignal};
use crate::slots::JobSlots;
use crate::store::{AsyncContextStore, CallContext, ContextStore, Provenance};

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
        /// The claim's fencing token: greater than every earlier claim's.
        token: i64,
    },
    /// The node is done: it ran now, or its output was already stored.
    Finished {
        /// The node.
        node: &'a FlowNode,
        /// Whether the step ran now.
        status: StepStatus,
        /// The node's stored output.
        output: &'a JsonText,
        /// How the step failed after storing its output, if it did.
        warning: Option<&'a str>,
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
    /// This worker's step at the node was stopped because its claim was
    /// lost (taken over, or its lease ran out): another worker runs the
    /// node, or this one looks at it again.
    Stopped {
        /// The node.
        node: &'a FlowNode,
        /// Why.
        reason: &'a str,
    },
    /// The node's step failed and will be tried again (its retry policy).
    Retrying {
        /// The node.
        node: &'a FlowNode,
        /// Why this attempt failed.
        error: &'a StepError,
        /// The attempt that failed.
        attempt: u32,
        /// The wait before the next attempt.
        after: Duration,
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

/// What became of one node.
#[derive(Debug)]
pub enum NodeResult {
    /// The node's output is stored.
    Done {
        /// Whether the step ran in this attempt.
        status: StepStatus,
        /// The output.
        output: JsonText,
        /// How the step failed after storing its output (now, or in the
        /// attempt that stored it), if it did: the node is done all the same.
        warning: Option<String>,
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

    /// The nodes that are done with a warning, with the warning.
    pub fn warnings(&self) -> impl Iterator<Item = (&str, &str)> {
        self.results.iter().filter_map(|(name, r)| match r {
            NodeResult::Done {
                warning: Some(warning),
                ..
            } => Some((name.as_str(), warning.as_str())),
            _ => None,
        })
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
    results: Vec<Option<NodeResult>>,
    running: usize,
    /// Nodes another worker holds, with when to look at them again.
    deferred: Vec<(usize, Instant)>,
    /// Nodes this worker claimed in a batch and has not started yet
    /// (counted in `running`).
    won: VecDeque<(usize, Won)>,
}

/// Outputs known to be stored, by node.
type Known = HashMap<NodeId, JsonText>;

/// A claim this worker won on a node, not yet run.
struct Won {
    fence: Fence,
    attempt: u32,
    stop: StopSignal,
}

/// What a claim's answer leaves to do for a node not won.
enum Look {
    /// Finished elsewhere (with the output, if the answer brought it).
    Finished(Option<Box<Stored>>),
    /// Held elsewhere: look again after this long.
    Later(Duration),
}

/// What a worker thread does next.
enum Task {
    /// Run node `i` (or find it done): a store without coordination.
    Look(usize),
    /// Claim these nodes in one call (ready, or due for another look) and
    /// run those won: a store shared by workers.
    Claim(Vec<usize>),
    /// Run node `i` under a claim won in a batch.
    Run(usize, Won),
}

/// What one look at a node came to.
enum Attempt {
    /// The node has its result.
    Result(NodeResult),
    /// Look at the node again after this long: another worker holds it,
    /// its claim was lost, or the store failed for a passing reason.
    Later(Duration),
}

/// A step shorter than this lets a worker claim ahead of its job slots
/// (see `Worker::claim_room`).
const SHORT_STEP: Duration = Duration::from_millis(50);

/// How many times in a row a node's bookkeeping may fail for a passing
/// reason (a database restarting) before the node fails with that error.
const MAX_STORE_RETRIES: u32 = 20;

/// Runs (or resumes) `flow` as run `flow_run_id`. Components are loaded
/// first, so a broken one fails the run before any step runs. A run whose
/// stored outputs the flow as it is now would not have written is refused
/// ([`FlowError::Changed`]) before any step runs, and so is, at any later
/// node, an output another worker stored meanwhile.
///
/// A node is done if and only if its output is stored: a step that stored
/// its output and then failed is [`NodeResult::Done`] with a warning (its
/// failure is journaled), and its dependents run.
///
/// A panic while a node runs (in the host or the store) fails that node
/// with [`StepError::Panicked`]; a panic in [`RunOptions::on_event`] starts
/// no further node and ends the run with [`FlowError::CallbackPanicked`].
/// Either way the other workers never wait for the panicked one, and the
/// callback is never called with the scheduler's lock held.
pub fn run(
    runtime: &Runtime,
    store: &Arc<dyn ContextStore>,
    flow: &Flow,
    flow_run_id: FlowRunId,
    options: &RunOptions<'_>,
) -> Result<FlowReport, FlowError> {
    // Each file is read and hashed once, however many nodes share it; the
    // fuel-metered variant is compiled for the nodes with a fuel budget.
    let mut loaded: HashMap<&Path, StepComponent> = HashMap::new();
    let mut components = Vec::with_capacity(flow.nodes.len());
    for node in &flow.nodes {
        let component = match loaded.get(node.component.as_path()) {
            Some(component) => component.clone(),
            None => {
                let component =
                    runtime
                        .load_file(&node.component)
                        .map_err(|source| FlowError::Component {
                            node: node.name.clone(),
                            source,
                        })?;
                loaded.insert(&node.component, component.clone());
                component
            }
        };
        if node.limits.fuel.is_some() {
            // Compiled here, before any deadline runs: a node with a fuel
            // budget runs the fuel-metered variant.
            runtime
                .prepare_metered(&component)
                .map_err(|source| FlowError::Component {
                    node: node.name.clone(),
                    source,
                })?;
        }
        components.push(component);
    }
    if super::cancel::is_cancelled(store.as_ref(), flow_run_id)?.is_some() {
        return Err(FlowError::Cancelled { flow_run_id });
    }
    let shared = crate::store::to_async(store.clone());
    let leases = shared
        .coordinator()
        .map(|coordinator| Leases::new(coordinator, runtime, flow_run_id, &options.lease));
    if let Some(leases) = &leases {
        leases.check_name();
    }
    let worker_id = leases.as_ref().map_or_else(
        || WorkerId::new(options.lease.worker.clone()),
        |l| l.worker.clone(),
    );
    // Recorded before the outputs are read: gc leaves a run alone once a
    // worker has recorded itself on it.
    let entry = RunEntry::new(
        flow,
        &components,
        flow_run_id,
        worker_id,
        options.lease.lease,
    );
    entry.record(runtime, shared.as_ref(), WorkerStatus::Running);
    let stored_at_start = match check_unchanged(store.as_ref(), flow, flow_run_id, &components) {
        Ok(stored) => stored,
        Err(error) => {
            let outcome = WorkerOutcome::Failed;
            entry.record(runtime, shared.as_ref(), WorkerStatus::Ended(outcome));
            return Err(error);
        }
    };
    let failed = last_failures(runtime, shared.as_ref(), flow, flow_run_id);
    let dependents = flow.dependents();
    let waiting_on: Vec<usize> = flow.nodes.iter().map(|n| n.upstream.len()).collect();
    let ready = (0..flow.nodes.len())
        .filter(|i| waiting_on[*i] == 0)
        .collect();
    let board = Mutex::new(Board {
        waiting_on,
        ready,
        results: (0..flow.nodes.len()).map(|_| None).collect(),
        running: 0,
        deferred: Vec::new(),
        won: VecDeque::new(),
    });
    let wake = Condvar::new();
    let worker = Worker {
        runtime,
        store: shared.clone(),
        leases: leases.as_ref(),
        flow,
        flow_run_id,
        components: &components,
        dependents: &dependents,
        options,
        callback_panic: Mutex::new(None),
        changed: Mutex::new(None),
        store_failures: Mutex::new(vec![0; flow.nodes.len()]),
        tries: Mutex::new(failed),
        held_looks: Mutex::new(vec![0; flow.nodes.len()]),
        stored_at_start,
        recent_step: Mutex::new(Duration::MAX),
        threads: workers_for(options.jobs, flow),
        stopped: AtomicBool::new(false),
        cancelled: AtomicBool::new(false),
        running_stops: Mutex::new(HashMap::new()),
        slots: JobSlots::new(options.jobs.max(1)),
    };
    let ended = (Mutex::new(false), Condvar::new());
    let workers = worker.threads;
    std::thread::scope(|scope| {
        if let Some(leases) = &leases {
            scope.spawn(|| leases.keep());
        }
        scope.spawn(|| worker.watch_cancel(&board, &wake, &ended, &entry));
        let threads: Vec<_> = (0..workers)
            .map(|_| scope.spawn(|| worker.work(&board, &wake)))
            .collect();
        for thread in threads {
            // A worker catches every panic of a node or a callback itself.
            let _ = thread.join();
        }
        *lock(&ended.0) = true;
        ended.1.notify_all();
        if let Some(leases) = &leases {
            leases.stop();
        }
    });
    let record_end = |outcome| entry.record(runtime, shared.as_ref(), WorkerStatus::Ended(outcome));
    if worker.cancelled.load(Ordering::SeqCst) {
        record_end(WorkerOutcome::Cancelled);
        return Err(FlowError::Cancelled { flow_run_id });
    }
    if let Some(message) = worker
        .callback_panic
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        return Err(FlowError::CallbackPanicked(message));
    }
    if let Some(changed) = worker
        .changed
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        record_end(WorkerOutcome::Failed);
        return Err(changed);
    }
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
    let report = FlowReport {
        flow_run_id,
        results,
    };
    record_end(if report.is_success() {
        WorkerOutcome::Done
    } else {
        WorkerOutcome::Failed
    });
    Ok(report)
}

struct Worker<'a> {
    runtime: &'a Runtime,
    store: Arc<dyn AsyncContextStore>,
    /// This worker's claims, when the store shares runs between workers.
    leases: Option<&'a Leases<'a>>,
    flow: &'a Flow,
    flow_run_id: FlowRunId,
    components: &'a [StepComponent],
    dependents: &'a [Vec<usize>],
    options: &'a RunOptions<'a>,
    /// The message of the first panic in `on_event`.
    callback_panic: Mutex<Option<String>>,
    /// Set when an output another worker stored was written by another flow.
    changed: Mutex<Option<FlowError>>,
    /// For each node, how many of its store calls in a row failed.
    store_failures: Mutex<Vec<u32>>,
    /// For each node, its failed attempts and any retry due, read from the
    /// journal once at start and kept up to date.
    tries: Mutex<Vec<Tries>>,
    /// `jobs` slots: a node's thread holds one while it computes, and its
    /// step gives it back while a write commits.
    slots: JobSlots,
    /// For each node, how many looks in a row found it held by another
    /// worker (the next look waits longer).
    held_looks: Mutex<Vec<u32>>,
    /// How many threads run nodes (see [`threads`]): at most this many
    /// nodes are claimed at once.
    threads: usize,
    /// For each node, whether its output was stored when the run started.
    stored_at_start: Vec<bool>,
    /// How long steps take, as a moving average of the steps this worker
    /// ran (unknown at first: taken as long).
    recent_step: Mutex<Duration>,
    /// Set when `on_event` panicked or the flow changed: start no further node.
    stopped: AtomicBool,
    /// Set when the run was found cancelled (and `stopped` with it).
    cancelled: AtomicBool,
    /// The stop signal of each invocation running, by node.
    running_stops: Mutex<HashMap<usize, StopSignal>>,
}

/// One node counted in [`Board::running`]: dropping it (however the node
/// ended, a panic included) uncounts it and wakes the waiting workers.
struct Running<'b> {
    board: &'b Mutex<Board>,
    wake: &'b Condvar,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut b = lock(self.board);
        b.running -= 1;
        self.wake.notify_all();
    }
}

impl Worker<'_> {
    fn work(&self, board: &Mutex<Board>, wake: &Condvar) {
        while let Some(task) = self.next(board, wake) {
            match task {
                Task::Look(i) => self.one(board, wake, i, |known| self.run_here(i, known)),
                Task::Run(i, won) => {
                    self.one(board, wake, i, |known| self.run_claimed(i, won, known));
                }
                Task::Claim(batch) => self.claim_batch(board, wake, batch),
            }
        }
    }

    /// Looks at node `i` (counted in `running`) with `look`, holding a job
    /// slot, and puts what it came to on the board: a result (waking its
    /// dependents, or blocking them), or another look later.
    fn one(
        &self,
        board: &Mutex<Board>,
        wake: &Condvar,
        i: usize,
        look: impl FnOnce(Known) -> Attempt,
    ) {
        let running = Running { board, wake };
        let known = self.known_upstreams(board, i);
        let slot = self.slots.hold(None);
        let started = Instant::now();
        let looked = catch_unwind(AssertUnwindSafe(|| look(known))).unwrap_or_else(|payload| {
            Attempt::Result(self.panicked(i, payload.as_ref(), started.elapsed()))
        });
        drop(slot);
        let result = match looked {
            Attempt::Result(result) => result,
            Attempt::Later(after) => {
                lock(board).deferred.push((i, Instant::now() + after));
                return;
            }
        };
        let blocked = {
            let mut b = lock(board);
            let blocked = match &result {
                NodeResult::Done { .. } => {
                    for &d in &self.dependents[i] {
                        b.waiting_on[d] -= 1;
                        if b.waiting_on[d] == 0 && b.results[d].is_none() {
                            b.ready.push_back(d);
                        }
                    }
                    Vec::new()
                }
                _ => self.block_dependents(&mut b, i),
            };
            b.results[i] = Some(result);
            blocked
        };
        drop(running);
        let by = &self.flow.nodes[i].name;
        for d in blocked {
            self.emit(&FlowEvent::Blocked {
                node: &self.flow.nodes[d],
                by,
            });
        }
    }

    /// How many nodes to claim now on a shared run (0: none yet). A worker
    /// holds at most as many unfinished nodes as it has job slots, so that
    /// it never keeps from other workers nodes it would only start later;
    /// while its steps are short (a recent step took under [`SHORT_STEP`])
    /// also as many more as its other threads and half as many again, to be
    /// claimed in batches of at least half its threads while work is queued:
    /// one statement claims several nodes, and their writes share commits.
    fn claim_room(&self, b: &Board) -> usize {
        let jobs = self.options.jobs.max(1);
        let short = *lock(&self.recent_step) < SHORT_STEP;
        if !short {
            return jobs.saturating_sub(b.running);
        }
        let most = self.threads + self.threads.div_ceil(2);
        let room = most.saturating_sub(b.running);
        if room < self.threads.div_ceil(2) && !b.won.is_empty() {
            // Work is queued: wait until a batch's worth is free.
            return 0;
        }
        room
    }

    /// The outputs of node `i`'s upstreams that are done on the board (the
    /// runtime does not read them again).
    fn known_upstreams(&self, board: &Mutex<Board>, i: usize) -> Known {
        let node = &self.flow.nodes[i];
        let b = lock(board);
        node.upstream_index
            .iter()
            .filter_map(|&u| match &b.results[u] {
                Some(NodeResult::Done { output, .. }) => {
                    Some((self.flow.nodes[u].node_id, output.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// What to do next: a node claimed earlier; on a shared run a batch of
    /// ready nodes (and nodes due for another look) to claim, as many as
    /// this worker has threads free for; else the next ready or due node.
    /// `None` when nothing is ready, deferred or running, or the run was
    /// stopped.
    fn next(&self, board: &Mutex<Board>, wake: &Condvar) -> Option<Task> {
        let mut b = lock(board);
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                return None;
            }
            if let Some((i, won)) = b.won.pop_front() {
                return Some(Task::Run(i, won));
            }
            let now = Instant::now();
            let room = match self.leases {
                None => 1,
                Some(_) => {
                    let room = self.claim_room(&b);
                    if room == 0 {
                        b = wake
                            .wait_timeout(b, Duration::from_secs(1))
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                        continue;
                    }
                    room
                }
            };
            let mut batch = Vec::new();
            if self.leases.is_some() && b.ready.len() > room {
                // Workers sharing a run see the same ready nodes: each
                // claims a stretch starting at a point of its own, so that
                // their batches seldom meet (a node another worker just
                // claimed costs a look again later).
                let len = b.ready.len();
                let start = ((crate::random::unit() * len as f64) as usize).min(len - 1);
                b.ready.rotate_left(start);
            }
            while batch.len() < room {
                let Some(i) = b.ready.pop_front() else { break };
                batch.push(i);
            }
            let mut pos = 0;
            while batch.len() < room && pos < b.deferred.len() {
                if b.deferred[pos].1 <= now {
                    batch.push(b.deferred.swap_remove(pos).0);
                } else {
                    pos += 1;
                }
            }
            if !batch.is_empty() {
                b.running += batch.len();
                return Some(match (self.leases, batch.as_slice()) {
                    (None, [i]) => Task::Look(*i),
                    _ => Task::Claim(batch),
                });
            }
            let due = b.deferred.iter().map(|(_, at)| *at).min();
            if due.is_none() && b.running == 0 {
                return None;
            }
            // A node ending wakes us; a deferred node when due; look again
            // at least every second all the same (every wait has a deadline).
            let wait = due.map_or(Duration::from_secs(1), |at| {
                at.saturating_duration_since(now)
                    .min(Duration::from_secs(1))
            });
            b = wake
                .wait_timeout(b, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Looks for the run's cancellation mark every
    /// [`WATCH_EVERY`](super::cancel::WATCH_EVERY) until the run ends
    /// (`ended`); once found, starts no further node and stops every
    /// running step at once. Records the worker in the runs index every
    /// third of its lease meanwhile (its heartbeat).
    fn watch_cancel(
        &self,
        board: &Mutex<Board>,
        wake: &Condvar,
        ended: &(Mutex<bool>, Condvar),
        entry: &RunEntry,
    ) {
        let mut recorded = Instant::now();
        loop {
            if recorded.elapsed() >= entry.heartbeat_every() {
                entry.record(self.runtime, self.store.as_ref(), WorkerStatus::Running);
                recorded = Instant::now();
            }
            {
                let done = lock(&ended.0);
                let (done, _) = ended
                    .1
                    .wait_timeout_while(done, super::cancel::WATCH_EVERY, |done| !*done)
                    .unwrap_or_else(PoisonError::into_inner);
                if *done {
                    return;
                }
            }
            let cx = CallContext::within(Duration::from_secs(5));
            match self.block_on(super::cancel::cancelled(
                self.store.as_ref(),
                &cx,
                self.flow_run_id,
            )) {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => tracing::debug!(%error, "could not look for the run's cancellation"),
            }
        }
        tracing::warn!(run = %self.flow_run_id, "the run was cancelled: stopping its steps");
        self.cancelled.store(true, Ordering::SeqCst);
        self.stopped.store(true, Ordering::SeqCst);
        for stop in lock(&self.running_stops).values() {
            stop.stop("the run was cancelled");
        }
        let _board = lock(board);
        wake.notify_all();
    }

    /// Calls `on_event`, catching a panic: the first one is kept for the
    /// report and stops the run; the callback is not called again.
    fn emit(&self, event: &FlowEvent<'_>) {
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (self.options.on_event)(event))) {
            let message = panic_message(payload.as_ref());
            let mut first = lock(&self.callback_panic);
            if first.is_none() {
                *first = Some(message);
            }
            self.stopped.store(true, Ordering::SeqCst);
        }
    }

    /// A call context for the runner's own store calls (claims, reads of
    /// the journal, checks): they may take a lease's time (at least 10 s),
    /// in which a passing fault is retried by the backend.
    fn bookkeeping(&self) -> CallContext {
        let budget = self
            .leases
            .map_or(Duration::from_secs(30), |l| l.lease)
            .max(Duration::from_secs(10));
        CallContext::within(budget)
    }

    /// Runs node `i` on a store without coordination.
    fn run_here(&self, i: usize, known: Known) -> Attempt {
        if let Some(wait) = self.not_yet_due(i) {
            return Attempt::Later(wait);
        }
        let result = self.run_node(i, None, known);
        match self.take_retry(i) {
            Some(wait) => Attempt::Later(wait),
            None => Attempt::Result(result),
        }
    }

    /// Claims the nodes of `batch` (each counted in `running`) in one call;
    /// runs the first won here and leaves the others won to the next free
    /// threads; a node finished elsewhere is checked and taken as done; one
    /// held elsewhere is looked at again later.
    fn claim_batch(&self, board: &Mutex<Board>, wake: &Condvar, batch: Vec<usize>) {
        let Some(leases) = self.leases else {
            for i in batch {
                self.one(board, wake, i, |known| self.run_here(i, known));
            }
            return;
        };
        let nodes: Vec<_> = batch.iter().map(|&i| self.flow.nodes[i].node_id).collect();
        let cx = self.bookkeeping();
        let since = Instant::now();
        let claimed = catch_unwind(AssertUnwindSafe(|| {
            self.block_on(leases.coordinator().claim_many(
                &cx,
                self.flow_run_id,
                &nodes,
                &leases.worker,
                leases.lease,
            ))
        }));
        let claims = match claimed {
            Ok(Ok(claims)) if claims.len() == batch.len() => claims,
            Ok(Ok(claims)) => {
                let error = ContextStoreError::StorageError(format!(
                    "claimed {} nodes, got {} answers",
                    batch.len(),
                    claims.len()
                ));
                return self.batch_failed(board, wake, batch, &error);
            }
            Ok(Err(error)) => return self.batch_failed(board, wake, batch, &error),
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                for i in batch {
                    self.one(board, wake, i, |_| {
                        Attempt::Result(self.panicked(i, &message, Duration::ZERO))
                    });
                }
                return;
            }
        };
        let mut mine = None;
        let mut others = Vec::new();
        let mut looks = Vec::new();
        for (&i, claim) in batch.iter().zip(claims) {
            match claim {
                Claim::Won { attempt, fence } => {
                    self.store_ok(i);
                    lock(&self.held_looks)[i] = 0;
                    self.emit(&FlowEvent::Claimed {
                        node: &self.flow.nodes[i],
                        worker: &leases.worker.name,
                        attempt,
                        token: fence.token,
                    });
                    let won = Won {
                        fence,
                        attempt,
                        stop: leases.hold(fence, since),
                    };
                    if mine.is_none() {
                        mine = Some((i, won));
                    } else {
                        others.push((i, won));
                    }
                }
                Claim::Finished { stored, .. } => looks.push((i, Look::Finished(stored))),
                Claim::Held { lease_left, .. } => {
                    self.store_ok(i);
                    looks.push((i, Look::Later(self.held_poll(i, leases, lease_left))));
                }
            }
        }
        if !others.is_empty() {
            lock(board).won.extend(others);
            wake.notify_all();
        }
        if let Some((i, won)) = mine {
            self.one(board, wake, i, |known| self.run_claimed(i, won, known));
        }
        let mut finished = Vec::new();
        for (i, look) in looks {
            match look {
                // The claim's answer brought the output: no read needed
                // (but a resumed node's journal, for its warning).
                Look::Finished(Some(stored)) if !self.stored_at_start[i] => {
                    let Stored { value, provenance } = *stored;
                    self.one(board, wake, i, |_| {
                        self.take_found(i, value, provenance, None)
                    });
                }
                Look::Finished(_) => finished.push(i),
                Look::Later(after) => self.one(board, wake, i, |_| Attempt::Later(after)),
            }
        }
        self.found_done_many(board, wake, finished);
    }

    /// Takes the nodes of `nodes` (each counted in `running`), finished by
    /// another worker, as done: their outputs, provenance and journal
    /// entries in two reads for all of them; each checked against this
    /// worker's flow.
    fn found_done_many(&self, board: &Mutex<Board>, wake: &Condvar, nodes: Vec<usize>) {
        if nodes.is_empty() {
            return;
        }
        let ids: Vec<NodeId> = nodes.iter().map(|&i| self.flow.nodes[i].node_id).collect();
        let cx = self.bookkeeping();
        // The journal is read for the nodes stored before this worker
        // started (a resumed run): a node another worker finished during
        // this run reported its own warning, and `flow status` shows it.
        let resumed: Vec<NodeId> = nodes
            .iter()
            .filter(|&&i| self.stored_at_start[i])
            .map(|&i| self.flow.nodes[i].node_id)
            .collect();
        let read = catch_unwind(AssertUnwindSafe(|| {
            let outputs = self.block_on(self.store.get_many_with_provenance(
                &cx,
                self.flow_run_id,
                &ids,
            ))?;
            let mut failures: HashMap<NodeId, journal::Failure> = HashMap::new();
            if !resumed.is_empty() {
                let read = self.block_on(journal::last_failures(
                    self.store.as_ref(),
                    &cx,
                    self.flow_run_id,
                    &resumed,
                ))?;
                failures.extend(
                    resumed
                        .iter()
                        .zip(read)
                        .filter_map(|(id, failure)| Some((*id, failure?))),
                );
            }
            let failures: Vec<Option<journal::Failure>> =
                ids.iter().map(|id| failures.remove(id)).collect();
            Ok::<_, ContextStoreError>((outputs, failures))
        }));
        let Ok(Ok((outputs, failures))) = read else {
            // Node by node, with each one's own errors.
            for i in nodes {
                self.one(board, wake, i, |known| self.found_done(i, known));
            }
            return;
        };
        for ((i, output), failure) in nodes.into_iter().zip(outputs).zip(failures) {
            self.one(board, wake, i, |known| match output {
                Some(Stored { value, provenance }) => {
                    self.take_found(i, value, provenance, failure)
                }
                // Finished, yet not found: look the usual way.
                None => self.found_done(i, known),
            });
        }
    }

    /// Node `i`, found stored by another worker with `provenance`, and its
    /// journal's last `failure`: done, unless another flow wrote it.
    fn take_found(
        &self,
        i: usize,
        output: JsonText,
        provenance: Option<Provenance>,
        failure: Option<journal::Failure>,
    ) -> Attempt {
        self.store_ok(i);
        if let Err(attempt) = self.check_changed(i, provenance.as_ref()) {
            return attempt;
        }
        let node = &self.flow.nodes[i];
        // The attempt that stored the output failed after it.
        let warning = failure
            .filter(|f| provenance.as_ref().map(|p| p.attempt) == Some(f.attempt))
            .map(|f| f.error);
        self.emit(&FlowEvent::Started { node });
        self.emit(&FlowEvent::Finished {
            node,
            status: StepStatus::AlreadyDone,
            output: &output,
            warning: warning.as_deref(),
            elapsed: Duration::ZERO,
        });
        Attempt::Result(NodeResult::Done {
            status: StepStatus::AlreadyDone,
            output,
            warning,
            elapsed: Duration::ZERO,
        })
    }

    /// Every node of a batch whose claim call failed with `error`: looked
    /// at again after a pause if the fault may pass, else failed.
    fn batch_failed(
        &self,
        board: &Mutex<Board>,
        wake: &Condvar,
        batch: Vec<usize>,
        error: &ContextStoreError,
    ) {
        for i in batch {
            let error = match error {
                ContextStoreError::Timeout(m) => ContextStoreError::Timeout(m.clone()),
                other => ContextStoreError::StorageError(other.to_string()),
            };
            self.one(board, wake, i, |_| self.store_trouble(i, error));
        }
    }

    /// When to look again at node `i`, held by another worker whose lease
    /// has `lease_left`: soon at first (the holder may finish any moment),
    /// then twice as long each time it is still held, up to a twentieth of
    /// the lease (20 to 500 ms), and never after the lease would expire.
    fn held_poll(&self, i: usize, leases: &Leases<'_>, lease_left: Duration) -> Duration {
        let looks = {
            let mut looks = lock(&self.held_looks);
            looks[i] = looks[i].saturating_add(1);
            looks[i]
        };
        let most = (leases.lease / 20).clamp(Duration::from_millis(20), Duration::from_millis(500));
        let poll = Duration::from_millis(5)
            .saturating_mul(1 << (looks - 1).min(10))
            .min(most);
        poll.min(lease_left + Duration::from_millis(1))
    }

    /// Runs node `i` under the claim `won` of this worker.
    fn run_claimed(&self, i: usize, won: Won, known: Known) -> Attempt {
        let Some(leases) = self.leases else {
            return self.run_here(i, known);
        };
        let Won {
            fence,
            attempt,
            stop,
        } = won;
        if attempt > self.attempt(i) {
            // Claimed before, by a worker this one has not heard from (it
            // died, perhaps while waiting to retry): the journal tells.
            self.reread_tries(i);
        }
        if let Some(wait) = self.not_yet_due(i) {
            // Keep the claim while waiting (it is renewed, and won again by
            // this worker's next claim of the node).
            leases.drop_claim(self.flow.nodes[i].node_id);
            return Attempt::Later(wait);
        }
        let result = self.run_node(i, Some((fence, stop, attempt)), known);
        leases.drop_claim(self.flow.nodes[i].node_id);
        self.settle_claim(leases, i, fence, result)
    }

    /// Ends this worker's claim `fence` on node `i` after its step gave
    /// `result`: a stored output finished the claim with it; otherwise the
    /// claim is given up, which waits out every write still under it, and
    /// the output is looked for once more before the node counts as failed.
    fn settle_claim(
        &self,
        leases: &Leases<'_>,
        i: usize,
        fence: Fence,
        result: NodeResult,
    ) -> Attempt {
        let coordinator = leases.coordinator();
        let cx = self.bookkeeping();
        match result {
            NodeResult::Done {
                status: StepStatus::Ran,
                ..
            } => {
                // The step's put stored the output under the fence, and a
                // fenced put finishes its claim in the same transaction
                // (`AsyncContextStore::put`): nothing more to commit.
                Attempt::Result(result)
            }
            // Another invocation stored it (without finishing this claim):
            // finish the claim, so that other workers see the node done,
            // and check whose flow wrote it.
            NodeResult::Done { .. } => {
                if let Err(error) = self.block_on(coordinator.finish(&cx, &fence)) {
                    tracing::warn!(node = %self.flow.nodes[i].name, %error, "could not finish the claim; it expires with its lease");
                }
                match self.check_provenance(i) {
                    Ok(()) => Attempt::Result(result),
                    Err(attempt) => attempt,
                }
            }
            NodeResult::Failed(error) => {
                if let Some(wait) = self.take_retry(i) {
                    // A retry is scheduled: keep the claim while waiting (it
                    // is renewed, and won again by this worker's next claim).
                    return Attempt::Later(wait);
                }
                if let Err(release_error) = self.block_on(coordinator.release(&cx, &fence)) {
                    tracing::warn!(node = %self.flow.nodes[i].name, error = %release_error, "could not give up the claim; it expires with its lease");
                }
                let stored = self.block_on(self.store.get(
                    &cx,
                    self.flow_run_id,
                    self.flow.nodes[i].node_id,
                ));
                if let Ok(Some(_)) = stored {
                    return self.found_done(i, Known::new());
                }
                match error {
                    // Lost the claim: someone else runs the node now, or
                    // this worker takes it again once free.
                    StepError::Stopped(_) => Attempt::Later(Duration::from_millis(20)),
                    // The step failed on a passing store fault (its failure
                    // is already reported): try again, as for the runner's
                    // own calls, and fail with that fault once too many came.
                    StepError::Store(e) if e.is_transient() => self
                        .store_retry(i)
                        .unwrap_or(Attempt::Result(NodeResult::Failed(StepError::Store(e)))),
                    error => Attempt::Result(NodeResult::Failed(error)),
                }
            }
            blocked @ NodeResult::Blocked { .. } => Attempt::Result(blocked),
        }
    }

    /// Node `i`'s output is stored, by this worker earlier or by another:
    /// its provenance must match this worker's flow ([`FlowError::Changed`]
    /// otherwise); then the node is done, as the runtime reports it.
    fn found_done(&self, i: usize, known: Known) -> Attempt {
        if let Err(attempt) = self.check_provenance(i) {
            return attempt;
        }
        Attempt::Result(self.run_node(i, None, known))
    }

    /// Compares the provenance of node `i`'s stored output with this
    /// worker's flow: `Err` with what to do instead when the flow changed
    /// (this worker stops, with [`FlowError::Changed`]) or the store failed.
    fn check_provenance(&self, i: usize) -> Result<(), Attempt> {
        let node = &self.flow.nodes[i];
        let cx = self.bookkeeping();
        let provenance = self
            .block_on(self.store.provenance(&cx, self.flow_run_id, node.node_id))
            .map_err(|error| self.store_trouble(i, error))?;
        self.store_ok(i);
        self.check_changed(i, provenance.as_ref())
    }

    /// [`check_provenance`](Self::check_provenance) with the provenance read.
    fn check_changed(&self, i: usize, provenance: Option<&Provenance>) -> Result<(), Attempt> {
        let node = &self.flow.nodes[i];
        let Some(provenance) = provenance else {
            return Ok(());
        };
        let Some(changed) = compare(
            provenance,
            self.flow,
            i,
            self.flow_run_id,
            &self.components[i],
        ) else {
            return Ok(());
        };
        let mut first = lock(&self.changed);
        if first.is_none() {
            tracing::error!(node = %node.name, "an output stored by another worker was written by another flow; stopping");
            *first = Some(FlowError::Changed {
                flow_run_id: self.flow_run_id,
                nodes: vec![changed],
            });
        }
        self.stopped.store(true, Ordering::SeqCst);
        Err(Attempt::Result(NodeResult::Blocked {
            by: "a change of the flow".into(),
        }))
    }

    /// A store call for node `i` failed outside its step: a passing fault
    /// is looked at again shortly (up to [`MAX_STORE_RETRIES`] times in a
    /// row); any other fails the node.
    fn store_trouble(&self, i: usize, error: ContextStoreError) -> Attempt {
        if error.is_transient() {
            tracing::warn!(node = %self.flow.nodes[i].name, %error, "store call failed; trying again");
            if let Some(attempt) = self.store_retry(i) {
                return attempt;
            }
        }
        Attempt::Result(self.store_failure(i, error))
    }

    /// Counts a passing failure of node `i`'s store calls: when to look
    /// again, or `None` once too many came in a row.
    fn store_retry(&self, i: usize) -> Option<Attempt> {
        let mut failures = lock(&self.store_failures);
        failures[i] += 1;
        (failures[i] <= MAX_STORE_RETRIES).then(|| {
            let pause = Duration::from_millis(50 << failures[i].min(5));
            Attempt::Later(pause)
        })
    }

    fn store_ok(&self, i: usize) {
        lock(&self.store_failures)[i] = 0;
    }

    /// Runs `future` on the runtime's executor from this worker thread.
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Node `i` failed because the store did, outside its step.
    fn store_failure(&self, i: usize, error: crate::error::ContextStoreError) -> NodeResult {
        let node = &self.flow.nodes[i];
        let error = StepError::Store(error);
        self.emit(&FlowEvent::Failed {
            node,
            error: &error,
            elapsed: Duration::ZERO,
        });
        NodeResult::Failed(error)
    }

    /// Runs node `i`'s step; under `claim` (its fence, stop signal and
    /// attempt number) on a shared run.
    fn run_node(
        &self,
        i: usize,
        claim: Option<(Fence, StopSignal, u32)>,
        known: Known,
    ) -> NodeResult {
        let node = &self.flow.nodes[i];
        self.emit(&FlowEvent::Started { node });
        let fence = claim.as_ref().map(|(fence, _, _)| *fence);
        // The invocation's stop signal: its claim's on a shared run, else
        // its own; either is given when the run is cancelled.
        let stop = claim
            .as_ref()
            .map_or_else(StopSignal::new, |(_, stop, _)| stop.clone());
        lock(&self.running_stops).insert(i, stop.clone());
        if self.cancelled.load(Ordering::SeqCst) {
            stop.stop("the run was cancelled");
        }
        let _unregister = Unregister {
            stops: &self.running_stops,
            node: i,
        };
        let attempt = match &claim {
            // Every attempt on a shared run has a claim of its own: the
            // claim's count is the attempt's number.
            Some((_, _, claimed)) => (*claimed).max(self.attempt(i)),
            None => self.attempt(i),
        };
        let invocation = self
            .flow
            .invocation(i, self.flow_run_id)
            .with_attempt(attempt);
        // Not stored: under a claim this worker won (the put of an output
        // finishes its claim); on a store without coordination, when it
        // was not stored at start (this runner is the run's writer).
        let unfinished = claim.is_some() || (self.leases.is_none() && !self.stored_at_start[i]);
        let control = RunControl {
            fence,
            stop: Some(stop),
            slots: Some(self.slots.clone()),
            known_outputs: Arc::new(known),
            unfinished,
        };
        let started = Instant::now();
        let result = self
            .runtime
            .prepare_async(
                &self.components[i],
                self.store.clone(),
                &node.grant,
                &node.limits,
            )
            .run_controlled(&invocation, &control);
        let elapsed = started.elapsed();
        {
            let mut recent = lock(&self.recent_step);
            *recent = match *recent {
                Duration::MAX => elapsed,
                before => (before * 3 + elapsed) / 4,
            };
        }
        match result {
            Ok(outcome) => {
                let warning = match (&outcome.warning, outcome.status) {
                    (Some(failure), StepStatus::Ran) => {
                        self.journal_failure(i, failure, attempt, fence);
                        Some(failure.to_string())
                    }
                    // Done earlier, or by another worker: the attempt that
                    // stored it may have failed after.
                    (_, StepStatus::AlreadyDone) => {
                        let cx = self.bookkeeping();
                        self.block_on(journal::last_warning(
                            self.store.as_ref(),
                            &cx,
                            self.flow_run_id,
                            node.node_id,
                        ))
                        .unwrap_or_else(|error| {
                            tracing::warn!(node = %node.name, %error, "could not read the journal");
                            None
                        })
                    }
                    (None, StepStatus::Ran) => None,
                };
                self.emit(&FlowEvent::Finished {
                    node,
                    status: outcome.status,
                    output: &outcome.output,
                    warning: warning.as_deref(),
                    elapsed,
                });
                NodeResult::Done {
                    status: outcome.status,
                    output: outcome.output,
                    warning,
                    elapsed,
                }
            }
            // A step stopped because its claim was lost (or the run was
            // cancelled) is not this worker's failure to report: the node
            // is looked at again (or the run ends).
            Err(StepError::Stopped(reason))
                if fence.is_some() || self.cancelled.load(Ordering::SeqCst) =>
            {
                self.emit(&FlowEvent::Stopped {
                    node,
                    reason: &reason,
                });
                NodeResult::Failed(StepError::Stopped(reason))
            }
            Err(error) => {
                let series = lock(&self.tries)[i].series.saturating_add(1);
                if node.retry.retries(series, &error) {
                    let wait = node.retry.wait(series, crate::random::unit());
                    let due = crate::store::provenance::unix_millis_now()
                        .saturating_add(crate::runs::millis(wait));
                    self.journal_attempt(i, &error, attempt, series, Some(due), fence);
                    {
                        let mut tries = lock(&self.tries);
                        tries[i].series = series;
                        tries[i].due = Some(due);
                        tries[i].pending = Some(wait);
                    }
                    self.emit(&FlowEvent::Retrying {
                        node,
                        error: &error,
                        attempt,
                        after: wait,
                    });
                } else {
                    self.journal_attempt(i, &error, attempt, series, None, fence);
                    {
                        let mut tries = lock(&self.tries);
                        tries[i].series = 0;
                        tries[i].due = None;
                    }
                    self.emit(&FlowEvent::Failed {
                        node,
                        error: &error,
                        elapsed,
                    });
                }
                NodeResult::Failed(error)
            }
        }
    }

    /// The number of the next attempt at node `i`: one more than its last
    /// failed attempt.
    fn attempt(&self, i: usize) -> u32 {
        lock(&self.tries)[i].failed.saturating_add(1)
    }

    /// How long until node `i`'s next attempt is due (a retry scheduled by
    /// this worker, or one the journal had at start), if it is not yet.
    fn not_yet_due(&self, i: usize) -> Option<Duration> {
        let due = lock(&self.tries)[i].due?;
        let left = due.saturating_sub(crate::store::provenance::unix_millis_now());
        (left > 0).then(|| Duration::from_millis(u64::try_from(left).unwrap_or(0)))
    }

    /// Reads node `i`'s journal entry again (another worker tried it).
    fn reread_tries(&self, i: usize) {
        let cx = self.bookkeeping();
        let node = self.flow.nodes[i].node_id;
        match self.block_on(journal::last_failures(
            self.store.as_ref(),
            &cx,
            self.flow_run_id,
            &[node],
        )) {
            Ok(read) => {
                if let Some(Some(failure)) = read.first() {
                    lock(&self.tries)[i] = Tries::from(failure);
                }
            }
            Err(error) => {
                tracing::warn!(node = %self.flow.nodes[i].name, %error, "could not read the journal");
            }
        }
    }

    /// The wait before node `i`'s retry, if its step just failed with one
    /// scheduled.
    fn take_retry(&self, i: usize) -> Option<Duration> {
        lock(&self.tries)[i].pending.take()
    }

    /// The result of node `i` when running it panicked: the failure is
    /// logged, journaled and sent as an event like any other.
    fn panicked(&self, i: usize, payload: &(dyn Any + Send), elapsed: Duration) -> NodeResult {
        let node = &self.flow.nodes[i];
        let message = panic_message(payload);
        tracing::error!(node = %node.name, %message, "panic while running a node");
        let error = StepError::Panicked(message);
        self.journal_failure(i, &error, self.attempt(i), None);
        self.emit(&FlowEvent::Failed {
            node,
            error: &error,
            elapsed,
        });
        NodeResult::Failed(error)
    }

    /// Records node `i`'s failure in the run's journal, under the node's
    /// claim on a shared run; a journal that cannot be written is logged,
    /// not fatal.
    fn journal_failure(&self, i: usize, error: &StepError, attempt: u32, fence: Option<Fence>) {
        let series = lock(&self.tries)[i].series.saturating_add(1);
        self.journal_attempt(i, error, attempt, series, None, fence);
    }

    /// [`journal_failure`](Self::journal_failure) of attempt `series` of
    /// a series of retries, with the next attempt `due` if one is.
    fn journal_attempt(
        &self,
        i: usize,
        error: &StepError,
        attempt: u32,
        series: u32,
        due: Option<i64>,
        fence: Option<Fence>,
    ) {
        let node = &self.flow.nodes[i];
        {
            let mut tries = lock(&self.tries);
            tries[i].failed = tries[i].failed.max(attempt);
        }
        let cx = self.bookkeeping().fenced(fence);
        let text = error.to_string();
        let failed = journal::AttemptFailed {
            error: &text,
            attempt,
            series,
            retry_at: due,
        };
        let recorded = catch_unwind(AssertUnwindSafe(|| {
            self.block_on(journal::record_attempt(
                self.store.as_ref(),
                &cx,
                self.flow_run_id,
                node.node_id,
                &failed,
            ))
        }));
        match recorded {
            Ok(Ok(())) => {}
            Ok(Err(journal_error)) => {
                tracing::warn!(node = %node.name, %journal_error, "could not record the failure");
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                tracing::warn!(node = %node.name, %message, "could not record the failure: the store panicked");
            }
        }
    }

    /// Marks every node downstream of `failed` as blocked by it, and returns
    /// them, for their events to be sent once the lock is released.
    fn block_dependents(&self, b: &mut Board, failed: usize) -> Vec<usize> {
        let by = &self.flow.nodes[failed].name;
        let mut blocked = Vec::new();
        let mut stack: Vec<usize> = self.dependents[failed].clone();
        while let Some(d) = stack.pop() {
            if b.results[d].is_some() {
                continue;
            }
            b.results[d] = Some(NodeResult::Blocked { by: by.clone() });
            blocked.push(d);
            stack.extend(&self.dependents[d]);
        }
        blocked
    }
}

/// Takes a node's stop signal out of [`Worker::running_stops`] when its
/// invocation ends, however it ends.
struct Unregister<'a> {
    stops: &'a Mutex<HashMap<usize, StopSignal>>,
    node: usize,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        lock(self.stops).remove(&self.node);
    }
}

/// How many threads run the nodes of a flow with `jobs` slots: up to six
/// times as many again as there are slots (at most 24 more), so that while
/// some steps wait for their writes to commit others compute, and their
/// writes share the next commit (six: the most nodes a second on this
/// project's 2-core machine, SQLite and PostgreSQL, against three).
fn threads(jobs: usize) -> usize {
    let jobs = jobs.max(1);
    jobs + (6 * jobs).min(24)
}

/// The threads for `flow` with `jobs` slots: [`threads`], at most one a node.
fn workers_for(jobs: usize, flow: &Flow) -> usize {
    threads(jobs).min(flow.nodes.len().max(1))
}

/// The last failed attempt of every node of `flow` in run `run` (0 for
/// none), in one read of the journal; all 0, with a warning, if the
/// journal cannot be read.
fn last_failures(
    runtime: &Runtime,
    store: &dyn AsyncContextStore,
    flow: &Flow,
    run: FlowRunId,
) -> Vec<Tries> {
    let nodes: Vec<_> = flow.nodes.iter().map(|n| n.node_id).collect();
    let cx = CallContext::within(Duration::from_secs(30));
    let read = runtime.block_on(journal::last_failures(store, &cx, run, &nodes));
    match read {
        Ok(failures) => failures
            .into_iter()
            .map(|f| f.as_ref().map_or_else(Tries::default, Tries::from))
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "could not read the run's journal; counting every node's next attempt as 1");
            vec![Tries::default(); nodes.len()]
        }
    }
}

/// What the journal says of a node's failed attempts.
#[derive(Clone, Copy, Debug, Default)]
struct Tries {
    /// The number of its last failed attempt (0: none).
    failed: u32,
    /// How many attempts of the current series of retries failed (0: no
    /// series under way).
    series: u32,
    /// When the next attempt of the series is due (Unix milliseconds).
    due: Option<i64>,
    /// The wait before the next attempt, set when this worker's step just
    /// failed with a retry scheduled (taken by whoever settles the node).
    pending: Option<Duration>,
}

impl From<&journal::Failure> for Tries {
    fn from(f: &journal::Failure) -> Self {
        Self {
            failed: f.attempt,
            series: if f.retry_at.is_some() { f.series } else { 0 },
            due: f.retry_at,
            pending: None,
        }
    }
}

/// Locks a mutex, recovering from poisoning: the board is only changed in
/// short sections that do not panic, and callbacks run outside it.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
