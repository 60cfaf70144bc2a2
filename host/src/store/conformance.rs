//! The conformance suite: every semantic of [`ContextStore`], written once
//! and run against every backend.
//!
//! A backend runs the whole suite with [`conformance_tests!`](crate::conformance_tests),
//! given an expression that makes a fresh, empty store (with a guard value
//! that keeps whatever the store needs alive, such as a temporary directory):
//!
//! ```ignore
//! mod conformance {
//!     contextstore::conformance_tests!(((), std::sync::Arc::new(MyStore::new())));
//! }
//! ```

use std::sync::{Arc, Barrier};

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::store::ContextStore;

/// Expands to one `#[test]` per semantic of the contract. `$make` is an
/// expression of type `(Guard, Arc<S>)` for some `S: ContextStore`, evaluated
/// once per test; the guard is dropped after the store.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@tests $make;
            put_then_get, get_of_nothing_is_none, second_put_fails_and_keeps_first,
            put_global_is_write_once, upsert_global_overwrites,
            put_global_after_upsert_fails, globals_and_outputs_are_separate,
            list_keys_is_scoped_to_one_run, values_round_trip_exactly,
            any_string_is_a_global_key, racing_puts_have_one_winner,
            racing_put_globals_have_one_winner, parallel_puts_all_land,
            arbitrary_values_round_trip, provenance_is_kept_with_the_first_value);
    };
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                let (_guard, store) = $make;
                $crate::store::conformance::$name(store);
            }
        )*
    };
}

fn ids() -> (FlowRunId, NodeId) {
    (FlowRunId::new(), NodeId::new())
}

/// A written output reads back equal.
pub fn put_then_get<S: ContextStore>(store: Arc<S>) {
    let (run, node) = ids();
    store.put(run, node, &json!({"answer": 42})).unwrap();
    assert_eq!(store.get(run, node).unwrap(), Some(json!({"answer": 42})));
}

/// Reading what was never written is `Ok(None)`, for outputs and globals.
pub fn get_of_nothing_is_none<S: ContextStore>(store: Arc<S>) {
    let (run, node) = ids();
    assert_eq!(store.get(run, node).unwrap(), None);
    assert_eq!(store.get_global("never written").unwrap(), None);
    assert!(store.list_keys(run).unwrap().is_empty());
}

