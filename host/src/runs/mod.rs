//! The runs index: which flow runs a store holds, where each stands, and
//! their removal ([`gc()`]).
//!
//! Each worker that runs a flow records itself in the index when it starts
//! ([`RunIndex::record`]), again every third of its lease while it runs (a
//! heartbeat: one small write per worker, not per node), and once more when
//! it ends, with its outcome. Everything else a listing shows is computed
//! when it is read, from what the store holds anyway: node counts from the
//! outputs and the flow journal, liveness from the workers' heartbeats and
//! (on a store shared by workers) their leases, cancellation from the
//! run's mark. So a node still costs one commit.
//!
//! A run's [`RunState`]:
//! - `done`: every node of the flow has its output;
//! - `cancelled`: the run was cancelled ([`crate::flow::cancel()`]) and is not done;
//! - `running`: some worker has a live lease on one of its nodes, or has
//!   recorded itself (or written an output) within its lease, and not ended;
//! - `failed`: no worker is live, and a node's last attempt failed with no
//!   retry due, or the last worker to end ended failed;
//! - `stalled`: no worker is live and none ended it: its workers died
//!   (killed, or their host lost) with nodes left to run. Running the flow
//!   again resumes it.
//!
//! Runs written without the flow runner (an engine's own `put`s) are not
//! in the index unless the engine records them with [`RunIndex::record`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::coord::WorkerId;
use crate::error::ContextStoreError;
use crate::id::FlowRunId;
use crate::json::JsonText;
use crate::store::CallContext;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod duration;
pub mod gc;
mod state;

pub use duration::parse_duration;
pub use gc::{GcOptions, GcReport, gc};
pub use state::list;

/// Where a run stands, computed when read (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Some worker is live on it.
    Running,
    /// No worker is live, and none ended it: its workers died.
    Stalled,
    /// Every node has its output.
    Done,
    /// A node failed for good, or its last worker ended failed.
    Failed,
    /// It was cancelled.
    Cancelled,
}

impl RunState {
    /// Every state, in the order listings show them.
    pub const ALL: [RunState; 5] = [
        Self::Running,
        Self::Stalled,
        Self::Done,
        Self::Failed,
        Self::Cancelled,
    ];

    /// Its name: `running`, `stalled`, `done`, `failed`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stalled => "stalled",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the run has ended for good (done, failed or cancelled):
    /// what `gc` removes by default.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown run state {s:?} (one of running, stalled, done, failed, cancelled)"
                )
            })
    }
}

/// How a worker stands in a run, as it records itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerOutcome {
    /// It ended with every node done.
    Done,
    /// It ended with a node failed, or the flow refused (changed).
    Failed,
    /// It ended because the run was cancelled.
    Cancelled,
}

impl WorkerOutcome {
    /// Its name as stored: `done`, `failed`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The outcome a stored name stands for (`None` for another name).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "done" => Some(Self::Done),
            "failed" => Some(Self::Failed),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// What a worker records of the run it works on: the same at every call,
/// so that any one of them (the first may have been lost to a fault)
/// leaves the index whole.
#[derive(Clone, Debug)]
pub struct RunRecord<'a> {
    /// The run.
    pub run: FlowRunId,
    /// The flow's name.
    pub flow_name: &'a str,
    /// The flow's hash: BLAKE3, in hex, over its nodes' names, components,
    /// params and edges (two workers of one flow record the same).
    pub flow_hash: &'a str,
    /// The flow's graph as JSON: `{"nodes": [{"name", "node_id",
    /// "component", "upstream": [names]}]}`, for views that have no flow file.
    pub graph: &'a JsonText,
    /// How many nodes the flow has.
    pub nodes: u32,
    /// The worker recording itself.
    pub worker: &'a WorkerId,
    /// Its lease: it records itself again within each third of it while it
    /// runs, and counts as live for this long after its last record.
    pub lease: Duration,
}

/// Where the recording worker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerStatus {
    /// It is running the flow (its start, or a heartbeat).
    Running,
    /// It has ended, so.
    Ended(WorkerOutcome),
}

impl WorkerStatus {
    /// How the worker ended, if it has.
    pub fn outcome(self) -> Option<WorkerOutcome> {
        match self {
            Self::Running => None,
            Self::Ended(outcome) => Some(outcome),
        }
    }
}

/// A duration as whole milliseconds, as the index (and SQL) keeps them;
/// saturating far ahead.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One worker's record in a run, as read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerRow {
    /// The worker's name.
    pub name: String,
    /// Its incarnation.
    pub incarnation: uuid::Uuid,
    /// When it started on the run (Unix milliseconds).
    pub started_at: i64,
    /// When it last recorded itself (Unix milliseconds).
    pub seen_at: i64,
    /// Its lease, in milliseconds.
    pub lease_ms: i64,
    /// When it ended (Unix milliseconds), if it did.
    pub ended_at: Option<i64>,
    /// How it ended, if it did.
    pub outcome: Option<WorkerOutcome>,
}

