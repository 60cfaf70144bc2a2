//! Flows: a graph of step components read from a TOML file, run in
//! dependency order with independent nodes in parallel, resumable after a
//! crash because every node id is derived from the flow and node names.

use std::path::PathBuf;

use serde_json::Value;
use uuid::Uuid;

use crate::grant::Grant;
use crate::id::{FlowRunId, NodeId};
use crate::limits::Limits;
use crate::runtime::Invocation;

pub mod cancel;
mod file;
mod index;
pub mod journal;
mod lease;
mod resume;
pub mod retry;
mod runner;
mod status;

pub use cancel::{cancel, is_cancelled, resume_cancelled};
pub use file::{load, parse};
pub use journal::JOURNAL_PREFIX;
pub use lease::{LeaseOptions, default_worker_name};
pub use resume::{Change, ChangedNode, check_unchanged, compare};
pub use retry::{RetryOn, RetryPolicy};
pub use runner::{FlowEvent, FlowReport, NodeResult, RunOptions, run};
pub use status::{NodeState, NodeStatus, status, status_of};

/// The UUID v5 namespace of node ids (a fixed, random UUID).
const NODE_NAMESPACE: Uuid = Uuid::from_u128(0x9d3b_6c1e_4f0a_4b8e_a1c2_57e4_d0f3_8b61);

/// The stable id of node `node` in flow `flow`: a UUID v5 of both names, so
/// that a resumed run finds the outputs of an earlier attempt.
pub fn node_id(flow: &str, node: &str) -> NodeId {
    // A JSON array keeps ("a/b", "c") and ("a", "b/c") apart.
    let name = serde_json::json!([flow, node]).to_string();
    NodeId::from_uuid(Uuid::new_v5(&NODE_NAMESPACE, name.as_bytes()))
}

/// A checked flow: nodes with existing components, known upstreams, no cycles.
#[derive(Clone, Debug)]
pub struct Flow {
    /// The flow's name.
    pub name: String,
    /// The nodes, in file order.
    pub nodes: Vec<FlowNode>,
}

/// One node of a [`Flow`].
#[derive(Clone, Debug)]
pub struct FlowNode {
    /// The node's name in the flow.
    pub name: String,
    /// Its stable id ([`node_id`]).
    pub node_id: NodeId,
    /// The component file.
    pub component: PathBuf,
    /// Its parameters.
    pub params: Value,
    /// The names of its upstream nodes.
    pub upstream: Vec<String>,
    /// The indexes in [`Flow::nodes`] of the same upstream nodes, in the
    /// same order as [`upstream`](Self::upstream): resolved once at load, so
    /// that running and checking a flow never looks a name up.
    pub upstream_index: Vec<usize>,
    /// Its limits (flow defaults with the node's overrides).
    pub limits: Limits,
    /// Its grant (flow defaults with the node's overrides).
    pub grant: Grant,
    /// How it is retried (flow defaults with the node's overrides; by
    /// default one attempt).
    pub retry: RetryPolicy,
    /// The line of the node's table in the flow file.
    pub line: usize,
}

impl Flow {
    /// The index of the node named `name`: a scan of the nodes, for
    /// occasional lookups (the flow's own edges are in
    /// [`FlowNode::upstream_index`]).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The invocation of node `i` in `flow_run_id`: its params, and its
    /// upstream nodes by name, in the order the flow lists them.
    pub fn invocation(&self, i: usize, flow_run_id: FlowRunId) -> Invocation {
        let node = &self.nodes[i];
        let mut invocation =
            Invocation::new(flow_run_id, node.node_id).with_params(node.params.clone());
        for (up, &u) in node.upstream.iter().zip(&node.upstream_index) {
            if let Some(upstream) = self.nodes.get(u) {
                invocation = invocation.with_upstream(up.clone(), upstream.node_id);
            }
        }
        invocation
    }

    /// For each node, the indexes of the nodes that list it as upstream.
    /// Linear in the number of nodes and edges.
    pub fn dependents(&self) -> Vec<Vec<usize>> {
        let mut dependents = vec![Vec::new(); self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for &u in &node.upstream_index {
                if let Some(list) = dependents.get_mut(u) {
                    list.push(i);
                }
            }
        }
        dependents
    }

    /// A cycle of node indexes, if the graph has one, in dependency order:
    /// each node is an upstream of the next, and the last of the first.
    ///
    /// An iterative depth-first search, linear in nodes and edges, so that
    /// a long chain of nodes cannot overflow the stack.
    pub fn find_cycle(&self) -> Option<Vec<usize>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Colour {
            Unvisited,
            OnPath,
            Done,
        }
        let mut colour = vec![Colour::Unvisited; self.nodes.len()];
        // Each frame: a node on the path and how many of its upstreams are seen.
        let mut path: Vec<(usize, usize)> = Vec::new();
        for start in 0..self.nodes.len() {
            if colour[start] != Colour::Unvisited {
                continue;
            }
            colour[start] = Colour::OnPath;
            path.push((start, 0));
            while let Some((i, next)) = path.last_mut() {
                let i = *i;
                let Some(&u) = self.nodes[i].upstream_index.get(*next) else {
                    colour[i] = Colour::Done;
                    path.pop();
                    continue;
                };
                *next += 1;
                match colour.get(u) {
                    Some(Colour::OnPath) => {
                        let from = path.iter().position(|(p, _)| *p == u).unwrap_or(0);
                        let mut cycle: Vec<usize> = path[from..].iter().map(|(p, _)| *p).collect();
                        cycle.reverse();
                        return Some(cycle);
                    }
                    Some(Colour::Unvisited) => {
                        colour[u] = Colour::OnPath;
                        path.push((u, 0));
                    }
                    Some(Colour::Done) | None => {}
                }
            }
        }
        None
    }
}

/// Why a flow could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The flow file could not be read.
    #[error("cannot read flow file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The flow file is not a valid flow.
    #[error("{path}:{line}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line the problem is on (1-based; 0 when unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A node's component could not be loaded.
    #[error("node `{node}`: {source}")]
    Component {
        /// The node.
        node: String,
        /// Why loading failed.
        source: crate::runtime::LoadError,
    },
    /// The run has outputs that the flow as it is now would not have
    /// written: resuming it would mix two flows. Start a new run instead.
    #[error(
        "cannot resume run {flow_run_id}: the flow changed since these nodes stored their outputs: {}",
        nodes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    Changed {
        /// The run.
        flow_run_id: FlowRunId,
        /// The changed nodes, in file order.
        nodes: Vec<ChangedNode>,
    },
    /// The store failed outside of any step.
    #[error(transparent)]
    Store(#[from] crate::error::ContextStoreError),
    /// The run was cancelled ([`cancel()`]): before this worker started, or
    /// while it ran (its running steps were stopped, nothing they wrote
    /// afterwards is stored, no further node was started). Running it
    /// again needs [`resume_cancelled`] first.
    #[error("run {flow_run_id} was cancelled")]
    Cancelled {
        /// The run.
        flow_run_id: FlowRunId,
    },
    /// The [`RunOptions::on_event`] callback panicked: no node was started
    /// after that, the nodes already running finished, and the run ended.
    /// Their outputs are stored; running the flow again resumes it.
    #[error("the flow's event callback panicked: {0}")]
    CallbackPanicked(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("f", "a"), node_id("f", "a"));
        assert_ne!(node_id("f", "a"), node_id("f", "b"));
        assert_ne!(node_id("f", "a"), node_id("g", "a"));
        assert_ne!(node_id("a/b", "c"), node_id("a", "b/c"));
        assert_eq!(node_id("f", "a").as_uuid().get_version_num(), 5);
    }
}
