//! [`SqliteContextStore`]: the embedded SQLite backend.
//!
//! One writer connection behind a mutex serialises writes; reads go through
//! a small pool of read-only connections, so that in WAL mode a reader
//! never waits behind a write. Write-once is the primary key of each table:
//! of N racing writers exactly one insert succeeds, in this process or
//! across processes sharing the file.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use serde_json::Value;

use super::ContextStore;
use super::schema;
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json;

/// How hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a write that returned `Ok` survives a power loss.
    /// The default, as in the original store.
    #[default]
    Full,
    /// `synchronous=NORMAL`: a write that returned `Ok` survives a crash of
    /// the process, but the last commits may be lost on power loss or an OS
    /// crash. The database is never corrupted either way. Faster writes.
    Normal,
}

/// Settings for [`SqliteContextStore::open_with`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Commit durability; [`Durability::Full`] by default.
    pub durability: Durability,
    /// Most idle read connections kept open (default 4). More are opened
    /// when more threads read at once, and closed after use.
    pub readers: usize,
    /// How long a statement waits for a lock held by another connection or
    /// process before giving up (default 5 s). Writes that still find the
    /// database busy are retried until [`SqliteOptions::busy_deadline`].
    pub busy_timeout: Duration,
    /// The longest a write keeps retrying a busy database before it fails
    /// with a storage error (default 60 s).
    pub busy_deadline: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            busy_deadline: Duration::from_secs(60),
        }
    }
}

/// A [`ContextStore`] in one SQLite file (or in memory, for tests).
pub struct SqliteContextStore {
    writer: Mutex<Connection>,
    /// Idle read-only connections; `None` for an in-memory store, whose
    /// reads use the writer connection.
    readers: Option<ReaderPool>,
    options: SqliteOptions,
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteContextStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteContextStore")
            .field("path", &self.readers.as_ref().map(|r| &r.path))
            .field("options", &self.options)
            .finish()
    }
}

