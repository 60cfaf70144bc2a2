//! The runs index's conformance suite: what every backend's [`RunIndex`]
//! must do, written once. A backend runs it with
//! [`runs_index_tests!`](crate::runs_index_tests), given an expression that
//! makes a fresh, empty store (with a guard that keeps what it needs alive).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{
    GcOptions, RunFacts, RunFilter, RunIndex, RunRecord, RunState, Select, WorkerOutcome,
    WorkerStatus, cancel_key, gc, journal_range, list,
};
use crate::coord::{Claim, WorkerId};
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use crate::store::{CallContext, ContextStore};

/// Expands to one `#[test]` per requirement of the runs index. `$make` is
/// an expression of type `(Guard, Arc<S>)` for some `S: ContextStore` whose
/// async interface keeps a runs index.
#[macro_export]
macro_rules! runs_index_tests {
    ($make:expr) => {
        $crate::runs_index_tests!(@tests $make;
            a_run_is_listed_with_its_state_and_counts,
            a_worker_that_stops_recording_leaves_its_run_stalled,
            failed_and_cancelled_runs_are_told_apart,
            gc_removes_whole_runs_in_bounded_batches_and_never_a_live_one,
            a_run_half_removed_is_hidden_and_finished_by_the_next_gc,
            gc_dry_run_removes_nothing_and_running_is_refused);
    };
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                let (_guard, store) = $make;
                $crate::runs::conformance::$name(store);
            }
        )*
    };
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a test runtime")
        .block_on(future)
}

fn cx() -> CallContext {
    CallContext::within(Duration::from_secs(30))
}

fn index<S: ContextStore>(store: &S) -> &dyn RunIndex {
    store
        .as_async()
        .and_then(|s| s.runs())
        .expect("the backend keeps a runs index")
}

/// A worker's record of a flow of `nodes` nodes.
struct Recorder {
    run: FlowRunId,
    worker: WorkerId,
    lease: Duration,
    graph: JsonText,
    nodes: u32,
}

impl Recorder {
    fn new(nodes: u32, lease: Duration) -> Self {
        Self {
            run: FlowRunId::new(),
            worker: WorkerId::new("w1"),
            lease,
            graph: JsonText::from_stored(json!({"nodes": []}).to_string()),
            nodes,
        }
    }

    fn record(&self, index: &dyn RunIndex, status: WorkerStatus) {
        let record = RunRecord {
            run: self.run,
            flow_name: "conformance",
            flow_hash: "h",
            graph: &self.graph,
            nodes: self.nodes,
            worker: &self.worker,
            lease: self.lease,
        };
        block_on(index.record(&cx(), &record, status)).expect("record");
    }
}

fn facts_of(index: &dyn RunIndex, run: FlowRunId) -> Option<(i64, RunFacts)> {
    let facts = block_on(index.facts(&cx(), Select::One(run))).expect("facts");
    let now = facts.now;
    facts
        .runs
        .into_iter()
        .find(|r| r.run == run)
        .map(|r| (now, r))
}

fn state_of(index: &dyn RunIndex, run: FlowRunId) -> Option<RunState> {
    facts_of(index, run).map(|(now, r)| r.state(now))
}

fn journal_failure(store: &dyn ContextStore, run: FlowRunId, node: NodeId, retry: bool) {
    let (prefix, _) = journal_range(run);
    let mut entry = json!({"status": "failed", "error": "boom", "attempt": 2, "series": 2});
    if retry {
        entry["retry_at"] = json!(i64::MAX / 2);
    }
    store
        .upsert_global(&format!("{prefix}{node}"), &entry)
        .expect("journal entry");
}

/// A run a live worker records is `running`, with its outputs counted;
/// once every node has its output and the worker ends, it is `done`, ended.
pub fn a_run_is_listed_with_its_state_and_counts<S: ContextStore>(store: Arc<S>) {
    let index = index(store.as_ref());
    let run = Recorder::new(3, Duration::from_secs(60));
    run.record(index, WorkerStatus::Running);
    let nodes = [NodeId::new(), NodeId::new(), NodeId::new()];
    store.put(run.run, nodes[0], &json!(1)).unwrap();
    let listed = block_on(list(index, &cx(), &RunFilter::default())).unwrap();
    let summary = listed
        .iter()
        .find(|r| r.run == run.run)
        .expect("the run is listed");
    assert_eq!(summary.state, RunState::Running);
    assert_eq!(summary.flow_name, "conformance");
    assert_eq!(
        (
            summary.nodes.total,
            summary.nodes.done,
            summary.nodes.pending
        ),
        (3, 1, 2)
    );
    assert_eq!((summary.workers, summary.live_workers), (1, 1));
    assert_eq!(summary.ended_at, None);
    for node in &nodes[1..] {
        store.put(run.run, *node, &json!(2)).unwrap();
    }
    run.record(index, WorkerStatus::Ended(WorkerOutcome::Done));
    let done = RunFilter {
        states: vec![RunState::Done],
        run: None,
    };
    let listed = block_on(list(index, &cx(), &done)).unwrap();
    let summary = listed.iter().find(|r| r.run == run.run).expect("done");
    assert_eq!(summary.nodes.done, 3);
    assert!(summary.ended_at.is_some());
    assert_eq!(summary.live_workers, 0);
    let running = RunFilter {
        states: vec![RunState::Running],
        run: None,
    };
    assert!(
        block_on(list(index, &cx(), &running))
            .unwrap()
            .iter()
            .all(|r| r.run != run.run)
    );
    // A second record of the same worker changes nothing of its end.
    run.record(index, WorkerStatus::Running);
    let (_, facts) = facts_of(index, run.run).unwrap();
    assert_eq!(facts.workers.len(), 1);
    assert_eq!(facts.workers[0].outcome, Some(WorkerOutcome::Done));
}

