//! The state of each node of a flow run, read from the store.

use std::collections::HashMap;

use super::{Flow, journal};
use crate::coord::{CallContext, ClaimRecord};
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::store::{ContextStore, Provenance};

/// Where a node stands in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Its output is stored.
    Done,
    /// Its output is stored, but the step failed after storing it (the
    /// journal's error): done, with a warning.
    DoneWithWarning(String),
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
    /// Where its output came from, when done and recorded.
    pub provenance: Option<Provenance>,
    /// The worker that holds or ran the node, when the store shares runs
    /// between workers and the node was claimed.
    pub claim: Option<ClaimRecord>,
    /// How many attempts were made at the node: the attempt that stored
    /// its output, or the last that failed (0: none yet).
    pub attempts: u32,
    /// When its next attempt is due (Unix milliseconds), when its last
    /// attempt failed and its retry policy scheduled another.
    pub retry_at: Option<i64>,
    /// The node's failed attempts, oldest first (the latest few):
    /// `(attempt, error)`.
    pub failures: Vec<(u32, String)>,
}

/// The status of every node of `flow` in run `flow_run_id`, in file order.
pub fn status(
    store: &dyn ContextStore,
    flow: &Flow,
    flow_run_id: FlowRunId,
) -> Result<Vec<NodeStatus>, ContextStoreError> {
    let nodes: Vec<(&str, NodeId)> = flow
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.node_id))
        .collect();
    status_of(store, &nodes, flow_run_id)
}

/// The status of each of `nodes` (name and id) in run `flow_run_id`, in
/// their order: [`status`] for a caller that has the run's graph (from the
/// runs index) rather than its flow file.
pub fn status_of(
    store: &dyn ContextStore,
    nodes: &[(&str, NodeId)],
    flow_run_id: FlowRunId,
) -> Result<Vec<NodeStatus>, ContextStoreError> {
    let mut claims: HashMap<NodeId, ClaimRecord> =
        match store.as_async().and_then(|s| s.coordinator()) {
            Some(coordinator) => {
                let executor = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        ContextStoreError::StorageError(format!("cannot start a runtime: {e}"))
                    })?;
                let cx = CallContext::within(std::time::Duration::from_secs(30));
                executor
                    .block_on(coordinator.claims(&cx, flow_run_id))?
                    .into_iter()
                    .map(|r| (r.node_id, r))
                    .collect()
            }
            None => HashMap::new(),
        };
    nodes
        .iter()
        .map(|&(name, node_id)| {
            let failure = journal::failure(store, flow_run_id, node_id)?;
            let (state, output_bytes) = match store.get_text(flow_run_id, node_id)? {
                Some(output) => match journal::warning(store, flow_run_id, node_id)? {
                    Some(warning) => (NodeState::DoneWithWarning(warning), Some(output.len())),
                    None => (NodeState::Done, Some(output.len())),
                },
                None => match &failure {
                    Some(failure) => (NodeState::Failed(failure.error.clone()), None),
                    None => (NodeState::Pending, None),
                },
            };
            let provenance = match state {
                NodeState::Done | NodeState::DoneWithWarning(_) => {
                    store.provenance(flow_run_id, node_id)?
                }
                _ => None,
            };
            let done = output_bytes.is_some();
            let attempts = match (&provenance, &failure) {
                (Some(p), _) => p.attempt,
                (None, _) if done => 1,
                (None, Some(f)) => f.attempt,
                (None, None) => 0,
            };
            let retry_at = failure.as_ref().filter(|_| !done).and_then(|f| f.retry_at);
            let failures = failure.map(|f| f.history).unwrap_or_default();
            Ok(NodeStatus {
                name: name.to_owned(),
                node_id,
                state,
                output_bytes,
                provenance,
                claim: claims.remove(&node_id),
                attempts,
                retry_at,
                failures,
            })
        })
        .collect()
}
