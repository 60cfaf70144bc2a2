//! Flows: a graph of step components read from a TOML file, run in
//! dependency order with independent nodes in parallel, resumable after a
//! crash because every node id is derived from the flow and node names.

use std::path::PathBuf;

use serde_json::Value;
use uuid::Uuid;

use crate::grant::Grant;
use crate::id::NodeId;
use crate::limits::Limits;

mod file;
mod journal;
mod runner;
mod status;

pub use file::{load, parse};
pub use journal::JOURNAL_PREFIX;
pub use runner::{
    FlowEvent, FlowReport, LeaseOptions, NodeResult, RunOptions, default_worker_name, run,
};
pub use status::{NodeState, NodeStatus, status};

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
    /// Its limits (flow defaults with the node's overrides).
    pub limits: Limits,
    /// Its grant (flow defaults with the node's overrides).
    pub grant: Grant,
    /// The line of the node's table in the flow file.
    pub line: usize,
}

impl Flow {
    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// For each node, the indexes of the nodes that list it as upstream.
    pub fn dependents(&self) -> Vec<Vec<usize>> {
        let mut dependents = vec![Vec::new(); self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for up in &node.upstream {
                if let Some(u) = self.index_of(up) {
                    dependents[u].push(i);
                }
            }
        }
        dependents
    }

    /// A cycle of node indexes, if the graph has one.
    pub fn find_cycle(&self) -> Option<Vec<usize>> {
        // Depth-first search with colours: 0 unvisited, 1 on the path, 2 done.
        let mut colour = vec![0u8; self.nodes.len()];
        let mut path = Vec::new();
        for start in 0..self.nodes.len() {
            if colour[start] == 0
                && let Some(cycle) = self.visit(start, &mut colour, &mut path)
            {
                return Some(cycle);
            }
        }
        None
    }

    fn visit(&self, i: usize, colour: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
        colour[i] = 1;
        path.push(i);
        for up in &self.nodes[i].upstream {
            let Some(u) = self.index_of(up) else { continue };
            if colour[u] == 1 {
                let from = path.iter().position(|p| *p == u).unwrap_or(0);
                let mut cycle: Vec<usize> = path[from..].to_vec();
                cycle.reverse();
                return Some(cycle);
            }
            if colour[u] == 0
                && let Some(cycle) = self.visit(u, colour, path)
            {
                return Some(cycle);
            }
        }
        path.pop();
        colour[i] = 2;
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
    /// The store failed outside of any step.
    #[error(transparent)]
    Store(#[from] crate::error::ContextStoreError),
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
