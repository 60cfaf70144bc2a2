//! Many finished runs in a store, as the runs index holds them: what gc
//! benchmarks and tests remove.

use std::sync::Arc;
use std::time::Duration;

use contextstore::coord::WorkerId;
use contextstore::json::JsonText;
use contextstore::runs::{RunRecord, WorkerOutcome, WorkerStatus};
use contextstore::store::CallContext;
use contextstore::{ContextStore, FlowRunId, NodeId};

/// Writes `count` finished (`done`) runs of flow `old` into `store`: each
/// recorded by a worker that ended, with two outputs and a journal entry
/// (for a node without output). Written from 16 threads, whose writes
/// share commits. Returns the runs.
pub fn seed(store: &Arc<dyn ContextStore>, count: usize) -> Vec<FlowRunId> {
    let graph = JsonText::from_stored(r#"{"nodes":[]}"#.into());
    let runs: Vec<FlowRunId> = (0..count).map(|_| FlowRunId::new()).collect();
    std::thread::scope(|scope| {
        for chunk in runs.chunks(count.div_ceil(16).max(1)) {
            let (store, graph) = (store.clone(), &graph);
            scope.spawn(move || {
                let executor = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                let index = store
                    .as_async()
                    .and_then(|s| s.runs())
                    .expect("a runs index");
                let worker = WorkerId::new("old");
                let cx = CallContext::within(Duration::from_secs(60));
                for run in chunk {
                    let record = RunRecord {
                        run: *run,
                        flow_name: "old",
                        flow_hash: "h",
                        graph,
                        nodes: 2,
                        worker: &worker,
                        lease: Duration::from_secs(30),
                    };
                    executor
                        .block_on(index.record(&cx, &record, WorkerStatus::Running))
                        .expect("record");
                    for _ in 0..2 {
                        store
                            .put(*run, NodeId::new(), &serde_json::json!({"old": true}))
                            .expect("put");
                    }
                    store
                        .upsert_global(
                            &format!("contextstore.flow/{run}/{}", NodeId::new()),
                            &serde_json::json!({"status": "failed", "error": "x", "attempt": 1}),
                        )
                        .expect("journal entry");
                    let done = WorkerStatus::Ended(WorkerOutcome::Done);
                    executor
                        .block_on(index.record(&cx, &record, done))
                        .expect("record");
                }
            });
        }
    });
    runs
}
