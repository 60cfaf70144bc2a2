//! Throughput of the store, the sandbox and the flow runner, as ratios
//! measured in one run against baselines on the same machine.
//!
//! ```sh
//! scripts/build-guests                                  # the bench step
//! cargo bench -p contextstore --bench throughput
//! ```
//!
//! Prints one table; each row is a measure, its baseline, and their ratio
//! next to the goal (`cargo bench -p contextstore --bench throughput --
//! starts` runs only the sections whose name contains `starts`: `writes`,
//! `reads`, `starts`, `gets`, `flow`):
//!
//! 1. Durable (`Full`) puts/s with 16 writer threads against 1 writer.
//! 2. `Full` against `Normal` durability, 16 writers each.
//! 3. `Full` with group commit against without (`group_commit: false`),
//!    16 writers each.
//! 4. Read latency under a busy durable writer: the original design (one
//!    connection behind one mutex, modelled as one `Mutex` around every
//!    call to a store with group commit off, readers sharing that lock)
//!    against this store.
//! 5. Reads/s with a busy durable writer against with none.
//! 6. Instantiate and run a trivial Rust step (one small `put`, in-memory
//!    store), p50 and p99, with the pooling allocator and without.
//! 7. A guest `get` against the native `get_text`, for a missing key and a
//!    64 KiB value: one invocation makes N gets in a loop; the cost of one
//!    is (time with N - time with 0) / N.
//! 8. Nodes/s of a 1,000-node fan-out/fan-in flow of trivial steps, end to
//!    end, against the same store calls alone (a `get_text` and a `put` per
//!    node, on as many threads as the flow's jobs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contextstore::flow::{self, FlowEvent, RunOptions};
use contextstore::runtime::{PoolConfig, RuntimeConfig};
use contextstore::{
    ContextStore, Durability, FlowRunId, Grant, Invocation, Limits, NodeId, Runtime,
    SqliteContextStore, SqliteOptions, StepComponent,
};
use serde_json::json;

#[path = "support/starts.rs"]
mod starts;

/// How long each throughput window runs.
const WINDOW: Duration = Duration::from_millis(1500);
const WRITERS: usize = 16;
/// Step invocations timed per allocator.
const STARTS: usize = 3_000;
/// Gets per invocation in the guest-call measure.
const GETS: u32 = 2_000;
const FLOW_NODES: usize = 1_000;
const FLOW_JOBS: usize = 4;

/// One line of the table.
struct Row {
    measure: String,
    value: String,
    baseline: String,
    ratio: f64,
    goal: &'static str,
}

/// The sections, by the name a filter argument matches.
const SECTIONS: [&str; 5] = ["writes", "reads", "starts", "gets", "flow"];

fn main() {
    // `cargo bench -- NAME` runs only the sections whose name contains NAME.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rows = Vec::new();
    let have_step = std::fs::metadata(bench_wasm()).is_ok();
    if !have_step {
        eprintln!(
            "skipped the step measures: {} is missing; build it with scripts/build-guests",
            bench_wasm().display()
        );
    }
    for name in SECTIONS.into_iter().filter(|name| wanted(name)) {
        match name {
            "writes" => writes(dir.path(), &mut rows),
            "reads" => reads(dir.path(), &mut rows),
            "starts" if have_step => starts(&mut rows),
            "gets" if have_step => guest_gets(dir.path(), &mut rows),
            "flow" if have_step => flow_nodes(dir.path(), &mut rows),
            _ => {}
        }
    }
    println!("| measure | value | baseline | ratio | goal |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.2}x | {} |",
            row.measure, row.value, row.baseline, row.ratio, row.goal
        );
    }
}

fn bench_wasm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest/wasm32-wasip2/release/bench.wasm")
}

