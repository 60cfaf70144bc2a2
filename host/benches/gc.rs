//! `gc` beside a running flow: the flow's p99 write latency while `gc`
//! removes 10,000 finished runs, against its p99 with no gc, measured in
//! the same run (the target: at most 2x).
//!
//! ```sh
//! scripts/build-guests                            # the bench step
//! cargo bench -p contextstore --bench gc          # SQLite and PostgreSQL
//! cargo bench -p contextstore --bench gc -- sqlite
//! ```
//!
//! Each backend gets a fresh store seeded with [`RUNS`] finished runs (2
//! outputs, a journal entry and a worker record each). A layered flow of
//! [`NODES`] `bench` steps runs with `--jobs 2` alone; then flow after
//! flow (each a new run) while `gc --older-than 0s` (default batches)
//! removes every finished run; then alone again. A write is a node
//! output's put, timed around the store's async `put` as the runner calls
//! it. The ratio is the p99 of the writes made while gc ran against the
//! mean p99 of the two flows without it. The runs that ran beside gc are
//! checked whole afterwards.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contextstore::coord::Coordinator;
use contextstore::flow::{self, FlowEvent, LeaseOptions, RunOptions};
use contextstore::id::{FlowRunId, NodeId};
use contextstore::json::JsonText;
use contextstore::runs::{GcOptions, RunIndex};
use contextstore::store::{AsyncContextStore, CallContext, Provenance, Stored};
use contextstore::{
    ContextStore, ContextStoreError, PostgresContextStore, Runtime, SqliteContextStore,
};

#[path = "../tests/support/finished_runs.rs"]
mod finished_runs;
#[path = "../tests/support/postgres_cluster.rs"]
mod postgres_cluster;

/// Finished runs gc removes.
const RUNS: usize = 10_000;
/// Nodes of the flow that runs beside it.
const NODES: usize = 1_500;
const LAYER: usize = 50;

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f));
    let runtime = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let flow = layered_flow(dir.path());
    if wanted("sqlite") {
        let path = dir.path().join("gc.db");
        let store: Arc<dyn ContextStore> = Arc::new(SqliteContextStore::open(&path).expect("open"));
        measure("SQLite", &runtime, &flow, store);
    }
    if wanted("postgres") {
        let url = postgres_cluster::fresh_database();
        let store: Arc<dyn ContextStore> =
            Arc::new(PostgresContextStore::connect(&url).expect("connect"));
        measure("PostgreSQL", &runtime, &flow, store);
    }
}

fn layered_flow(dir: &Path) -> flow::Flow {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guest/wasm32-wasip2/release")
        .join("bench.wasm");
    let mut text = String::from("name = \"beside-gc\"\n");
    for n in 0..NODES {
        let (layer, i) = (n / LAYER, n % LAYER);
        text += &format!("[nodes.n{layer}_{i}]\ncomponent = {wasm:?}\n");
        if layer > 0 {
            text += &format!("upstream = [\"n{}_{i}\"]\n", layer - 1);
        }
    }
    let path: PathBuf = dir.join("beside-gc.toml");
    std::fs::write(&path, text).expect("write flow");
    flow::load(&path).expect("flow loads")
}

fn index(store: &dyn ContextStore) -> &dyn RunIndex {
    store.as_async().and_then(|s| s.runs()).expect("runs index")
}

