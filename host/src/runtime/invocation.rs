//! [`Invocation`]: one run of one step, as the host describes it.

use serde_json::Value;

use crate::id::{FlowRunId, NodeId};
use crate::json::{JsonError, JsonText};

/// What a step is run for: its run, its node, its parameters and its named
/// upstream nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct Invocation {
    /// The flow run the step belongs to.
    pub flow_run_id: FlowRunId,
    /// The step's node: the one output it may write.
    pub node_id: NodeId,
    /// The node's parameters as JSON text (`null` when none).
    pub params: JsonText,
    /// The node's upstream nodes, by the names the flow gives them.
    pub upstream: Vec<(String, NodeId)>,
    /// Why parameters given as a `Value` could not be used, if they could not.
    pub(crate) invalid_params: Option<JsonError>,
}

impl Invocation {
    /// An invocation of `node_id` in `flow_run_id`, with no params and no upstream.
    pub fn new(flow_run_id: FlowRunId, node_id: NodeId) -> Self {
        Self {
            flow_run_id,
            node_id,
            params: JsonText::from_stored("null".into()),
            upstream: Vec::new(),
            invalid_params: None,
        }
    }

    /// Sets the parameters. A value deeper than
    /// [`json::MAX_DEPTH`](crate::json::MAX_DEPTH) cannot be passed: the
    /// invocation then fails with [`StepError::InvalidParams`](crate::StepError::InvalidParams).
    pub fn with_params(mut self, params: Value) -> Self {
        match JsonText::from_value(&params) {
            Ok(text) => {
                self.params = text;
                self.invalid_params = None;
            }
            Err(error) => self.invalid_params = Some(error),
        }
        self
    }

    /// Sets the parameters as checked JSON text, passed to the step as is.
    pub fn with_params_text(mut self, params: JsonText) -> Self {
        self.params = params;
        self.invalid_params = None;
        self
    }

    /// Adds an upstream node under `name`.
    pub fn with_upstream(mut self, name: impl Into<String>, node_id: NodeId) -> Self {
        self.upstream.push((name.into(), node_id));
        self
    }
}
