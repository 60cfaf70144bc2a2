//! Opening: what is refused is left as it was, a current database opens
//! without the write lock, and a read-only open reads the write-ahead log
//! or says why it cannot.

use super::*;
use crate::store::schema::{APPLICATION_ID, CURRENT_VERSION};
use std::path::PathBuf;

/// Makes a database at `path` with `sql`, on a plain connection.
fn make(path: &Path, sql: &str) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(sql).unwrap();
}

/// Opening the file at `path` fails with `expected` in the message, and
/// leaves the file byte for byte as it was, with nothing beside it.
fn refused_unchanged(path: &Path, expected: &str) {
    let dir = path.parent().unwrap();
    let (bytes, files) = (std::fs::read(path).unwrap(), names(dir));
    let err = SqliteContextStore::open(path).unwrap_err().to_string();
    assert!(
        err.contains("cannot open") && err.contains(expected),
        "{err}"
    );
    assert!(
        std::fs::read(path).unwrap() == bytes,
        "the refused file was changed"
    );
    assert_eq!(names(dir), files, "files were made beside the refused file");
}

#[test]
fn a_file_of_another_application_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    make(
        &path,
        "PRAGMA application_id = 305419896; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
    );
    refused_unchanged(&path, "application_id 0x12345678");
}

#[test]
fn a_file_with_other_tables_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    make(
        &path,
        "CREATE TABLE users (id INTEGER); INSERT INTO users VALUES (1);",
    );
    refused_unchanged(&path, "other tables");
}

#[test]
fn a_file_in_wal_mode_with_other_tables_is_refused_without_a_wal_made() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal-users.db");
    make(
        &path,
        "PRAGMA journal_mode = WAL; CREATE TABLE users (id INTEGER);",
    );
    assert_eq!(names(dir.path()), ["wal-users.db"]);
    refused_unchanged(&path, "other tables");
    // Where no -wal or -shm can be made, it is still refused for what it
    // is: it was looked at without them.
    #[cfg(unix)]
    {
        let _closed = Closed::new(dir.path());
        let err = SqliteContextStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("other tables"), "{err}");
        let err = crate::store::worldinterface::migrate_file(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("other tables"), "{err}");
    }
}

#[test]
fn contextstore_migrate_refuses_a_foreign_file_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    make(&path, "PRAGMA user_version = 3; PRAGMA journal_mode = WAL;");
    let (bytes, files) = (std::fs::read(&path).unwrap(), names(dir.path()));
    let err = crate::store::worldinterface::migrate_file(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("user_version 3"), "{err}");
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "the refused file was changed"
    );
    assert_eq!(names(dir.path()), files);
}

#[test]
fn a_user_version_without_the_application_id_is_not_stamped_as_ours() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    make(&path, "PRAGMA user_version = 2;");
    refused_unchanged(&path, "user_version 2");
    let conn = Connection::open(&path).unwrap();
    let app: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    assert_eq!(app, 0);
}

#[test]
fn a_newer_schema_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    drop(SqliteContextStore::open(&path).unwrap());
    make(
        &path,
        &format!("PRAGMA user_version = {};", CURRENT_VERSION + 1),
    );
    assert_eq!(names(dir.path()), ["newer.db"]);
    refused_unchanged(&path, "newer than this build");
}

#[test]
fn an_empty_file_becomes_a_contextstore_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    std::fs::write(&path, b"").unwrap();
    let store = SqliteContextStore::open(&path).unwrap();
    store.put_global("k", &json!(1)).unwrap();
    let conn = Connection::open(&path).unwrap();
    let app: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    assert_eq!(app, APPLICATION_ID);
}

#[test]
fn opening_a_current_database_does_not_wait_for_another_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.db");
    SqliteContextStore::open(&path)
        .unwrap()
        .put_global("k", &json!(1))
        .unwrap();
    let other = Connection::open(&path).unwrap();
    other
        .execute_batch("BEGIN IMMEDIATE; DELETE FROM globals;")
        .unwrap();
    let options = SqliteOptions {
        busy_deadline: Duration::from_secs(20),
        ..Default::default()
    };
    let started = Instant::now();
    let store = SqliteContextStore::open_with(&path, options).unwrap();
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "open waited {waited:?}");
    assert_eq!(store.get_global("k").unwrap(), Some(json!(1)));
    other.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn opening_a_database_that_needs_migrating_waits_for_the_lock_until_the_busy_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let other = Connection::open(&path).unwrap();
    other
        .execute_batch("PRAGMA journal_mode = WAL; BEGIN IMMEDIATE;")
        .unwrap();
    let options = SqliteOptions {
        busy_deadline: Duration::from_millis(300),
        ..Default::default()
    };
    let started = Instant::now();
    let result = SqliteContextStore::open_with(&path, options.clone());
    let waited = started.elapsed();
    assert!(
        matches!(&result, Err(ContextStoreError::Timeout(msg)) if msg.contains("fresh.db")),
        "{result:?}"
    );
    assert!(
        waited >= Duration::from_millis(290),
        "gave up early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    other.execute_batch("ROLLBACK").unwrap();
    SqliteContextStore::open_with(&path, options).unwrap();
}

