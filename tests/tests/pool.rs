//! The pooling allocator's fallbacks: a component that does not fit the
//! pool, an invocation allowed more memory than a slot, and more
//! invocations at once than the pool has slots all still run (on demand).

use std::sync::Arc;

use contextstore::runtime::{PoolConfig, RuntimeConfig};
use contextstore::{ContextStore, FlowRunId, Grant, Invocation, Limits, NodeId, Runtime};
use contextstore_tests::{components, temp_store};
use serde_json::json;

fn runtime_with(pool: PoolConfig) -> Runtime {
    Runtime::with_config(RuntimeConfig {
        cache_dir: None,
        pool: Some(pool),
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// Runs greet for `name` and checks its output.
fn greet(runtime: &Runtime, store: &Arc<dyn ContextStore>, name: &str, limits: &Limits) {
    let component = runtime.load_file(components::GREET).unwrap();
    let invocation =
        Invocation::new(FlowRunId::new(), NodeId::new()).with_params(json!({"name": name}));
    let out = runtime
        .run(&component, store, &invocation, &Grant::default(), limits)
        .unwrap();
    assert_eq!(
        out.value().unwrap(),
        json!({"greeting": format!("Hello, {name}!")})
    );
}

#[test]
fn a_component_too_big_for_the_pool_runs_on_demand() {
    let runtime = runtime_with(PoolConfig {
        core_instances_per_component: 1,
        table_elements: 1,
        ..PoolConfig::default()
    });
    let (_dir, store) = temp_store();
    greet(&runtime, &store, "unpooled", &Limits::default());
    // And again, from the runtime's memory of the decision.
    greet(&runtime, &store, "again", &Limits::default());
}

#[test]
fn more_memory_than_a_slot_runs_on_demand() {
    let runtime = runtime_with(PoolConfig {
        memory_bytes: 16 << 20,
        ..PoolConfig::default()
    });
    let (_dir, store) = temp_store();
    let roomy = Limits {
        memory_bytes: 64 << 20,
        ..Limits::default()
    };
    greet(&runtime, &store, "roomy", &roomy);
    let fitting = Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    };
    greet(&runtime, &store, "pooled", &fitting);
}

#[test]
fn more_invocations_than_slots_all_run() {
    let runtime = runtime_with(PoolConfig {
        instances: 1,
        ..PoolConfig::default()
    });
    let (_dir, store) = temp_store();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (runtime, store) = (&runtime, &store);
            scope.spawn(move || {
                for i in 0..25 {
                    greet(runtime, store, &format!("{t}-{i}"), &Limits::default());
                }
            });
        }
    });
}
