//! Retry policies: a flaky step (the `slow` step counting its invocations in
//! a global, failing the first N) is tried again after its backoff, on
//! SQLite and PostgreSQL; a node out of attempts fails and blocks its
//! dependents; a worker killed while waiting to retry leaves the schedule
//! in the journal, and the next one keeps to it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contextstore::flow::{self, FlowEvent, LeaseOptions, NodeResult, RunOptions};
use contextstore::{ContextStore, FlowRunId, PostgresContextStore};
use contextstore_tests::{cli_binary, components, postgres_cluster, runtime, temp_store};
use serde_json::Value;

/// A flow: `flaky` fails its first `fail_first` invocations, then stores
/// its output; `after` reads it. Retries: `attempts`, `backoff_s` (doubling,
/// no jitter).
fn flaky_flow(dir: &Path, fail_first: u32, attempts: u32, backoff_s: f64) -> PathBuf {
    let slow = Value::from(components::SLOW);
    let text = format!(
        "name = \"flaky\"\n\
         [grant]\nglobal_read = [\"flaky/\"]\nglobal_write = [\"flaky/\"]\n\
         [retry]\nattempts = {attempts}\nbackoff = {backoff_s}\nmultiplier = 2\njitter = false\n\
         [nodes.flaky]\ncomponent = {slow}\n\
         params = {{ counter = \"flaky/count\", fail_first = {fail_first}, nonce = false }}\n\
         [nodes.after]\ncomponent = {slow}\nupstream = [\"flaky\"]\n\
         params = {{ read_first = true, nonce = false }}\n"
    );
    let path = dir.join("flaky.toml");
    std::fs::write(&path, text).expect("flow written");
    path
}

/// Runs `flow` on `store`, recording when each event came.
fn run_timed(
    store: &Arc<dyn ContextStore>,
    flow: &flow::Flow,
    run: FlowRunId,
) -> (flow::FlowReport, Vec<(Instant, String, u32, Duration)>) {
    let events = Mutex::new(Vec::new());
    let on_event = |e: &FlowEvent<'_>| {
        let now = Instant::now();
        let mut events = events.lock().unwrap();
        match e {
            FlowEvent::Retrying {
                node,
                attempt,
                after,
                ..
            } => events.push((now, format!("retry {}", node.name), *attempt, *after)),
            FlowEvent::Finished { node, .. } => {
                events.push((now, format!("done {}", node.name), 0, Duration::ZERO));
            }
            FlowEvent::Failed { node, .. } => {
                events.push((now, format!("failed {}", node.name), 0, Duration::ZERO));
            }
            _ => {}
        }
    };
    let options = RunOptions {
        jobs: 2,
        on_event: &on_event,
        lease: LeaseOptions {
            worker: "retries".into(),
            lease: Duration::from_secs(5),
        },
    };
    let report = flow::run(runtime(), store, flow, run, &options).expect("flow runs");
    (report, events.into_inner().unwrap())
}

/// The flaky node succeeds on its third attempt, each retry after its
/// backoff (0.3 s, then 0.6 s), and its dependent runs.
fn succeeds_on_the_third_attempt(store: Arc<dyn ContextStore>, dir: &Path, backend: &str) {
    let flow = flow::load(&flaky_flow(dir, 2, 3, 0.3)).unwrap();
    let run = FlowRunId::new();
    let started = Instant::now();
    let (report, events) = run_timed(&store, &flow, run);
    assert!(report.is_success(), "{backend}: {report:?}");
    let kinds: Vec<(&str, u32)> = events.iter().map(|(_, k, a, _)| (k.as_str(), *a)).collect();
    assert_eq!(
        kinds,
        [
            ("retry flaky", 1),
            ("retry flaky", 2),
            ("done flaky", 0),
            ("done after", 0)
        ],
        "{backend}"
    );
    let waits: Vec<Duration> = events.iter().take(2).map(|(_, _, _, w)| *w).collect();
    assert_eq!(
        waits,
        [Duration::from_millis(300), Duration::from_millis(600)]
    );
    // Measured: each next attempt came no sooner than its backoff.
    let second = events[1].0 - events[0].0;
    let third = events[2].0 - events[1].0;
    assert!(
        second >= Duration::from_millis(300),
        "{backend}: {second:?}"
    );
    assert!(third >= Duration::from_millis(600), "{backend}: {third:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "{backend}");
    let node = flow::node_id("flaky", "flaky");
    assert_eq!(store.provenance(run, node).unwrap().unwrap().attempt, 3);
    let status = flow::status(store.as_ref(), &flow, run).unwrap();
    assert_eq!(status[0].attempts, 3, "{backend}");
    assert_eq!(
        status[0].failures.len(),
        2,
        "{backend}: {:?}",
        status[0].failures
    );
    assert_eq!(status[0].retry_at, None);
    eprintln!(
        "retries {backend}: succeeded on attempt 3; waits {:?} and {:?} (backoff 300 and 600 ms)",
        second, third
    );
}

#[test]
fn a_flaky_step_succeeds_on_its_third_attempt_on_sqlite() {
    let (dir, store) = temp_store();
    succeeds_on_the_third_attempt(store, dir.path(), "sqlite");
}

#[test]
fn a_flaky_step_succeeds_on_its_third_attempt_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ContextStore> = Arc::new(
        PostgresContextStore::connect(&postgres_cluster::fresh_database()).expect("connects"),
    );
    succeeds_on_the_third_attempt(store, dir.path(), "postgres");
}

