//! `/metrics` of `contextstore serve`: what the store holds, in the
//! Prometheus text format. Nothing is counted in the server: each scrape
//! reads the runs index, and the step histograms come from the provenance
//! stored beside each output.
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `contextstore_runs{state}` | gauge | indexed runs by state |
//! | `contextstore_nodes{state}` | gauge | their nodes by state (`done`, `failed`, `retrying`, `running`, `pending`) |
//! | `contextstore_failed_attempts` | gauge | failed attempts at nodes, by the journal, over every run |
//! | `contextstore_claims_taken_over` | gauge | claims taken over after a lease ran out (PostgreSQL) |
//! | `contextstore_workers_live` | gauge | workers live on some run now |
//! | `contextstore_step_duration_seconds{component}` | histogram | stored outputs' step time (`ended_at - started_at` of their provenance) |
//! | `contextstore_step_attempts` | histogram | which attempt stored each output (above 1: retried) |
//! | `contextstore_metrics_sampled_runs` | gauge | runs the step histograms cover |
//! | `contextstore_metrics_sampled_steps` | gauge | outputs they cover |
//!
//! Cost: the gauges are one read of the index. The histograms cover the
//! newest `--metrics-runs` runs; an output's provenance never changes, so
//! each is read once and kept (a few dozen bytes an output) and a scrape
//! reads only outputs stored since the last one, at most
//! [`READS_PER_SCRAPE`] of them (the rest come in later scrapes).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::Response;
use contextstore::runs::{RunSummary, Select};
use contextstore::store::CallContext;
use contextstore::{FlowRunId, NodeId};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::api::{graph, index};
use super::{AppState, REQUEST_DEADLINE, WebError, lock, metrics_response, within};

/// The most provenance records one scrape reads.
pub const READS_PER_SCRAPE: usize = 5000;

/// How long before the request's deadline a scrape stops reading.
const MARGIN: Duration = Duration::from_secs(2);

/// A stored output's step, as the histograms count it.
#[derive(Clone, Debug)]
struct Step {
    component: Arc<str>,
    seconds: f64,
    attempt: u32,
}

/// A node and its component's name.
type Component = (NodeId, Arc<str>);

/// What has been read of one run.
#[derive(Default)]
struct RunSample {
    /// Its nodes and their components' names, from its graph.
    nodes: Vec<Component>,
    /// The steps of the outputs read.
    steps: HashMap<NodeId, Step>,
}

