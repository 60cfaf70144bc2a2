//! `contextstore flow run` and `contextstore flow status`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;
use contextstore::flow::{self, FlowEvent, LeaseOptions, NodeResult, NodeState, RunOptions};
use contextstore::{FlowRunId, StepStatus};
use serde_json::{Value, json};

use super::{DbArgs, Outcome, RuntimeArgs, output};

/// `contextstore flow …`.
#[derive(clap::Subcommand)]
pub enum FlowCommand {
    /// Run (or resume) a flow and print its outputs as JSON, by node name.
    Run(RunArgs),
    /// Show each node of a run: done, pending or failed.
    Status(StatusArgs),
    /// Cancel a run: every worker running it stops its steps at once and
    /// exits with code 3; the run is not run again without
    /// `flow run --resume-cancelled`.
    Cancel(CancelArgs),
}

/// `contextstore flow cancel`.
#[derive(clap::Args)]
pub struct CancelArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The run.
    #[arg(long, value_name = "UUID")]
    run_id: FlowRunId,
}

/// `contextstore flow run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The flow file (TOML).
    flow: PathBuf,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// The run to resume; a new run id is made (and printed on stderr) when
    /// omitted. A run whose outputs were written by another version of the
    /// flow (component, params or upstream changed) is refused.
    #[arg(long, value_name = "UUID")]
    run_id: Option<FlowRunId>,
    /// Start a new run (its id printed on stderr) instead of resuming
    /// `--run-id`: what to do after the flow changed.
    #[arg(long, requires = "run_id")]
    restart: bool,
    /// Most nodes running at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Print one JSON line per node event on stderr (for scripts), instead
    /// of the progress lines shown on a terminal.
    #[arg(long)]
    events: bool,
    /// This worker's name in a run that several processes share over
    /// PostgreSQL (default: host:pid). Live workers need distinct names.
    #[arg(long, value_name = "NAME")]
    worker: Option<String>,
    /// How long this worker's claim on a node holds without renewal, in
    /// seconds (a dead worker's nodes are taken over after it).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = parse_lease)]
    lease: f64,
    /// Run `--run-id` although it was cancelled (lifting the cancellation).
    #[arg(long, requires = "run_id")]
    resume_cancelled: bool,
    /// Serve this worker's process metrics (store commit latency,
    /// group-commit batch sizes, invocations in flight) at
    /// `http://ADDR/metrics` while the run goes, on that address only
    /// (no authentication).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// A lease in seconds: finite, from 0.1 s to one day.
fn parse_lease(text: &str) -> Result<f64, String> {
    let secs: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if secs.is_finite() && (0.1..=86_400.0).contains(&secs) {
        Ok(secs)
    } else {
        Err("a lease is from 0.1 to 86400 seconds".into())
    }
}

/// `contextstore flow status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// The flow file (TOML).
    flow: PathBuf,
    #[command(flatten)]
    db: DbArgs,
    /// The run.
    #[arg(long, value_name = "UUID")]
    run_id: FlowRunId,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs a `flow` subcommand.
pub fn flow(command: FlowCommand) -> anyhow::Result<Outcome> {
    match command {
        FlowCommand::Run(args) => run(args),
        FlowCommand::Status(args) => status(args),
        FlowCommand::Cancel(args) => cancel(args),
    }
}

fn cancel(args: CancelArgs) -> anyhow::Result<Outcome> {
    let store = args.db.open()?;
    flow::cancel(store.as_ref(), args.run_id)?;
    output::note(format_args!(
        "flow cancel: run {} cancelled; its workers stop within a second",
        args.run_id
    ));
    Ok(Outcome::Done)
}

fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let flow = flow::load(&args.flow)?;
    let metrics = args
        .metrics_listen
        .map(super::serve::WorkerMetrics::start)
        .transpose()?;
    if let Some(metrics) = &metrics {
        output::note(format_args!(
            "flow run: metrics on http://{}/metrics",
            metrics.addr()
        ));
    }
    let store = args.db.open()?;
    let runtime = args.runtime.start()?;
    let run_id = match args.run_id {
        Some(old) if args.restart => {
            let id = FlowRunId::new();
            output::note(format_args!("flow run: {id} (restarting {old})"));
            id
        }
        Some(id) => id,
        None => {
            let id = FlowRunId::new();
            output::note(format_args!("flow run: {id}"));
            id
        }
    };
    if args.resume_cancelled && flow::resume_cancelled(store.as_ref(), run_id)? {
        output::note(format_args!("flow run: resuming cancelled run {run_id}"));
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let progress = Progress::new(args.events);
    let on_event = |event: &FlowEvent<'_>| progress.show(event);
    let report = match flow::run(
        &runtime,
        &store,
        &flow,
        run_id,
        &RunOptions {
            jobs,
            on_event: &on_event,
            lease: LeaseOptions {
                worker: args.worker.unwrap_or_else(flow::default_worker_name),
                lease: Duration::from_secs_f64(args.lease),
            },
        },
    ) {
        Err(error @ flow::FlowError::Changed { .. }) => {
            bail!("{error}; pass --restart to start a new run")
        }
        Err(error @ flow::FlowError::Cancelled { .. }) => {
            output::note(format_args!(
                "error: {error}; pass --resume-cancelled to run it again"
            ));
            return Ok(Outcome::Cancelled);
        }
        other => other?,
    };
    for (node, warning) in report.warnings() {
        eprintln!("warning: node `{node}` stored its output, then failed: {warning}");
    }

    if let Some((node, error)) = report.failures().next() {
        let blocked = report
            .results
            .iter()
            .filter(|(_, r)| matches!(r, NodeResult::Blocked { .. }))
            .count();
        let others = report.failures().count() - 1;
        let mut message = format!("node `{node}` failed: {error}");
        if others > 0 {
            message += &format!(" ({others} other node(s) failed too)");
        }
        if blocked > 0 {
            message += &format!("; {blocked} dependent node(s) not run");
        }
        bail!(message);
    }
    // Each output exactly as stored, by node name.
    let outputs: std::collections::BTreeMap<&str, &contextstore::json::JsonText> = report
        .results
        .iter()
        .filter_map(|(name, result)| match result {
            NodeResult::Done { output, .. } => Some((name.as_str(), output)),
            _ => None,
        })
        .collect();
    output::line(serde_json::to_string_pretty(&outputs)?)?;
    Ok(Outcome::Done)
}

fn status(args: StatusArgs) -> anyhow::Result<Outcome> {
    let flow = flow::load(&args.flow)?;
    let store = args.db.open_read_only()?;
    let nodes = flow::status(store.as_ref(), &flow, args.run_id)?;
    let cancelled = flow::is_cancelled(store.as_ref(), args.run_id)?;
    if args.json {
        let rows: Vec<Value> = nodes
            .iter()
            .map(|n| {
                let (state, error) = state_parts(&n.state);
                let warned = match &n.state {
                    NodeState::DoneWithWarning(warning) => Some(warning),
                    _ => None,
                };
                let mut row = json!({
                    "node": n.name,
                    "node_id": n.node_id,
                    "status": state,
                    "output_bytes": n.output_bytes,
                    "error": error.filter(|_| warned.is_none()),
                    "warning": warned,
                    "provenance": n.provenance,
                    "attempts": n.attempts,
                    "retry_at_ms": n.retry_at,
                    "failures": n.failures.iter().map(|(attempt, error)| json!({"attempt": attempt, "error": error})).collect::<Vec<_>>(),
                });
                if let Some(c) = &n.claim {
                    row["worker"] = json!(c.worker);
                    row["incarnation"] = json!(c.incarnation);
                    row["attempt"] = json!(c.attempt);
                    row["token"] = json!(c.token);
                    row["lease_left_ms"] =
                        json!(u64::try_from(c.lease_left.as_millis()).unwrap_or(u64::MAX));
                }
                row
            })
            .collect();
        output::line(serde_json::to_string_pretty(&json!({
            "flow_run_id": args.run_id,
            "cancelled": cancelled.is_some(),
            "cancelled_at_ms": cancelled,
            "nodes": rows,
        }))?)?;
    } else {
        let width = nodes.iter().map(|n| n.name.len()).max().unwrap_or(4).max(4);
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        if cancelled.is_some() {
            output::written(writeln!(
                out,
                "run {} cancelled (flow run --resume-cancelled runs it again)",
                args.run_id
            ))?;
        }
        // A worker column only for a store that workers share.
        let workers: Option<Vec<String>> = nodes
            .iter()
            .any(|n| n.claim.is_some())
            .then(|| nodes.iter().map(worker_cell).collect());
        let worker_width = workers
            .iter()
            .flatten()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max(6);
        let worker_head = if workers.is_some() {
            format!("{:worker_width$}  ", "worker")
        } else {
            String::new()
        };
        output::written(writeln!(
            out,
            "{:width$}  {:8}  {:>12}  {worker_head}detail",
            "node", "status", "output bytes"
        ))?;
        for (i, n) in nodes.iter().enumerate() {
            let (state, error) = state_parts(&n.state);
            let mut detail = match (&n.state, error) {
                (NodeState::DoneWithWarning(_), Some(warning)) => format!("warning: {warning}"),
                (_, error) => error.unwrap_or_default().to_owned(),
            };
            if n.attempts > 1 || n.retry_at.is_some() {
                let retry = n.retry_at.map_or_else(String::new, |at| {
                    let left =
                        at.saturating_sub(contextstore::store::provenance::unix_millis_now());
                    format!(", next attempt in {:.1}s", left.max(0) as f64 / 1e3)
                });
                let sep = if detail.is_empty() { "" } else { " " };
                detail = format!("(attempt {}{retry}){sep}{detail}", n.attempts);
            }
            let bytes = n
                .output_bytes
                .map_or_else(|| "-".to_owned(), |b| b.to_string());
            let worker = workers
                .as_ref()
                .map_or_else(String::new, |w| format!("{:worker_width$}  ", w[i]));
            output::written(writeln!(
                out,
                "{:width$}  {state:8}  {bytes:>12}  {worker}{detail}",
                n.name
            ))?;
        }
        output::written(out.flush())?;
    }
    Ok(Outcome::Done)
}

