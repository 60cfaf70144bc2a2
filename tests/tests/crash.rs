//! Crash safety, measured: the real `contextstore flow run` process is
//! killed with SIGKILL at random moments and resumed, again and again, and
//! at the end nothing is lost, nothing is written twice, and nothing that
//! was acknowledged has changed.
//!
//! Settings (environment): `CRASH_KILLS` (default 200), `CRASH_SEED`
//! (default 1). A longer run by hand:
//!
//! ```sh
//! CRASH_KILLS=1000 CRASH_SEED=7 cargo test --release -p contextstore-tests --test crash -- --nocapture
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use contextstore::{ContextStore, FlowRunId, SqliteContextStore, flow};
use contextstore_tests::{Rng, cli_binary, env_or};
use serde_json::Value;

const WIDTH: usize = 6;
const LAYERS: usize = 8;

fn write_layered_flow(dir: &Path) -> PathBuf {
    contextstore_tests::write_layered_flow(dir, WIDTH, LAYERS)
}

fn flow_run(flow: &Path, db: &Path, run: FlowRunId) -> Child {
    Command::new(cli_binary())
        .args([
            "flow",
            "run",
            flow.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--jobs",
            "2",
            "--events",
        ])
        .args(["--run-id", &run.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flow run starts")
}

/// The nodes an attempt reported done, with their outputs (only whole lines:
/// a killed process may leave half a line).
fn acknowledged(stderr: &str) -> Vec<(String, Value)> {
    stderr
        .split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["event"] == "done")
        .map(|event| {
            (
                event["node"].as_str().unwrap_or_default().to_owned(),
                event["output"].clone(),
            )
        })
        .collect()
}

/// The outputs of an uninterrupted run, by node name.
fn reference_outputs(flow_file: &Path, dir: &Path) -> (BTreeMap<String, Value>, Duration) {
    let db = dir.join("reference.db");
    let started = Instant::now();
    let out = flow_run(flow_file, &db, FlowRunId::new())
        .wait_with_output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outputs: BTreeMap<String, Value> = acknowledged(&String::from_utf8_lossy(&out.stderr))
        .into_iter()
        .collect();
    (outputs, elapsed)
}

fn integrity_check(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(result, "ok");
}

/// Checks one finished run: every node has exactly one output, equal to the
/// reference, and equal to what every attempt acknowledged.
fn check_run(
    store: &SqliteContextStore,
    flow: &flow::Flow,
    run: FlowRunId,
    reference: &BTreeMap<String, Value>,
    acked: &BTreeMap<String, Value>,
) -> usize {
    let keys: BTreeSet<_> = store.list_keys(run).unwrap().into_iter().collect();
    let expected: BTreeSet<_> = flow.nodes.iter().map(|n| n.node_id).collect();
    assert_eq!(
        keys, expected,
        "run {run}: every node has exactly one output"
    );
    for node in &flow.nodes {
        let stored = store.get(run, node.node_id).unwrap().expect("output");
        assert_eq!(
            &stored, &reference[&node.name],
            "run {run}: node {} differs from an uninterrupted run",
            node.name
        );
        if let Some(ack) = acked.get(&node.name) {
            assert_eq!(
                &stored, ack,
                "run {run}: node {} changed after it was acknowledged",
                node.name
            );
        }
    }
    flow.nodes.len()
}

#[test]
fn sigkill_at_random_moments_loses_nothing() {
    let kills_wanted = env_or("CRASH_KILLS", 200);
    let mut rng = Rng(env_or("CRASH_SEED", 1));
    let dir = tempfile::tempdir().unwrap();
    let flow_file = write_layered_flow(dir.path());
    let flow = flow::load(&flow_file).unwrap();
    let (reference, full_time) = reference_outputs(&flow_file, dir.path());
    assert_eq!(reference.len(), flow.nodes.len());

    let db = dir.path().join("crash.db");
    // Most kills land while the flow runs; some during start-up or after the end.
    let window_ms = (full_time.as_millis() as u64 * 9 / 10).max(20);
    let (mut kills, mut attempts, mut resumes, mut runs, mut checked) =
        (0u64, 0u64, 0u64, 0u64, 0usize);
    // Kills that left the run part done: some nodes acknowledged, not all.
    let mut mid_flow = 0u64;
    let mut run = FlowRunId::new();
    let mut acked: BTreeMap<String, Value> = BTreeMap::new();
    let mut attempts_this_run = 0;
    while kills < kills_wanted {
        attempts += 1;
        if attempts_this_run > 0 {
            resumes += 1;
        }
        attempts_this_run += 1;
        let mut child = flow_run(&flow_file, &db, run);
        let mut stderr_pipe = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        std::thread::sleep(Duration::from_millis(rng.below(window_ms)));
        let killed = child.try_wait().unwrap().is_none() && child.kill().is_ok();
        let status = child.wait().unwrap();
        let stderr = reader.join().unwrap();
        for (node, output) in acknowledged(&stderr) {
            match acked.get(&node) {
                Some(before) => assert_eq!(before, &output, "node {node} changed between attempts"),
                None => {
                    acked.insert(node, output);
                }
            }
        }
        if killed {
            kills += 1;
            if (1..flow.nodes.len()).contains(&acked.len()) {
                mid_flow += 1;
            }
        } else {
            assert!(
                status.success(),
                "an attempt that was not killed failed: {stderr}"
            );
            let store = SqliteContextStore::open(&db).unwrap();
            checked += check_run(&store, &flow, run, &reference, &acked);
            runs += 1;
            run = FlowRunId::new();
            acked.clear();
            attempts_this_run = 0;
        }
    }
    // Finish the last run without killing it.
    let out = flow_run(&flow_file, &db, run).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (node, output) in acknowledged(&String::from_utf8_lossy(&out.stderr)) {
        if let Some(before) = acked.get(&node) {
            assert_eq!(
                before, &output,
                "node {node} changed after it was acknowledged"
            );
        }
        acked.entry(node).or_insert(output);
    }
    integrity_check(&db);
    let store = SqliteContextStore::open(&db).unwrap();
    checked += check_run(&store, &flow, run, &reference, &acked);
    runs += 1;
    eprintln!(
        "crash test: {kills} kills ({mid_flow} mid-flow) in {attempts} attempts, {resumes} resumes, \
         {runs} runs of {} nodes, {checked} outputs checked, lost = 0, changed = 0",
        flow.nodes.len()
    );
}

#[test]
fn concurrent_processes_on_one_database_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let flow_file = write_layered_flow(dir.path());
    let flow = flow::load(&flow_file).unwrap();
    let (reference, _) = reference_outputs(&flow_file, dir.path());
    let db = dir.path().join("shared.db");
    let (run_a, run_b, run_c) = (FlowRunId::new(), FlowRunId::new(), FlowRunId::new());
    // Two processes on run A, one each on B and C, all at once.
    let children: Vec<(FlowRunId, Child)> = [run_a, run_a, run_b, run_c]
        .into_iter()
        .map(|run| (run, flow_run(&flow_file, &db, run)))
        .collect();
    let mut acked: BTreeMap<FlowRunId, BTreeMap<String, Value>> = BTreeMap::new();
    for (run, child) in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "run {run}: {stderr}");
        assert!(
            !stderr.to_lowercase().contains("busy") && !stderr.contains("locked"),
            "{stderr}"
        );
        for (node, output) in acknowledged(&stderr) {
            let seen = acked.entry(run).or_default();
            if let Some(before) = seen.get(&node) {
                assert_eq!(
                    before, &output,
                    "two processes saw different outputs for {node}"
                );
            }
            seen.insert(node, output);
        }
    }
    integrity_check(&db);
    let store = SqliteContextStore::open(&db).unwrap();
    for run in [run_a, run_b, run_c] {
        check_run(&store, &flow, run, &reference, &acked[&run]);
    }
}
