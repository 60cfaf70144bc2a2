//! Fault injection for runs that workers share, and for a store that
//! another process holds locked: what the design promises when a worker
//! is paused past its lease, restarted under its own name, when the
//! database server restarts mid-run, when the network stalls, and when an
//! SQLite file's write lock is held elsewhere. Each test prints its figures
//! (run with `--nocapture` to see them).
//!
//! - `paused_worker_past_its_lease_lands_nothing`: worker A is SIGSTOPped
//!   mid-step, worker B takes the node over after A's lease and finishes,
//!   then A is SIGCONTed: none of A's writes (its global upsert, its output)
//!   lands after B's.
//! - `worker_restarted_under_its_own_name_finishes`: a worker SIGKILLed
//!   mid-step and restarted with the same `--worker` and `--run-id` takes
//!   its predecessor's claims over when their leases expire and finishes.
//! - `server_restart_mid_run`: `pg_ctl restart -m fast` in the middle of a
//!   24-node run of two workers (one over the socket, one over TCP): both
//!   exit 0, every output is stored once and equals an uninterrupted run's.
//! - `stalled_network_ends_at_the_deadline`: a step whose read hangs on a
//!   stalled TCP connection ends with `StepError::Timeout` at its deadline,
//!   and the current-thread executor it runs on is never blocked.
//! - `sqlite_write_lock_held_elsewhere`: a put under a 2 s deadline against
//!   a file whose write lock another process holds fails at the deadline
//!   (CLI and in-process) and is never applied afterwards.
//! - `an_output_of_another_flow_stops_the_worker_that_would_use_it`: two
//!   workers share a run with flows that differ in one node's params; the
//!   one that finds that node stored by the other stops with `Changed`.
//! - `two_live_workers_of_one_name_are_told_apart`: a second live process
//!   given a worker's name warns, and the two split the run without
//!   sharing a claim.
//! - `a_batch_claimed_by_a_killed_worker_is_taken_over_whole`: a worker that
//!   claimed several nodes in one batch is SIGKILLed; another takes every
//!   node of the batch over after the lease and finishes the run.
//! - `a_step_working_on_after_its_output_is_not_stopped`: a step whose put
//!   finished its claim, still working past a renewal, is not stopped.
//!
//! Settings (environment): `FAULT_PAUSE_ROUNDS` (default 3) and
//! `FAULT_RESTART_ROUNDS` (default 1) repeat the first two scenarios; a
//! longer run by hand:
//!
//! ```sh
//! FAULT_PAUSE_ROUNDS=20 FAULT_RESTART_ROUNDS=5 cargo test --release -p contextstore-tests --test faults -- --nocapture
//! ```

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use contextstore::{
    ContextStore, FlowRunId, Grant, Invocation, Limits, NodeId, PostgresContextStore,
    SqliteContextStore, StepError,
};
use contextstore_tests::proxy::Proxy;
use contextstore_tests::{
    cli_binary, components, env_or, load, postgres_cluster, process, runtime,
};
use serde_json::{Value, json};

/// The tests of this binary share one PostgreSQL server; the one that
/// restarts it holds this for writing, the others for reading.
static SERVER: RwLock<()> = RwLock::new(());

fn server_shared() -> RwLockReadGuard<'static, ()> {
    SERVER.read().unwrap_or_else(|e| e.into_inner())
}

fn server_exclusive() -> RwLockWriteGuard<'static, ()> {
    SERVER.write().unwrap_or_else(|e| e.into_inner())
}

/// What a test of a shared run starts from: the server shared with the
/// other tests, a directory (with the compiled-code cache in it), a fresh
/// database and a store connected to it.
struct Scene {
    _server: RwLockReadGuard<'static, ()>,
    dir: tempfile::TempDir,
    cache: PathBuf,
    db: String,
    store: PostgresContextStore,
}

impl Scene {
    fn new() -> Self {
        let server = server_shared();
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let db = postgres_cluster::fresh_database();
        let store = PostgresContextStore::connect(&db).unwrap();
        Scene {
            _server: server,
            dir,
            cache,
            db,
            store,
        }
    }
}

/// Short leases, so that takeovers happen within seconds.
const LEASE_SECS: u64 = 2;

// ---------------------------------------------------------------------------
// Flow files

/// One node of a flow file: name, params, upstream names.
struct Node {
    name: String,
    params: Value,
    upstream: Vec<String>,
}

fn node(name: &str, params: Value, upstream: &[&str]) -> Node {
    Node {
        name: name.to_owned(),
        params,
        upstream: upstream.iter().map(|u| (*u).to_owned()).collect(),
    }
}

