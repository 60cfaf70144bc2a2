//! Cancelling a run: `contextstore flow cancel` stops the sleeping steps of
//! every worker of the run within a second, each worker exits with code 3,
//! nothing the stopped steps would have written is stored, `flow status`
//! shows the run cancelled, and running it again needs
//! `--resume-cancelled`. On SQLite (one worker) and PostgreSQL (two).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use contextstore::{ContextStore, FlowRunId, PostgresContextStore, SqliteContextStore};
use contextstore_tests::{FlowProcess, cli, postgres_cluster};
use serde_json::Value;

fn sleepy_flow(dir: &Path, nodes: usize, sleep_ms: u64) -> PathBuf {
    contextstore_tests::sleepy_flow(dir, "sleepy", nodes, sleep_ms)
}

/// A `flow run` worker of `run` with its events.
struct Worker(FlowProcess);

impl Worker {
    fn start(flow: &Path, db: &str, run: FlowRunId, name: &str, jobs: usize) -> Self {
        let (run, jobs) = (run.to_string(), jobs.to_string());
        Self(FlowProcess::start(&[
            flow.to_str().unwrap(),
            "--db",
            db,
            "--run-id",
            &run,
            "--worker",
            name,
            "--events",
            "--jobs",
            &jobs,
            "--lease",
            "5",
        ]))
    }

    fn wait_started(&self, count: usize) {
        self.0.wait_started(count);
    }

    /// Waits (ten seconds at most) for the process to exit; its exit code.
    fn exit_code(&mut self) -> Option<i32> {
        self.0.wait_exit(Duration::from_secs(10))
    }
}

/// Cancels `run` in `db` and returns when the command returned.
fn cancel(db: &str, run: FlowRunId) -> Instant {
    let out = cli(&["flow", "cancel", "--db", db, "--run-id", &run.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Instant::now()
}

/// Checks that the workers, which have exited, did so within a second of
/// the cancel, and that `run` has no output; how long it took.
fn stopped_soon_with_nothing_stored(
    cancelled: Instant,
    store: &dyn ContextStore,
    run: FlowRunId,
) -> Duration {
    let took = cancelled.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "stopped {took:?} after the cancel"
    );
    assert!(
        store.list_keys(run).unwrap().is_empty(),
        "nothing stored after the cancel"
    );
    took
}

#[test]
fn a_cancel_stops_a_sqlite_run_and_it_resumes_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let flow = sleepy_flow(dir.path(), 2, 3_000);
    let db_path = dir.path().join("context.db");
    let db = db_path.to_str().unwrap();
    let run = FlowRunId::new();
    let mut worker = Worker::start(&flow, db, run, "w1", 2);
    worker.wait_started(2);
    let cancelled = cancel(db, run);
    assert_eq!(worker.exit_code(), Some(3), "a cancelled run exits 3");
    let store = SqliteContextStore::open(&db_path).unwrap();
    let took = stopped_soon_with_nothing_stored(cancelled, &store, run);
    drop(store);

    let status = cli(&[
        "flow",
        "status",
        flow.to_str().unwrap(),
        "--db",
        db,
        "--run-id",
        &run.to_string(),
        "--json",
    ]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["cancelled"], true, "{status}");

    let again = cli(&[
        "flow",
        "run",
        flow.to_str().unwrap(),
        "--db",
        db,
        "--run-id",
        &run.to_string(),
    ]);
    assert_eq!(
        again.status.code(),
        Some(3),
        "a cancelled run is not run again"
    );
    let text = String::from_utf8_lossy(&again.stderr);
    assert!(text.contains("--resume-cancelled"), "{text}");

    let resumed = cli(&[
        "flow",
        "run",
        flow.to_str().unwrap(),
        "--db",
        db,
        "--run-id",
        &run.to_string(),
        "--resume-cancelled",
    ]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let outputs: Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(outputs.as_object().map(|o| o.len()), Some(2), "{outputs}");
    eprintln!(
        "cancel sqlite: the worker exited 3 {took:.1?} after the cancel; resumed with --resume-cancelled"
    );
}

#[test]
fn a_cancel_stops_both_workers_of_a_postgres_run() {
    let dir = tempfile::tempdir().unwrap();
    let flow = sleepy_flow(dir.path(), 4, 3_000);
    let db = postgres_cluster::fresh_database();
    let run = FlowRunId::new();
    let mut first = Worker::start(&flow, &db, run, "w1", 1);
    let mut second = Worker::start(&flow, &db, run, "w2", 1);
    first.wait_started(1);
    second.wait_started(1);
    let cancelled = cancel(&db, run);
    let codes = [first.exit_code(), second.exit_code()];
    assert_eq!(codes, [Some(3), Some(3)], "both workers exit 3");
    let store = PostgresContextStore::connect(&db).unwrap();
    let took = stopped_soon_with_nothing_stored(cancelled, &store, run);
    eprintln!(
        "cancel postgres: both workers exited 3 within {took:.1?} of the cancel, 0 outputs stored"
    );
}
