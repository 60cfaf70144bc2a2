//! `contextstore run`: one step component, one invocation; with upstream
//! outputs given as fixtures (`--upstream-value`, `--upstream-file`) and a
//! trace of the store calls (`--trace`), a step is tested on its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use contextstore::json::{JsonText, MAX_DEPTH};
use contextstore::runtime::LoadOptions;
use contextstore::store::recording::RecordingStore;
use contextstore::{
    ContextStore, FlowRunId, Grant, Invocation, Limits, NodeId, SqliteContextStore,
};

use super::{Outcome, RuntimeArgs, output, parse_json};

/// `contextstore run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The step component (a `.wasm` WebAssembly component of the `step` world).
    component: PathBuf,
    /// The store: an SQLite database file (created if missing), or a
    /// PostgreSQL database as `postgres://user[:password]@host[:port]/dbname`.
    /// Without it, the run uses a store in memory, gone when the command ends.
    #[arg(long, value_name = "PATH|URL")]
    db: Option<String>,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// The node id of this step (hyphenated UUID); a new one is made when
    /// omitted (and printed on stderr with --db).
    #[arg(long, value_name = "UUID")]
    node: Option<NodeId>,
    /// The flow run id; a new one is made (and printed on stderr) when omitted.
    #[arg(long, value_name = "UUID")]
    flow_run: Option<FlowRunId>,
    /// The step's parameters as JSON.
    #[arg(long, value_name = "JSON", default_value = "null")]
    params: String,
    /// A named upstream node, as NAME=UUID; repeatable.
    #[arg(long, value_name = "NAME=UUID")]
    upstream: Vec<String>,
    /// A named upstream given by its output, as NAME=JSON: stored under a
    /// new node id in this run before the step runs; repeatable.
    #[arg(long, value_name = "NAME=JSON")]
    upstream_value: Vec<String>,
    /// A named upstream given by its output in a JSON file, as NAME=PATH;
    /// repeatable.
    #[arg(long, value_name = "NAME=PATH")]
    upstream_file: Vec<String>,
    /// Print each store call the step makes, with its result, and then what
    /// the step wrote to stderr, on stderr.
    #[arg(long)]
    trace: bool,
    /// Allow reading globals under this key prefix; repeatable.
    #[arg(long, value_name = "PREFIX")]
    global_read: Vec<String>,
    /// Allow writing globals under this key prefix; repeatable.
    #[arg(long, value_name = "PREFIX")]
    global_write: Vec<String>,
    /// Allow reading every node of the flow run (`get`, `list-keys`), not
    /// only the step's own node and its upstreams.
    #[arg(long)]
    read_run: bool,
    /// Wall-clock limit in seconds (default 10).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Linear memory limit in bytes (default 128 MiB).
    #[arg(long, value_name = "BYTES")]
    memory: Option<usize>,
    /// Fuel budget (default: none); the component's fuel-metered variant
    /// is compiled at load.
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
}

/// Runs the step and prints the node's stored output.
pub fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let params = parse_json(&args.params, "--params")?;
    let mut limits = Limits::default();
    if let Some(secs) = args.timeout {
        limits.timeout = Duration::try_from_secs_f64(secs)
            .with_context(|| format!("invalid --timeout {secs}: expected seconds >= 0"))?;
    }
    if let Some(bytes) = args.memory {
        limits.memory_bytes = bytes;
    }
    limits.fuel = args.fuel;
    let grant = Grant {
        global_read: args.global_read,
        global_write: args.global_write,
        read_run: args.read_run,
    };
    let persistent = args.db.is_some();
    let flow_run_id = args.flow_run.unwrap_or_else(|| {
        let id = FlowRunId::new();
        if persistent {
            output::note(format_args!("flow run: {id}"));
        }
        id
    });
    let node_id = args.node.unwrap_or_else(|| {
        let id = NodeId::new();
        if persistent {
            output::note(format_args!("node: {id}"));
        }
        id
    });
    let mut invocation = Invocation::new(flow_run_id, node_id).with_params(params);
    let mut names = Vec::new();
    for pair in &args.upstream {
        let (name, id) = parse_upstream(pair)?;
        names.push(name.clone());
        invocation = invocation.with_upstream(name, id);
    }
    let mut fixtures = Vec::new();
    for pair in &args.upstream_value {
        let (name, text) = split_pair(pair, "--upstream-value", "NAME=JSON")?;
        fixtures.push((
            name,
            parse_fixture(text, &format!("--upstream-value {name}"))?,
        ));
    }
    for pair in &args.upstream_file {
        let (name, path) = split_pair(pair, "--upstream-file", "NAME=PATH")?;
        fixtures.push((name, read_fixture(Path::new(path))?));
    }
    for (name, _) in &fixtures {
        if names.iter().any(|n| n == name) {
            bail!("upstream `{name}` is given twice");
        }
        names.push((*name).to_owned());
    }

    let store: Arc<dyn ContextStore> = match &args.db {
        Some(url) => contextstore::store::open_url(url)?,
        None => Arc::new(SqliteContextStore::in_memory()?),
    };
    for (name, value) in fixtures {
        let id = NodeId::new();
        store
            .put_text(flow_run_id, id, &value)
            .with_context(|| format!("cannot store the fixture of upstream `{name}`"))?;
        invocation = invocation.with_upstream(name, id);
    }
    let store: Arc<dyn ContextStore> = if args.trace {
        Arc::new(RecordingStore::with_observer(store, |call| {
            output::note(format_args!("store: {call}"));
        }))
    } else {
        store
    };

    let runtime = args.runtime.start()?;
    let options = LoadOptions {
        fuel: limits.fuel.is_some(),
    };
    let component = runtime.load_file_with(&args.component, options)?;
    let outcome = runtime.run(&component, &store, &invocation, &grant, &limits)?;
    // The output is stored, so the node is done; a failure after the put is a warning.
    if let Some(warning) = &outcome.warning {
        output::note(format_args!(
            "warning: the step stored its output, then failed: {warning}"
        ));
    }
    if args.trace && !outcome.stderr.is_empty() {
        output::note(format_args!("stderr:"));
        for line in outcome.stderr.lines() {
            output::note(format_args!("  {line}"));
        }
    }
    output::line(&outcome.output)?;
    Ok(Outcome::Done)
}

/// Splits `NAME=REST`, refusing an empty name.
fn split_pair<'a>(pair: &'a str, flag: &str, form: &str) -> anyhow::Result<(&'a str, &'a str)> {
    let Some((name, rest)) = pair.split_once('=') else {
        bail!("invalid {flag} {pair:?}: expected {form}");
    };
    if name.is_empty() {
        bail!("invalid {flag} {pair:?}: the name is empty");
    }
    Ok((name, rest))
}

/// Validates a fixture's JSON text, kept as written.
fn parse_fixture(text: &str, what: &str) -> anyhow::Result<JsonText> {
    JsonText::parse(text, MAX_DEPTH).with_context(|| format!("invalid JSON in {what}"))
}

/// Reads a fixture from a JSON file.
fn read_fixture(path: &Path) -> anyhow::Result<JsonText> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --upstream-file {}", path.display()))?;
    parse_fixture(text.trim(), &path.display().to_string())
}

/// Parses `NAME=UUID`.
fn parse_upstream(pair: &str) -> anyhow::Result<(String, NodeId)> {
    let (name, id) = split_pair(pair, "--upstream", "NAME=UUID")?;
    let id = id
        .parse()
        .with_context(|| format!("invalid --upstream {pair:?}"))?;
    Ok((name.to_owned(), id))
}
