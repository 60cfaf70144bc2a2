//! What the runner records of its run in the runs index ([`crate::runs`]):
//! itself at start, a heartbeat every third of its lease, and its outcome
//! at the end. The index is for operators' views: a record that fails is
//! logged, and the run goes on.

use std::time::{Duration, Instant};

use serde_json::json;

use super::Flow;
use crate::coord::WorkerId;
use crate::id::FlowRunId;
use crate::json::JsonText;
use crate::runs::{RunRecord, WorkerStatus};
use crate::runtime::{Runtime, StepComponent};
use crate::store::{AsyncContextStore, CallContext};

/// This worker's entry in a run's index record.
pub(super) struct RunEntry {
    run: FlowRunId,
    flow_name: String,
    flow_hash: String,
    graph: JsonText,
    nodes: u32,
    worker: WorkerId,
    lease: Duration,
}

impl RunEntry {
    /// The entry of `worker` in `run` of `flow`, whose nodes load `components`.
    pub(super) fn new(
        flow: &Flow,
        components: &[StepComponent],
        run: FlowRunId,
        worker: WorkerId,
        lease: Duration,
    ) -> Self {
        let mut hashed = Vec::with_capacity(flow.nodes.len());
        let mut nodes = Vec::with_capacity(flow.nodes.len());
        for (i, (node, component)) in flow.nodes.iter().zip(components).enumerate() {
            hashed.push(json!({
                "name": node.name,
                "component": component.content_hash(),
                "params": flow.invocation(i, run).params_hash(),
                "upstream": node.upstream,
            }));
            nodes.push(json!({
                "name": node.name,
                "node_id": node.node_id,
                "component": node.component.file_name().map(|f| f.to_string_lossy().into_owned()),
                "upstream": node.upstream,
            }));
        }
        let mut hasher = blake3::Hasher::new_derive_key("contextstore flow v1");
        hasher.update(json!([flow.name, hashed]).to_string().as_bytes());
        let graph = JsonText::from_stored(json!({ "nodes": nodes }).to_string());
        Self {
            run,
            flow_name: flow.name.clone(),
            flow_hash: hasher.finalize().to_hex().to_string(),
            graph,
            nodes: u32::try_from(flow.nodes.len()).unwrap_or(u32::MAX),
            worker,
            lease,
        }
    }

    /// How often a running worker records itself again.
    pub(super) fn heartbeat_every(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(100))
    }

    /// Records the worker as `status`, within a third of its lease; a
    /// failure is logged, not returned.
    pub(super) fn record(
        &self,
        runtime: &Runtime,
        store: &dyn AsyncContextStore,
        status: WorkerStatus,
    ) {
        let Some(index) = store.runs() else {
            return;
        };
        let record = RunRecord {
            run: self.run,
            flow_name: &self.flow_name,
            flow_hash: &self.flow_hash,
            graph: &self.graph,
            nodes: self.nodes,
            worker: &self.worker,
            lease: self.lease,
        };
        let cx = CallContext::within(self.heartbeat_every().max(Duration::from_secs(2)));
        let started = Instant::now();
        if let Err(error) = runtime.block_on(index.record(&cx, &record, status)) {
            tracing::warn!(run = %self.run, %error, elapsed = ?started.elapsed(),
                "could not record the run in the runs index");
        }
    }
}
