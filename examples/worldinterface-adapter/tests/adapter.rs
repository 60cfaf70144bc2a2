//! The adapter under the engine's contract: its semantics through the
//! engine's trait and ids, each error as the engine's variant (and so
//! retried or not), and the README's copy of it.

use std::time::Duration;

use contextstore::{SqliteContextStore, SqliteOptions};
use serde_json::{Value, json};
use worldinterface_adapter::adapter::Store;
use worldinterface_adapter::engine::id::{FlowRunId, NodeId};
use worldinterface_adapter::engine::store::{ContextStore, ContextStoreError, is_retryable};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("engine.db")).unwrap();
    (dir, store)
}

#[test]
fn outputs_are_written_once_and_keyed_by_the_engines_ids() {
    let (_dir, store) = store();
    let (run, other_run) = (FlowRunId::new(), FlowRunId::new());
    let nodes = [NodeId::new(), NodeId::new()];
    assert_eq!(store.get(run, nodes[0]).unwrap(), None);
    store.put(run, nodes[0], &json!({"n": 1.5})).unwrap();
    store.put(run, nodes[1], &Value::Null).unwrap();
    store.put(other_run, nodes[0], &json!("elsewhere")).unwrap();
    match store.put(run, nodes[0], &json!("again")) {
        Err(ContextStoreError::AlreadyExists {
            flow_run_id,
            node_id,
        }) => assert_eq!((flow_run_id, node_id), (run, nodes[0])),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.get(run, nodes[0]).unwrap(), Some(json!({"n": 1.5})));
    assert_eq!(store.get(run, nodes[1]).unwrap(), Some(Value::Null));
    let mut keys = store.list_keys(run).unwrap();
    keys.sort();
    let mut expected = nodes.to_vec();
    expected.sort();
    assert_eq!(keys, expected);
    assert!(store.list_keys(FlowRunId::new()).unwrap().is_empty());
}

#[test]
fn globals_are_write_once_unless_upserted() {
    let (_dir, store) = store();
    store.put_global("", &json!("empty key")).unwrap();
    assert!(matches!(
        store.put_global("", &json!(2)),
        Err(ContextStoreError::GlobalAlreadyExists { key }) if key.is_empty()
    ));
    store.upsert_global("map", &json!([1])).unwrap();
    store.upsert_global("map", &json!([1, 2])).unwrap();
    assert!(matches!(
        store.put_global("map", &json!(3)),
        Err(ContextStoreError::GlobalAlreadyExists { .. })
    ));
    assert_eq!(store.get_global("map").unwrap(), Some(json!([1, 2])));
    assert_eq!(store.get_global("").unwrap(), Some(json!("empty key")));
    assert_eq!(store.get_global("missing").unwrap(), None);
}

#[test]
fn a_value_too_deep_to_store_fails_for_good_not_retryably() {
    let (_dir, store) = store();
    let deep = (0..contextstore::json::MAX_DEPTH + 1).fold(json!(1), |inner, _| json!([inner]));
    let (run, node) = (FlowRunId::new(), NodeId::new());
    let error = store.put(run, node, &deep).unwrap_err();
    assert!(
        matches!(error, ContextStoreError::SerializationFailed(_)),
        "{error:?}"
    );
    assert!(!is_retryable(&error));
    let error = store.upsert_global("deep", &deep).unwrap_err();
    assert!(matches!(error, ContextStoreError::SerializationFailed(_)));
    assert_eq!(store.get(run, node).unwrap(), None, "nothing was written");
}

#[test]
fn a_stored_value_that_does_not_parse_fails_for_good_not_retryably() {
    let (dir, store) = store();
    let (run, node) = (FlowRunId::new(), NodeId::new());
    store.put(run, node, &json!({"ok": true})).unwrap();
    store.put_global("g", &json!(1)).unwrap();
    // Damage both values behind the store's back.
    let raw = rusqlite::Connection::open(dir.path().join("engine.db")).unwrap();
    raw.execute_batch("UPDATE outputs SET value = '{'; UPDATE globals SET value = '[1,';")
        .unwrap();
    for error in [
        store.get(run, node).unwrap_err(),
        store.get_global("g").unwrap_err(),
    ] {
        assert!(
            matches!(error, ContextStoreError::DeserializationFailed { .. }),
            "{error:?}"
        );
        assert!(!is_retryable(&error));
    }
}

#[test]
fn a_storage_failure_and_a_deadline_are_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.db");
    drop(Store::open(&path).unwrap());
    // A store opened read-only refuses writes: a storage error.
    let read_only =
        Store(SqliteContextStore::open_read_only(&path, SqliteOptions::default()).unwrap());
    let error = read_only
        .put(FlowRunId::new(), NodeId::new(), &json!(1))
        .unwrap_err();
    assert!(
        matches!(error, ContextStoreError::StorageError(_)),
        "{error:?}"
    );
    assert!(is_retryable(&error));
    // Another connection holds the write lock past the call's deadline: the
    // store's timeout, which the engine sees as a storage error and retries.
    let options = SqliteOptions {
        busy_deadline: Duration::from_millis(200),
        ..SqliteOptions::default()
    };
    let store = Store(SqliteContextStore::open_with(&path, options).unwrap());
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let error = store.upsert_global("k", &json!(1)).unwrap_err();
    assert!(
        matches!(error, ContextStoreError::StorageError(_)),
        "{error:?}"
    );
    assert!(is_retryable(&error));
    locker.execute_batch("ROLLBACK").unwrap();
    store.upsert_global("k", &json!(2)).unwrap();
    assert_eq!(store.get_global("k").unwrap(), Some(json!(2)));
}

/// The README's "Behind a WorldInterface engine's own trait" shows this
/// adapter: it must be this file, as compiled and tested here.
#[test]
fn the_readme_shows_this_adapter() {
    let readme = include_str!("../../../README.md");
    let adapter = include_str!("../src/adapter.rs");
    let sample = readme
        .split("```rust")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains("pub struct Store(pub SqliteContextStore);"))
        .expect("the README shows the adapter in a ```rust block");
    assert_eq!(
        sample.trim(),
        adapter.trim(),
        "README.md's adapter differs from src/adapter.rs"
    );
}
