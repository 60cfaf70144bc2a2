//! Honest resume: a run is resumed only with the flow that wrote its
//! outputs. Each stored output's [`Provenance`](crate::store::Provenance)
//! is compared with the node as the flow file has it now.

use std::collections::HashSet;
use std::fmt;

use super::{Flow, FlowError};
use crate::id::{FlowRunId, NodeId};
use crate::runtime::StepComponent;
use crate::store::{ContextStore, Provenance};

/// What about a node differs from when its stored output was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Its component's bytes.
    Component,
    /// Its params.
    Params,
    /// Its upstream nodes (names, ids or order).
    Upstream,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Component => "component",
            Self::Params => "params",
            Self::Upstream => "upstream",
        })
    }
}

/// A node whose stored output the flow as it is now would not have written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangedNode {
    /// The node's name.
    pub node: String,
    /// What changed.
    pub changes: Vec<Change>,
}

impl fmt::Display for ChangedNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let changes: Vec<String> = self.changes.iter().map(Change::to_string).collect();
        write!(f, "`{}` ({})", self.node, changes.join(", "))
    }
}

/// Checks every node that has an output in `flow_run_id` against its
/// provenance: [`FlowError::Changed`] lists those whose component, params
/// or upstream differ. Outputs without provenance (written by `put`, or
/// before provenance was recorded) are taken as unchanged. Otherwise
/// returns, for each node of `flow`, whether its output was stored: one
/// listing of the run, and one read of provenance for each stored node.
pub fn check_unchanged(
    store: &dyn ContextStore,
    flow: &Flow,
    flow_run_id: FlowRunId,
    components: &[StepComponent],
) -> Result<Vec<bool>, FlowError> {
    let stored_ids: HashSet<NodeId> = store.list_keys(flow_run_id)?.into_iter().collect();
    let stored: Vec<bool> = flow
        .nodes
        .iter()
        .map(|node| stored_ids.contains(&node.node_id))
        .collect();
    let mut changed = Vec::new();
    for (i, node) in flow.nodes.iter().enumerate() {
        if !stored[i] {
            continue;
        }
        if let Some(provenance) = store.provenance(flow_run_id, node.node_id)? {
            changed.extend(compare(&provenance, flow, i, flow_run_id, &components[i]));
        }
    }
    if changed.is_empty() {
        Ok(stored)
    } else {
        Err(FlowError::Changed {
            flow_run_id,
            nodes: changed,
        })
    }
}

/// How node `i` of `flow`, run with `component`, differs from the node
/// that wrote an output with `provenance`; `None` when it does not.
pub fn compare(
    provenance: &Provenance,
    flow: &Flow,
    i: usize,
    flow_run_id: FlowRunId,
    component: &StepComponent,
) -> Option<ChangedNode> {
    let invocation = flow.invocation(i, flow_run_id);
    let mut changes = Vec::new();
    if provenance.component_hash != component.content_hash() {
        changes.push(Change::Component);
    }
    if provenance.params_hash != invocation.params_hash() {
        changes.push(Change::Params);
    }
    if provenance.upstream_hash != invocation.upstream_hash() {
        changes.push(Change::Upstream);
    }
    (!changes.is_empty()).then(|| ChangedNode {
        node: flow.nodes[i].name.clone(),
        changes,
    })
}