impl WorkerRow {
    /// Whether the worker is live at `now`: not ended, and recorded within its lease.
    pub fn is_live(&self, now: i64) -> bool {
        self.ended_at.is_none() && self.seen_at.saturating_add(self.lease_ms) > now
    }
}

/// What a backend reads of one indexed run: its record and the facts its
/// state and counts are computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFacts {
    /// The run.
    pub run: FlowRunId,
    /// The flow's name.
    pub flow_name: String,
    /// The flow's hash.
    pub flow_hash: String,
    /// The flow's graph as recorded (see [`RunRecord::graph`]).
    pub graph: JsonText,
    /// How many nodes the flow has.
    pub nodes: u32,
    /// When the run was first recorded (Unix milliseconds).
    pub created_at: i64,
    /// Its workers, by incarnation.
    pub workers: Vec<WorkerRow>,
    /// How many nodes have their output.
    pub outputs: u32,
    /// When the last output was written (Unix milliseconds).
    pub last_output_at: Option<i64>,
    /// Nodes without output whose last attempt failed with no retry due.
    pub failed_nodes: u32,
    /// Nodes without output whose last attempt failed with a retry scheduled.
    pub retrying_nodes: u32,
    /// Nodes whose claim's lease is live (stores shared by workers).
    pub live_claims: u32,
    /// Claims taken over after a lease ran out (stores shared by workers).
    pub taken_over: u32,
    /// Failed attempts at its nodes, by the journal (each node's last
    /// failed attempt number, summed).
    pub failed_attempts: u32,
    /// When the run was cancelled (Unix milliseconds), if it is.
    pub cancelled_at: Option<i64>,
    /// Whether gc has begun removing it: listings leave it out, and the
    /// next gc finishes the removal.
    pub removing: bool,
}

impl RunFacts {
    /// The facts of a run as its record holds them, before anything else
    /// is read: no workers, outputs, failures, claims or cancellation yet.
    pub fn recorded(
        run: FlowRunId,
        flow_name: String,
        flow_hash: String,
        graph: JsonText,
        nodes: u32,
        created_at: i64,
    ) -> Self {
        Self {
            run,
            flow_name,
            flow_hash,
            graph,
            nodes,
            created_at,
            workers: Vec::new(),
            outputs: 0,
            last_output_at: None,
            failed_nodes: 0,
            retrying_nodes: 0,
            live_claims: 0,
            taken_over: 0,
            failed_attempts: 0,
            cancelled_at: None,
            removing: false,
        }
    }
}

/// Which runs a backend reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// Every indexed run.
    All,
    /// The one run.
    One(FlowRunId),
}

/// What the index read, on the backend's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The backend's time of the read (Unix milliseconds): liveness is
    /// judged on it.
    pub now: i64,
    /// The runs read, in no particular order.
    pub runs: Vec<RunFacts>,
}

/// How many rows a removal took away, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// Runs removed whole (their index record last).
    pub runs: u64,
    /// Node outputs (with their provenance).
    pub outputs: u64,
    /// Journal entries and cancellation marks.
    pub journal: u64,
    /// Claims.
    pub claims: u64,
    /// Worker records.
    pub workers: u64,
}

impl Removed {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &Removed) {
        self.runs += other.runs;
        self.outputs += other.outputs;
        self.journal += other.journal;
        self.claims += other.claims;
        self.workers += other.workers;
    }

    /// Rows removed in all.
    pub fn rows(&self) -> u64 {
        self.runs + self.outputs + self.journal + self.claims + self.workers
    }
}

/// What one removal batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemovedBatch {
    /// The rows it removed.
    pub removed: Removed,
    /// The runs it finished removing (it deleted their record).
    pub gone: Vec<FlowRunId>,
    /// The runs it was asked for that had no record left: another gc
    /// removed them meanwhile.
    pub missing: Vec<FlowRunId>,
    /// The runs it left alone because a worker is live on them now.
    pub live: Vec<FlowRunId>,
}

/// The runs index of a backend (see the [module docs](self)). Reached
/// through [`AsyncContextStore::runs`](crate::store::AsyncContextStore::runs).
#[async_trait::async_trait]
pub trait RunIndex: Send + Sync {
    /// Records `record.worker` in `record.run`: the run's record is made if
    /// missing (and its flow's hash, graph and node count brought up to
    /// this worker's), the worker's own is made or updated to `status`,
    /// seen now. One transaction.
    async fn record(
        &self,
        cx: &CallContext,
        record: &RunRecord<'_>,
        status: WorkerStatus,
    ) -> Result<(), ContextStoreError>;

    /// Reads the facts of the runs `select` names, in one read
    /// transaction (one consistent view).
    async fn facts(&self, cx: &CallContext, select: Select) -> Result<Facts, ContextStoreError>;