/// A worker that records itself and then dies (stops recording) leaves
/// its run `running` for its lease, then `stalled`; a live claim on one
/// of its nodes (a store shared by workers) keeps it running.
pub fn a_worker_that_stops_recording_leaves_its_run_stalled<S: ContextStore>(store: Arc<S>) {
    let index = index(store.as_ref());
    let run = Recorder::new(2, Duration::from_millis(300));
    run.record(index, WorkerStatus::Running);
    assert_eq!(state_of(index, run.run), Some(RunState::Running));
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(state_of(index, run.run), Some(RunState::Stalled));
    let Some(coordinator) = store.as_async().and_then(|s| s.coordinator()) else {
        return;
    };
    let claim = block_on(coordinator.claim(
        &cx(),
        run.run,
        NodeId::new(),
        &WorkerId::new("w2"),
        Duration::from_secs(60),
    ))
    .unwrap();
    assert!(matches!(claim, Claim::Won { .. }));
    let (now, facts) = facts_of(index, run.run).unwrap();
    assert_eq!(facts.state(now), RunState::Running);
    assert_eq!(facts.summary(now).nodes.running, 1);
}

/// A node whose last attempt failed with no retry due makes an ended run
/// `failed`; a scheduled retry counts as retrying; a cancellation mark
/// makes a run `cancelled`.
pub fn failed_and_cancelled_runs_are_told_apart<S: ContextStore>(store: Arc<S>) {
    let index = index(store.as_ref());
    let failed = Recorder::new(3, Duration::from_secs(60));
    failed.record(index, WorkerStatus::Running);
    let (done, broken, retrying) = (NodeId::new(), NodeId::new(), NodeId::new());
    store.put(failed.run, done, &json!(1)).unwrap();
    journal_failure(store.as_ref(), failed.run, broken, false);
    journal_failure(store.as_ref(), failed.run, retrying, true);
    // A failure journaled for a node that then stored its output is no failure.
    journal_failure(store.as_ref(), failed.run, done, false);
    failed.record(index, WorkerStatus::Ended(WorkerOutcome::Failed));
    let (now, facts) = facts_of(index, failed.run).unwrap();
    assert_eq!(facts.state(now), RunState::Failed);
    let counts = facts.summary(now).nodes;
    assert_eq!(
        (counts.done, counts.failed, counts.retrying, counts.pending),
        (1, 1, 1, 0)
    );
    assert_eq!(facts.failed_attempts, 6);

    let cancelled = Recorder::new(1, Duration::from_secs(60));
    cancelled.record(index, WorkerStatus::Running);
    store
        .upsert_global(
            &cancel_key(cancelled.run),
            &json!({"cancelled": true, "at": 1}),
        )
        .unwrap();
    assert_eq!(state_of(index, cancelled.run), Some(RunState::Cancelled));
    let by_state = RunFilter {
        states: vec![RunState::Cancelled, RunState::Failed],
        run: None,
    };
    let mut listed: Vec<_> = block_on(list(index, &cx(), &by_state))
        .unwrap()
        .into_iter()
        .map(|r| r.run)
        .collect();
    listed.sort();
    let mut expected = vec![failed.run, cancelled.run];
    expected.sort();
    assert_eq!(listed, expected);
}

/// A finished run: `outputs` outputs, a journal entry and a cancellation
/// mark's worth of globals, its worker ended.
fn finished_run<S: ContextStore>(store: &S, outputs: usize) -> (FlowRunId, Vec<NodeId>) {
    let run = Recorder::new(u32::try_from(outputs).unwrap() + 1, Duration::from_secs(60));
    run.record(index(store), WorkerStatus::Running);
    let nodes: Vec<NodeId> = (0..outputs).map(|_| NodeId::new()).collect();
    for node in &nodes {
        store.put(run.run, *node, &json!({"n": 1})).unwrap();
    }
    journal_failure(store, run.run, NodeId::new(), false);
    run.record(index(store), WorkerStatus::Ended(WorkerOutcome::Failed));
    (run.run, nodes)
}