/// What `/metrics` has read of the newest runs' outputs.
#[derive(Default)]
pub struct Cache {
    runs: HashMap<FlowRunId, RunSample>,
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, WebError> {
    let text = within(scrape(&state)).await?;
    Ok(metrics_response(text))
}

async fn scrape(state: &AppState) -> Result<String, WebError> {
    let started = Instant::now();
    let cx = CallContext::within(REQUEST_DEADLINE);
    let facts = index(state)?.facts(&cx, Select::All).await?;
    let summaries = facts.summaries(&Default::default());
    // The runs sampled, newest first, with what must be read of them.
    let window: Vec<&RunSummary> = summaries.iter().take(state.metrics_runs).collect();
    let mut wanted: Vec<(FlowRunId, Vec<Component>)> = Vec::new();
    {
        let mut cache = lock(&state.metrics_cache);
        cache
            .runs
            .retain(|run, _| window.iter().any(|s| s.run == *run));
        for summary in &window {
            let sample = match cache.runs.get_mut(&summary.run) {
                Some(sample) => sample,
                None => {
                    let Some(run_facts) = facts.runs.iter().find(|r| r.run == summary.run) else {
                        continue;
                    };
                    let nodes = match graph(run_facts) {
                        Ok(nodes) => nodes,
                        Err(error) => {
                            tracing::debug!(run = %summary.run, %error, "run left out of the step histograms");
                            continue;
                        }
                    };
                    let nodes = nodes
                        .into_iter()
                        .map(|n| {
                            let component = n.component.unwrap_or_else(|| "unknown".into());
                            (n.node_id, Arc::from(component.as_str()))
                        })
                        .collect();
                    cache.runs.entry(summary.run).or_insert(RunSample {
                        nodes,
                        steps: HashMap::new(),
                    })
                }
            };
            if usize::try_from(summary.nodes.done).unwrap_or(usize::MAX) > sample.steps.len() {
                let missing: Vec<Component> = sample
                    .nodes
                    .iter()
                    .filter(|(id, _)| !sample.steps.contains_key(id))
                    .cloned()
                    .collect();
                wanted.push((summary.run, missing));
            }
        }
    }
    // Read outside the lock, within the budget.
    let mut reads = 0usize;
    let mut found: Vec<(FlowRunId, NodeId, Step)> = Vec::new();
    'runs: for (run, nodes) in wanted {
        for (node, component) in nodes {
            if reads >= READS_PER_SCRAPE || started.elapsed() + MARGIN >= REQUEST_DEADLINE {
                tracing::debug!(
                    reads,
                    "scrape read budget spent; the rest comes in later scrapes"
                );
                break 'runs;
            }
            reads += 1;
            if let Some(p) = state.async_store.provenance(&cx, run, node).await? {
                let ms = p.ended_at.saturating_sub(p.started_at).max(0);
                found.push((
                    run,
                    node,
                    Step {
                        component,
                        seconds: ms as f64 / 1e3,
                        attempt: p.attempt,
                    },
                ));
            }
        }
    }
    let cache = {
        let mut cache = lock(&state.metrics_cache);
        for (run, node, step) in found {
            if let Some(sample) = cache.runs.get_mut(&run) {
                sample.steps.insert(node, step);
            }
        }
        // A copy of the steps, so that the text is made without the lock.
        cache
            .runs
            .values()
            .map(|s| s.steps.values().cloned().collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    render(&summaries, &cache).map_err(|e| WebError::Internal(format!("metrics: {e}")))
}

/// The metrics text of `summaries` (every indexed run) and `sampled` (the
/// steps read, by run).
fn render(summaries: &[RunSummary], sampled: &[Vec<Step>]) -> prometheus::Result<String> {
    let registry = Registry::new();
    let runs = IntGaugeVec::new(
        Opts::new("contextstore_runs", "Indexed flow runs by state."),
        &["state"],
    )?;
    registry.register(Box::new(runs.clone()))?;
    for (state, count) in contextstore::runs::count_by_state(summaries) {
        runs.with_label_values(&[state.as_str()])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    let nodes = IntGaugeVec::new(
        Opts::new("contextstore_nodes", "Nodes of the indexed runs by state."),
        &["state"],
    )?;
    registry.register(Box::new(nodes.clone()))?;
    let sum =
        |f: fn(&RunSummary) -> u32| -> i64 { summaries.iter().map(|s| i64::from(f(s))).sum() };
    for (name, value) in [
        ("done", sum(|s| s.nodes.done)),
        ("failed", sum(|s| s.nodes.failed)),
        ("retrying", sum(|s| s.nodes.retrying)),
        ("running", sum(|s| s.nodes.running)),
        ("pending", sum(|s| s.nodes.pending)),
    ] {
        nodes.with_label_values(&[name]).set(value);
    }
    let gauge = |name: &str, help: &str, value: i64| -> prometheus::Result<()> {
        let g = IntGauge::new(name, help)?;
        g.set(value);
        registry.register(Box::new(g))
    };
    gauge(
        "contextstore_failed_attempts",
        "Failed attempts at nodes, by the flow journal, over every indexed run.",
        sum(|s| s.failed_attempts),
    )?;
    gauge(
        "contextstore_claims_taken_over",
        "Node claims taken over after their lease ran out, over every indexed run.",
        sum(|s| s.taken_over),
    )?;
    gauge(
        "contextstore_workers_live",
        "Workers live on some run now.",
        sum(|s| s.live_workers),
    )?;
    let durations = HistogramVec::new(
        HistogramOpts::new(
            "contextstore_step_duration_seconds",
            "Step time of stored outputs (ended_at - started_at of their provenance), \
             over the sampled runs.",
        )
        .buckets(vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            900.0, 3600.0,
        ]),
        &["component"],
    )?;
    registry.register(Box::new(durations.clone()))?;
    let attempts = Histogram::with_opts(
        HistogramOpts::new(
            "contextstore_step_attempts",
            "The attempt that stored each output (above 1: the step was retried), over the \
             sampled runs.",
        )
        .buckets(vec![1.0, 2.0, 3.0, 4.0, 5.0, 10.0]),
    )?;
    registry.register(Box::new(attempts.clone()))?;
    let mut steps = 0i64;
    for step in sampled.iter().flatten() {
        durations
            .with_label_values(&[&*step.component])
            .observe(step.seconds);
        attempts.observe(f64::from(step.attempt));
        steps += 1;
    }
    gauge(
        "contextstore_metrics_sampled_runs",
        "Runs the step histograms cover (the newest, up to --metrics-runs).",
        i64::try_from(sampled.len()).unwrap_or(i64::MAX),
    )?;
    gauge(
        "contextstore_metrics_sampled_steps",
        "Stored outputs the step histograms cover.",
        steps,
    )?;
    let mut text = String::new();
    TextEncoder::new().encode_utf8(&registry.gather(), &mut text)?;
    Ok(text)
}