/// The second `put` of a pair is `AlreadyExists` naming the pair; the first value stays.
pub fn second_put_fails_and_keeps_first<S: ContextStore>(store: Arc<S>) {
    let (run, node) = ids();
    store.put(run, node, &json!("first")).unwrap();
    match store.put(run, node, &json!("second")) {
        Err(ContextStoreError::AlreadyExists {
            flow_run_id,
            node_id,
        }) => {
            assert_eq!((flow_run_id, node_id), (run, node));
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.get(run, node).unwrap(), Some(json!("first")));
}

/// The second `put_global` of a key is `GlobalAlreadyExists`; the first value stays.
pub fn put_global_is_write_once<S: ContextStore>(store: Arc<S>) {
    store.put_global("config", &json!(1)).unwrap();
    match store.put_global("config", &json!(2)) {
        Err(ContextStoreError::GlobalAlreadyExists { key }) => assert_eq!(key, "config"),
        other => panic!("expected GlobalAlreadyExists, got {other:?}"),
    }
    assert_eq!(store.get_global("config").unwrap(), Some(json!(1)));
}

/// `upsert_global` creates, then overwrites.
pub fn upsert_global_overwrites<S: ContextStore>(store: Arc<S>) {
    store.upsert_global("map", &json!({"v": 1})).unwrap();
    assert_eq!(store.get_global("map").unwrap(), Some(json!({"v": 1})));
    store.upsert_global("map", &json!({"v": 2})).unwrap();
    assert_eq!(store.get_global("map").unwrap(), Some(json!({"v": 2})));
}

/// A key made by `upsert_global` is written: `put_global` on it fails.
pub fn put_global_after_upsert_fails<S: ContextStore>(store: Arc<S>) {
    store.upsert_global("k", &json!("upserted")).unwrap();
    assert!(matches!(
        store.put_global("k", &json!("put")),
        Err(ContextStoreError::GlobalAlreadyExists { .. })
    ));
    assert_eq!(store.get_global("k").unwrap(), Some(json!("upserted")));
    // and the other way round: upsert still overwrites a put_global key
    store.put_global("p", &json!(1)).unwrap();
    store.upsert_global("p", &json!(2)).unwrap();
    assert_eq!(store.get_global("p").unwrap(), Some(json!(2)));
}

/// A global whose key spells an output's ids does not touch the output, and back.
pub fn globals_and_outputs_are_separate<S: ContextStore>(store: Arc<S>) {
    let (run, node) = ids();
    for key in [run.to_string(), node.to_string(), format!("{run}/{node}")] {
        store.put_global(&key, &json!("global")).unwrap();
    }
    assert_eq!(store.get(run, node).unwrap(), None);
    store.put(run, node, &json!("output")).unwrap();
    assert_eq!(
        store.get_global(&node.to_string()).unwrap(),
        Some(json!("global"))
    );
    assert_eq!(store.get(run, node).unwrap(), Some(json!("output")));
}

/// `list_keys` lists exactly the nodes of one run.
pub fn list_keys_is_scoped_to_one_run<S: ContextStore>(store: Arc<S>) {
    let (run_a, run_b) = (FlowRunId::new(), FlowRunId::new());
    let mut in_a: Vec<NodeId> = (0..5).map(|_| NodeId::new()).collect();
    for node in &in_a {
        store.put(run_a, *node, &json!(null)).unwrap();
    }
    let shared = in_a[0];
    store.put(run_b, shared, &json!("b")).unwrap();
    let mut listed = store.list_keys(run_a).unwrap();
    listed.sort();
    in_a.sort();
    assert_eq!(listed, in_a);
    assert_eq!(store.list_keys(run_b).unwrap(), vec![shared]);
    assert!(store.list_keys(FlowRunId::new()).unwrap().is_empty());
}

/// Edge-case values round-trip exactly, as outputs and as globals.
pub fn values_round_trip_exactly<S: ContextStore>(store: Arc<S>) {
    let deep = (0..1_000).fold(json!("core"), |inner, _| json!([inner]));
    let big = json!({"blob": "x".repeat(1 << 20), "n": [1, 2, 3]});
    let values = [
        json!(null),
        json!(""),
        json!(true),
        json!(0),
        json!(-1),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.1),
        json!(1e-300),
        json!(f64::MAX),
        json!(2.5e-8),
        json!("emoji 🦀, NUL \u{0}, quote \", backslash \\, newline \n"),
        json!([]),
        json!({}),
        json!({"nested": {"array": [1, "two", null, {"three": 3.0}]}}),
        deep,
        big,
    ];
    let run = FlowRunId::new();
    for (i, value) in values.iter().enumerate() {
        let node = NodeId::new();
        store.put(run, node, value).unwrap();
        assert_eq!(
            store.get(run, node).unwrap().as_ref(),
            Some(value),
            "value #{i}"
        );
        let key = format!("value/{i}");
        store.put_global(&key, value).unwrap();
        assert_eq!(
            store.get_global(&key).unwrap().as_ref(),
            Some(value),
            "global #{i}"
        );
    }
}

/// Any string is a key, the empty one and odd ones too, and keys are exact.
pub fn any_string_is_a_global_key<S: ContextStore>(store: Arc<S>) {
    let long = "k".repeat(10_000);
    let keys = [
        "",
        " ",
        "a",
        "A",
        "a ",
        "\u{0}",
        "a\u{0}b",
        "ключ/🔑",
        "%",
        "_",
        &long,
    ];
    for (i, key) in keys.iter().enumerate() {
        store.put_global(key, &json!(i)).unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            store.get_global(key).unwrap(),
            Some(json!(i)),
            "key {key:?}"
        );
    }
}

const RACERS: usize = 16;

/// Runs `f(i)` on `RACERS` threads released at once; returns their results.
fn race<T: Send>(f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(RACERS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..RACERS)
            .map(|i| {
                let (barrier, f) = (&barrier, &f);
                scope.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("racer panicked"))
            .collect()
    })
}

