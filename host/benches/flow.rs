//! Flows against the disk: nodes per second of a layered flow of trivial
//! steps, each against the same machine's raw commit rate measured in the
//! same run, on both backends and with one and two workers; and how long
//! a step takes to start in each language.
//!
//! ```sh
//! scripts/build-guests && guest/build-all.sh       # the steps it runs
//! cargo bench -p contextstore --bench flow          # everything (a few minutes)
//! cargo bench -p contextstore --bench flow -- sqlite   # one section: sqlite, postgres, starts
//! ```
//!
//! The flow: layers of [`LAYER`] `bench` steps; a node of layer k > 0 has
//! two upstreams in layer k - 1 (nodes i and i + 1) and reads both before
//! its put, like a step that uses what came before. Run through
//! [`flow::run`] with `--jobs 2`, as `contextstore flow run` does.
//!
//! - **SQLite**: 1,000 nodes on a fresh file with the default options
//!   (`Durability::Full`, group commit). The baseline is what one connection
//!   makes of durable single-row commits on the same disk (WAL,
//!   `synchronous=FULL`, one `INSERT` per transaction), measured just
//!   before and just after each flow (the disk's sync time moves from run
//!   to run on a shared machine). The ratio is the median of three flows,
//!   each against the mean of its two baselines.
//! - **PostgreSQL**: 400 nodes on a throwaway cluster (as the tests start
//!   one) or the server `CONTEXTSTORE_TEST_POSTGRES` names. The baseline
//!   is single-row `INSERT` commits of two clients at once (a flow worker
//!   with two jobs writes from two at once). Then the same flow with two
//!   workers sharing the run (two stores, two worker names, one run id,
//!   two jobs each), against one worker; medians of three.
//! - `FLOW_BENCH_PROFILE=1` runs the flows only (no baselines), for a
//!   profiler: `FLOW_BENCH_PROFILE=1 perf record -g target/release/deps/flow-… --bench sqlite`.
//! - **Step start**: `Runtime::run` of the Rust, Python and JavaScript
//!   example steps (each writes one small output after reading its
//!   upstreams), in-memory store, default pooling allocator, p50 and p99.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contextstore::flow::{self, FlowEvent, LeaseOptions, RunOptions};
use contextstore::runtime::RuntimeConfig;
use contextstore::{ContextStore, FlowRunId, PostgresContextStore, Runtime, SqliteContextStore};
use serde_json::json;

#[path = "../tests/support/postgres_cluster.rs"]
mod postgres_cluster;
#[path = "support/starts.rs"]
mod starts;