/// `RUNS` finished runs (see `finished_runs::seed`).
fn seed(store: &Arc<dyn ContextStore>) {
    let started = Instant::now();
    finished_runs::seed(store, RUNS);
    println!(
        "  seeded {RUNS} finished runs in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The p99 of `latencies`.
fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn measure(name: &str, runtime: &Runtime, flow: &flow::Flow, store: Arc<dyn ContextStore>) {
    println!("{name}:");
    seed(&store);
    let timed = Arc::new(Timed::new(store.clone()));
    let as_store: Arc<dyn ContextStore> = timed.clone();
    let run_alone = |label: &str| {
        timed.reset();
        let (_, took) = run(runtime, &as_store, flow);
        let p = p99(timed.all());
        println!(
            "  flow alone ({label}): {NODES} nodes in {:.1}s, p99 write {}",
            took.as_secs_f64(),
            ms(p)
        );
        p
    };
    let before = run_alone("before");
    timed.reset();
    let gc_window = Mutex::new((Instant::now(), Instant::now()));
    let gc_done = std::sync::atomic::AtomicBool::new(false);
    let (gc_report, beside) = std::thread::scope(|scope| {
        let gc = scope.spawn(|| {
            // Once the first flow is under way.
            std::thread::sleep(Duration::from_millis(50));
            let executor = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let options = GcOptions {
                older_than: Duration::ZERO,
                ..GcOptions::default()
            };
            let began = Instant::now();
            let report = executor
                .block_on(contextstore::runs::gc(index(store.as_ref()), &options))
                .expect("gc");
            *gc_window.lock().unwrap() = (began, Instant::now());
            gc_done.store(true, std::sync::atomic::Ordering::SeqCst);
            report
        });
        // Flow after flow, until gc is done.
        let mut beside = Vec::new();
        while !gc_done.load(std::sync::atomic::Ordering::SeqCst) {
            beside.push(run(runtime, &as_store, flow).0);
        }
        (gc.join().expect("gc thread"), beside)
    });
    for id in &beside {
        assert!(
            !gc_report.removed_runs.contains(id),
            "gc removed a run that ran beside it"
        );
        assert_eq!(store.list_keys(*id).expect("list").len(), NODES);
    }
    let (began, ended) = *gc_window.lock().unwrap();
    let during = timed.between(began, ended);
    let after = run_alone("after");
    // The seeded runs and the first flow's.
    assert_eq!(
        gc_report.removed_runs.len(),
        RUNS + 1,
        "gc removed every finished run"
    );
    let baseline = (before + after) / 2;
    let with_gc = p99(during.clone());
    println!(
        "  gc removed {} runs ({} rows) in {} batches, {:.1}s, beside {} flows; {} of their writes during gc",
        gc_report.removed_runs.len(),
        gc_report.removed.rows(),
        gc_report.batches,
        (ended - began).as_secs_f64(),
        beside.len(),
        during.len(),
    );
    println!(
        "  p99 write with gc {} / without {} = {:.2}x (target at most 2x)",
        ms(with_gc),
        ms(baseline),
        with_gc.as_secs_f64() / baseline.as_secs_f64()
    );
}

fn quiet(_: &FlowEvent<'_>) {}

/// Runs `flow` as a new run; returns the run and how long it took.
fn run(
    runtime: &Runtime,
    store: &Arc<dyn ContextStore>,
    flow: &flow::Flow,
) -> (FlowRunId, Duration) {
    let options = RunOptions {
        jobs: 2,
        on_event: &quiet,
        lease: LeaseOptions::default(),
    };
    let started = Instant::now();
    let id = FlowRunId::new();
    let report = flow::run(runtime, store, flow, id, &options).expect("flow runs");
    assert!(report.is_success(), "{:?}", report.failures().next());
    (id, started.elapsed())
}

/// A store whose async `put`s are timed: each with when it started.
struct Timed {
    inner: Arc<dyn ContextStore>,
    inner_async: Arc<dyn AsyncContextStore>,
    puts: Mutex<Vec<(Instant, Duration)>>,
}

impl Timed {
    fn new(inner: Arc<dyn ContextStore>) -> Self {
        let inner_async = contextstore::store::to_async(inner.clone());
        Self {
            inner,
            inner_async,
            puts: Mutex::new(Vec::new()),
        }
    }

    fn reset(&self) {
        self.puts.lock().unwrap().clear();
    }

    fn all(&self) -> Vec<Duration> {
        self.puts.lock().unwrap().iter().map(|p| p.1).collect()
    }

    fn between(&self, from: Instant, to: Instant) -> Vec<Duration> {
        let puts = self.puts.lock().unwrap();
        puts.iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|p| p.1)
            .collect()
    }
}

impl ContextStore for Timed {
    fn put_text(
        &self,
        run: FlowRunId,
        node: NodeId,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        self.inner.put_text(run, node, value)
    }
    fn get_text(
        &self,
        run: FlowRunId,
        node: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        self.inner.get_text(run, node)
    }
    fn list_keys(&self, run: FlowRunId) -> Result<Vec<NodeId>, ContextStoreError> {
        self.inner.list_keys(run)
    }
    fn put_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError> {
        self.inner.put_global_text(key, value)
    }
    fn upsert_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError> {
        self.inner.upsert_global_text(key, value)
    }
    fn get_global_text(&self, key: &str) -> Result<Option<JsonText>, ContextStoreError> {
        self.inner.get_global_text(key)
    }
    fn put_text_with_provenance(
        &self,
        run: FlowRunId,
        node: NodeId,
        value: &JsonText,
        provenance: &Provenance,
    ) -> Result<(), ContextStoreError> {
        self.inner
            .put_text_with_provenance(run, node, value, provenance)
    }
    fn provenance(
        &self,
        run: FlowRunId,
        node: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError> {
        self.inner.provenance(run, node)
    }
    fn as_async(&self) -> Option<&dyn AsyncContextStore> {
        Some(self)
    }
    fn into_async(self: Arc<Self>) -> Option<Arc<dyn AsyncContextStore>> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl AsyncContextStore for Timed {
    async fn put(
        &self,
        cx: &CallContext,
        run: FlowRunId,
        node: NodeId,
        value: &JsonText,
        provenance: Option<&Provenance>,
    ) -> Result<(), ContextStoreError> {
        let started = Instant::now();
        let result = self.inner_async.put(cx, run, node, value, provenance).await;
        self.puts.lock().unwrap().push((started, started.elapsed()));
        result
    }
    async fn get(
        &self,
        cx: &CallContext,
        run: FlowRunId,
        node: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        self.inner_async.get(cx, run, node).await
    }
    async fn get_many(
        &self,
        cx: &CallContext,
        run: FlowRunId,
        nodes: &[NodeId],
    ) -> Result<Vec<Option<JsonText>>, ContextStoreError> {
        self.inner_async.get_many(cx, run, nodes).await
    }
    async fn get_many_with_provenance(
        &self,
        cx: &CallContext,
        run: FlowRunId,
        nodes: &[NodeId],
    ) -> Result<Vec<Option<Stored>>, ContextStoreError> {
        self.inner_async
            .get_many_with_provenance(cx, run, nodes)
            .await
    }
    async fn get_globals(
        &self,
        cx: &CallContext,
        keys: &[String],
    ) -> Result<Vec<Option<JsonText>>, ContextStoreError> {
        self.inner_async.get_globals(cx, keys).await
    }
    async fn list_keys(
        &self,
        cx: &CallContext,
        run: FlowRunId,
    ) -> Result<Vec<NodeId>, ContextStoreError> {
        self.inner_async.list_keys(cx, run).await
    }
    async fn put_global(
        &self,
        cx: &CallContext,
        key: &str,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        self.inner_async.put_global(cx, key, value).await
    }
    async fn upsert_global(
        &self,
        cx: &CallContext,
        key: &str,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        self.inner_async.upsert_global(cx, key, value).await
    }
    async fn get_global(
        &self,
        cx: &CallContext,
        key: &str,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        self.inner_async.get_global(cx, key).await
    }
    async fn provenance(
        &self,
        cx: &CallContext,
        run: FlowRunId,
        node: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError> {
        self.inner_async.provenance(cx, run, node).await
    }
    fn coordinator(&self) -> Option<&dyn Coordinator> {
        self.inner_async.coordinator()
    }
    fn runs(&self) -> Option<&dyn RunIndex> {
        self.inner_async.runs()
    }
}