/// A store at `dir/ctx.db`, left open, with a global and an output
/// committed but still in its `-wal`; and copies of the database and its
/// `-wal` (no `-shm`) in `copy`.
fn committed_in_the_log(dir: &Path, copy: &Path) -> (SqliteContextStore, FlowRunId, NodeId) {
    let store = SqliteContextStore::open(dir.join("ctx.db")).unwrap();
    let (run, node) = (FlowRunId::new(), NodeId::new());
    store.put_global("k", &json!([1, 2])).unwrap();
    store.put(run, node, &json!("out")).unwrap();
    let wal = dir.join("ctx.db-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "nothing in the -wal"
    );
    std::fs::copy(dir.join("ctx.db"), copy.join("ctx.db")).unwrap();
    std::fs::copy(&wal, copy.join("ctx.db-wal")).unwrap();
    (store, run, node)
}

#[test]
fn a_read_only_open_reads_commits_still_in_the_write_ahead_log() {
    let (dir, copy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_writer, run, node) = committed_in_the_log(dir.path(), copy.path());
    let store =
        SqliteContextStore::open_read_only(copy.path().join("ctx.db"), Default::default()).unwrap();
    assert_eq!(store.get_global("k").unwrap(), Some(json!([1, 2])));
    assert_eq!(store.get(run, node).unwrap(), Some(json!("out")));
}

#[cfg(unix)]
#[test]
fn a_read_only_open_that_cannot_read_the_log_refuses_rather_than_miss_commits() {
    let (dir, copy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_writer, run, node) = committed_in_the_log(dir.path(), copy.path());
    let path = copy.path().join("ctx.db");
    let closed = Closed::new(copy.path());
    match SqliteContextStore::open_read_only(&path, Default::default()) {
        Ok(store) => {
            // Only where the directory could not be closed to this process.
            assert!(!closed.effective(), "opened although no -shm can be made");
            assert_eq!(store.get_global("k").unwrap(), Some(json!([1, 2])));
            assert_eq!(store.get(run, node).unwrap(), Some(json!("out")));
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(closed.effective(), "{msg}");
            assert!(
                msg.contains(&path.display().to_string())
                    && msg.contains("write-ahead log")
                    && msg.contains("ctx.db-wal")
                    && msg.contains("checkpoint"),
                "{msg}"
            );
        }
    }
    if closed.effective() {
        assert_eq!(names(copy.path()), ["ctx.db", "ctx.db-wal"]);
    }
}

#[cfg(unix)]
#[test]
fn a_read_only_open_of_a_closed_directory_without_a_log_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctx.db");
    let (run, node) = (FlowRunId::new(), NodeId::new());
    {
        let store = SqliteContextStore::open(&path).unwrap();
        store.put(run, node, &json!("out")).unwrap();
    }
    assert_eq!(names(dir.path()), ["ctx.db"]);
    let closed = Closed::new(dir.path());
    let store = SqliteContextStore::open_read_only(&path, Default::default()).unwrap();
    assert_eq!(store.get(run, node).unwrap(), Some(json!("out")));
    assert_eq!(store.list_keys(run).unwrap(), [node]);
    assert!(matches!(
        store.put(run, NodeId::new(), &json!(1)),
        Err(ContextStoreError::StorageError(_))
    ));
    drop(store);
    if closed.effective() {
        assert_eq!(names(dir.path()), ["ctx.db"]);
    }
}

/// A directory, and the files in it, that this process cannot write:
/// immutable (`chattr +i`, which stops root too) where the file system
/// and the user allow, else read-only by mode (which root ignores). Undone
/// when dropped.
#[cfg(unix)]
struct Closed {
    paths: Vec<PathBuf>,
    chattr: bool,
}

#[cfg(unix)]
impl Closed {
    fn new(dir: &Path) -> Self {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.push(dir.to_path_buf());
        let chattr = |flag: &str, path: &Path| {
            std::process::Command::new("chattr")
                .arg(flag)
                .arg(path)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let mut closed = Self {
            paths: Vec::new(),
            chattr: true,
        };
        for path in &paths {
            if !chattr("+i", path) {
                drop(closed);
                closed = Self {
                    paths: Vec::new(),
                    chattr: false,
                };
                break;
            }
            closed.paths.push(path.clone());
        }
        if !closed.chattr {
            use std::os::unix::fs::PermissionsExt;
            for path in &paths {
                let mode = if path.is_dir() { 0o555 } else { 0o444 };
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            closed.paths = paths;
        }
        closed
    }

    /// Whether this process really cannot make a file in the directory.
    fn effective(&self) -> bool {
        let Some(dir) = self.paths.last() else {
            return false;
        };
        let probe = dir.join("probe");
        match std::fs::File::create(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                false
            }
            Err(_) => true,
        }
    }
}

#[cfg(unix)]
impl Drop for Closed {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        for path in &self.paths {
            if self.chattr {
                let _ = std::process::Command::new("chattr")
                    .arg("-i")
                    .arg(path)
                    .output();
            } else {
                let mode = if path.is_dir() { 0o755 } else { 0o644 };
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
            }
        }
    }
}
