//! [`Invocation`]: one run of one step, as the host describes it.

use serde_json::Value;

use crate::id::{FlowRunId, NodeId};

/// What a step is run for: its run, its node, its parameters and its named
/// upstream nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct Invocation {
    /// The flow run the step belongs to.
    pub flow_run_id: FlowRunId,
    /// The step's node: the one output it may write.
    pub node_id: NodeId,
    /// The node's parameters (`Value::Null` when none).
    pub params: Value,
    /// The node's upstream nodes, by the names the flow gives them.
    pub upstream: Vec<(String, NodeId)>,
}

impl Invocation {
    /// An invocation of `node_id` in `flow_run_id`, with no params and no upstream.
    pub fn new(flow_run_id: FlowRunId, node_id: NodeId) -> Self {
        Self {
            flow_run_id,
            node_id,
            params: Value::Null,
            upstream: Vec::new(),
        }
    }

    /// Sets the parameters.
    pub fn with_params(mut self, params: Value) -> Self {
        self.params = params;
        self
    }

    /// Adds an upstream node under `name`.
    pub fn with_upstream(mut self, name: impl Into<String>, node_id: NodeId) -> Self {
        self.upstream.push((name.into(), node_id));
        self
    }
}
