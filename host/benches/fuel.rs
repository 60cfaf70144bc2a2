//! What fuel metering costs: the same CPU-bound guest loop run without a
//! fuel budget (no metering) and with one (metered), as a ratio measured in
//! one run.
//!
//! ```sh
//! scripts/build-guests                       # the Rust components
//! cargo bench -p contextstore --bench fuel
//! ```
//!
//! The hostile step's `count` mode counts to `N` in a loop; each way is the
//! best of `ROUNDS` runs, each a fresh instance. A budget of `u64::MAX` is
//! never used up, so both ways do the same work.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use contextstore::runtime::{LoadOptions, RuntimeConfig};
use contextstore::{
    ContextStore, FlowRunId, Grant, Invocation, Limits, NodeId, Runtime, SqliteContextStore,
};
use serde_json::json;

const ROUNDS: usize = 5;
const N: u64 = 300_000_000;

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guest/wasm32-wasip2/release/hostile.wasm");
    let runtime = Runtime::with_config(RuntimeConfig::without_cache()).expect("runtime");
    // Both variants compiled at load, outside every invocation's time.
    let Ok(component) = runtime.load_file_with(&path, LoadOptions::metered()) else {
        eprintln!("{} is missing: run scripts/build-guests", path.display());
        return;
    };
    let store: Arc<dyn ContextStore> = Arc::new(SqliteContextStore::in_memory().expect("store"));
    let time = |fuel: Option<u64>| {
        let limits = Limits {
            timeout: Duration::from_secs(600),
            fuel,
            ..Limits::default()
        };
        let invocation = Invocation::new(FlowRunId::new(), NodeId::new())
            .with_params(json!({"mode": "count", "n": N}));
        let started = Instant::now();
        let out = runtime
            .run(&component, &store, &invocation, &Grant::default(), &limits)
            .expect("the loop finishes");
        let elapsed = started.elapsed();
        assert_eq!(out.value().expect("JSON"), json!({ "count": N }));
        elapsed
    };
    // Compile the metered variant before timing.
    time(Some(u64::MAX));
    let (mut plain, mut metered) = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        plain = plain.min(time(None));
        metered = metered.min(time(Some(u64::MAX)));
    }
    println!("| guest loop ({N} iterations) | time (best of {ROUNDS}) |");
    println!("| --- | ---: |");
    println!("| no fuel budget (not metered) | {plain:.2?} |");
    println!("| fuel budget (metered) | {metered:.2?} |");
    println!(
        "| metered / not metered | {:.2}x |",
        metered.as_secs_f64() / plain.as_secs_f64()
    );
}
