//! The runs index and gc, through the command line, with real worker
//! processes: `contextstore runs` lists what the store holds with its
//! state; `contextstore gc` removes 10,000 finished runs while a flow runs
//! beside it and leaves the running run whole; a killed worker's run shows
//! `stalled` once its lease is out, and only `gc --state stalled` removes
//! it. On SQLite and PostgreSQL.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contextstore::{ContextStore, FlowRunId, PostgresContextStore, SqliteContextStore};
use contextstore_tests::{FlowProcess, cli, finished_runs, postgres_cluster};
use serde_json::Value;

fn sleepy_flow(dir: &Path, nodes: usize, sleep_ms: u64) -> PathBuf {
    contextstore_tests::sleepy_flow(dir, "beside", nodes, sleep_ms)
}

/// A `flow run` worker of `run`; killed if still running when dropped.
fn worker(flow: &Path, db: &str, run: FlowRunId, name: &str, lease: &str) -> FlowProcess {
    let run = run.to_string();
    FlowProcess::start(&[
        flow.to_str().unwrap(),
        "--db",
        db,
        "--run-id",
        &run,
        "--worker",
        name,
        "--jobs",
        "1",
        "--lease",
        lease,
    ])
}

/// `contextstore COMMAND --db DB ARGS…`, which must succeed; its stdout.
fn command(command: &str, db: &str, args: &[&str]) -> Vec<u8> {
    let mut all = vec![command, "--db", db];
    all.extend_from_slice(args);
    let out = cli(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `contextstore runs --json` (with `args`), parsed.
fn runs(db: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_slice::<Vec<Value>>(&command("runs", db, &all))
        .expect("runs --json is a JSON array")
}

fn state_of(db: &str, run: FlowRunId) -> Option<String> {
    runs(db, &[])
        .into_iter()
        .find(|r| r["flow_run_id"] == run.to_string())
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
    String::from_utf8(command("gc", db, args)).unwrap()
}

/// gc of `seeded` finished runs while a worker runs `flow` beside it: every
/// seeded run is gone whole, the running run is listed `running` before
/// and untouched after, and it finishes with every output.
fn gc_beside_a_running_flow(db: &str, store: &Arc<dyn ContextStore>, dir: &Path, seeded: usize) {
    let old = finished_runs::seed(store, seeded);
    // Long enough (15 s) to be running when gc chooses its runs, however
    // slow the machine: gc would remove it once done.
    let flow = sleepy_flow(dir, 6, 2_500);
    let run = FlowRunId::new();
    let mut worker = worker(&flow, db, run, "beside", "5");
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
    assert_eq!(
        worker.wait_exit(Duration::from_secs(120)),
        Some(0),
        "the flow beside gc finishes"
    );
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
    let worker = worker(&flow, db, run, "doomed", "1");
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
