//! Workers on many hosts, one run: several `contextstore flow run`
//! processes share each run over PostgreSQL, and random workers are killed
//! with SIGKILL and replaced, again and again. At the end of every run each
//! node has exactly one output, equal to an uninterrupted run's and to what
//! any worker acknowledged; every claim is finished by the worker that last
//! claimed it; and a node was claimed more than once only when the worker
//! that held it before had been killed (its lease expired).
//!
//! Settings (environment): `WORKER_KILLS` (default 50), `WORKER_SEED`
//! (default 1). A longer run by hand:
//!
//! ```sh
//! WORKER_KILLS=300 WORKER_SEED=7 cargo test --release -p contextstore-tests --test postgres_workers -- --nocapture
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use contextstore::coord::{CallContext, Coordinator};
use contextstore::{ContextStore, FlowRunId, PostgresContextStore, flow};
use contextstore_tests::{Rng, cli_binary, env_or, postgres_cluster, write_layered_flow};
use serde_json::Value;

const WORKERS: usize = 4;
const WIDTH: usize = 20;
const LAYERS: usize = 10;
/// Short leases, so that a killed worker's nodes are taken over quickly.
const LEASE_SECS: &str = "2";

/// One worker process and the reader of its event lines.
struct Worker {
    name: String,
    child: Child,
    stderr: JoinHandle<String>,
}

fn start_worker(flow: &Path, db: &str, run: FlowRunId, name: &str, cache: &Path) -> Worker {
    let mut child = Command::new(cli_binary())
        .args(["flow", "run", flow.to_str().unwrap(), "--db", db])
        .args(["--run-id", &run.to_string(), "--worker", name])
        .args(["--lease", LEASE_SECS, "--jobs", "2", "--events"])
        .arg("--cache-dir")
        .arg(cache)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flow run starts");
    let mut pipe = child.stderr.take().expect("stderr piped");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    Worker {
        name: name.to_owned(),
        child,
        stderr,
    }
}

/// The whole event lines of a worker (a killed one may leave half a line).
fn events(stderr: &str) -> Vec<Value> {
    stderr
        .split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .collect()
}

/// What all the workers of one run said.
#[derive(Default)]
struct RunLog {
    /// Outputs acknowledged ("done" events), by node name.
    acked: BTreeMap<String, Value>,
    /// Every claim seen, by node name: (worker, attempt), in worker order.
    claims: BTreeMap<String, Vec<(String, u64)>>,
    /// Workers killed in this run.
    killed: BTreeSet<String>,
}

impl RunLog {
    fn record(&mut self, worker: &str, stderr: &str) {
        for event in events(stderr) {
            let node = event["node"].as_str().unwrap_or_default().to_owned();
            match event["event"].as_str() {
                Some("done") => {
                    let output = event["output"].clone();
                    if let Some(before) = self.acked.get(&node) {
                        assert_eq!(
                            before, &output,
                            "node {node} acknowledged twice, differently"
                        );
                    }
                    self.acked.insert(node, output);
                }
                Some("claimed") => {
                    assert_eq!(event["worker"], worker, "{event}");
                    let attempt = event["attempt"].as_u64().expect("attempt");
                    self.claims
                        .entry(node)
                        .or_default()
                        .push((worker.to_owned(), attempt));
                }
                _ => {}
            }
        }
    }
}

/// Runs the flow once with one worker and no kills: the reference outputs.
fn reference(flow_file: &Path, cache: &Path) -> (BTreeMap<String, Value>, Duration) {
    let db = postgres_cluster::fresh_database();
    let run = FlowRunId::new();
    let started = Instant::now();
    let worker = start_worker(flow_file, &db, run, "reference", cache);
    let status = { worker.child }.wait().unwrap();
    let stderr = worker.stderr.join().unwrap();
    let elapsed = started.elapsed();
    assert!(status.success(), "{stderr}");
    let mut log = RunLog::default();
    log.record("reference", &stderr);
    (log.acked, elapsed)
}