fn open(path: PathBuf, durability: Durability, group_commit: bool) -> Arc<SqliteContextStore> {
    let options = SqliteOptions {
        durability,
        group_commit,
        ..SqliteOptions::default()
    };
    Arc::new(SqliteContextStore::open_with(path, options).expect("store opens"))
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn rate(per_second: f64) -> String {
    if per_second >= 10_000.0 {
        format!("{:.1}k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0}/s")
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Puts/s of `writers` threads putting small values for one window.
fn puts_per_second(store: &Arc<SqliteContextStore>, writers: usize) -> f64 {
    let run = FlowRunId::new();
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..writers {
            scope.spawn(|| {
                let value = json!({"result": "x".repeat(200), "n": 42});
                while !stop.load(Ordering::Relaxed) {
                    store.put(run, NodeId::new(), &value).expect("put");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(WINDOW);
        stop.store(true, Ordering::Relaxed);
    });
    per_second(count.load(Ordering::Relaxed), started.elapsed())
}

fn writes(dir: &Path, rows: &mut Vec<Row>) {
    let full = open(dir.join("full.db"), Durability::Full, true);
    let one = puts_per_second(&full, 1);
    let many = puts_per_second(&full, WRITERS);
    let normal = puts_per_second(
        &open(dir.join("normal.db"), Durability::Normal, true),
        WRITERS,
    );
    let alone = puts_per_second(
        &open(dir.join("alone.db"), Durability::Full, false),
        WRITERS,
    );
    rows.push(Row {
        measure: format!("durable puts/s, {WRITERS} writers ÷ 1 writer"),
        value: rate(many),
        baseline: rate(one),
        ratio: many / one,
        goal: "≥ 4x",
    });
    rows.push(Row {
        measure: format!("durable (`Full`) ÷ `Normal` puts/s, {WRITERS} writers"),
        value: rate(many),
        baseline: rate(normal),
        ratio: many / normal,
        goal: "≥ 0.8x",
    });
    rows.push(Row {
        measure: format!("durable puts/s, {WRITERS} writers, group commit ÷ without"),
        value: rate(many),
        baseline: rate(alone),
        ratio: many / alone,
        goal: "> 1x",
    });
}

/// A writer thread putting 4 KiB values until `stop`, optionally holding
/// `lock` around each call.
fn busy_writer<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    store: &'s SqliteContextStore,
    lock: Option<&'s Mutex<()>>,
    stop: &'s AtomicBool,
) {
    scope.spawn(move || {
        let run = FlowRunId::new();
        let value = json!("y".repeat(4096));
        while !stop.load(Ordering::Relaxed) {
            let _held = lock.map(|l| l.lock().expect("lock"));
            store.put(run, NodeId::new(), &value).expect("put");
        }
    });
}

/// p50 and p99 latency of `get_text` calls arriving every 200 µs (as a
/// flow's steps do) while a writer puts continuously; `lock` is taken
/// around every call, reads and writes, when given.
fn paced_read_latency(
    store: &SqliteContextStore,
    lock: Option<&Mutex<()>>,
) -> (Duration, Duration) {
    let run = FlowRunId::new();
    let node = NodeId::new();
    store.put(run, node, &json!({"read": "me"})).expect("put");
    let stop = AtomicBool::new(false);
    let mut latencies = Vec::new();
    std::thread::scope(|scope| {
        busy_writer(scope, store, lock, &stop);
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        while started.elapsed() < WINDOW {
            std::thread::sleep(Duration::from_micros(200));
            let call = Instant::now();
            {
                let _held = lock.map(|l| l.lock().expect("lock"));
                store.get_text(run, node).expect("get");
            }
            latencies.push(call.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
    });
    latencies.sort();
    let at = |q: usize| latencies[(latencies.len() * q / 100).min(latencies.len() - 1)];
    (at(50), at(99))
}

/// Back-to-back `get_text` calls per second on one thread, with or without
/// a busy durable writer beside it.
fn reads_per_second(store: &SqliteContextStore, with_writer: bool) -> f64 {
    let run = FlowRunId::new();
    let node = NodeId::new();
    store.put(run, node, &json!({"read": "me"})).expect("put");
    let stop = AtomicBool::new(false);
    let mut count = 0u64;
    let mut elapsed = Duration::ZERO;
    std::thread::scope(|scope| {
        if with_writer {
            busy_writer(scope, store, None, &stop);
            std::thread::sleep(Duration::from_millis(50));
        }
        let started = Instant::now();
        while started.elapsed() < WINDOW {
            store.get_text(run, node).expect("get");
            count += 1;
        }
        elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
    });
    per_second(count, elapsed)
}

fn reads(dir: &Path, rows: &mut Vec<Row>) {
    let ours = open(dir.join("reads.db"), Durability::Full, true);
    let (ours_p50, ours_p99) = paced_read_latency(&ours, None);
    let original = open(dir.join("original.db"), Durability::Full, false);
    let lock = Mutex::new(());
    let (lock_p50, lock_p99) = paced_read_latency(&original, Some(&lock));
    rows.push(Row {
        measure: "read p50 under a busy durable writer: original (one mutex) ÷ this store".into(),
        value: micros(lock_p50),
        baseline: micros(ours_p50),
        ratio: lock_p50.as_secs_f64() / ours_p50.as_secs_f64(),
        goal: "> 1x",
    });
    rows.push(Row {
        measure: "read p99 under a busy durable writer: original (one mutex) ÷ this store".into(),
        value: micros(lock_p99),
        baseline: micros(ours_p99),
        ratio: lock_p99.as_secs_f64() / ours_p99.as_secs_f64(),
        goal: "> 1x",
    });
    let idle = reads_per_second(&ours, false);
    let busy = reads_per_second(&ours, true);
    rows.push(Row {
        measure: "reads/s with a busy durable writer ÷ with none".into(),
        value: rate(busy),
        baseline: rate(idle),
        ratio: busy / idle,
        goal: "≥ 0.8x",
    });
}

fn runtime(pool: Option<PoolConfig>) -> Runtime {
    Runtime::with_config(RuntimeConfig {
        cache_dir: None,
        pool,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn load(runtime: &Runtime) -> StepComponent {
    runtime.load_file(bench_wasm()).expect("bench.wasm loads")
}

/// p50 and p99 of instantiating and running the trivial step.
fn start_latency(runtime: &Runtime) -> (Duration, Duration) {
    starts::start_latency(runtime, &load(runtime), &json!(null), &[], STARTS)
}

fn starts(rows: &mut Vec<Row>) {
    let (pool_p50, pool_p99) = start_latency(&runtime(Some(PoolConfig::default())));
    let (plain_p50, plain_p99) = start_latency(&runtime(None));
    rows.push(Row {
        measure: "instantiate + run a trivial Rust step, p50: pooling ÷ on-demand allocator".into(),
        value: micros(pool_p50),
        baseline: micros(plain_p50),
        ratio: pool_p50.as_secs_f64() / plain_p50.as_secs_f64(),
        goal: "p50 ≤ 20 µs",
    });
    rows.push(Row {
        measure: "instantiate + run a trivial Rust step, p99: pooling ÷ on-demand allocator".into(),
        value: micros(pool_p99),
        baseline: micros(plain_p99),
        ratio: pool_p99.as_secs_f64() / plain_p99.as_secs_f64(),
        goal: "",
    });
}

/// The guest's cost of one `get` of `node`: the best of a few invocations
/// making `GETS` gets, less the best of a few making none, per get.
fn guest_get_cost(
    runtime: &Runtime,
    component: &StepComponent,
    store: &Arc<dyn ContextStore>,
    run: FlowRunId,
    node: NodeId,
) -> Duration {
    // `node` is no upstream of the getting step: its reads need the whole run.
    let (grant, limits) = (Grant::default().read_whole_run(), Limits::default());
    let best = |gets: u32| {
        (0..7)
            .map(|_| {
                let params = json!({"gets": gets, "node": node});
                let invocation = Invocation::new(run, NodeId::new()).with_params(params);
                let started = Instant::now();
                let outcome = runtime
                    .run(component, store, &invocation, &grant, &limits)
                    .expect("bench step runs");
                let elapsed = started.elapsed();
                let got = outcome.value().expect("output");
                assert_eq!(got["gets"], json!(gets), "{got}");
                elapsed
            })
            .min()
            .expect("rounds")
    };
    let with = best(GETS);
    let without = best(0);
    with.saturating_sub(without) / GETS
}

/// The native cost of one `get_text` of `node`: the best of a few loops.
fn native_get_cost(store: &Arc<dyn ContextStore>, run: FlowRunId, node: NodeId) -> Duration {
    (0..7)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..GETS {
                std::hint::black_box(store.get_text(run, node).expect("get"));
            }
            started.elapsed() / GETS
        })
        .min()
        .expect("rounds")
}

fn guest_gets(dir: &Path, rows: &mut Vec<Row>) {
    let runtime = runtime(Some(PoolConfig::default()));
    let component = load(&runtime);
    let store: Arc<dyn ContextStore> = open(dir.join("gets.db"), Durability::Full, true);
    let run = FlowRunId::new();
    let big = NodeId::new();
    store
        .put(run, big, &json!("z".repeat(64 * 1024 - 2)))
        .expect("put");
    for (what, node) in [("missing key", NodeId::new()), ("64 KiB value", big)] {
        let guest = guest_get_cost(&runtime, &component, &store, run, node);
        let native = native_get_cost(&store, run, node);
        rows.push(Row {
            measure: format!("guest `get` ÷ native `get_text`, {what}"),
            value: micros(guest),
            baseline: micros(native),
            ratio: guest.as_secs_f64() / native.as_secs_f64(),
            goal: "≤ 1.2x",
        });
    }
}

/// A fan-out/fan-in flow of `FLOW_NODES` bench steps: a source, the middle
/// nodes each with the source upstream, and a sink with all of them.
fn wide_flow(dir: &Path) -> flow::Flow {
    let wasm = bench_wasm();
    let mut text = format!("name = \"wide\"\n[nodes.source]\ncomponent = {wasm:?}\n");
    let middle: Vec<String> = (0..FLOW_NODES - 2).map(|i| format!("m{i}")).collect();
    for name in &middle {
        text += &format!("[nodes.{name}]\ncomponent = {wasm:?}\nupstream = [\"source\"]\n");
    }
    text += &format!("[nodes.sink]\ncomponent = {wasm:?}\nupstream = {middle:?}\n");
    let path = dir.join("wide.toml");
    std::fs::write(&path, text).expect("write flow");
    flow::load(&path).expect("flow loads")
}

fn flow_nodes(dir: &Path, rows: &mut Vec<Row>) {
    let runtime = runtime(Some(PoolConfig::default()));
    load(&runtime);
    let flow = wide_flow(dir);
    let quiet = |_: &FlowEvent<'_>| {};
    let options = RunOptions {
        jobs: FLOW_JOBS,
        lease: contextstore::flow::LeaseOptions::default(),
        on_event: &quiet,
    };
    let mut best_flow = Duration::MAX;
    let mut best_calls = Duration::MAX;
    for round in 0..3 {
        let store: Arc<dyn ContextStore> =
            open(dir.join(format!("flow{round}.db")), Durability::Full, true);
        let started = Instant::now();
        let report =
            flow::run(&runtime, &store, &flow, FlowRunId::new(), &options).expect("flow runs");
        best_flow = best_flow.min(started.elapsed());
        assert!(report.is_success(), "{:?}", report.failures().next());

        // The same store calls alone: per node, the runner's check for a
        // stored output and the step's put, on as many threads as jobs.
        let store = open(dir.join(format!("calls{round}.db")), Durability::Full, true);
        let run = FlowRunId::new();
        let next = AtomicU64::new(0);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..FLOW_JOBS {
                scope.spawn(|| {
                    while next.fetch_add(1, Ordering::Relaxed) < FLOW_NODES as u64 {
                        let node = NodeId::new();
                        std::hint::black_box(store.get_text(run, node).expect("get"));
                        store.put(run, node, &json!({"ok": true})).expect("put");
                    }
                });
            }
        });
        best_calls = best_calls.min(started.elapsed());
    }
    let nodes = per_second(FLOW_NODES as u64, best_flow);
    let calls = per_second(FLOW_NODES as u64, best_calls);
    rows.push(Row {
        measure: format!(
            "{FLOW_NODES}-node fan-out/fan-in flow, nodes/s end to end ÷ its store calls alone"
        ),
        value: rate(nodes),
        baseline: rate(calls),
        ratio: nodes / calls,
        goal: "",
    });
}
