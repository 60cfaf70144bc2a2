//! `contextstore run`: one step component, one invocation.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use contextstore::{FlowRunId, Grant, Invocation, Limits, NodeId};

use super::{DbArgs, Outcome, RuntimeArgs, parse_json};

/// `contextstore run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The step component (a `.wasm` WebAssembly component of the `step` world).
    component: PathBuf,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// The node id of this step (hyphenated UUID).
    #[arg(long, value_name = "UUID")]
    node: NodeId,
    /// The flow run id; a new one is made (and printed on stderr) when omitted.
    #[arg(long, value_name = "UUID")]
    flow_run: Option<FlowRunId>,
    /// The step's parameters as JSON.
    #[arg(long, value_name = "JSON", default_value = "null")]
    params: String,
    /// A named upstream node, as NAME=UUID; repeatable.
    #[arg(long, value_name = "NAME=UUID")]
    upstream: Vec<String>,
    /// Allow reading globals under this key prefix; repeatable.
    #[arg(long, value_name = "PREFIX")]
    global_read: Vec<String>,
    /// Allow writing globals under this key prefix; repeatable.
    #[arg(long, value_name = "PREFIX")]
    global_write: Vec<String>,
    /// Wall-clock limit in seconds (default 10).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Linear memory limit in bytes (default 128 MiB).
    #[arg(long, value_name = "BYTES")]
    memory: Option<usize>,
    /// Fuel budget (default: none).
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
    };
    let flow_run_id = args.flow_run.unwrap_or_else(|| {
        let id = FlowRunId::new();
        eprintln!("flow run: {id}");
        id
    });
    let mut invocation = Invocation::new(flow_run_id, args.node).with_params(params);
    for pair in &args.upstream {
        let (name, id) = parse_upstream(pair)?;
        invocation = invocation.with_upstream(name, id);
    }

    let store = args.db.open()?;
    let runtime = args.runtime.start()?;
    let component = runtime.load_file(&args.component)?;
    let outcome = runtime.run(&component, &store, &invocation, &grant, &limits)?;
    // The output is stored, so the node is done; a failure after the put is a warning.
    if let Some(warning) = &outcome.warning {
        eprintln!("warning: the step stored its output, then failed: {warning}");
    }
    println!("{}", outcome.output);
    Ok(Outcome::Done)
}

/// Parses `NAME=UUID`.
fn parse_upstream(pair: &str) -> anyhow::Result<(String, NodeId)> {
    let Some((name, id)) = pair.split_once('=') else {
        bail!("invalid --upstream {pair:?}: expected NAME=UUID");
    };
    if name.is_empty() {
        bail!("invalid --upstream {pair:?}: the name is empty");
    }
    let id = id
        .parse()
        .with_context(|| format!("invalid --upstream {pair:?}"))?;
    Ok((name.to_owned(), id))
}
