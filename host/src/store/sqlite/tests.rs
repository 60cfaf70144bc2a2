//! Tests of the SQLite backend: the conformance suite, opening, read-only
//! opens, the writer connection, and (in [`locked`]) deadlines while
//! another process holds the database.

use super::*;
use serde_json::json;
use std::sync::Arc;

#[cfg(feature = "async")]
mod calls;
#[cfg(feature = "async")]
mod locked;
mod opening;

fn temp_store() -> (tempfile::TempDir, Arc<SqliteContextStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteContextStore::open(dir.path().join("ctx.db")).unwrap();
    (dir, Arc::new(store))
}

/// The names of the files in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

mod file {
    crate::conformance_tests!(super::temp_store());
}

#[cfg(feature = "async")]
mod runs_index {
    crate::runs_index_tests!(super::temp_store());
}

mod memory {
    crate::conformance_tests!((
        (),
        std::sync::Arc::new(super::SqliteContextStore::in_memory().unwrap())
    ));
}

#[test]
fn reopen_keeps_outputs_and_globals() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctx.db");
    let (run, node) = (FlowRunId::new(), NodeId::new());
    {
        let store = SqliteContextStore::open(&path).unwrap();
        store.put(run, node, &json!({"a": 1})).unwrap();
        store.put_global("g", &json!("once")).unwrap();
        store.upsert_global("m", &json!(1)).unwrap();
    }
    let store = SqliteContextStore::open(&path).unwrap();
    assert_eq!(store.get(run, node).unwrap(), Some(json!({"a": 1})));
    assert_eq!(store.get_global("g").unwrap(), Some(json!("once")));
    assert_eq!(store.get_global("m").unwrap(), Some(json!(1)));
    assert!(matches!(
        store.put(run, node, &json!(2)),
        Err(ContextStoreError::AlreadyExists { .. })
    ));
}

#[test]
fn applies_wal_and_full_sync_by_default() {
    let (_dir, store) = temp_store();
    let conn = store.writer.as_ref().unwrap().connection();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(sync, 2, "synchronous=FULL");
}

#[test]
fn normal_durability_sets_synchronous_normal() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        durability: Durability::Normal,
        ..Default::default()
    };
    let store = SqliteContextStore::open_with(dir.path().join("n.db"), options).unwrap();
    let sync: i64 = store
        .writer
        .as_ref()
        .unwrap()
        .connection()
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 1);
}

#[test]
fn a_read_does_not_wait_behind_an_open_write_transaction() {
    let (dir, store) = temp_store();
    let (run, node) = (FlowRunId::new(), NodeId::new());
    store.put(run, node, &json!("before")).unwrap();
    // Another connection holds the write lock with an uncommitted change.
    let other = Connection::open(dir.path().join("ctx.db")).unwrap();
    other
        .execute_batch("BEGIN IMMEDIATE; DELETE FROM outputs;")
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(store.get(run, node).unwrap(), Some(json!("before")));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "read waited for the writer"
    );
    other.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn a_transaction_left_open_on_the_writer_is_rolled_back_before_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open-tx.db");
    {
        let store = SqliteContextStore::open(&path).unwrap();
        // What a panic between BEGIN and COMMIT leaves behind.
        store
            .writer
            .as_ref()
            .unwrap()
            .connection()
            .execute_batch("BEGIN; INSERT INTO globals VALUES ('ghost', '0', 0);")
            .unwrap();
        store.put_global("acked", &json!(1)).unwrap();
        store.put_global("also", &json!(2)).unwrap();
        assert_eq!(
            store.get_global("acked").unwrap(),
            Some(json!(1)),
            "the write went into the transaction left open, uncommitted"
        );
    }
    let store = SqliteContextStore::open(&path).unwrap();
    assert_eq!(
        store.get_global("acked").unwrap(),
        Some(json!(1)),
        "a write answered Ok was lost"
    );
    assert_eq!(store.get_global("also").unwrap(), Some(json!(2)));
    assert_eq!(store.get_global("ghost").unwrap(), None);
}