/// `gc` removes every chosen run whole (outputs, journal, records), in
/// batches of at most its row budget, and leaves a running run, and the
/// globals and outputs of runs outside the index, untouched.
pub fn gc_removes_whole_runs_in_bounded_batches_and_never_a_live_one<S: ContextStore>(
    store: Arc<S>,
) {
    let index = index(store.as_ref());
    let old: Vec<_> = (0..12).map(|_| finished_run(store.as_ref(), 4)).collect();
    let live = Recorder::new(5, Duration::from_secs(60));
    live.record(index, WorkerStatus::Running);
    let live_node = NodeId::new();
    store.put(live.run, live_node, &json!("kept")).unwrap();
    let (outside, outside_node) = (FlowRunId::new(), NodeId::new());
    store
        .put(outside, outside_node, &json!("not indexed"))
        .unwrap();
    store.put_global("engine/meta", &json!(1)).unwrap();

    let options = GcOptions {
        older_than: Duration::ZERO,
        states: RunState::ALL
            .into_iter()
            .filter(|s| *s != RunState::Running)
            .collect(),
        batch_rows: Some(7),
        ..GcOptions::default()
    };
    let report = block_on(gc(index, &options)).unwrap();
    assert_eq!(report.removed_runs.len(), old.len());
    assert_eq!(report.removed.runs, old.len() as u64);
    assert_eq!(report.removed.outputs, 4 * old.len() as u64);
    assert_eq!(report.removed.journal, old.len() as u64);
    assert_eq!(report.removed.workers, old.len() as u64);
    // 60 outputs and journal entries, at most 7 of them a batch.
    assert!(report.batches * 7 >= 60, "{} batches", report.batches);
    for (run, nodes) in &old {
        assert!(store.list_keys(*run).unwrap().is_empty());
        for node in nodes {
            assert_eq!(store.get(*run, *node).unwrap(), None);
        }
        assert!(facts_of(index, *run).is_none());
    }
    assert_eq!(store.get(live.run, live_node).unwrap(), Some(json!("kept")));
    assert_eq!(state_of(index, live.run), Some(RunState::Running));
    assert_eq!(
        store.get(outside, outside_node).unwrap(),
        Some(json!("not indexed"))
    );
    assert_eq!(store.get_global("engine/meta").unwrap(), Some(json!(1)));
    // Asked to remove the live run by name, a batch leaves it whole.
    let batch = block_on(index.remove(&cx(), &[live.run], 100)).unwrap();
    assert_eq!(batch.live, vec![live.run]);
    assert_eq!(batch.removed.rows(), 0);
    assert_eq!(store.get(live.run, live_node).unwrap(), Some(json!("kept")));
}

/// A run whose removal stopped part way (its batch ran out of rows) is
/// left out of listings, and the next gc finishes it, whatever its filter;
/// asked for once more, it is reported missing.
pub fn a_run_half_removed_is_hidden_and_finished_by_the_next_gc<S: ContextStore>(store: Arc<S>) {
    let index = index(store.as_ref());
    let (run, nodes) = finished_run(store.as_ref(), 5);
    let batch = block_on(index.remove(&cx(), &[run], 3)).unwrap();
    assert_eq!(batch.removed.outputs, 3);
    assert!(batch.gone.is_empty());
    let listed = block_on(list(index, &cx(), &RunFilter::default())).unwrap();
    assert!(listed.iter().all(|r| r.run != run));
    let options = GcOptions {
        older_than: Duration::from_secs(86_400),
        ..GcOptions::default()
    };
    let report = block_on(gc(index, &options)).unwrap();
    assert_eq!(report.removed_runs, vec![run]);
    for node in &nodes {
        assert_eq!(store.get(run, *node).unwrap(), None);
    }
    assert!(facts_of(index, run).is_none());
    // Asked for again (a second gc that chose it too), it is missing, not removed.
    let again = block_on(index.remove(&cx(), &[run], 100)).unwrap();
    assert_eq!(again.missing, vec![run]);
    assert!(again.gone.is_empty());
    assert_eq!(again.removed.rows(), 0);
}

/// A dry run says what it would remove and removes nothing; runs younger
/// than `older_than` are kept; `running` is never a state gc removes.
pub fn gc_dry_run_removes_nothing_and_running_is_refused<S: ContextStore>(store: Arc<S>) {
    let index = index(store.as_ref());
    let (run, nodes) = finished_run(store.as_ref(), 2);
    let dry = GcOptions {
        older_than: Duration::ZERO,
        dry_run: true,
        ..GcOptions::default()
    };
    let report = block_on(gc(index, &dry)).unwrap();
    assert_eq!(report.chosen.len(), 1);
    assert_eq!(report.chosen[0].run, run);
    assert_eq!(report.removed.rows(), 0);
    assert_eq!(store.get(run, nodes[0]).unwrap(), Some(json!({"n": 1})));
    let young = GcOptions {
        older_than: Duration::from_secs(3600),
        ..GcOptions::default()
    };
    assert!(block_on(gc(index, &young)).unwrap().chosen.is_empty());
    let running = GcOptions {
        states: vec![RunState::Running],
        ..GcOptions::default()
    };
    assert!(block_on(gc(index, &running)).is_err());
    assert!(facts_of(index, run).is_some());
}