/// 16 threads `put` one pair at once: exactly one `Ok`, every other
/// `AlreadyExists`, and the stored value is the winner's.
pub fn racing_puts_have_one_winner<S: ContextStore>(store: Arc<S>) {
    let (run, node) = ids();
    let results = race(|i| store.put(run, node, &json!({"writer": i})));
    let winners: Vec<usize> = (0..RACERS).filter(|i| results[*i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "results: {results:?}");
    for result in &results {
        assert!(matches!(
            result,
            Ok(()) | Err(ContextStoreError::AlreadyExists { .. })
        ));
    }
    assert_eq!(
        store.get(run, node).unwrap(),
        Some(json!({"writer": winners[0]}))
    );
}

/// 16 threads `put_global` one key at once: exactly one `Ok`; its value is stored.
pub fn racing_put_globals_have_one_winner<S: ContextStore>(store: Arc<S>) {
    let key = format!("race/{}", FlowRunId::new());
    let results = race(|i| store.put_global(&key, &json!(i)));
    let winners: Vec<usize> = (0..RACERS).filter(|i| results[*i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "results: {results:?}");
    for result in &results {
        assert!(matches!(
            result,
            Ok(()) | Err(ContextStoreError::GlobalAlreadyExists { .. })
        ));
    }
    assert_eq!(store.get_global(&key).unwrap(), Some(json!(winners[0])));
}

/// Many threads writing different pairs at once all land, readable at once.
pub fn parallel_puts_all_land<S: ContextStore>(store: Arc<S>) {
    let run = FlowRunId::new();
    let nodes: Vec<NodeId> = race(|i| {
        let node = NodeId::new();
        store.put(run, node, &json!(i)).unwrap();
        assert_eq!(store.get(run, node).unwrap(), Some(json!(i)));
        node
    });
    let mut listed = store.list_keys(run).unwrap();
    listed.sort();
    let mut expected = nodes;
    expected.sort();
    assert_eq!(listed, expected);
}

/// A strategy for any JSON value: every scalar kind (with finite floats),
/// strings of any characters, nested arrays and objects.
pub fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Any value round-trips exactly through `put`/`get` and `put_global`/`get_global`.
pub fn arbitrary_values_round_trip<S: ContextStore>(store: Arc<S>) {
    let run = FlowRunId::new();
    let config = ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    };
    proptest!(config, |(value in arb_json(), key in any::<String>())| {
        let node = NodeId::new();
        store.put(run, node, &value).unwrap();
        prop_assert_eq!(store.get(run, node).unwrap(), Some(value.clone()));
        store.upsert_global(&key, &value).unwrap();
        prop_assert_eq!(store.get_global(&key).unwrap(), Some(value));
    });
}

/// An output written with provenance reads back with exactly that
/// provenance; a second write (with other provenance) changes neither; an
/// output written by `put` has none.
pub fn provenance_is_kept_with_the_first_value<S: ContextStore>(store: Arc<S>) {
    use crate::json::JsonText;
    use crate::store::Provenance;
    let (run, node) = ids();
    let first = Provenance {
        component_hash: "c".repeat(64),
        params_hash: "p".repeat(64),
        upstream_hash: "u".repeat(64),
        attempt: 3,
        host: "worker-7".into(),
        started_at: 1_714_566_896_123,
        ended_at: 1_714_566_897_000,
    };
    let value = JsonText::from_stored("{\"n\":1.50}".into());
    store
        .put_text_with_provenance(run, node, &value, &first)
        .unwrap();
    let second = Provenance {
        attempt: 4,
        ..first.clone()
    };
    assert!(matches!(
        store.put_text_with_provenance(run, node, &JsonText::from_stored("2".into()), &second),
        Err(ContextStoreError::AlreadyExists { .. })
    ));
    assert_eq!(store.provenance(run, node).unwrap(), Some(first));
    assert_eq!(store.get_text(run, node).unwrap(), Some(value));
    let plain = NodeId::new();
    store.put(run, plain, &json!(1)).unwrap();
    assert_eq!(store.provenance(run, plain).unwrap(), None);
    assert_eq!(store.provenance(run, NodeId::new()).unwrap(), None);
}
