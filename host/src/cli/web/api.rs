//! The JSON API the pages poll: `/api/runs` and `/api/runs/{run}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use contextstore::flow::{NodeState, NodeStatus};
use contextstore::runs::{RunFacts, RunFilter, RunIndex, RunState, RunSummary, Select};
use contextstore::store::CallContext;
use contextstore::{FlowRunId, NodeId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AppState, REQUEST_DEADLINE, WebError, blocking, within};

/// The most runs one `/api/runs` answer lists (the newest).
pub const MAX_LISTED: usize = 1000;

/// `/api/runs`'s query.
#[derive(Deserialize, Default)]
pub struct RunsQuery {
    /// States to keep, comma-separated (every state when missing or empty).
    state: Option<String>,
    /// Most runs to list (default and cap: [`MAX_LISTED`]).
    limit: Option<usize>,
}

/// Parses a comma-separated list of run states.
pub fn parse_states(text: Option<&str>) -> Result<Vec<RunState>, WebError> {
    text.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<RunState>().map_err(WebError::BadRequest))
        .collect()
}

/// The store's runs index, or why there is none.
pub fn index(state: &AppState) -> Result<&dyn RunIndex, WebError> {
    state
        .async_store
        .runs()
        .ok_or_else(|| WebError::Internal("this store keeps no runs index".into()))
}

/// `GET /api/runs`: the runs, newest first.
pub async fn runs(
    State(state): State<Arc<AppState>>,
    Query(query): Query<RunsQuery>,
) -> Result<Json<Value>, WebError> {
    let states = parse_states(query.state.as_deref())?;
    let limit = query.limit.unwrap_or(MAX_LISTED).min(MAX_LISTED);
    let filter = RunFilter { states, run: None };
    let (now, runs) = within(async {
        let facts = index(&state)?
            .facts(&CallContext::within(REQUEST_DEADLINE), Select::All)
            .await?;
        Ok((facts.now, facts.summaries(&filter)))
    })
    .await?;
    let total = runs.len();
    let runs: Vec<RunSummary> = runs.into_iter().take(limit).collect();
    Ok(Json(json!({
        "now": now,
        "total": total,
        "runs": runs,
    })))
}

/// A node of a run's recorded graph.
#[derive(Clone, Debug, Deserialize)]
pub struct GraphNode {
    /// Its name.
    pub name: String,
    /// Its id.
    pub node_id: NodeId,
    /// Its component's file name.
    #[serde(default)]
    pub component: Option<String>,
    /// The names of its upstream nodes.
    #[serde(default)]
    pub upstream: Vec<String>,
}

#[derive(Deserialize)]
struct Graph {
    nodes: Vec<GraphNode>,
}

/// The nodes of a run's recorded graph.
pub fn graph(facts: &RunFacts) -> Result<Vec<GraphNode>, WebError> {
    serde_json::from_str::<Graph>(facts.graph.as_str())
        .map(|g| g.nodes)
        .map_err(|e| WebError::Internal(format!("the run's recorded graph does not read: {e}")))
}

/// Parses a run id from a path.
pub fn run_id(text: &str) -> Result<FlowRunId, WebError> {
    text.parse()
        .map_err(|e: contextstore::id::IdParseError| WebError::BadRequest(e.to_string()))
}

/// One run's facts, summary and graph, read in one transaction.
pub async fn read_run(
    state: &AppState,
    run: FlowRunId,
) -> Result<(i64, RunSummary, Vec<GraphNode>), WebError> {
    within(async {
        let facts = index(state)?
            .facts(&CallContext::within(REQUEST_DEADLINE), Select::One(run))
            .await?;
        let filter = RunFilter {
            states: Vec::new(),
            run: Some(run),
        };
        let summary = facts
            .summaries(&filter)
            .into_iter()
            .next()
            .ok_or_else(|| WebError::NotFound(format!("no run {run} in this store")))?;
        let run_facts = facts
            .runs
            .iter()
            .find(|r| r.run == run)
            .ok_or_else(|| WebError::NotFound(format!("no run {run} in this store")))?;
        Ok((facts.now, summary, graph(run_facts)?))
    })
    .await
}

/// A node as the run page shows it.
#[derive(Serialize)]
struct NodeView {
    name: String,
    node_id: NodeId,
    component: Option<String>,
    upstream: Vec<String>,
    /// `done`, `failed`, `retrying`, `running` or `pending`.
    state: &'static str,
    error: Option<String>,
    warning: Option<String>,
    attempts: u32,
    retry_at: Option<i64>,
    failures: Vec<Value>,
    output_bytes: Option<usize>,
    /// Who ran or holds it: the claim's worker, or the host in its provenance.
    worker: Option<String>,
    /// Whether that worker's lease on it is live (stores shared by workers).
    lease_live: bool,
    duration_ms: Option<i64>,
    provenance: Option<contextstore::store::Provenance>,
}

fn view(node: &GraphNode, status: NodeStatus) -> NodeView {
    let lease_live = status
        .claim
        .as_ref()
        .is_some_and(|c| !c.finished && !c.lease_left.is_zero());
    let (state, error, warning) = match status.state {
        NodeState::Done => ("done", None, None),
        NodeState::DoneWithWarning(w) => ("done", None, Some(w)),
        NodeState::Failed(e) if status.retry_at.is_some() => ("retrying", Some(e), None),
        NodeState::Failed(e) if lease_live => ("running", Some(e), None),
        NodeState::Failed(e) => ("failed", Some(e), None),
        NodeState::Pending if lease_live => ("running", None, None),
        NodeState::Pending => ("pending", None, None),
    };
    let worker = status
        .claim
        .as_ref()
        .map(|c| c.worker.clone())
        .or_else(|| status.provenance.as_ref().map(|p| p.host.clone()));
    NodeView {
        name: node.name.clone(),
        node_id: node.node_id,
        component: node.component.clone(),
        upstream: node.upstream.clone(),
        state,
        error,
        warning,
        attempts: status.attempts,
        retry_at: status.retry_at,
        failures: status
            .failures
            .iter()
            .map(|(attempt, error)| json!({"attempt": attempt, "error": error}))
            .collect(),
        output_bytes: status.output_bytes,
        worker,
        lease_live,
        duration_ms: status
            .provenance
            .as_ref()
            .map(|p| p.ended_at.saturating_sub(p.started_at).max(0)),
        provenance: status.provenance,
    }
}

/// `GET /api/runs/{run}`: the run and each node's status.
pub async fn run(
    State(state): State<Arc<AppState>>,
    Path(run): Path<String>,
) -> Result<Json<Value>, WebError> {
    let run = run_id(&run)?;
    let (now, summary, nodes) = read_run(&state, run).await?;
    let store = Arc::clone(&state.store);
    let ids: Vec<(String, NodeId)> = nodes.iter().map(|n| (n.name.clone(), n.node_id)).collect();
    let statuses = blocking(move || {
        let named: Vec<(&str, NodeId)> = ids.iter().map(|(n, id)| (n.as_str(), *id)).collect();
        Ok(contextstore::flow::status_of(store.as_ref(), &named, run)?)
    })
    .await?;
    let views: Vec<NodeView> = nodes
        .iter()
        .zip(statuses)
        .map(|(node, status)| view(node, status))
        .collect();
    Ok(Json(json!({
        "now": now,
        "run": summary,
        "nodes": views,
    })))
}
