//! Flow files: the TOML format, parsed and checked into a [`Flow`].
//!
//! ```toml
//! name = "diamond"                  # with each node's name, gives stable node ids
//!
//! [limits]                          # defaults for every node (all optional)
//! timeout = 10                      # seconds
//! memory = 134217728                # bytes of linear memory
//! fuel = 100000000
//! max_value_bytes = 16777216
//! max_writes = 1000
//! max_reads = 10000
//! max_read_bytes = 268435456
//! max_resources = 10000
//!
//! [grant]                           # defaults for every node (deny by default)
//! global_read = ["config/"]
//! global_write = []
//! read_run = false                  # true: read every node of the run, not only upstreams
//!
//! [retry]                           # defaults for every node (default: 1 attempt)
//! attempts = 3                      # most attempts in all
//! backoff = 0.5                     # seconds before the second attempt
//! multiplier = 2                    # each next wait this much longer
//! max_backoff = 30                  # seconds, the longest wait
//! jitter = true                     # take up to half of each wait off, at random
//! on = ["trap", "timeout", "store", "failed"]   # which failures retry
//!
//! [nodes.source]
//! component = "steps/greet.wasm"    # relative to this file
//! params = { name = "Ada" }         # any JSON-compatible TOML
//!
//! [nodes.shout]
//! component = "steps/shout.wasm"
//! upstream = ["source"]             # names of upstream nodes
//! limits = { timeout = 2 }          # overrides per field
//! grant = { global_write = ["cache/"] }
//! retry = { attempts = 5 }          # overrides per field
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::retry::{RetryOn, RetryPolicy};
use super::{Flow, FlowError, FlowNode, node_id};
use crate::grant::Grant;
use crate::limits::Limits;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    name: Spanned<String>,
    #[serde(default)]
    limits: LimitsSpec,
    #[serde(default)]
    grant: GrantSpec,
    #[serde(default)]
    retry: RetrySpec,
    nodes: Spanned<BTreeMap<String, Spanned<NodeSpec>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSpec {
    component: Spanned<String>,
    #[serde(default)]
    params: Option<Spanned<toml::Value>>,
    #[serde(default)]
    upstream: Vec<Spanned<String>>,
    #[serde(default)]
    limits: LimitsSpec,
    #[serde(default)]
    grant: GrantSpec,
    #[serde(default)]
    retry: RetrySpec,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrySpec {
    attempts: Option<Spanned<u32>>,
    backoff: Option<Spanned<f64>>,
    multiplier: Option<Spanned<f64>>,
    max_backoff: Option<Spanned<f64>>,
    jitter: Option<bool>,
    on: Option<Vec<Spanned<String>>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSpec {
    timeout: Option<Spanned<f64>>,
    memory: Option<usize>,
    fuel: Option<u64>,
    max_value_bytes: Option<usize>,
    max_writes: Option<u32>,
    max_reads: Option<u32>,
    max_read_bytes: Option<u64>,
    max_resources: Option<usize>,
    max_json_depth: Option<Spanned<usize>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantSpec {
    global_read: Option<Vec<String>>,
    global_write: Option<Vec<String>>,
    read_run: Option<bool>,
}

/// Where in the file a thing is, for error messages.
struct Source<'a> {
    path: &'a Path,
    /// The byte offset of the start of every line after the first.
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(path: &'a Path, text: &str) -> Self {
        let line_starts = text
            .bytes()
            .enumerate()
            .filter(|(_, b)| *b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        Self { path, line_starts }
    }

    /// The 1-based line of a span's start (a binary search, so that a
    /// large flow file costs no scan per node).
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        self.line_starts
            .partition_point(|start| *start <= span.start)
            + 1
    }

    fn error(&self, span: std::ops::Range<usize>, message: String) -> FlowError {
        FlowError::Invalid {
            path: self.path.to_path_buf(),
            line: self.line(span),
            message,
        }
    }
}

impl LimitsSpec {
    /// `self` over `base`, field by field.
    fn apply(&self, base: &Limits, source: &Source<'_>) -> Result<Limits, FlowError> {
        let mut limits = base.clone();
        if let Some(timeout) = &self.timeout {
            limits.timeout = Duration::try_from_secs_f64(*timeout.get_ref()).map_err(|_| {
                source.error(
                    timeout.span(),
                    format!(
                        "timeout {} is not a number of seconds >= 0",
                        timeout.get_ref()
                    ),
                )
            })?;
        }
        if let Some(memory) = self.memory {
            limits.memory_bytes = memory;
        }
        if self.fuel.is_some() {
            limits.fuel = self.fuel;
        }
        if let Some(bytes) = self.max_value_bytes {
            limits.max_value_bytes = bytes;
        }
        if let Some(writes) = self.max_writes {
            limits.max_writes = writes;
        }
        if let Some(reads) = self.max_reads {
            limits.max_reads = reads;
        }
        if let Some(bytes) = self.max_read_bytes {
            limits.max_read_bytes = bytes;
        }
        if let Some(resources) = self.max_resources {
            limits.max_resources = resources;
        }
        if let Some(depth) = &self.max_json_depth {
            if *depth.get_ref() > crate::json::MAX_DEPTH {
                return Err(source.error(
                    depth.span(),
                    format!(
                        "max_json_depth {} is above the ceiling of {}",
                        depth.get_ref(),
                        crate::json::MAX_DEPTH
                    ),
                ));
            }
            limits.max_json_depth = *depth.get_ref();
        }
        Ok(limits)
    }
}

impl RetrySpec {
    /// `self` over `base`, field by field.
    fn apply(&self, base: &RetryPolicy, source: &Source<'_>) -> Result<RetryPolicy, FlowError> {
        let mut policy = base.clone();
        if let Some(attempts) = &self.attempts {
            if *attempts.get_ref() == 0 {
                return Err(source.error(
                    attempts.span(),
                    "retry attempts must be at least 1 (1: no retries)".into(),
                ));
            }
            policy.max_attempts = *attempts.get_ref();
        }
        let seconds = |value: &Spanned<f64>, what: &str| {
            Duration::try_from_secs_f64(*value.get_ref()).map_err(|_| {
                source.error(
                    value.span(),
                    format!(
                        "retry {what} {} is not a number of seconds >= 0",
                        value.get_ref()
                    ),
                )
            })
        };
        if let Some(backoff) = &self.backoff {
            policy.backoff = seconds(backoff, "backoff")?;
        }
        if let Some(most) = &self.max_backoff {
            policy.max_backoff = seconds(most, "max_backoff")?;
        }
        if let Some(multiplier) = &self.multiplier {
            let m = *multiplier.get_ref();
            if !(m.is_finite() && m >= 1.0) {
                return Err(source.error(
                    multiplier.span(),
                    format!("retry multiplier {m} is not a number >= 1"),
                ));
            }
            policy.multiplier = m;
        }
        if let Some(jitter) = self.jitter {
            policy.jitter = jitter;
        }
        if let Some(kinds) = &self.on {
            let mut on = RetryOn {
                traps: false,
                timeouts: false,
                store: false,
                failed: false,
            };
            for kind in kinds {
                match kind.get_ref().as_str() {
                    "trap" => on.traps = true,
                    "timeout" => on.timeouts = true,
                    "store" => on.store = true,
                    "failed" => on.failed = true,
                    other => {
                        return Err(source.error(
                            kind.span(),
                            format!(
                                "unknown retry kind {other:?}: expected \"trap\", \"timeout\", \"store\" or \"failed\""
                            ),
                        ));
                    }
                }
            }
            policy.on = on;
        }
        Ok(policy)
    }
}

impl GrantSpec {
    /// `self` over `base`: a list given here replaces the base list, a
    /// `read_run` given here the base's.
    fn apply(&self, base: &Grant) -> Grant {
        Grant {
            global_read: self
                .global_read
                .clone()
                .unwrap_or_else(|| base.global_read.clone()),
            global_write: self
                .global_write
                .clone()
                .unwrap_or_else(|| base.global_write.clone()),
            read_run: self.read_run.unwrap_or(base.read_run),
        }
    }
}

/// Reads and checks a flow file.
pub fn load(path: &Path) -> Result<Flow, FlowError> {
    let text = std::fs::read_to_string(path).map_err(|source| FlowError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and checks flow text; `path` names the file in errors and is the
/// base of relative component paths.
pub fn parse(path: &Path, text: &str) -> Result<Flow, FlowError> {
    let source = Source::new(path, text);
    let spec: FileSpec = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |span| source.line(span));
        FlowError::Invalid {
            path: path.to_path_buf(),
            line,
            message: e.message().trim().to_owned(),
        }
    })?;
    let flow_name = spec.name.get_ref().clone();
    if flow_name.is_empty() {
        return Err(source.error(spec.name.span(), "the flow name is empty".into()));
    }
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let default_limits = spec.limits.apply(&Limits::default(), &source)?;
    let default_grant = spec.grant.apply(&Grant::default());
    let default_retry = spec.retry.apply(&RetryPolicy::default(), &source)?;
    if spec.nodes.get_ref().is_empty() {
        return Err(source.error(spec.nodes.span(), "the flow has no nodes".into()));
    }

    // File order, so that listings follow the file.
    let mut specs: Vec<(&String, &Spanned<NodeSpec>)> = spec.nodes.get_ref().iter().collect();
    specs.sort_by_key(|(_, node)| node.span().start);
    let index: HashMap<&str, usize> = specs
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.as_str(), i))
        .collect();

    let mut nodes = Vec::with_capacity(specs.len());
    for (name, spanned) in &specs {
        let node = spanned.get_ref();
        if name.is_empty() {
            return Err(source.error(spanned.span(), "a node name is empty".into()));
        }
        let mut upstream = Vec::with_capacity(node.upstream.len());
        let mut upstream_index = Vec::with_capacity(node.upstream.len());
        let mut seen = HashSet::with_capacity(node.upstream.len());
        for up in &node.upstream {
            let up_name = up.get_ref();
            let Some(&i) = index.get(up_name.as_str()) else {
                return Err(source.error(
                    up.span(),
                    format!("node `{name}` names unknown upstream `{up_name}`"),
                ));
            };
            if !seen.insert(i) {
                return Err(source.error(
                    up.span(),
                    format!("node `{name}` names upstream `{up_name}` twice"),
                ));
            }
            upstream.push(up_name.clone());
            upstream_index.push(i);
        }
        let component = resolve(base_dir, node.component.get_ref());
        if !component.is_file() {
            return Err(source.error(
                node.component.span(),
                format!(
                    "node `{name}`: component {} does not exist",
                    component.display()
                ),
            ));
        }
        let params = match &node.params {
            None => Value::Null,
            Some(params) => to_json(params.get_ref()).map_err(|why| {
                source.error(
                    params.span(),
                    format!("node `{name}`: params are not JSON-compatible: {why}"),
                )
            })?,
        };
        nodes.push(FlowNode {
            name: (*name).clone(),
            node_id: node_id(&flow_name, name),
            component,
            params,
            upstream,
            upstream_index,
            limits: node.limits.apply(&default_limits, &source)?,
            grant: node.grant.apply(&default_grant),
            retry: node.retry.apply(&default_retry, &source)?,
            line: source.line(spanned.span()),
        });
    }
    let flow = Flow {
        name: flow_name,
        nodes,
    };
    if let Some(cycle) = flow.find_cycle() {
        let first = &flow.nodes[cycle[0]];
        let names: Vec<&str> = cycle.iter().map(|i| flow.nodes[*i].name.as_str()).collect();
        return Err(FlowError::Invalid {
            path: path.to_path_buf(),
            line: first.line,
            message: format!(
                "the nodes form a cycle: {} -> {}",
                names.join(" -> "),
                names[0]
            ),
        });
    }
    Ok(flow)
}

fn resolve(base_dir: &Path, component: &str) -> PathBuf {
    let path = Path::new(component);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// TOML to JSON; datetimes and non-finite floats have no JSON form.
fn to_json(value: &toml::Value) -> Result<Value, String> {
    Ok(match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} is not a finite number"))?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => return Err(format!("datetime {d} (quote it as a string)")),
        toml::Value::Array(items) => {
            Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}
