//! The runs index and gc, through the command line, with real worker
//! processes: `contextstore runs` lists what the store holds with its
//! state; `contextstore gc` removes 10,000 finished runs while a flow runs
//! beside it and leaves the running run whole; a killed worker's run shows
//! `stalled` once its lease is out, and only `gc --state stalled` removes
//! it. On SQLite and PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contextstore::coord::WorkerId;
use contextstore::json::JsonText;
use contextstore::runs::{RunRecord, WorkerOutcome, WorkerStatus};
use contextstore::store::CallContext;
use contextstore::{ContextStore, FlowRunId, NodeId, PostgresContextStore, SqliteContextStore};
use contextstore_tests::{cli, cli_binary, components, postgres_cluster};
use serde_json::{Value, json};

/// `nodes` independent `slow` nodes that each sleep `sleep_ms`.
fn sleepy_flow(dir: &Path, nodes: usize, sleep_ms: u64) -> PathBuf {
    let slow = Value::from(components::SLOW);
    let mut text = String::from("name = \"beside\"\n");
    for i in 0..nodes {
        text += &format!(
            "[nodes.s{i}]\ncomponent = {slow}\nparams = {{ sleep_ms = {sleep_ms}, nonce = false }}\n"
        );
    }
    let path = dir.join("beside.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A `flow run` worker process; killed if still running when dropped.
struct Worker(Child);

impl Worker {
    fn start(flow: &Path, db: &str, run: FlowRunId, name: &str, lease: &str) -> Self {
        let child = Command::new(cli_binary())
            .args(["flow", "run", flow.to_str().unwrap(), "--db", db])
            .args(["--run-id", &run.to_string(), "--worker", name])
            .args(["--jobs", "1", "--lease", lease])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("flow run starts");
        Self(child)
    }

    /// Waits (two minutes at most) for the worker to exit; its exit code.
    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "the worker did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `count` finished runs of two outputs and a journal entry each, written
/// from 16 threads through the store's own index (as a worker records
/// itself); their ids.
fn seed(store: &Arc<dyn ContextStore>, count: usize) -> Vec<FlowRunId> {
    let graph = JsonText::from_stored(r#"{"nodes":[]}"#.into());
    let runs: Vec<FlowRunId> = (0..count).map(|_| FlowRunId::new()).collect();
    std::thread::scope(|scope| {
        for chunk in runs.chunks(count.div_ceil(16)) {
            let (store, graph) = (store.clone(), &graph);
            scope.spawn(move || {
                let executor = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let index = store.as_async().and_then(|s| s.runs()).unwrap();
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
                        .unwrap();
                    for _ in 0..2 {
                        store
                            .put(*run, NodeId::new(), &json!({"old": true}))
                            .unwrap();
                    }
                    store
                        .upsert_global(
                            &format!("contextstore.flow/{run}/{}", NodeId::new()),
                            &json!({"status": "failed", "error": "x", "attempt": 1}),
                        )
                        .unwrap();
                    let done = WorkerStatus::Ended(WorkerOutcome::Done);
                    executor.block_on(index.record(&cx, &record, done)).unwrap();
                }
            });
        }
    });
    runs
}

/// `contextstore runs --json` (with `args`), parsed.
fn runs(db: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["runs", "--db", db, "--json"];
    all.extend_from_slice(args);
    let out = cli(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("runs --json is a JSON array")
}

fn state_of(db: &str, run: FlowRunId) -> Option<String> {
    runs(db, &[])
        .into_iter()
        .find(|r| r["run"] == run.to_string())
        .and_then(|r| r["state"].as_str().map(str::to_owned))
}

/// Waits (a minute at most) until `run` shows `state`.
fn wait_for_state(db: &str, run: FlowRunId, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while state_of(db, run).as_deref() != Some(state) {
        assert!(
            Instant::now() < deadline,
            "run {run} never showed {state} (it shows {:?})",
            state_of(db, run)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `contextstore gc` with `args`; its stdout.
fn gc(db: &str, args: &[&str]) -> String {
    let mut all = vec!["gc", "--db", db];
    all.extend_from_slice(args);
    let out = cli(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// gc of `seeded` finished runs while a worker runs `flow` beside it: every
/// seeded run is gone whole, the running run is listed `running` before
/// and untouched after, and it finishes with every output.
fn gc_beside_a_running_flow(db: &str, store: &Arc<dyn ContextStore>, dir: &Path, seeded: usize) {
    let old = seed(store, seeded);
    let flow = sleepy_flow(dir, 6, 400);
    let run = FlowRunId::new();
    let mut worker = Worker::start(&flow, db, run, "beside", "5");
    wait_for_state(db, run, "running");
    let listed = runs(db, &["--state", "done"]);
    assert_eq!(listed.len(), seeded, "the seeded runs are listed done");
    let dry = gc(db, &["--older-than", "0s", "--dry-run"]);
    assert!(
        dry.contains(&format!("{seeded} runs would be removed")),
        "{dry}"
    );
    assert_eq!(runs(db, &["--state", "done"]).len(), seeded);

    let removed = gc(db, &["--older-than", "0s"]);
    assert!(
        removed.contains(&format!("removed {seeded} runs: {} outputs", 2 * seeded)),
        "{removed}"
    );
    assert!(
        !removed.contains(&run.to_string()),
        "gc named the running run"
    );
    for old in old.iter().step_by(97) {
        assert!(store.list_keys(*old).unwrap().is_empty());
    }
    assert_eq!(worker.wait(), Some(0), "the flow beside gc finishes");
    assert_eq!(store.list_keys(run).unwrap().len(), 6);
    let left = runs(db, &[]);
    assert_eq!(left.len(), 1, "only the flow's own run is left: {left:?}");
    assert_eq!(left[0]["state"], "done");
    assert_eq!(left[0]["nodes"]["done"], 6);
    // Younger than asked: kept.
    let kept = gc(db, &["--older-than", "30d"]);
    assert!(kept.contains("removed 0 runs"), "{kept}");
    assert_eq!(store.list_keys(run).unwrap().len(), 6);
}

/// A worker killed mid-run leaves its run `running` until its lease runs
/// out, then `stalled`; gc by default leaves it, `--state stalled` removes it.
fn a_killed_workers_run_stalls(db: &str, store: &Arc<dyn ContextStore>, dir: &Path) {
    let flow = sleepy_flow(dir, 3, 20_000);
    let run = FlowRunId::new();
    let worker = Worker::start(&flow, db, run, "doomed", "1");
    wait_for_state(db, run, "running");
    drop(worker); // SIGKILL
    wait_for_state(db, run, "stalled");
    let stalled = runs(db, &["--state", "stalled"]);
    assert_eq!(stalled.len(), 1);
    assert_eq!(stalled[0]["live_workers"], 0);
    assert_eq!(stalled[0]["ended_at"], Value::Null);
    let default = gc(db, &["--older-than", "0s"]);
    assert!(default.contains("removed 0 runs"), "{default}");
    assert_eq!(state_of(db, run).as_deref(), Some("stalled"));
    let removed = gc(db, &["--older-than", "0s", "--state", "stalled"]);
    assert!(removed.contains("removed 1 runs"), "{removed}");
    assert_eq!(state_of(db, run), None);
    assert!(store.list_keys(run).unwrap().is_empty());
}

#[test]
fn sqlite_gc_removes_ten_thousand_runs_beside_a_running_flow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("context.db");
    let store: Arc<dyn ContextStore> = Arc::new(SqliteContextStore::open(&path).unwrap());
    gc_beside_a_running_flow(path.to_str().unwrap(), &store, dir.path(), 10_000);
}

#[test]
fn sqlite_a_killed_workers_run_stalls_and_only_gc_state_stalled_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("context.db");
    let store: Arc<dyn ContextStore> = Arc::new(SqliteContextStore::open(&path).unwrap());
    a_killed_workers_run_stalls(path.to_str().unwrap(), &store, dir.path());
}

#[test]
fn postgres_gc_removes_ten_thousand_runs_beside_a_running_flow() {
    let dir = tempfile::tempdir().unwrap();
    let db = postgres_cluster::fresh_database();
    let store: Arc<dyn ContextStore> = Arc::new(PostgresContextStore::connect(&db).unwrap());
    gc_beside_a_running_flow(&db, &store, dir.path(), 10_000);
}

#[test]
fn postgres_a_killed_workers_run_stalls_and_only_gc_state_stalled_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = postgres_cluster::fresh_database();
    let store: Arc<dyn ContextStore> = Arc::new(PostgresContextStore::connect(&db).unwrap());
    a_killed_workers_run_stalls(&db, &store, dir.path());
}

#[test]
fn runs_refuses_an_unknown_state_and_gc_a_bad_duration_or_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("context.db");
    drop(SqliteContextStore::open(&path).unwrap());
    let db = path.to_str().unwrap();
    let out = cli(&["runs", "--db", db, "--state", "finished"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown run state"));
    let out = cli(&["gc", "--db", db, "--older-than", "30 parsecs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
    let out = cli(&["gc", "--db", db, "--older-than", "0s", "--state", "running"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never removes a running run"));
}
