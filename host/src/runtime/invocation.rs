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
    /// Which attempt at the node this is (1 for the first): recorded in the
    /// output's [`Provenance`](crate::store::Provenance).
    pub attempt: u32,
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
            attempt: 1,
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

    /// Sets the attempt number (1 for the first attempt at the node).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The BLAKE3 hash (hex) of the params in canonical JSON: object keys
    /// sorted, no whitespace, so that the same params written differently
    /// hash the same.
    pub fn params_hash(&self) -> String {
        let mut hasher = blake3::Hasher::new_derive_key("contextstore node params v1");
        match self.params.to_value() {
            Ok(value) => {
                let mut text = String::new();
                canonical(&value, &mut text);
                hasher.update(text.as_bytes());
            }
            // Params are checked JSON; should one not parse, its text stands in.
            Err(_) => {
                hasher.update(self.params.as_str().as_bytes());
            }
        }
        hasher.finalize().to_hex().to_string()
    }

    /// The BLAKE3 hash (hex) of the upstream nodes: each name and id, in
    /// the order the step is given them.
    pub fn upstream_hash(&self) -> String {
        let pairs: Vec<Value> = self
            .upstream
            .iter()
            .map(|(name, id)| Value::from(vec![name.clone(), id.to_string()]))
            .collect();
        let mut text = String::new();
        canonical(&Value::Array(pairs), &mut text);
        let mut hasher = blake3::Hasher::new_derive_key("contextstore node upstream v1");
        hasher.update(text.as_bytes());
        hasher.finalize().to_hex().to_string()
    }
}

/// Writes `value` as canonical JSON: object keys sorted by their UTF-8
/// bytes, no whitespace, numbers and strings as serde_json writes them.
/// Recursion is bounded: every value here was checked against
/// [`MAX_DEPTH`](crate::json::MAX_DEPTH).
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invocation() -> Invocation {
        Invocation::new(FlowRunId::new(), NodeId::new())
    }

    #[test]
    fn params_hash_ignores_spelling_but_not_content() {
        let a = invocation()
            .with_params_text(JsonText::parse(r#"{ "b": [1, 2], "a": "x" }"#, 8).unwrap());
        let b = invocation().with_params(json!({"a": "x", "b": [1, 2]}));
        let c = invocation().with_params(json!({"a": "y", "b": [1, 2]}));
        assert_eq!(a.params_hash(), b.params_hash());
        assert_ne!(a.params_hash(), c.params_hash());
        assert_eq!(a.params_hash().len(), 64);
    }

    #[test]
    fn upstream_hash_sees_names_ids_and_order() {
        let (x, y) = (NodeId::new(), NodeId::new());
        let base = invocation().with_upstream("a", x).with_upstream("b", y);
        let same = invocation().with_upstream("a", x).with_upstream("b", y);
        let renamed = invocation().with_upstream("c", x).with_upstream("b", y);
        let rewired = invocation().with_upstream("a", y).with_upstream("b", x);
        let reordered = invocation().with_upstream("b", y).with_upstream("a", x);
        assert_eq!(base.upstream_hash(), same.upstream_hash());
        for other in [renamed, rewired, reordered] {
            assert_ne!(base.upstream_hash(), other.upstream_hash());
        }
        assert_ne!(invocation().upstream_hash(), base.upstream_hash());
    }

    #[test]
    fn params_and_upstream_hashes_are_apart() {
        // Empty params and no upstream encode alike ("null" vs "[]" aside), but
        // their hashes are derived under different keys anyway.
        assert_ne!(invocation().params_hash(), invocation().upstream_hash());
    }
}