/// Nodes in one layer of the flow.
const LAYER: usize = 50;
const SQLITE_NODES: usize = 1_000;
const POSTGRES_NODES: usize = 1_000;
const JOBS: usize = 2;
const ROUNDS: usize = 3;
/// How long each baseline of raw commits runs.
const BASELINE: Duration = Duration::from_millis(700);
/// Step starts timed per language (after a tenth more to warm up).
const STARTS: usize = 2_000;

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = Runtime::with_config(RuntimeConfig {
        cache_dir: Some(guests().join("../../../bench-cache")),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let mut rows = Vec::new();
    if wanted("sqlite") {
        sqlite(&runtime, dir.path(), &mut rows);
    }
    if wanted("postgres") {
        postgres(&runtime, dir.path(), &mut rows);
    }
    if wanted("starts") {
        starts(&runtime, &mut rows);
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

/// One line of the table.
struct Row {
    measure: String,
    value: String,
    baseline: String,
    ratio: f64,
    goal: &'static str,
}

/// Where `scripts/build-guests` puts the Rust steps.
fn guests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest/wasm32-wasip2/release")
}

/// Where `guest/build-all.sh` puts the other languages' steps.
fn components() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/components")
}

/// A layered flow of `nodes` bench steps (see the module docs).
fn layered_flow(dir: &Path, nodes: usize) -> flow::Flow {
    let wasm = guests().join("bench.wasm");
    let mut text = String::from("name = \"layers\"\n");
    for n in 0..nodes {
        let (layer, i) = (n / LAYER, n % LAYER);
        text += &format!("[nodes.n{layer}_{i}]\ncomponent = {wasm:?}\n");
        if layer > 0 {
            let up = layer - 1;
            let next = (i + 1) % LAYER;
            text += &format!(
                "upstream = [\"n{up}_{i}\", \"n{up}_{next}\"]\nparams = {{ upstream = true }}\n"
            );
        }
    }
    let path = dir.join(format!("layers{nodes}.toml"));
    std::fs::write(&path, text).expect("write flow");
    flow::load(&path).expect("flow loads")
}

fn quiet(_: &FlowEvent<'_>) {}

/// Runs `flow` as `run` on `store` as worker `worker`; returns how long it took.
fn run_flow(
    runtime: &Runtime,
    store: &Arc<dyn ContextStore>,
    flow: &flow::Flow,
    run: FlowRunId,
    worker: &str,
) -> Duration {
    let options = RunOptions {
        jobs: JOBS,
        on_event: &quiet,
        lease: LeaseOptions {
            worker: worker.into(),
            ..LeaseOptions::default()
        },
    };
    let started = Instant::now();
    let report = flow::run(runtime, store, flow, run, &options).expect("flow runs");
    let elapsed = started.elapsed();
    assert!(report.is_success(), "{:?}", report.failures().next());
    elapsed
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn rate(per_second: f64) -> String {
    format!("{per_second:.0}/s")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Whether only the flows run (`FLOW_BENCH_PROFILE`), not their baselines.
fn profiling() -> bool {
    std::env::var_os("FLOW_BENCH_PROFILE").is_some()
}

/// Durable single-row commits per second of one SQLite connection.
fn sqlite_commits(path: &Path) -> f64 {
    if profiling() {
        return f64::NAN;
    }
    let _ = std::fs::remove_file(path);
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, value TEXT NOT NULL);",
    )
    .expect("set up");
    let mut insert = conn
        .prepare("INSERT INTO t (value) VALUES (?1)")
        .expect("prepare");
    let started = Instant::now();
    let mut commits = 0;
    while started.elapsed() < BASELINE {
        insert.execute(["{\"ok\":true}"]).expect("insert");
        commits += 1;
    }
    per_second(commits, started.elapsed())
}

fn sqlite(runtime: &Runtime, dir: &Path, rows: &mut Vec<Row>) {
    let flow = layered_flow(dir, SQLITE_NODES);
    let baseline_file = dir.join("commits.db");
    // Warm up: the component compiled and cached, the pool's slots touched.
    let warm: Arc<dyn ContextStore> =
        Arc::new(SqliteContextStore::open(dir.join("warm.db")).expect("store opens"));
    run_flow(runtime, &warm, &flow, FlowRunId::new(), "bench");
    let (mut ratios, mut flows, mut raws) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let before = sqlite_commits(&baseline_file);
        let store: Arc<dyn ContextStore> = Arc::new(
            SqliteContextStore::open(dir.join(format!("flow{round}.db"))).expect("store opens"),
        );
        let elapsed = run_flow(runtime, &store, &flow, FlowRunId::new(), "bench");
        let after = sqlite_commits(&baseline_file);
        let nodes = per_second(SQLITE_NODES, elapsed);
        let raw = (before + after) / 2.0;
        eprintln!(
            "sqlite round {round}: {nodes:.0} nodes/s; commits/s {before:.0} before, {after:.0} after"
        );
        ratios.push(nodes / raw);
        flows.push(nodes);
        raws.push(raw);
    }
    rows.push(Row {
        measure: format!(
            "SQLite, {SQLITE_NODES}-node layered flow, --jobs {JOBS}: nodes/s ÷ one connection's durable single-row commits/s"
        ),
        value: rate(median(flows)),
        baseline: rate(median(raws)),
        ratio: median(ratios),
        goal: "≥ 1x",
    });
}

/// Single-row commits per second of `clients` connections at once, and the
/// server's CPU time per commit.
fn postgres_commits(url: &str, clients: usize) -> (f64, Duration) {
    if profiling() {
        return (f64::NAN, Duration::ZERO);
    }
    let mut setup = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    setup
        .batch_execute(
            "DROP TABLE IF EXISTS bench_commits;
             CREATE TABLE bench_commits (id bigserial PRIMARY KEY, value text NOT NULL)",
        )
        .expect("set up");
    let mut connections: Vec<_> = (0..clients)
        .map(|_| {
            let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
            let insert = client
                .prepare("INSERT INTO bench_commits (value) VALUES ($1)")
                .expect("prepare");
            (client, insert)
        })
        .collect();
    let (_, server_before) = cpu_times();
    let started = Instant::now();
    let commits: usize = std::thread::scope(|scope| {
        let threads: Vec<_> = connections
            .iter_mut()
            .map(|(client, insert)| {
                scope.spawn(move || {
                    let mut commits = 0;
                    while started.elapsed() < BASELINE {
                        client
                            .execute(&*insert, &[&"{\"ok\":true}"])
                            .expect("insert");
                        commits += 1;
                    }
                    commits
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("client")).sum()
    });
    let elapsed = started.elapsed();
    let (_, server_after) = cpu_times();
    let per_commit = server_cpu(&server_before, &server_after) / commits.max(1) as u32;
    (per_second(commits, elapsed), per_commit)
}

/// CPU time used so far by this process, and by each `postgres` process
/// (the server's), by pid, from `/proc`.
fn cpu_times() -> (Duration, HashMap<u32, Duration>) {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let of = |stat: &str| -> Option<Duration> {
        // The fields after the command name, which is in parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let user: f64 = fields.get(11)?.parse().ok()?;
        let system: f64 = fields.get(12)?.parse().ok()?;
        Some(Duration::from_secs_f64((user + system) / ticks))
    };
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| of(&s))
        .unwrap_or_default();
    let mut server = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if stat.contains("(postgres)") {
            server.insert(pid, of(&stat).unwrap_or_default());
        }
    }
    (own, server)
}

/// The server's CPU time between two readings of [`cpu_times`]: each
/// process's growth (a process started since counts from zero; one that
/// ended is left out).
fn server_cpu(before: &HashMap<u32, Duration>, after: &HashMap<u32, Duration>) -> Duration {
    after
        .iter()
        .map(|(pid, cpu)| cpu.saturating_sub(before.get(pid).copied().unwrap_or_default()))
        .sum()
}

/// One flow over PostgreSQL: wall time, and CPU time of this process and
/// of the server.
struct Measured {
    elapsed: Duration,
    client_cpu: Duration,
    server_cpu: Duration,
}

/// Runs `flow` once with one worker for each of `stores`, sharing one run:
/// how long until the last one finished, and the CPU it took.
fn postgres_flow(
    runtime: &Runtime,
    stores: &[Arc<dyn ContextStore>],
    flow: &flow::Flow,
) -> Measured {
    let run = FlowRunId::new();
    let (client, server) = cpu_times();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (w, store) in stores.iter().enumerate() {
            scope.spawn(move || run_flow(runtime, store, flow, run, &format!("bench-{w}")));
        }
    });
    let elapsed = started.elapsed();
    let (client_after, server_after) = cpu_times();
    Measured {
        elapsed,
        client_cpu: client_after.saturating_sub(client),
        server_cpu: server_cpu(&server, &server_after),
    }
}