    /// Removes rows of `runs`, in their order, at most `max_rows` of them
    /// (outputs, journal entries, claims, worker records, and a run's
    /// record once nothing else of it is left), in one transaction: the
    /// writer is held for one batch only. A run on which a worker is live
    /// when the batch runs (its record or a lease is fresh, on the
    /// backend's clock) is left whole and named in
    /// [`RemovedBatch::live`]. A worker that starts on a run while it is
    /// being removed finds it either whole or with fewer outputs, never
    /// with an output gone from under a step that read it.
    async fn remove(
        &self,
        cx: &CallContext,
        runs: &[FlowRunId],
        max_rows: usize,
    ) -> Result<RemovedBatch, ContextStoreError>;

    /// How many rows a removal batch takes by default: what keeps the
    /// writes of running flows within twice their latency (see the README).
    fn batch_rows(&self) -> usize {
        64
    }
}

/// One run as a listing shows it: [`RunFacts`] with its state computed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    /// The run (`flow_run_id` in JSON, as `flow status --json` names it).
    #[serde(rename = "flow_run_id")]
    pub run: FlowRunId,
    /// The flow's name.
    pub flow_name: String,
    /// The flow's hash.
    pub flow_hash: String,
    /// Where it stands.
    pub state: RunState,
    /// When it was first recorded (Unix milliseconds).
    pub started_at: i64,
    /// When it ended (Unix milliseconds): for a done, failed or cancelled run.
    pub ended_at: Option<i64>,
    /// When anything last happened in it (Unix milliseconds): a worker's
    /// record or an output.
    pub last_active_at: i64,
    /// How many workers (incarnations) have worked on it.
    pub workers: u32,
    /// How many are live now.
    pub live_workers: u32,
    /// Its nodes, by where they stand.
    pub nodes: NodeCounts,
    /// Claims taken over after a lease ran out.
    pub taken_over: u32,
    /// Failed attempts at its nodes (see [`RunFacts::failed_attempts`]).
    pub failed_attempts: u32,
}

/// A run's nodes by where they stand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeCounts {
    /// Nodes in the flow.
    pub total: u32,
    /// With their output.
    pub done: u32,
    /// Failed for good (no output, no retry due).
    pub failed: u32,
    /// Failed, with a retry scheduled.
    pub retrying: u32,
    /// Held under a live lease (stores shared by workers).
    pub running: u32,
    /// The rest: not run yet (or interrupted).
    pub pending: u32,
}

/// Which runs a listing keeps.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    /// Only runs in one of these states (every state when empty).
    pub states: Vec<RunState>,
    /// Only this run.
    pub run: Option<FlowRunId>,
}

/// How many runs of each state `runs` holds, in [`RunState::ALL`] order.
pub fn count_by_state(runs: &[RunSummary]) -> BTreeMap<RunState, usize> {
    let mut counts: BTreeMap<RunState, usize> = RunState::ALL.iter().map(|s| (*s, 0)).collect();
    for run in runs {
        *counts.entry(run.state).or_default() += 1;
    }
    counts
}

/// The key prefix of flow journal entries among the globals
/// (`contextstore.flow/<run id>/<node id>`; see [`crate::store`]'s reserved keys).
pub const JOURNAL_PREFIX: &str = "contextstore.flow/";

/// The key prefix of cancellation marks among the globals
/// (`contextstore.cancel/<run id>`).
pub const CANCEL_PREFIX: &str = "contextstore.cancel/";

/// The keys of `run`'s journal entries: those from the first, inclusive,
/// to the second, exclusive (`/` sorts just before `0`).
pub fn journal_range(run: FlowRunId) -> (String, String) {
    (
        format!("{JOURNAL_PREFIX}{run}/"),
        format!("{JOURNAL_PREFIX}{run}0"),
    )
}

/// The key of `run`'s cancellation mark.
pub fn cancel_key(run: FlowRunId) -> String {
    format!("{CANCEL_PREFIX}{run}")
}

/// When a cancellation mark says its run was cancelled (Unix
/// milliseconds), if it does: `{"cancelled": true, "at": ms}`.
pub fn cancelled_at(mark: &str) -> Option<i64> {
    let mark: serde_json::Value = serde_json::from_str(mark).ok()?;
    (mark.get("cancelled") == Some(&serde_json::Value::Bool(true))).then(|| {
        mark.get("at")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0)
    })
}

/// What the index needs of a journal entry: its node (from the key's
/// tail, after [`journal_range`]'s start), its last failed attempt, and
/// whether a retry is scheduled. `None` for an entry it cannot read.
pub fn journal_entry(key_tail: &str, value: &str) -> Option<(crate::id::NodeId, u32, bool)> {
    let node: crate::id::NodeId = key_tail.parse().ok()?;
    let entry: serde_json::Value = serde_json::from_str(value).ok()?;
    let attempt = entry
        .get("attempt")
        .and_then(serde_json::Value::as_u64)
        .and_then(|a| u32::try_from(a).ok())
        .unwrap_or(1);
    let retrying = entry
        .get("retry_at")
        .is_some_and(|at| at.as_i64().is_some());
    Some((node, attempt, retrying))
}
