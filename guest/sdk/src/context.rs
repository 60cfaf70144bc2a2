//! [`Context`]: one run of one step, as the host describes it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, StepError, store, wit};

/// One run of one step: who it is, its parameters and its upstream nodes.
///
/// Built by [`export_step!`](crate::export_step) from the WIT `invocation`
/// and handed to [`Step::run`](crate::Step::run).
#[derive(Debug, Clone)]
pub struct Context {
    flow_run_id: String,
    node_id: String,
    params: String,
    upstream: Vec<wit::types::Upstream>,
}

impl From<wit::types::Invocation> for Context {
    fn from(invocation: wit::types::Invocation) -> Self {
        let wit::types::Invocation {
            flow_run_id,
            node_id,
            params,
            upstream,
        } = invocation;
        Context {
            flow_run_id,
            node_id,
            params,
            upstream,
        }
    }
}

impl Context {
    /// The flow run this step belongs to (a hyphenated UUID).
    pub fn flow_run_id(&self) -> &str {
        &self.flow_run_id
    }

    /// This step's node id (a hyphenated UUID): the one key it may `put`.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node's parameters as JSON text, exactly as the host passed them
    /// (`null` when the flow gives none).
    pub fn params_json(&self) -> &str {
        &self.params
    }

    /// The node's parameters, deserialized.
    ///
    /// `null` (no parameters) deserializes into `Option`, `()` and also into
    /// a struct whose fields all have defaults (`#[serde(default)]`): when
    /// `null` does not fit `T`, an empty object `{}` is tried instead.
    /// Any other mismatch is [`StepError::InvalidParams`].
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        let invalid = |err: serde_json::Error| StepError::InvalidParams(err.to_string());
        let text = self.params.trim();
        let is_null = text.is_empty() || text == "null";
        match serde_json::from_str(if is_null { "null" } else { text }) {
            Ok(value) => Ok(value),
            Err(err) if is_null => serde_json::from_str("{}").map_err(|_| invalid(err)),
            Err(err) => Err(invalid(err)),
        }
    }

    /// The node id of the upstream node the flow names `name`, if any.
    pub fn upstream_id(&self, name: &str) -> Option<&str> {
        self.upstream
            .iter()
            .find(|u| u.name == name)
            .map(|u| u.node_id.as_str())
    }

    /// All upstream nodes, as `(name, node_id)` pairs in the host's order.
    pub fn upstreams(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.upstream
            .iter()
            .map(|u| (u.name.as_str(), u.node_id.as_str()))
    }

    /// Reads the output of the upstream node named `name` in this flow run.
    ///
    /// [`Error::MissingUpstream`] if there is no upstream of that name or it
    /// has no output yet; [`Error::Encode`] if the output does not fit `T`.
    pub fn upstream<T: DeserializeOwned>(&self, name: &str) -> Result<T, Error> {
        let id = self
            .upstream_id(name)
            .ok_or_else(|| Error::MissingUpstream(format!("no upstream named `{name}`")))?;
        store::get(&self.flow_run_id, id)?.ok_or_else(|| {
            Error::MissingUpstream(format!("upstream `{name}` ({id}) has no output yet"))
        })
    }

    /// Writes this node's own output: `store::put(flow_run_id, node_id, value)`.
    ///
    /// Write-once: [`Error::AlreadyExists`] if an output is already stored
    /// (for a retried step this means the work is done).
    pub fn output<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), Error> {
        store::put(&self.flow_run_id, &self.node_id, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn ctx(params: &str) -> Context {
        Context::from(wit::types::Invocation {
            flow_run_id: "run".into(),
            node_id: "me".into(),
            params: params.into(),
            upstream: vec![wit::types::Upstream {
                name: "greet".into(),
                node_id: "g".into(),
            }],
        })
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default)]
    struct Defaulted {
        name: String,
    }

    impl Default for Defaulted {
        fn default() -> Self {
            Defaulted {
                name: "world".into(),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    struct Required {
        name: String,
    }

    #[test]
    fn null_params_fit_option_unit_and_defaults() {
        for text in ["null", " null\n", ""] {
            let c = ctx(text);
            assert_eq!(c.params::<Option<u32>>(), Ok(None));
            assert_eq!(c.params::<()>(), Ok(()));
            assert_eq!(c.params::<Defaulted>(), Ok(Defaulted::default()));
            assert!(matches!(
                c.params::<Required>(),
                Err(StepError::InvalidParams(_))
            ));
        }
    }

    #[test]
    fn params_parse_and_reject() {
        let c = ctx(r#"{"name":"Ada"}"#);
        assert_eq!(c.params::<Defaulted>().map(|d| d.name), Ok("Ada".into()));
        assert_eq!(c.params::<Required>().map(|r| r.name), Ok("Ada".into()));
        assert!(matches!(
            c.params::<u32>(),
            Err(StepError::InvalidParams(_))
        ));
        assert_eq!(ctx("{}").params::<Defaulted>(), Ok(Defaulted::default()));
    }

    #[test]
    fn upstream_lookup() {
        let c = ctx("null");
        assert_eq!(c.upstream_id("greet"), Some("g"));
        assert_eq!(c.upstream_id("nope"), None);
        assert_eq!(c.upstreams().collect::<Vec<_>>(), vec![("greet", "g")]);
        assert!(matches!(
            c.upstream::<serde_json::Value>("nope"),
            Err(Error::MissingUpstream(m)) if m.contains("nope")
        ));
        assert_eq!(
            (c.flow_run_id(), c.node_id(), c.params_json()),
            ("run", "me", "null")
        );
    }
}