/// CPU per node of the worker process(es) and the server, and the share of
/// the machine's cores they kept busy.
fn cpu_note(m: &Measured) -> String {
    let per_node = |d: Duration| d.as_secs_f64() * 1e6 / POSTGRES_NODES as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let busy =
        (m.client_cpu + m.server_cpu).as_secs_f64() / (m.elapsed.as_secs_f64() * cores as f64);
    format!(
        "CPU/node: worker(s) {:.0} µs, server {:.0} µs; {:.0}% of {cores} cores busy",
        per_node(m.client_cpu),
        per_node(m.server_cpu),
        busy * 100.0
    )
}

fn postgres(runtime: &Runtime, dir: &Path, rows: &mut Vec<Row>) {
    let url = postgres_cluster::fresh_database();
    let flow = layered_flow(dir, POSTGRES_NODES);
    // One store (one connection pool) a worker, kept from run to run as a
    // long-running worker keeps its own; warmed up by a first run.
    let stores: Vec<Arc<dyn ContextStore>> = (0..2)
        .map(|_| {
            Arc::new(PostgresContextStore::connect(&url).expect("postgres connects"))
                as Arc<dyn ContextStore>
        })
        .collect();
    postgres_flow(runtime, &stores, &flow);
    let (mut raws, mut ones, mut twos) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (raw, raw_cpu) = postgres_commits(&url, JOBS);
        let one_run = postgres_flow(runtime, &stores[..1], &flow);
        let two_run = postgres_flow(runtime, &stores, &flow);
        let one = per_second(POSTGRES_NODES, one_run.elapsed);
        let two = per_second(POSTGRES_NODES, two_run.elapsed);
        eprintln!(
            "postgres round {round}: {raw:.0} commits/s ({JOBS} clients, server CPU/commit {:.0} µs); 1 worker {one:.0} nodes/s ({}), 2 workers {two:.0} nodes/s ({})",
            raw_cpu.as_secs_f64() * 1e6,
            cpu_note(&one_run),
            cpu_note(&two_run)
        );
        raws.push(raw);
        ones.push(one);
        twos.push(two);
    }
    let (raw, one, two) = (median(raws), median(ones), median(twos));
    rows.push(Row {
        measure: format!(
            "PostgreSQL, {POSTGRES_NODES}-node layered flow, 1 worker, --jobs {JOBS}: nodes/s ÷ single-row commits/s of {JOBS} clients"
        ),
        value: rate(one),
        baseline: rate(raw),
        ratio: one / raw,
        goal: "≥ 0.8x",
    });
    rows.push(Row {
        measure: "PostgreSQL, the same flow: 2 workers ÷ 1 worker, nodes/s".into(),
        value: rate(two),
        baseline: rate(one),
        ratio: two / one,
        goal: "≥ 1.5x",
    });
}

