//! Step start latency, shared by the benches: `Runtime::run` of one
//! component over and over against an in-memory store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use contextstore::{
    ContextStore, FlowRunId, Grant, Invocation, Limits, NodeId, Runtime, SqliteContextStore,
    StepComponent,
};

/// p50 and p99 of `runs` runs of `component` (after a tenth more to warm
/// up), each a fresh node with `params`, whose upstreams (by name) hold
/// `upstream` outputs, default grant and limits.
pub fn start_latency(
    runtime: &Runtime,
    component: &StepComponent,
    params: &serde_json::Value,
    upstream: &[(&str, serde_json::Value)],
    runs: usize,
) -> (Duration, Duration) {
    let store: Arc<dyn ContextStore> = Arc::new(SqliteContextStore::in_memory().expect("store"));
    let run = FlowRunId::new();
    let upstream: Vec<(&str, NodeId)> = upstream
        .iter()
        .map(|(name, value)| {
            let node = NodeId::new();
            store.put(run, node, value).expect("upstream put");
            (*name, node)
        })
        .collect();
    let (grant, limits) = (Grant::default(), Limits::default());
    let mut latencies = Vec::with_capacity(runs);
    for i in 0..runs + runs / 10 {
        let mut invocation = Invocation::new(run, NodeId::new()).with_params(params.clone());
        for (name, node) in &upstream {
            invocation = invocation.with_upstream(*name, *node);
        }
        let started = Instant::now();
        runtime
            .run(component, &store, &invocation, &grant, &limits)
            .expect("step runs");
        if i >= runs / 10 {
            latencies.push(started.elapsed());
        }
    }
    latencies.sort();
    (latencies[runs / 2], latencies[runs * 99 / 100])
}