/// Checks a finished run; returns how many nodes were claimed more than once.
fn check_run(
    store: &PostgresContextStore,
    flow: &flow::Flow,
    run: FlowRunId,
    reference: &BTreeMap<String, Value>,
    log: &RunLog,
) -> usize {
    let keys: BTreeSet<_> = store.list_keys(run).unwrap().into_iter().collect();
    let expected: BTreeSet<_> = flow.nodes.iter().map(|n| n.node_id).collect();
    assert_eq!(
        keys, expected,
        "run {run}: every node has exactly one output"
    );
    let executor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let records: BTreeMap<_, _> = executor
        .block_on(store.claims(&CallContext::none(), run))
        .unwrap()
        .into_iter()
        .map(|r| (r.node_id, r))
        .collect();
    let mut reclaimed = 0;
    for node in &flow.nodes {
        let stored = store.get(run, node.node_id).unwrap().expect("output");
        assert_eq!(
            &stored, &reference[&node.name],
            "run {run}: node {} differs from an uninterrupted run",
            node.name
        );
        if let Some(ack) = log.acked.get(&node.name) {
            assert_eq!(
                &stored, ack,
                "run {run}: node {} changed after it was acknowledged",
                node.name
            );
        }
        let record = &records[&node.node_id];
        // A claim is finished by its holder after the output is stored;
        // only a worker killed between the two leaves it unfinished.
        assert!(
            record.finished || log.killed.contains(&record.worker),
            "run {run}: node {}: claim of live worker {} not finished",
            node.name,
            record.worker
        );
        let seen = log.claims.get(&node.name).map_or(&[][..], Vec::as_slice);
        // The last claim seen is the one that finished the node, and no
        // claim is missing from the count but a killed worker's.
        if let Some((last_worker, last_attempt)) = seen.iter().max_by_key(|(_, a)| *a) {
            assert_eq!(&record.worker, last_worker, "run {run}: node {}", node.name);
            assert_eq!(
                u64::from(record.attempt),
                *last_attempt,
                "run {run}: node {}",
                node.name
            );
        } else {
            assert!(
                log.killed.contains(&record.worker),
                "run {run}: node {} finished by {} without a claim event",
                node.name,
                record.worker
            );
        }
        if record.attempt > 1 {
            reclaimed += 1;
            // Every earlier holder we saw was killed: a node is claimed
            // again only after its holder's lease expired.
            for (worker, attempt) in seen {
                if u64::from(record.attempt) != *attempt {
                    assert!(
                        log.killed.contains(worker),
                        "run {run}: node {} was taken from {worker}, which was not killed",
                        node.name
                    );
                }
            }
        } else {
            assert!(
                seen.len() <= 1,
                "run {run}: node {} claimed twice at attempt 1",
                node.name
            );
        }
    }
    reclaimed
}

#[test]
fn killed_workers_lose_only_their_leases() {
    let started = Instant::now();
    let kills_wanted = env_or("WORKER_KILLS", 50);
    let mut rng = Rng(env_or("WORKER_SEED", 1));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let flow_file = write_layered_flow(dir.path(), WIDTH, LAYERS);
    let flow = flow::load(&flow_file).unwrap();
    assert_eq!(flow.nodes.len(), 200);
    let (reference, full_time) = reference(&flow_file, &cache);
    assert_eq!(reference.len(), flow.nodes.len());

    let db = postgres_cluster::fresh_database();
    let store = PostgresContextStore::connect(&db).unwrap();
    let window_ms = (full_time.as_millis() as u64 / 2).clamp(20, 2_000);
    let (mut kills, mut runs, mut reclaimed, mut spawned) = (0u64, 0u64, 0usize, 0usize);
    while kills < kills_wanted {
        let run = FlowRunId::new();
        let mut log = RunLog::default();
        let mut live: Vec<Worker> = (0..WORKERS)
            .map(|_| {
                spawned += 1;
                start_worker(&flow_file, &db, run, &format!("w{spawned}"), &cache)
            })
            .collect();
        // Kill a random worker now and then, and start a replacement,
        // until the run is done.
        loop {
            std::thread::sleep(Duration::from_millis(rng.below(window_ms)));
            let mut still = Vec::new();
            for mut w in live.drain(..) {
                match w.child.try_wait().unwrap() {
                    Some(status) => {
                        let stderr = w.stderr.join().unwrap();
                        assert!(status.success(), "worker {} failed: {stderr}", w.name);
                        log.record(&w.name, &stderr);
                    }
                    None => still.push(w),
                }
            }
            live = still;
            if live.is_empty() {
                break;
            }
            if kills < kills_wanted {
                let victim = live.swap_remove(rng.below(live.len() as u64) as usize);
                let mut child = victim.child;
                if child.kill().is_ok() {
                    kills += 1;
                    log.killed.insert(victim.name.clone());
                }
                child.wait().unwrap();
                let stderr = victim.stderr.join().unwrap();
                log.record(&victim.name, &stderr);
                spawned += 1;
                live.push(start_worker(
                    &flow_file,
                    &db,
                    run,
                    &format!("w{spawned}"),
                    &cache,
                ));
            }
        }
        reclaimed += check_run(&store, &flow, run, &reference, &log);
        runs += 1;
    }
    eprintln!(
        "postgres workers: {kills} kills of {spawned} worker processes ({WORKERS} at a time) over \
         {runs} runs of {} nodes in {:.1?}; {reclaimed} nodes claimed again after an expired lease, \
         every one taken from a killed worker; lost = 0, changed = 0",
        flow.nodes.len(),
        started.elapsed()
    );
    assert!(kills >= kills_wanted);
}