#[test]
fn a_node_out_of_attempts_fails_and_blocks_its_dependents() {
    let (dir, store) = temp_store();
    let flow = flow::load(&flaky_flow(dir.path(), 5, 2, 0.05)).unwrap();
    let run = FlowRunId::new();
    let (report, events) = run_timed(&store, &flow, run);
    let kinds: Vec<&str> = events.iter().map(|(_, k, _, _)| k.as_str()).collect();
    assert_eq!(kinds, ["retry flaky", "failed flaky"]);
    assert!(
        matches!(report.results[0].1, NodeResult::Failed(_)),
        "{report:?}"
    );
    assert!(matches!(&report.results[1].1, NodeResult::Blocked { by } if by == "flaky"));
    let status = flow::status(store.as_ref(), &flow, run).unwrap();
    assert_eq!(status[0].attempts, 2);
    assert_eq!(status[0].retry_at, None, "no retry left");
}

#[test]
fn a_guests_invalid_params_are_never_retried() {
    let (dir, store) = temp_store();
    let slow = Value::from(components::SLOW);
    let text = format!(
        "name = \"bad\"\n[retry]\nattempts = 5\nbackoff = 0.01\n\
         [nodes.bad]\ncomponent = {slow}\nparams = {{ no_such_param = 1 }}\n"
    );
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let flow = flow::load(&path).unwrap();
    let (report, events) = run_timed(&store, &flow, FlowRunId::new());
    let kinds: Vec<&str> = events.iter().map(|(_, k, _, _)| k.as_str()).collect();
    assert_eq!(kinds, ["failed bad"], "{report:?}");
}

/// A worker killed while waiting out a backoff: the journal holds when the
/// next attempt is due, and the worker started after it (on PostgreSQL
/// another worker, once the dead one's lease expired) waits until then and
/// continues the same series (here of 2 attempts: it makes the last one,
/// which fails, instead of starting a new series that would succeed).
fn killed_mid_backoff(dir: &Path, db: &str, backend: &str) {
    let flow = flaky_flow(dir, 2, 2, 3.0);
    let run = FlowRunId::new().to_string();
    let start = |worker: &str, events: bool| {
        let mut cmd = Command::new(cli_binary());
        cmd.args(["flow", "run", flow.to_str().unwrap(), "--db", db])
            .args([
                "--run-id",
                &run,
                "--no-cache",
                "--worker",
                worker,
                "--lease",
                "2",
            ]);
        if events {
            cmd.arg("--events");
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts")
    };
    let mut first = start("w1", true);
    let stderr = first.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    let retrying_at = loop {
        assert!(Instant::now() < deadline, "{backend}: no retrying event");
        let Some(Ok(line)) = lines.next() else {
            panic!("{backend}: the first worker ended without retrying")
        };
        if let Ok(event) = serde_json::from_str::<Value>(&line)
            && event["event"] == "retrying"
        {
            assert_eq!(event["attempt"], 1);
            assert_eq!(event["after_ms"], 3000.0);
            break Instant::now();
        }
    };
    first.kill().unwrap();
    first.wait().unwrap();
    let restarted = Instant::now();
    let second = start("w2", false)
        .wait_with_output()
        .expect("second worker");
    let took = restarted.elapsed();
    // The series of 2 went on: attempt 2 failed, and no third was made.
    assert_eq!(
        second.status.code(),
        Some(2),
        "{backend}: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    let due_left = Duration::from_millis(3000).saturating_sub(restarted - retrying_at);
    assert!(
        took + Duration::from_millis(100) >= due_left,
        "{backend}: the next worker ran before the retry was due: took {took:?}, {due_left:?} were left"
    );
    assert!(took < Duration::from_secs(30), "{backend}: {took:?}");
    let status = Command::new(cli_binary())
        .args(["flow", "status", flow.to_str().unwrap(), "--db", db])
        .args(["--run-id", &run, "--json"])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["nodes"][0]["attempts"], 2, "{backend}: {status}");
    assert_eq!(
        status["nodes"][0]["status"], "failed",
        "{backend}: {status}"
    );
    eprintln!(
        "retries {backend} killed mid-backoff: the next worker started {:.1?} after the failure, \
         took {took:.1?} (the 3 s backoff, 2 s leases), made attempt 2 of 2",
        restarted - retrying_at
    );
}

#[test]
fn a_worker_killed_mid_backoff_leaves_the_schedule_to_the_next() {
    let (dir, _store) = temp_store();
    let db = dir.path().join("context.db");
    killed_mid_backoff(dir.path(), db.to_str().unwrap(), "sqlite");
}

#[test]
fn a_worker_killed_mid_backoff_on_postgres_leaves_the_schedule_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    killed_mid_backoff(dir.path(), &postgres_cluster::fresh_database(), "postgres");
}