/// Who holds or ran a node: `w1` (ran it), `w1 (running)` (holds a live
/// lease), `w1 (lease expired)`; `-` when never claimed.
fn worker_cell(n: &flow::NodeStatus) -> String {
    match &n.claim {
        None => "-".into(),
        Some(c)
            if c.finished || matches!(n.state, NodeState::Done | NodeState::DoneWithWarning(_)) =>
        {
            c.worker.clone()
        }
        Some(c) if c.lease_left.is_zero() => format!("{} (lease expired)", c.worker),
        Some(c) => format!("{} (running)", c.worker),
    }
}

/// A node state as its status word and, for a failed node or a node done
/// with a warning, the error.
fn state_parts(state: &NodeState) -> (&'static str, Option<&str>) {
    match state {
        NodeState::Done => ("done", None),
        NodeState::DoneWithWarning(warning) => ("done", Some(warning)),
        NodeState::Pending => ("pending", None),
        NodeState::Failed(error) => ("failed", Some(error)),
    }
}

/// Per-node lines on stderr: human lines on a terminal, JSON lines with
/// `--events`, nothing otherwise. Called from worker threads; never panics.
/// Once stderr cannot be written (its reader went away) it goes quiet and
/// the flow runs on: its outputs are stored either way.
struct Progress {
    mode: Mode,
    /// Set when a line could not be written.
    closed: AtomicBool,
}

enum Mode {
    Quiet,
    Human,
    Events,
}

impl Progress {
    fn new(events: bool) -> Self {
        let mode = if events {
            Mode::Events
        } else if std::io::stderr().is_terminal() {
            Mode::Human
        } else {
            Mode::Quiet
        };
        Self {
            mode,
            closed: AtomicBool::new(false),
        }
    }

    fn show(&self, event: &FlowEvent<'_>) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let line = match self.mode {
            Mode::Quiet => return,
            Mode::Human => match event {
                FlowEvent::Started { .. } | FlowEvent::Claimed { .. } => return,
                FlowEvent::Finished {
                    node,
                    status: StepStatus::Ran,
                    elapsed,
                    warning,
                    ..
                } => {
                    let warned = warning.map_or_else(String::new, |w| format!(" warning: {w}"));
                    format!("  done     {}  ({:.1?}){warned}", node.name, elapsed)
                }
                FlowEvent::Finished {
                    node,
                    status: StepStatus::AlreadyDone,
                    ..
                } => {
                    format!("  skipped  {}  (already done)", node.name)
                }
                FlowEvent::Failed {
                    node,
                    error,
                    elapsed,
                } => format!("  FAILED   {}  ({:.1?}): {error}", node.name, elapsed),
                FlowEvent::Blocked { node, by } => {
                    format!("  blocked  {}  (upstream `{by}` failed)", node.name)
                }
                FlowEvent::Retrying {
                    node,
                    error,
                    attempt,
                    after,
                } => format!(
                    "  retry    {}  (attempt {attempt} failed: {error}; next in {after:.1?})",
                    node.name
                ),
                FlowEvent::Stopped { node, reason } => {
                    format!("  stopped  {}  ({reason})", node.name)
                }
            },
            Mode::Events => match event {
                FlowEvent::Started { node } => json!({"event": "started", "node": node.name}),
                FlowEvent::Stopped { node, reason } => {
                    json!({"event": "stopped", "node": node.name, "reason": reason})
                }
                FlowEvent::Claimed {
                    node,
                    worker,
                    attempt,
                    token,
                } => {
                    json!({"event": "claimed", "node": node.name, "worker": worker, "attempt": attempt, "token": token})
                }
                FlowEvent::Finished {
                    node,
                    status,
                    output,
                    warning,
                    elapsed,
                } => json!({
                    "event": "done",
                    "node": node.name,
                    "node_id": node.node_id,
                    "ran": *status == StepStatus::Ran,
                    "output": output,
                    "warning": warning,
                    "ms": elapsed.as_secs_f64() * 1e3,
                }),
                FlowEvent::Failed { node, error, .. } => {
                    json!({"event": "failed", "node": node.name, "error": error.to_string()})
                }
                FlowEvent::Blocked { node, by } => {
                    json!({"event": "blocked", "node": node.name, "by": by})
                }
                FlowEvent::Retrying {
                    node,
                    error,
                    attempt,
                    after,
                } => json!({
                    "event": "retrying",
                    "node": node.name,
                    "attempt": attempt,
                    "error": error.to_string(),
                    "after_ms": after.as_secs_f64() * 1e3,
                }),
            }
            .to_string(),
        };
        if !output::note(line) {
            self.closed.store(true, Ordering::Relaxed);
        }
    }
}