impl SqliteContextStore {
    /// Opens (creating if missing) the database at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ContextStoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if missing) the database at `path`.
    ///
    /// Fails with a [`ContextStoreError::StorageError`] naming the path when
    /// the file is not a SQLite database, is corrupt, belongs to another
    /// application, has a newer schema, or cannot be written.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, ContextStoreError> {
        let path = path.as_ref();
        let at = |e: ContextStoreError| match e {
            ContextStoreError::StorageError(msg) => {
                ContextStoreError::StorageError(format!("cannot open {}: {msg}", path.display()))
            }
            other => other,
        };
        let mut writer = Connection::open(path).map_err(|e| at(e.into()))?;
        configure_writer(&mut writer, &options).map_err(at)?;
        let readers = ReaderPool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        };
        // Open one reader now, so that a broken setup fails at open, not at first read.
        let first = readers.open(&options).map_err(at)?;
        lock(&readers.idle).push(first);
        tracing::debug!(path = %path.display(), ?options, "opened sqlite context store");
        Ok(Self {
            writer: Mutex::new(writer),
            readers: Some(readers),
            options,
        })
    }

    /// A private in-memory store, gone when dropped. Reads share the writer
    /// connection. For tests and short-lived tools.
    pub fn in_memory() -> Result<Self, ContextStoreError> {
        let mut writer = Connection::open_in_memory()?;
        schema::migrate(&mut writer)?;
        Ok(Self {
            writer: Mutex::new(writer),
            readers: None,
            options: SqliteOptions::default(),
        })
    }

    /// Runs `f` on a read connection: a pooled read-only one for a file,
    /// the writer for an in-memory store.
    fn read<T>(
        &self,
        f: impl Fn(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ContextStoreError> {
        let Some(pool) = &self.readers else {
            return Ok(self.retry_busy(|| f(&lock(&self.writer)))?);
        };
        let conn = match lock(&pool.idle).pop() {
            Some(conn) => conn,
            None => pool.open(&self.options)?,
        };
        let result = self.retry_busy(|| f(&conn));
        let mut idle = lock(&pool.idle);
        if idle.len() < self.options.readers {
            idle.push(conn);
        }
        Ok(result?)
    }

    /// Runs one write statement on the writer connection.
    fn write(
        &self,
        f: impl Fn(&Connection) -> rusqlite::Result<usize>,
    ) -> Result<usize, rusqlite::Error> {
        let conn = lock(&self.writer);
        self.retry_busy(|| f(&conn))
    }

    /// Runs `f` again while the database is busy past the busy timeout (a
    /// lock held long by another process, or WAL recovery after a crash),
    /// up to [`SqliteOptions::busy_deadline`]. Each statement is atomic, so
    /// a retry never applies anything twice.
    fn retry_busy<T>(&self, f: impl Fn() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let started = std::time::Instant::now();
        loop {
            match f() {
                Err(e) if is_busy(&e) && started.elapsed() < self.options.busy_deadline => {
                    tracing::debug!(error = %e, "database busy, retrying");
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }
}

impl ReaderPool {
    fn open(&self, options: &SqliteOptions) -> Result<Connection, ContextStoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(options.busy_timeout)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }
}

fn configure_writer(
    conn: &mut Connection,
    options: &SqliteOptions,
) -> Result<(), ContextStoreError> {
    conn.busy_timeout(options.busy_timeout)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(ContextStoreError::StorageError(format!(
            "could not switch to WAL mode (journal_mode is {mode})"
        )));
    }
    let synchronous = match options.durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    schema::migrate(conn)
}

/// Locks a mutex, recovering from poisoning: every operation on the guarded
/// connection is a single atomic statement, so a panic elsewhere cannot have
/// left it half-done.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn is_primary_key_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn encode(value: &Value) -> Result<String, ContextStoreError> {
    json::to_text(value).map_err(|e| ContextStoreError::SerializationFailed(e.to_string()))
}

fn decode(text: Option<String>) -> Result<Option<Value>, ContextStoreError> {
    text.map(|t| {
        json::parse(&t).map_err(|e| ContextStoreError::DeserializationFailed(e.to_string()))
    })
    .transpose()
}

impl ContextStore for SqliteContextStore {
    fn put(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &Value,
    ) -> Result<(), ContextStoreError> {
        let text = encode(value)?;
        let result = self.write(|conn| {
            conn.prepare_cached(
                "INSERT INTO outputs (flow_run_id, node_id, value, written_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![flow_run_id.as_bytes(), node_id.as_bytes(), text, now_millis()])
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_primary_key_violation(&e) => Err(ContextStoreError::AlreadyExists {
                flow_run_id,
                node_id,
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn get(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Value>, ContextStoreError> {
        let text = self.read(|conn| {
            conn.prepare_cached(
                "SELECT value FROM outputs WHERE flow_run_id = ?1 AND node_id = ?2",
            )?
            .query_row(params![flow_run_id.as_bytes(), node_id.as_bytes()], |row| {
                row.get(0)
            })
            .optional()
        })?;
        decode(text)
    }

    fn list_keys(&self, flow_run_id: FlowRunId) -> Result<Vec<NodeId>, ContextStoreError> {
        let ids: Vec<[u8; 16]> = self.read(|conn| {
            conn.prepare_cached("SELECT node_id FROM outputs WHERE flow_run_id = ?1")?
                .query_map(params![flow_run_id.as_bytes()], |row| row.get(0))?
                .collect()
        })?;
        Ok(ids
            .into_iter()
            .map(|b| NodeId::from_uuid(uuid::Uuid::from_bytes(b)))
            .collect())
    }

    fn put_global(&self, key: &str, value: &Value) -> Result<(), ContextStoreError> {
        let text = encode(value)?;
        let result = self.write(|conn| {
            conn.prepare_cached("INSERT INTO globals (key, value, written_at) VALUES (?1, ?2, ?3)")?
                .execute(params![key, text, now_millis()])
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_primary_key_violation(&e) => Err(ContextStoreError::GlobalAlreadyExists {
                key: key.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn upsert_global(&self, key: &str, value: &Value) -> Result<(), ContextStoreError> {
        let text = encode(value)?;
        self.write(|conn| {
            conn.prepare_cached(
                "INSERT INTO globals (key, value, written_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, written_at = excluded.written_at",
            )?
            .execute(params![key, text, now_millis()])
        })?;
        Ok(())
    }

    fn get_global(&self, key: &str) -> Result<Option<Value>, ContextStoreError> {
        let text = self.read(|conn| {
            conn.prepare_cached("SELECT value FROM globals WHERE key = ?1")?
                .query_row(params![key], |row| row.get(0))
                .optional()
        })?;
        decode(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn temp_store() -> (tempfile::TempDir, Arc<SqliteContextStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteContextStore::open(dir.path().join("ctx.db")).unwrap();
        (dir, Arc::new(store))
    }

    mod file {
        crate::conformance_tests!(super::temp_store());
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
        let conn = lock(&store.writer);
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
        let sync: i64 = lock(&store.writer)
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
    }
}
