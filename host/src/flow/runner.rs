//! Running a flow: dependency order, independent nodes in parallel on a
//! bounded pool of worker threads, finished nodes skipped, a failed node
//! stopping its dependents (and only them).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::json::JsonText;

use super::{Flow, FlowError, FlowNode, journal, resume::check_unchanged};
use crate::id::FlowRunId;
use crate::runtime::{Runtime, StepComponent, StepError, StepStatus};
use crate::store::ContextStore;

/// Something that happened to a node, as it happens (from worker threads).
#[derive(Debug)]
pub enum FlowEvent<'a> {
    /// The node's step is about to run (or to find its output stored).
    Started {
        /// The node.
        node: &'a FlowNode,
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
}

/// Runs (or resumes) `flow` as run `flow_run_id`. Components are loaded
/// first, so a broken one fails the run before any step runs. A run whose
/// stored outputs the flow as it is now would not have written is refused
/// ([`FlowError::Changed`]) before any step runs.
///
/// A node is done if and only if its output is stored: a step that stored
/// its output and then failed is [`NodeResult::Done`] with a warning (its
/// failure is journaled), and its dependents run.
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
    check_unchanged(store.as_ref(), flow, flow_run_id, &components)?;
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
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| worker.work(&board, &wake));
        }
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

impl Worker<'_> {
    fn work(&self, board: &Mutex<Board>, wake: &Condvar) {
        while let Some(i) = self.next(board, wake) {
            let result = self.run_node(i);
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

    /// The next ready node, or `None` when nothing is ready or running.
    fn next(&self, board: &Mutex<Board>, wake: &Condvar) -> Option<usize> {
        let mut b = board.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(i) = b.ready.pop_front() {
                b.running += 1;
                return Some(i);
            }
            if b.running == 0 {
                return None;
            }
            b = wake.wait(b).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn run_node(&self, i: usize) -> NodeResult {
        let node = &self.flow.nodes[i];
        (self.options.on_event)(&FlowEvent::Started { node });
        let store = self.store.as_ref();
        let attempt = match journal::failure(store, self.flow_run_id, node.node_id) {
            Ok(failed) => failed.map_or(1, |f| f.attempt.saturating_add(1)),
            Err(error) => {
                tracing::warn!(node = %node.name, %error, "could not read the journal; counting this as attempt 1");
                1
            }
        };
        let invocation = self
            .flow
            .invocation(i, self.flow_run_id)
            .with_attempt(attempt);
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
                let warning = match (&outcome.warning, outcome.status) {
                    (Some(failure), _) => {
                        self.journal(node, &failure.to_string(), attempt);
                        Some(failure.to_string())
                    }
                    // Done earlier: the attempt that stored it may have failed after.
                    (None, StepStatus::AlreadyDone) => journal::warning(
                        store,
                        self.flow_run_id,
                        node.node_id,
                    )
                    .unwrap_or_else(|error| {
                        tracing::warn!(node = %node.name, %error, "could not read the journal");
                        None
                    }),
                    (None, StepStatus::Ran) => None,
                };
                let event = FlowEvent::Finished {
                    node,
                    status: outcome.status,
                    output: &outcome.output,
                    warning: warning.as_deref(),
                    elapsed,
                };
                (self.options.on_event)(&event);
                NodeResult::Done {
                    status: outcome.status,
                    output: outcome.output,
                    warning,
                    elapsed,
                }
            }
            Err(error) => {
                self.journal(node, &error.to_string(), attempt);
                (self.options.on_event)(&FlowEvent::Failed {
                    node,
                    error: &error,
                    elapsed,
                });
                NodeResult::Failed(error)
            }
        }
    }

    /// Records a failed attempt in the journal (a failure to record is logged).
    fn journal(&self, node: &FlowNode, error: &str, attempt: u32) {
        if let Err(journal_error) = journal::record_failure(
            self.store.as_ref(),
            self.flow_run_id,
            node.node_id,
            error,
            attempt,
        ) {
            tracing::warn!(node = %node.name, %journal_error, "could not record the failure");
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
