//! A dropped store closes cleanly: the last connection checkpoints the WAL
//! and removes the `-wal` file, so that the database is one file again.

use std::sync::Arc;

use contextstore::{ContextStore, FlowRunId, NodeId, SqliteContextStore};
use serde_json::json;

#[test]
fn dropping_a_store_leaves_no_wal_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctx.db");
    let wal = dir.path().join("ctx.db-wal");
    let (run, node) = (FlowRunId::new(), NodeId::new());
    let store = Arc::new(SqliteContextStore::open(&path).unwrap());
    store.put(run, node, &json!({"a": 1})).unwrap();
    store.put_global("g", &json!("x")).unwrap();
    // Reads from several threads at once, so that more readers are open.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let store = store.clone();
            scope.spawn(move || assert!(store.get(run, node).unwrap().is_some()));
        }
    });
    assert!(wal.exists(), "a WAL-mode store has a -wal file while open");
    drop(store);
    assert!(!wal.exists(), "the -wal file outlived the store");
    let again = SqliteContextStore::open(&path).unwrap();
    assert_eq!(again.get(run, node).unwrap(), Some(json!({"a": 1})));
}
