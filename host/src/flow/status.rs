//! The state of each node of a flow run, read from the store.

use std::collections::HashMap;

use super::{Flow, journal};
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json;
use crate::store::ContextStore;
use crate::store::claims::ClaimRecord;

/// Where a node stands in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Its output is stored.
    Done,
    /// No output, no recorded failure: not run yet (or interrupted).
    Pending,
    /// No output, and its last attempt failed with this error.
    Failed(String),
}

/// One node's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node's name.
    pub name: String,
    /// Its id.
    pub node_id: NodeId,
    /// Where it stands.
    pub state: NodeState,
    /// The size of its output as JSON text, when done.
    pub output_bytes: Option<usize>,
    /// The worker that holds or ran the node, when the store shares runs
    /// between workers and the node was claimed.
    pub claim: Option<ClaimRecord>,
}

/// The status of every node of `flow` in run `flow_run_id`, in file order.
pub fn status(
    store: &dyn ContextStore,
    flow: &Flow,
    flow_run_id: FlowRunId,
) -> Result<Vec<NodeStatus>, ContextStoreError> {
    let mut claims: HashMap<NodeId, ClaimRecord> = match store.node_claims() {
        Some(c) => c
            .claims(flow_run_id)?
            .into_iter()
            .map(|r| (r.node_id, r))
            .collect(),
        None => HashMap::new(),
    };
    flow.nodes
        .iter()
        .map(|node| {
            let (state, output_bytes) = match store.get(flow_run_id, node.node_id)? {
                Some(output) => {
                    let bytes = json::to_text(&output).map_or(0, |text| text.len());
                    (NodeState::Done, Some(bytes))
                }
                None => match journal::failure(store, flow_run_id, node.node_id)? {
                    Some(error) => (NodeState::Failed(error), None),
                    None => (NodeState::Pending, None),
                },
            };
            Ok(NodeStatus {
                name: node.name.clone(),
                node_id: node.node_id,
                state,
                output_bytes,
                claim: claims.remove(&node.node_id),
            })
        })
        .collect()
}