#[test]
fn a_write_past_the_busy_deadline_is_a_timeout_and_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let options = SqliteOptions {
        busy_deadline: Duration::from_millis(300),
        ..Default::default()
    };
    let store = SqliteContextStore::open_with(&path, options).unwrap();
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let result = store.put_global("k", &json!(1));
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(ContextStoreError::Timeout(_))),
        "{result:?}"
    );
    assert!(
        waited >= Duration::from_millis(290),
        "gave up early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    other.execute_batch("ROLLBACK").unwrap();
    assert_eq!(store.get_global("k").unwrap(), None);
    store.put_global("k", &json!(2)).unwrap();
    assert_eq!(store.get_global("k").unwrap(), Some(json!(2)));
}

#[test]
fn an_unwritable_location_is_a_clear_error() {
    // /proc refuses new files even to root, unlike a chmod-ed directory.
    let err = SqliteContextStore::open("/proc/contextstore-test/ctx.db")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot open /proc/contextstore-test/ctx.db"),
        "{err}"
    );
}

#[test]
fn a_truncated_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.db");
    {
        let store = SqliteContextStore::open(&path).unwrap();
        for i in 0..200 {
            store
                .put_global(&format!("k{i}"), &json!("x".repeat(100)))
                .unwrap();
        }
    }
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let _ = std::fs::remove_file(dir.path().join("cut.db-wal"));
    // Either open fails cleanly, or reading the damaged pages does.
    match SqliteContextStore::open(&path) {
        Err(e) => assert!(e.to_string().contains("cut.db"), "{e}"),
        Ok(store) => {
            let reads: Vec<_> = (0..200)
                .map(|i| store.get_global(&format!("k{i}")))
                .collect();
            assert!(
                reads.iter().any(Result::is_err),
                "a truncated file read back whole"
            );
        }
    }
}

#[test]
fn opening_garbage_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let err = SqliteContextStore::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("cannot open") && err.contains("junk.db"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x42u8; 8192]);
}

/// `describe` states what the open store is, read from the file.
mod describing {
    use super::*;
    use crate::store::Backend;

    #[test]
    fn a_file_store_says_wal_full_group_commit_and_its_schema() {
        let (dir, store) = temp_store();
        let info = store.describe().unwrap();
        assert_eq!(info.backend, Backend::Sqlite);
        assert_eq!(
            info.location,
            dir.path().join("ctx.db").display().to_string()
        );
        assert!(!info.read_only);
        assert_eq!(info.schema_version, schema::CURRENT_VERSION);
        assert_eq!(info.durability, "full");
        assert_eq!(info.journal_mode.as_deref(), Some("wal"));
        assert!(info.group_commit);
        assert!(info.engine_version.starts_with("SQLite 3."), "{info:?}");
        let shown = info.to_string();
        assert!(shown.contains("journal mode: wal"), "{shown}");
        assert!(shown.contains("group commit: on"), "{shown}");
    }

    #[test]
    fn options_and_read_only_opens_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctx.db");
        let options = SqliteOptions {
            durability: Durability::Normal,
            group_commit: false,
            ..SqliteOptions::default()
        };
        let store = SqliteContextStore::open_with(&path, options).unwrap();
        let info = store.describe().unwrap();
        assert_eq!(
            (info.durability.as_str(), info.group_commit),
            ("normal", false)
        );
        drop(store);
        let store = SqliteContextStore::open_read_only(&path, SqliteOptions::default()).unwrap();
        let info = store.describe().unwrap();
        assert!(info.read_only);
        assert!(!info.group_commit);
        assert_eq!(info.journal_mode.as_deref(), Some("wal"));
        assert_eq!(info.schema_version, schema::CURRENT_VERSION);
    }

    #[test]
    fn an_in_memory_store_says_memory() {
        let info = SqliteContextStore::in_memory().unwrap().describe().unwrap();
        assert_eq!(info.location, ":memory:");
        assert_eq!(info.journal_mode.as_deref(), Some("memory"));
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["backend"], "sqlite");
        assert_eq!(json["schema_version"], schema::CURRENT_VERSION);
    }
}
