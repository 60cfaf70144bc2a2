//! The SQLite store under load, as ratios measured in one run.
//!
//! ```sh
//! cargo bench -p contextstore --bench store
//! ```
//!
//! 1. Write throughput: `put` of small values with `Durability::Full`
//!    (the default, fsync per commit) and `Durability::Normal`.
//! 2. Read latency while another thread writes continuously: this store
//!    (reads on their own connections, WAL) against the original design,
//!    one connection behind one mutex, where a read waits for the write in
//!    progress. The original is modelled by taking one lock around every
//!    call of the same store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contextstore::{
    ContextStore, Durability, FlowRunId, NodeId, SqliteContextStore, SqliteOptions,
};
use serde_json::json;

const PUTS: usize = 500;
const READS: usize = 2_000;

fn open(dir: &std::path::Path, durability: Durability) -> SqliteContextStore {
    let options = SqliteOptions {
        durability,
        ..SqliteOptions::default()
    };
    SqliteContextStore::open_with(dir.join(format!("{durability:?}.db")), options)
        .expect("store opens")
}

fn puts_per_second(store: &SqliteContextStore) -> f64 {
    let run = FlowRunId::new();
    let value = json!({"result": "x".repeat(200), "n": 42});
    let started = Instant::now();
    for _ in 0..PUTS {
        store.put(run, NodeId::new(), &value).expect("put");
    }
    PUTS as f64 / started.elapsed().as_secs_f64()
}

/// p50 and p99 latency of `get` while a writer thread puts continuously;
/// `one_lock` serialises every call behind one mutex, as the original did.
fn read_latency_under_writes(
    store: Arc<SqliteContextStore>,
    one_lock: bool,
) -> (Duration, Duration) {
    let lock = Arc::new(Mutex::new(()));
    let run = FlowRunId::new();
    let node = NodeId::new();
    store.put(run, node, &json!({"read": "me"})).expect("put");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, lock, stop) = (store.clone(), lock.clone(), stop.clone());
        std::thread::spawn(move || {
            let value = json!("y".repeat(4096));
            while !stop.load(Ordering::Relaxed) {
                let _held = one_lock.then(|| lock.lock().expect("lock"));
                store.put(run, NodeId::new(), &value).expect("put");
            }
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let mut latencies = Vec::with_capacity(READS);
    for _ in 0..READS {
        // Reads arrive now and then, as a flow's steps do, rather than
        // back to back (which would also starve the writer of the lock).
        std::thread::sleep(Duration::from_micros(200));
        let started = Instant::now();
        {
            let _held = one_lock.then(|| lock.lock().expect("lock"));
            store.get(run, node).expect("get");
        }
        latencies.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    latencies.sort();
    (latencies[READS / 2], latencies[READS * 99 / 100])
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = puts_per_second(&open(dir.path(), Durability::Full));
    let normal = puts_per_second(&open(dir.path(), Durability::Normal));
    println!("| write durability | puts/s | ratio |");
    println!("| --- | ---: | ---: |");
    println!("| Full (default) | {full:.0} | 1.0x |");
    println!("| Normal | {normal:.0} | {:.1}x |", normal / full);
    println!();

    let store = Arc::new(open(dir.path(), Durability::Full));
    let (ours_p50, ours_p99) = read_latency_under_writes(store.clone(), false);
    let (lock_p50, lock_p99) = read_latency_under_writes(store, true);
    println!("| reads during continuous writes | p50 | p99 |");
    println!("| --- | ---: | ---: |");
    println!("| one connection behind one mutex (original) | {lock_p50:.1?} | {lock_p99:.1?} |");
    println!("| reader pool + WAL (this store) | {ours_p50:.1?} | {ours_p99:.1?} |");
    println!(
        "| ratio (original / this store) | {:.1}x | {:.1}x |",
        lock_p50.as_secs_f64() / ours_p50.as_secs_f64(),
        lock_p99.as_secs_f64() / ours_p99.as_secs_f64()
    );
}