/// A JSON value as inline TOML (a `null` member is left out: TOML has none).
fn toml_inline(value: &Value) -> String {
    match value {
        Value::Null => "\"\"".to_owned(),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => value.to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_inline).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{} = {}", Value::from(k.as_str()), toml_inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Writes flow `name` of `slow` nodes into `dir` (globals under `fault/`
/// granted for writing) and returns its path.
fn write_slow_flow(dir: &Path, name: &str, nodes: &[Node]) -> PathBuf {
    let component = Value::from(components::SLOW);
    let mut text = format!(
        "name = {}\n\n[grant]\nglobal_write = [\"fault/\"]\n",
        Value::from(name)
    );
    for n in nodes {
        text += &format!(
            "\n[nodes.{}]\ncomponent = {component}\nparams = {}\n",
            n.name,
            toml_inline(&n.params)
        );
        if !n.upstream.is_empty() {
            let ups: Vec<String> = n
                .upstream
                .iter()
                .map(|u| Value::from(u.as_str()).to_string())
                .collect();
            text += &format!("upstream = [{}]\n", ups.join(", "));
        }
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("flow file written");
    path
}

/// A layered flow of `slow` nodes that each sleep `sleep_ms` and whose
/// outputs are the same in every run (no nonce): `width` sources, then
/// `layers - 1` layers each reading two nodes of the layer before.
fn slow_layers(width: usize, layers: usize, sleep_ms: u64) -> Vec<Node> {
    let mut nodes = Vec::new();
    for layer in 0..layers {
        for i in 0..width {
            let name = format!("n{layer}_{i}");
            let tag = format!("{layer}/{i}");
            if layer == 0 {
                nodes.push(node(
                    &name,
                    json!({"sleep_ms": sleep_ms, "nonce": false, "tag": tag}),
                    &[],
                ));
            } else {
                let a = format!("n{}_{i}", layer - 1);
                let b = format!("n{}_{}", layer - 1, (i + 1) % width);
                nodes.push(node(
                    &name,
                    json!({"sleep_ms": sleep_ms, "nonce": false, "read_first": true, "tag": tag}),
                    &[&a, &b],
                ));
            }
        }
    }
    nodes
}

/// The stable id of node `node` of flow `flow`.
fn id_of(flow: &str, node: &str) -> NodeId {
    contextstore::flow::node_id(flow, node)
}

// ---------------------------------------------------------------------------
// Worker processes

/// One `contextstore flow run` worker and its event lines.
struct Worker {
    name: String,
    child: Option<Child>,
    lines: mpsc::Receiver<Value>,
    /// Every event received so far.
    events: Vec<Value>,
    reader: Option<JoinHandle<String>>,
}

impl Worker {
    fn start(
        flow: &Path,
        db: &str,
        run: FlowRunId,
        name: &str,
        jobs: usize,
        cache: &Path,
    ) -> Worker {
        let mut child = Command::new(cli_binary())
            .args(["flow", "run", flow.to_str().unwrap(), "--db", db])
            .args(["--run-id", &run.to_string(), "--worker", name])
            .args([
                "--lease",
                &LEASE_SECS.to_string(),
                "--jobs",
                &jobs.to_string(),
                "--events",
            ])
            .arg("--cache-dir")
            .arg(cache)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("flow run starts");
        let pipe = child.stderr.take().expect("stderr piped");
        let (send, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut pipe = BufReader::new(pipe);
            let mut text = String::new();
            let mut line = String::new();
            loop {
                line.clear();
                match pipe.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                text += &line;
                // A killed worker may leave half a line: only whole ones count.
                if line.ends_with('\n')
                    && let Ok(event) = serde_json::from_str::<Value>(&line)
                {
                    let _ = send.send(event);
                }
            }
            text
        });
        Worker {
            name: name.to_owned(),
            child: Some(child),
            lines,
            events: Vec::new(),
            reader: Some(reader),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("worker running").id()
    }

    /// Sends `signal` (`STOP`, `CONT`) to the worker.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Takes in the events that arrived.
    fn drain(&mut self) {
        while let Ok(event) = self.lines.try_recv() {
            self.events.push(event);
        }
    }

    /// Waits at most `limit` for a new event that `wanted` accepts.
    fn wait_for(&mut self, what: &str, limit: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(event) => {
                    self.events.push(event.clone());
                    if wanted(&event) {
                        return event;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "worker {}: no {what} within {limit:?}; events: {:?}",
                        self.name, self.events
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    let text = self.reader.take().map(|r| r.join().unwrap_or_default());
                    panic!(
                        "worker {} ended ({status:?}) before {what}: {}",
                        self.name,
                        text.unwrap_or_default()
                    )
                }
            }
        }
    }

    /// Waits at most `limit` for the worker to exit; its status and stderr.
    fn finish(&mut self, limit: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("worker running");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("child status") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                let text = self.reader.take().map(|r| r.join().unwrap_or_default());
                panic!(
                    "worker {} still running after {limit:?}: {}",
                    self.name,
                    text.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = self
            .reader
            .take()
            .map(|r| r.join().unwrap_or_default())
            .unwrap_or_default();
        self.drain();
        (status, text)
    }

    /// SIGKILLs the worker and waits for it; its stderr.
    fn kill(&mut self) -> String {
        let mut child = self.child.take().expect("worker running");
        let _ = child.kill();
        let _ = child.wait();
        let text = self
            .reader
            .take()
            .map(|r| r.join().unwrap_or_default())
            .unwrap_or_default();
        self.drain();
        text
    }

    /// Waits (at most a minute) for the worker's next claim.
    fn next_claim(&mut self) -> Value {
        self.wait_for("a claim", Duration::from_secs(60), |e| {
            e["event"] == "claimed"
        })
    }

    /// The events named `kind` ("claimed", "done", …) received so far.
    fn events_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["event"] == kind)
    }

    /// The output of the last "done" event of `node`.
    fn done(&self, node: &str) -> Option<&Value> {
        self.events_of("done")
            .filter(|e| e["node"] == node)
            .map(|e| &e["output"])
            .last()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A test that failed may leave a worker stopped: wake it to kill it.
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The slow step itself

/// The `slow` step writes one nonce to its global and its output, reads
/// its upstreams first when asked, and leaves the nonce out when asked.
#[test]
fn slow_step_writes_one_nonce_to_its_global_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ContextStore> =
        Arc::new(SqliteContextStore::open(dir.path().join("context.db")).unwrap());
    let slow = load(components::SLOW);
    let run = FlowRunId::new();
    let (up, first, second, third) = (NodeId::new(), NodeId::new(), NodeId::new(), NodeId::new());
    store.put(run, up, &json!({"x": 1})).unwrap();
    let grant = Grant {
        global_write: vec!["fault/".into()],
        ..Grant::default()
    };
    let limits = Limits::default();
    let started = Instant::now();
    let params = json!({"sleep_ms": 200, "global": "fault/one", "read_first": true, "tag": "t"});
    let invocation = Invocation::new(run, first)
        .with_params(params)
        .with_upstream("up", up);
    runtime()
        .run(&slow, &store, &invocation, &grant, &limits)
        .unwrap();
    let slept = started.elapsed();
    let output = store.get(run, first).unwrap().unwrap();
    let global = store.get_global("fault/one").unwrap().unwrap();
    assert_eq!(output["tag"], "t");
    assert_eq!(output["inputs"], json!({"up": {"x": 1}}));
    assert_eq!(output["nonce"], global["nonce"]);
    assert_eq!(global["node"], first.to_string());
    assert!(slept >= Duration::from_millis(200), "{slept:?}");

    // Another invocation: another nonce.
    let invocation = Invocation::new(run, second).with_params(json!({"global": "fault/one"}));
    runtime()
        .run(&slow, &store, &invocation, &grant, &limits)
        .unwrap();
    let again = store.get_global("fault/one").unwrap().unwrap();
    assert_eq!(
        store.get(run, second).unwrap().unwrap()["nonce"],
        again["nonce"]
    );
    assert_ne!(again["nonce"], global["nonce"]);

    // Without a nonce the output is the same in every run.
    let invocation = Invocation::new(run, third).with_params(json!({"nonce": false, "tag": [1]}));
    runtime()
        .run(&slow, &store, &invocation, &grant, &limits)
        .unwrap();
    assert_eq!(
        store.get(run, third).unwrap().unwrap(),
        json!({"tag": [1], "inputs": {}})
    );
    eprintln!("fault slow step: slept {slept:.1?} for 200 ms; nonces differ per invocation");
}

// ---------------------------------------------------------------------------
// a. A worker paused past its lease

#[test]
fn paused_worker_past_its_lease_lands_nothing() {
    let Scene {
        _server,
        dir,
        cache,
        db,
        store,
    } = Scene::new();
    let rounds = env_or("FAULT_PAUSE_ROUNDS", 3);
    const SLEEP_MS: u64 = 3_000;
    // Where in A's 3 s step it is paused: early, in the middle, late.
    let pause_points = [300u64, 1_200, 2_000];
    let (mut stale, mut writes, mut a_exits) = (0, 0, Vec::new());
    let started = Instant::now();
    for round in 0..rounds {
        let flow_name = format!("paused{round}");
        let key = format!("fault/paused/{round}");
        let flow = write_slow_flow(
            dir.path(),
            &flow_name,
            &[node(
                "slow",
                json!({"sleep_ms": SLEEP_MS, "global": key}),
                &[],
            )],
        );
        let node_id = id_of(&flow_name, "slow");
        let run = FlowRunId::new();
        let pause_ms = pause_points[round as usize % pause_points.len()];

        let mut a = Worker::start(&flow, &db, run, &format!("A{round}"), 1, &cache);
        a.next_claim();
        std::thread::sleep(Duration::from_millis(pause_ms));
        a.signal("STOP");
        a.drain();
        assert!(
            a.done("slow").is_none(),
            "round {round}: A finished its {SLEEP_MS} ms step within {pause_ms} ms of its claim, \
             before it could be paused: {:?}",
            a.events
        );

        // B takes the node over once A's lease has expired, and finishes it.
        let mut b = Worker::start(&flow, &db, run, &format!("B{round}"), 1, &cache);
        let (status, stderr) = b.finish(Duration::from_secs(60));
        assert!(status.success(), "round {round}: B failed: {stderr}");
        let b_claim = b
            .events_of("claimed")
            .find(|e| e["node"] == "slow")
            .unwrap_or_else(|| panic!("round {round}: B never claimed the node: {stderr}"));
        assert!(
            b_claim["attempt"].as_u64().unwrap_or(0) >= 2,
            "round {round}: B's claim is not a takeover: {b_claim}"
        );
        let b_output = b
            .done("slow")
            .unwrap_or_else(|| panic!("round {round}: B did not finish the node: {stderr}"))
            .clone();
        let b_nonce = b_output["nonce"].clone();
        assert!(b_nonce.is_string(), "round {round}: B's output {b_output}");
        assert_eq!(
            store.get_global(&key).unwrap().map(|g| g["nonce"].clone()),
            Some(b_nonce.clone()),
            "round {round}: B's global before A wakes"
        );

        // A wakes with its step past its sleep: whatever it writes now is stale.
        a.signal("CONT");
        let (a_status, a_stderr) = a.finish(Duration::from_secs(30));
        a_exits.push(a_status.code());
        let output = store.get(run, node_id).unwrap().expect("the node's output");
        let global = store.get_global(&key).unwrap().expect("the global");
        writes += 2;
        let output_stale = output["nonce"] != b_nonce;
        let global_stale = global["nonce"] != b_nonce;
        stale += usize::from(output_stale) + usize::from(global_stale);
        if output_stale || global_stale {
            eprintln!(
                "fault paused_worker: round {round} (paused {pause_ms} ms into the step): B wrote \
                 {b_nonce}, stored output {output}, stored global {global}; A said: {a_stderr}"
            );
        }
        // A must not acknowledge an output that is not the stored one.
        if let Some(acked) = a.done("slow") {
            assert_eq!(
                acked, &output,
                "round {round}: A acknowledged an output that is not stored; A said: {a_stderr}"
            );
        }
    }
    eprintln!(
        "fault paused_worker: stale writes landed after the new holder: {stale} of {writes} \
         ({rounds} rounds, {LEASE_SECS} s leases, {SLEEP_MS} ms steps paused at {pause_points:?} ms; \
         A's exit codes after waking {a_exits:?}; {:.1?})",
        started.elapsed()
    );
    assert_eq!(
        stale, 0,
        "writes of a paused worker landed after its successor's"
    );
}

// ---------------------------------------------------------------------------
// b. A worker restarted under its own name

#[test]
fn worker_restarted_under_its_own_name_finishes() {
    let Scene {
        _server,
        dir,
        cache,
        db,
        store,
    } = Scene::new();
    let rounds = env_or("FAULT_RESTART_ROUNDS", 1);
    const SOURCE_MS: u64 = 1_500;
    const JOIN_MS: u64 = 500;
    let nodes = [
        node("s0", json!({"sleep_ms": SOURCE_MS}), &[]),
        node("s1", json!({"sleep_ms": SOURCE_MS}), &[]),
        node(
            "s2",
            json!({"sleep_ms": JOIN_MS, "read_first": true}),
            &["s0", "s1"],
        ),
    ];
    let flow = write_slow_flow(dir.path(), "restart", &nodes);
    // What is left after the restart: at most a lease to wait out (twice,
    // for a renewal just before the kill), then the longest chain of steps.
    let step = Duration::from_millis(SOURCE_MS + JOIN_MS);
    let bound = Duration::from_secs(2 * LEASE_SECS) + step + Duration::from_secs(10);
    let mut times = Vec::new();
    for round in 0..rounds {
        let run = FlowRunId::new();
        let mut first = Worker::start(&flow, &db, run, "w1", 2, &cache);
        let claimed = first.next_claim();
        std::thread::sleep(Duration::from_millis(300 + (200 * round) % 1_000));
        first.drain();
        assert!(
            first.done(claimed["node"].as_str().unwrap()).is_none(),
            "round {round}: w1 finished {claimed} before it was killed"
        );
        first.kill();

        let restarted = Instant::now();
        let mut second = Worker::start(&flow, &db, run, "w1", 2, &cache);
        let (status, stderr) = second.finish(bound);
        let took = restarted.elapsed();
        assert!(
            status.success(),
            "round {round}: the restarted w1 failed: {stderr}"
        );
        assert!(
            took <= bound,
            "round {round}: the restarted w1 took {took:?} (bound {bound:?})"
        );
        times.push(took);

        let keys: BTreeSet<NodeId> = store.list_keys(run).unwrap().into_iter().collect();
        let expected: BTreeSet<NodeId> = nodes.iter().map(|n| id_of("restart", &n.name)).collect();
        assert_eq!(keys, expected, "round {round}: every node has one output");
        let mut outputs = std::collections::BTreeMap::new();
        for n in &nodes {
            let stored = store
                .get(run, id_of("restart", &n.name))
                .unwrap()
                .expect("output");
            if let Some(acked) = second.done(&n.name).or_else(|| first.done(&n.name)) {
                assert_eq!(
                    acked, &stored,
                    "round {round}: node {} acknowledged differently",
                    n.name
                );
            }
            outputs.insert(n.name.clone(), stored);
        }
        // The join read exactly what is stored upstream.
        assert_eq!(
            outputs["s2"]["inputs"],
            json!({"s0": outputs["s0"], "s1": outputs["s1"]}),
            "round {round}"
        );
        let takeovers: Vec<String> = second
            .events_of("claimed")
            .filter(|e| e["attempt"].as_u64().unwrap_or(0) >= 2)
            .map(|e| format!("{}#{}", e["node"].as_str().unwrap_or("?"), e["attempt"]))
            .collect();
        eprintln!(
            "fault restarted_worker: round {round}: w1 killed while running {}, restarted as w1: \
             finished in {took:.1?} (bound {bound:?}), took over {takeovers:?}, 3 of 3 outputs",
            claimed["node"]
        );
    }
    eprintln!(
        "fault restarted_worker: {rounds} restarts under the same name, run finished after each \
         in {times:.1?} ({LEASE_SECS} s leases, steps {SOURCE_MS}+{JOIN_MS} ms, bound {bound:?})"
    );
}

/// A worker claims ready nodes in batches: with `--jobs 3` and steps it
/// does not yet know to be short, one statement claims three nodes (and no
/// more: it would not start them). Killed mid-step, it leaves the whole
/// batch claimed: another worker takes every node of the batch over once
/// the lease has expired (attempt 2), runs the nodes nobody held at once
/// (attempt 1), and the run ends with one output a node.
#[test]
fn a_batch_claimed_by_a_killed_worker_is_taken_over_whole() {
    let Scene {
        _server,
        dir,
        cache,
        db,
        store,
    } = Scene::new();
    const STEP_MS: u64 = 3_000;
    const NODES: usize = 8;
    let nodes: Vec<Node> = (0..NODES)
        .map(|i| node(&format!("b{i}"), json!({"sleep_ms": STEP_MS}), &[]))
        .collect();
    let flow = write_slow_flow(dir.path(), "batch", &nodes);
    let run = FlowRunId::new();
    const JOBS: usize = 3;
    let mut first = Worker::start(&flow, &db, run, "w1", JOBS, &cache);
    first.next_claim();
    // The rest of the batch is claimed by the same statement.
    std::thread::sleep(Duration::from_millis(300));
    first.drain();
    let batch: BTreeSet<String> = first
        .events_of("claimed")
        .map(|e| e["node"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(
        batch.len(),
        JOBS,
        "w1 (--jobs {JOBS}) claimed {batch:?}: not one batch of its job slots"
    );
    let tokens: BTreeSet<u64> = first
        .events_of("claimed")
        .map(|e| e["attempt"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(tokens, BTreeSet::from([1]), "first claims");
    for name in &batch {
        assert!(
            first.done(name).is_none(),
            "w1 finished {name} before it was killed"
        );
    }
    first.kill();
    let killed = Instant::now();

    let mut second = Worker::start(&flow, &db, run, "w2", NODES, &cache);
    let bound = Duration::from_secs(2 * LEASE_SECS)
        + Duration::from_millis(STEP_MS) * 2
        + Duration::from_secs(10);
    let (status, stderr) = second.finish(bound);
    let took = killed.elapsed();
    assert!(status.success(), "w2 failed: {stderr}");
    let attempts: std::collections::BTreeMap<String, u64> = second
        .events_of("claimed")
        .map(|e| {
            (
                e["node"].as_str().unwrap_or("?").to_owned(),
                e["attempt"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for n in &nodes {
        let attempt = attempts.get(&n.name).copied();
        if batch.contains(&n.name) {
            assert_eq!(
                attempt,
                Some(2),
                "{}: w1's claim was not taken over: {attempts:?}",
                n.name
            );
        } else {
            assert_eq!(attempt, Some(1), "{}: {attempts:?}", n.name);
        }
    }
    let keys: BTreeSet<NodeId> = store.list_keys(run).unwrap().into_iter().collect();
    let expected: BTreeSet<NodeId> = nodes.iter().map(|n| id_of("batch", &n.name)).collect();
    assert_eq!(keys, expected, "every node has one output");
    for n in &nodes {
        let stored = store
            .get(run, id_of("batch", &n.name))
            .unwrap()
            .expect("output");
        let acked = second.done(&n.name).expect("w2 reports every node done");
        assert_eq!(acked, &stored, "node {}", n.name);
    }
    eprintln!(
        "fault killed_batch: w1 (--jobs {JOBS}) claimed {} nodes in one batch and was killed; \
         w2 took all of them over (attempt 2) and ran the other {}; done {took:.1?} after the kill \
         ({LEASE_SECS} s leases, {STEP_MS} ms steps)",
        batch.len(),
        NODES - batch.len()
    );
}

// ---------------------------------------------------------------------------
// c. The database server restarts mid-run

/// Every stored output of `run`, by node name, checking that each node
/// has exactly one.
fn outputs_of(
    store: &PostgresContextStore,
    flow_name: &str,
    nodes: &[Node],
    run: FlowRunId,
) -> std::collections::BTreeMap<String, Value> {
    let keys = store.list_keys(run).unwrap();
    let distinct: BTreeSet<NodeId> = keys.iter().copied().collect();
    let expected: BTreeSet<NodeId> = nodes.iter().map(|n| id_of(flow_name, &n.name)).collect();
    assert_eq!(keys.len(), distinct.len(), "run {run}: a node listed twice");
    assert_eq!(
        distinct, expected,
        "run {run}: every node has exactly one output"
    );
    nodes
        .iter()
        .map(|n| {
            let value = store
                .get(run, id_of(flow_name, &n.name))
                .unwrap()
                .expect("output");
            (n.name.clone(), value)
        })
        .collect()
}

#[test]
fn server_restart_mid_run() {
    const WIDTH: usize = 4;
    const LAYERS: usize = 6;
    const SLEEP_MS: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let nodes = slow_layers(WIDTH, LAYERS, SLEEP_MS);
    let total = nodes.len();
    let flow = write_slow_flow(dir.path(), "layers", &nodes);

    // An uninterrupted run: the reference.
    let (reference, reference_time) = {
        let _server = server_shared();
        let db = postgres_cluster::fresh_database();
        let run = FlowRunId::new();
        let started = Instant::now();
        let mut worker = Worker::start(&flow, &db, run, "reference", 2, &cache);
        let (status, stderr) = worker.finish(Duration::from_secs(120));
        assert!(status.success(), "reference run failed: {stderr}");
        let elapsed = started.elapsed();
        let store = PostgresContextStore::connect(&db).unwrap();
        (outputs_of(&store, "layers", &nodes, run), elapsed)
    };

    let _server = server_exclusive();
    let db = postgres_cluster::fresh_database();
    let tcp = postgres_cluster::tcp_url(&db);
    let run = FlowRunId::new();
    let started = Instant::now();
    let mut workers = [
        Worker::start(&flow, &db, run, "socket", 1, &cache),
        Worker::start(&flow, &tcp, run, "tcp", 1, &cache),
    ];
    // Restart once about 40 % of the nodes are done.
    let restart_after = total * 2 / 5;
    let wait_until = Instant::now() + Duration::from_secs(120);
    let done_before = loop {
        for w in &mut workers {
            w.drain();
        }
        let done: BTreeSet<String> = workers
            .iter()
            .flat_map(|w| w.events_of("done"))
            .filter_map(|e| e["node"].as_str().map(str::to_owned))
            .collect();
        if done.len() >= restart_after {
            break done.len();
        }
        assert!(
            Instant::now() < wait_until,
            "only {} of {total} nodes done in 120 s",
            done.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let both_running = workers.iter_mut().all(|w| {
        w.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    });
    let restart_started = Instant::now();
    postgres_cluster::restart();
    let restart_time = restart_started.elapsed();
    assert!(both_running, "a worker had exited before the restart");

    let mut exits = Vec::new();
    for w in &mut workers {
        let (status, stderr) = w.finish(Duration::from_secs(120));
        assert!(
            status.success(),
            "worker {} failed after the server restart ({status}): {stderr}",
            w.name
        );
        exits.push(status.code());
    }
    let elapsed = started.elapsed();
    let store = PostgresContextStore::connect(&db).unwrap();
    let stored = outputs_of(&store, "layers", &nodes, run);
    let mut differ = Vec::new();
    for n in &nodes {
        if stored[&n.name] != reference[&n.name] {
            differ.push(n.name.clone());
        }
        for w in &workers {
            if let Some(acked) = w.done(&n.name) {
                assert_eq!(
                    acked, &stored[&n.name],
                    "node {} acknowledged by {} differs from the stored output",
                    n.name, w.name
                );
            }
        }
    }
    let reclaimed = workers
        .iter()
        .flat_map(|w| w.events_of("claimed"))
        .filter(|e| e["attempt"].as_u64().unwrap_or(0) >= 2)
        .count();
    let ran: usize = workers
        .iter()
        .flat_map(|w| w.events_of("done"))
        .filter(|e| e["ran"] == true)
        .count();
    eprintln!(
        "fault server_restart: restarted (in {restart_time:.1?}) after {done_before} of {total} nodes; \
         workers (socket, TCP) exited {exits:?}; {} of {total} outputs stored once, {} differ from \
         an uninterrupted run's; {ran} nodes run, {reclaimed} claimed again; run took {elapsed:.1?} (uninterrupted \
         {reference_time:.1?})",
        stored.len(),
        differ.len()
    );
    assert!(
        differ.is_empty(),
        "outputs differ from an uninterrupted run's: {differ:?}"
    );
}

// ---------------------------------------------------------------------------
// d. A stalled network

#[test]
fn stalled_network_ends_at_the_deadline() {
    let _server = server_shared();
    const TIMEOUT: Duration = Duration::from_millis(1_500);
    const SLACK: Duration = Duration::from_millis(1_500);
    let db = postgres_cluster::fresh_database();
    let tcp = postgres_cluster::tcp_url(&db);
    let target = postgres_cluster::host_of(&tcp)
        .parse()
        .expect("127.0.0.1:port");
    let proxy = Proxy::start(target).expect("proxy starts");
    let through_proxy = postgres_cluster::with_host(&tcp, &proxy.addr().to_string());
    let postgres =
        PostgresContextStore::connect(&through_proxy).expect("connects through the proxy");
    let run = FlowRunId::new();
    let (up, stalled_node) = (NodeId::new(), NodeId::new());
    postgres
        .put(run, up, &json!({"before": "the stall"}))
        .unwrap();
    let postgres: Arc<dyn ContextStore> = Arc::new(postgres);
    let memory: Arc<dyn ContextStore> = Arc::new(SqliteContextStore::in_memory().unwrap());
    let slow = load(components::SLOW);
    let greet = load(components::GREET);
    let stalled_invocation = Invocation::new(run, stalled_node)
        .with_params(json!({"read_first": true}))
        .with_upstream("up", up);
    let quick_node = NodeId::new();
    let quick_invocation =
        Invocation::new(run, quick_node).with_params(json!({"name": "beside the stall"}));
    let limits = Limits {
        timeout: TIMEOUT,
        ..Limits::default()
    };

    // A watchdog, so that a host that blocks on the stalled socket fails
    // this test instead of hanging it: past the limit it cuts the proxy's
    // connections and lets traffic through again.
    let proxy = Arc::new(proxy);
    let watchdog_limit = TIMEOUT + Duration::from_secs(20);
    let (finished, watch) = mpsc::channel::<()>();
    let watchdog = {
        let proxy = Arc::clone(&proxy);
        std::thread::spawn(move || {
            let fired = watch.recv_timeout(watchdog_limit).is_err();
            if fired {
                proxy.resume();
                proxy.close_all();
            }
            fired
        })
    };

    proxy.stall();
    let executor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ((stalled, stalled_at), (quick, quick_at)) = executor.block_on(async {
        let t0 = Instant::now();
        let stalled = async {
            let result = runtime()
                .run_async(
                    &slow,
                    &postgres,
                    &stalled_invocation,
                    &Grant::default(),
                    &limits,
                )
                .await;
            (result, t0.elapsed())
        };
        let quick = async {
            // Started once the stalled one is surely waiting on the network:
            // if that wait blocked this (only) thread, this timer could not
            // fire before the stalled invocation ended.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let result = runtime()
                .run_async(
                    &greet,
                    &memory,
                    &quick_invocation,
                    &Grant::default(),
                    &Limits::default(),
                )
                .await;
            (result, t0.elapsed())
        };
        tokio::join!(stalled, quick)
    });
    drop(executor);
    let _ = finished.send(());
    let watchdog_fired = watchdog.join().unwrap();
    proxy.resume();
    let connections = proxy.connections();
    // The proxy goes first, so that nothing waits on a stalled socket.
    drop(proxy);
    eprintln!(
        "fault stalled_network: the stalled invocation ended after {stalled_at:.2?} (timeout \
         {TIMEOUT:?}) with {}; the quick one beside it on the same current-thread executor \
         finished after {quick_at:.2?} ({}); {connections} connections through the proxy",
        match &stalled {
            Ok(_) => "Ok".to_owned(),
            Err(e) => format!("{e}"),
        },
        if quick.is_ok() { "Ok" } else { "failed" }
    );
    assert!(
        !watchdog_fired,
        "the stalled invocation was still running {watchdog_limit:?} after it started: the \
         watchdog cut the connections (it ended after {stalled_at:?} with {stalled:?})"
    );
    assert!(
        matches!(stalled, Err(StepError::Timeout(_))),
        "the stalled invocation: {stalled:?}"
    );
    assert!(
        stalled_at + Duration::from_millis(50) >= TIMEOUT,
        "ended before its deadline: {stalled_at:?}"
    );
    assert!(
        stalled_at <= TIMEOUT + SLACK,
        "ended {stalled_at:?} after it started, past its deadline ({TIMEOUT:?}) and slack ({SLACK:?})"
    );
    let quick = quick.expect("the quick invocation succeeds");
    assert_eq!(
        quick.value().unwrap(),
        json!({"greeting": "Hello, beside the stall!"})
    );
    assert!(
        quick_at < stalled_at,
        "the quick invocation finished after the stalled one ({quick_at:?} >= {stalled_at:?}): \
         the stalled one blocked the executor thread"
    );
    assert_eq!(
        memory.get(run, quick_node).unwrap(),
        Some(json!({"greeting": "Hello, beside the stall!"}))
    );
}

// ---------------------------------------------------------------------------
// e. An SQLite file locked by another process

/// Holds the SQLite file's write lock for 8 s from another process.
const LOCK_HOLDER: &str = "import sqlite3,time,sys; c=sqlite3.connect(sys.argv[1], isolation_level=None); \
                           c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(8)";

#[test]
fn sqlite_write_lock_held_elsewhere() {
    const TIMEOUT_SECS: u64 = 2;
    const CLI_SLACK: Duration = Duration::from_millis(2_500);
    const SLACK: Duration = Duration::from_millis(1_500);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("context.db");
    let cache = dir.path().join("cache");
    // The in-process store of (ii), opened before the lock is taken (the
    // command of (i) opens the file under the lock).
    let store: Arc<dyn ContextStore> =
        Arc::new(SqliteContextStore::open(&path).expect("the store creates its file"));
    let greet = load(components::GREET);
    // Compile greet into the CLI's cache first, so that the timed run only runs.
    let warm = Command::new(cli_binary())
        .args(["run", components::GREET, "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        warm.status.success(),
        "{}",
        String::from_utf8_lossy(&warm.stderr)
    );

    let mut holder = Command::new("python3")
        .args(["-c", LOCK_HOLDER])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut said = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert_eq!(
        said.trim(),
        "locked",
        "the lock holder did not take the lock"
    );
    let locked_at = Instant::now();

    // (i) The command.
    let run = FlowRunId::new();
    let (cli_node, async_node) = (NodeId::new(), NodeId::new());
    let started = Instant::now();
    let child = Command::new(cli_binary())
        .args(["run", components::GREET, "--db", path.to_str().unwrap()])
        .args(["--timeout", &TIMEOUT_SECS.to_string(), "--cache-dir"])
        .arg(&cache)
        .args([
            "--flow-run",
            &run.to_string(),
            "--node",
            &cli_node.to_string(),
        ])
        .args(["--params", r#"{"name": "locked"}"#])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Waited for on a thread of its own, so that (ii) runs meanwhile, under
    // the same lock.
    let cli = std::thread::spawn(move || {
        let out = process::wait_at_most(child, Duration::from_secs(20));
        (out, started.elapsed())
    });
    let deadline = Duration::from_secs(TIMEOUT_SECS);

    // (ii) In process, on a current-thread executor, at the same time.
    let limits = Limits {
        timeout: deadline,
        ..Limits::default()
    };
    let executor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let invocation = Invocation::new(run, async_node).with_params(json!({"name": "locked"}));
    let started = Instant::now();
    let result = executor.block_on(runtime().run_async(
        &greet,
        &store,
        &invocation,
        &Grant::default(),
        &limits,
    ));
    let async_took = started.elapsed();
    let (out, cli_took) = cli.join().unwrap();
    let cli_stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let still_locked = locked_at.elapsed() < Duration::from_secs(8);

    let holder_out = process::wait_at_most(holder, Duration::from_secs(15));
    assert!(
        holder_out.status.success(),
        "the lock holder failed: {}",
        String::from_utf8_lossy(&holder_out.stderr)
    );
    // A write that would still be queued somewhere has its chance now.
    std::thread::sleep(Duration::from_millis(500));
    let cli_stored = store.get(run, cli_node).unwrap();
    let async_stored = store.get(run, async_node).unwrap();
    let fresh = SqliteContextStore::open(&path).unwrap();
    let (cli_fresh, async_fresh) = (
        fresh.get(run, cli_node).unwrap(),
        fresh.get(run, async_node).unwrap(),
    );
    // The store is not wedged: it takes a write once the lock is free.
    let after = NodeId::new();
    store.put(run, after, &json!("after")).unwrap();

    eprintln!(
        "fault sqlite_write_lock: with the write lock held elsewhere, `contextstore run --timeout \
         {TIMEOUT_SECS}` exited {:?} after {cli_took:.2?} ({}); run_async ended after {async_took:.2?} \
         with {}; outputs stored after the holder exited: CLI {}, \
         in-process {}",
        out.status.code(),
        cli_stderr.lines().last().unwrap_or("").trim(),
        match &result {
            Ok(_) => "Ok".to_owned(),
            Err(e) => e.to_string(),
        },
        usize::from(cli_stored.is_some() || cli_fresh.is_some()),
        usize::from(async_stored.is_some() || async_fresh.is_some()),
    );
    assert!(
        !out.status.success(),
        "`contextstore run` succeeded against a locked file: {cli_stderr}"
    );
    let lower = cli_stderr.to_lowercase();
    assert!(
        lower.contains("timed out") || lower.contains("timeout"),
        "`contextstore run` failed, but not by its timeout: {cli_stderr}"
    );
    assert!(
        cli_took <= deadline + CLI_SLACK,
        "`contextstore run` took {cli_took:?}"
    );
    assert!(
        matches!(result, Err(StepError::Timeout(_))),
        "run_async against a locked file: {result:?}"
    );
    assert!(
        async_took <= deadline + SLACK,
        "run_async took {async_took:?}"
    );
    assert_eq!(
        cli_stored, None,
        "the CLI's put was applied after it failed"
    );
    assert_eq!(cli_fresh, None, "the CLI's put was applied after it failed");
    assert_eq!(
        async_stored, None,
        "the in-process put was applied after it failed"
    );
    assert_eq!(
        async_fresh, None,
        "the in-process put was applied after it failed"
    );
    assert!(
        still_locked,
        "the lock holder let go before the in-process run ended"
    );
}

// ---------------------------------------------------------------------------
// f. Honest resume at every node

/// Two workers share a run, each with its own edition of the flow: the
/// same names (so the same node ids), but node `b`'s params differ. Node
/// `a` is the same in both, so neither refuses the run at start; whichever
/// worker finds `b` stored by the other must stop with the `Changed` error
/// instead of finishing the run with another flow's output.
#[test]
fn an_output_of_another_flow_stops_the_worker_that_would_use_it() {
    let Scene {
        _server,
        dir,
        cache,
        db,
        store,
    } = Scene::new();
    let edition = |tag: &str| {
        vec![
            node("a", json!({"sleep_ms": 1_500, "nonce": false}), &[]),
            node(
                "b",
                json!({"sleep_ms": 100, "nonce": false, "tag": tag}),
                &["a"],
            ),
        ]
    };
    let one_dir = dir.path().join("one");
    let two_dir = dir.path().join("two");
    std::fs::create_dir_all(&one_dir).unwrap();
    std::fs::create_dir_all(&two_dir).unwrap();
    let one = write_slow_flow(&one_dir, "mixed", &edition("one"));
    let two = write_slow_flow(&two_dir, "mixed", &edition("two"));
    let run = FlowRunId::new();
    let mut first = Worker::start(&one, &db, run, "one", 1, &cache);
    first.wait_for("claim of a", Duration::from_secs(60), |e| {
        e["event"] == "claimed" && e["node"] == "a"
    });
    let mut second = Worker::start(&two, &db, run, "two", 1, &cache);
    let limit = Duration::from_secs(30);
    let (first_status, first_err) = first.finish(limit);
    let (second_status, second_err) = second.finish(limit);
    let codes = (first_status.code(), second_status.code());
    let (winner, loser_err) = match codes {
        (Some(0), Some(2)) => ("one", &second_err),
        (Some(2), Some(0)) => ("two", &first_err),
        _ => panic!(
            "expected one worker to finish and the other to stop with exit 2, got {codes:?}\n\
             one: {first_err}\ntwo: {second_err}"
        ),
    };
    assert!(
        loser_err.contains("the flow changed") && loser_err.contains("`b` (params)"),
        "the stopped worker names the changed node: {loser_err}"
    );
    let b = store
        .get(run, id_of("mixed", "b"))
        .unwrap()
        .expect("b is stored");
    assert_eq!(
        b["tag"], winner,
        "b's stored output is the finishing worker's edition: {b}"
    );
    eprintln!(
        "fault mixed_flows: exit codes (one, two) {codes:?}; `{winner}` finished, the other \
         stopped at `b` with Changed"
    );
}

// ---------------------------------------------------------------------------
// g. Two live processes given one name

/// A second live process started with a worker's name is detected (it
/// warns at start) and told apart by its incarnation: both finish, each
/// node is claimed by one of them only, and every output is stored once.
#[test]
fn two_live_workers_of_one_name_are_told_apart() {
    let Scene {
        _server,
        dir,
        cache,
        db,
        store,
    } = Scene::new();
    let nodes: Vec<Node> = (0..4)
        .map(|i| node(&format!("n{i}"), json!({"sleep_ms": 800, "tag": i}), &[]))
        .collect();
    let flow = write_slow_flow(dir.path(), "twins", &nodes);
    let run = FlowRunId::new();
    const JOBS: usize = 3;
    let mut first = Worker::start(&flow, &db, run, "w1", JOBS, &cache);
    first.next_claim();
    let mut second = Worker::start(&flow, &db, run, "w1", 1, &cache);
    let limit = Duration::from_secs(30);
    let (first_status, _) = first.finish(limit);
    let (second_status, second_err) = second.finish(limit);
    assert!(
        first_status.success() && second_status.success(),
        "{second_err}"
    );
    assert!(
        second_err.contains("another process of this worker's name holds live claims"),
        "the second process warns: {second_err}"
    );
    let claimed = |w: &Worker| -> BTreeSet<String> {
        w.events_of("claimed")
            .map(|e| e["node"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let (a, b) = (claimed(&first), claimed(&second));
    assert!(
        a.is_disjoint(&b),
        "no node was claimed by both processes: {a:?} / {b:?}"
    );
    assert_eq!(a.len() + b.len(), nodes.len(), "{a:?} / {b:?}");
    let keys: BTreeSet<NodeId> = store.list_keys(run).unwrap().into_iter().collect();
    assert_eq!(keys.len(), nodes.len());
    eprintln!(
        "fault same_name: two live processes named w1 split {} nodes {} / {} without sharing a claim",
        nodes.len(),
        a.len(),
        b.len()
    );
}

// ---------------------------------------------------------------------------
// h. Work after the output, past a renewal

/// A step's fenced put finishes its claim with its output, so the next
/// renewal no longer finds the claim: that must not stop the step, which
/// goes on (past a lease here) and finishes without a warning, its later
/// write accepted.
#[test]
fn a_step_working_on_after_its_output_is_not_stopped() {
    let Scene {
        _server,
        dir,
        cache,
        db,
        store,
    } = Scene::new();
    let after_ms = LEASE_SECS * 1_000 + 1_000;
    let nodes = [node(
        "late",
        json!({"after_ms": after_ms, "global": "fault/late"}),
        &[],
    )];
    let flow = write_slow_flow(dir.path(), "after", &nodes);
    let run = FlowRunId::new();
    let mut worker = Worker::start(&flow, &db, run, "w1", 1, &cache);
    let (status, stderr) = worker.finish(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    let done: Vec<&Value> = worker.events_of("done").collect();
    assert_eq!(done.len(), 1, "{stderr}");
    assert!(
        done[0]["warning"].is_null(),
        "no warning for a step that kept working after its output: {}",
        done[0]
    );
    assert_eq!(worker.events_of("stopped").count(), 0, "{stderr}");
    let output = store
        .get(run, id_of("after", "late"))
        .unwrap()
        .expect("output");
    let after = store
        .get_global("fault/late/after")
        .unwrap()
        .expect("the write after the output landed");
    assert_eq!(after["nonce"], output["nonce"]);
    eprintln!(
        "fault after_output: a step working {after_ms} ms past its output (lease {LEASE_SECS} s) \
         finished without a warning, its later write stored"
    );
}
