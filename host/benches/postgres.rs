//! Durable writes with 16 concurrent writers: PostgreSQL against SQLite,
//! measured in one run.
//!
//! ```sh
//! cargo bench -p contextstore --bench postgres
//! ```
//!
//! 16 threads each `put` small values as fast as they can into one store,
//! with every commit durable: SQLite with `Durability::Full` (fsync per
//! commit), PostgreSQL with its defaults (`fsync=on`,
//! `synchronous_commit=on`). PostgreSQL is measured twice: through the
//! blocking `ContextStore` (16 threads), and through its async interface
//! (16 tasks on a 2-thread tokio runtime, no thread per writer). The PostgreSQL server is a throwaway cluster
//! on a Unix socket in a temporary directory (as the tests use), or the one
//! `CONTEXTSTORE_TEST_POSTGRES` names (a role that may create databases).

use std::sync::Arc;
use std::time::Instant;

use contextstore::store::CallContext;
use contextstore::{ContextStore, FlowRunId, NodeId, PostgresContextStore, SqliteContextStore};
use serde_json::json;

#[path = "../tests/support/postgres_cluster.rs"]
mod postgres_cluster;

const WRITERS: usize = 16;
const PUTS_PER_WRITER: usize = 200;

/// Puts per second of `WRITERS` threads writing at once.
fn concurrent_puts(store: Arc<dyn ContextStore>) -> f64 {
    let run = FlowRunId::new();
    let value = json!({"result": "x".repeat(200), "n": 42});
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..WRITERS {
            s.spawn(|| {
                for _ in 0..PUTS_PER_WRITER {
                    store.put(run, NodeId::new(), &value).expect("put");
                }
            });
        }
    });
    (WRITERS * PUTS_PER_WRITER) as f64 / started.elapsed().as_secs_f64()
}

/// Puts per second of `WRITERS` async tasks writing at once.
fn concurrent_async_puts(store: Arc<dyn contextstore::store::AsyncContextStore>) -> f64 {
    let run = FlowRunId::new();
    let value = contextstore::store::encode(&json!({"result": "x".repeat(200), "n": 42}))
        .expect("value encodes");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    runtime.block_on(async {
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (store, value) = (store.clone(), value.clone());
                tokio::spawn(async move {
                    for _ in 0..PUTS_PER_WRITER {
                        store
                            .put(&CallContext::none(), run, NodeId::new(), &value, None)
                            .await
                            .expect("put");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer task");
        }
    });
    (WRITERS * PUTS_PER_WRITER) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite: Arc<dyn ContextStore> =
        Arc::new(SqliteContextStore::open(dir.path().join("bench.db")).expect("sqlite opens"));
    let postgres = Arc::new(
        PostgresContextStore::connect(&postgres_cluster::fresh_database())
            .expect("postgres connects"),
    );
    let postgres_async: Arc<dyn contextstore::store::AsyncContextStore> = postgres.clone();
    let postgres: Arc<dyn ContextStore> = postgres;
    // Warm up both (connections, caches), then measure.
    concurrent_puts(sqlite.clone());
    concurrent_puts(postgres.clone());
    let sqlite_rate = concurrent_puts(sqlite);
    let postgres_rate = concurrent_puts(postgres);
    let async_rate = concurrent_async_puts(postgres_async);
    println!("durable puts/s, {WRITERS} concurrent writers, {PUTS_PER_WRITER} puts each:");
    println!("| store | puts/s | ratio |");
    println!("| --- | ---: | ---: |");
    println!("| SQLite (Durability::Full) | {sqlite_rate:.0} | 1.0x |");
    println!(
        "| PostgreSQL (fsync, synchronous_commit on) | {postgres_rate:.0} | {:.1}x |",
        postgres_rate / sqlite_rate
    );
    println!(
        "| PostgreSQL, async ({WRITERS} tasks) | {async_rate:.0} | {:.1}x |",
        async_rate / sqlite_rate
    );
}