/// p50 and p99 of [`STARTS`] runs of the step in `wasm` (see
/// [`starts::start_latency`]); `None` when it is not built.
fn start_latency(
    runtime: &Runtime,
    wasm: &Path,
    params: serde_json::Value,
    upstream: &[(&str, serde_json::Value)],
) -> Option<(Duration, Duration)> {
    if !wasm.exists() {
        eprintln!("skipped {}: not built", wasm.display());
        return None;
    }
    let component = runtime.load_file(wasm).expect("component loads");
    Some(starts::start_latency(
        runtime, &component, &params, upstream, STARTS,
    ))
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn starts(runtime: &Runtime, rows: &mut Vec<Row>) {
    let upstream = [("a", json!({"ok": true})), ("b", json!({"ok": true}))];
    let Some((rust50, rust99)) = start_latency(
        runtime,
        &guests().join("bench.wasm"),
        json!({"upstream": true}),
        &upstream,
    ) else {
        return;
    };
    let steps = [
        (
            "Python (words)",
            components().join("python-words.wasm"),
            json!(null),
            vec![("greet", json!({"greeting": "Hello, Ada!"}))],
        ),
        (
            "JavaScript (join)",
            components().join("js-join.wasm"),
            json!(null),
            vec![
                ("words", json!({"words": ["Hello,", "Ada!"]})),
                ("count", json!({"length": 11})),
            ],
        ),
    ];
    rows.push(Row {
        measure: format!(
            "step start + run, Rust (bench, reads 2 upstreams), p50 (p99: {})",
            micros(rust99)
        ),
        value: micros(rust50),
        baseline: micros(rust50),
        ratio: 1.0,
        goal: "",
    });
    for (name, wasm, params, upstream) in steps {
        let Some((p50, p99)) = start_latency(runtime, &wasm, params, &upstream) else {
            continue;
        };
        rows.push(Row {
            measure: format!(
                "step start + run, {name}, p50 ÷ Rust p50 (p99: {})",
                micros(p99)
            ),
            value: micros(p50),
            baseline: micros(rust50),
            ratio: p50.as_secs_f64() / rust50.as_secs_f64(),
            goal: "≤ 10x",
        });
    }
}
