//! [`SqliteContextStore`]: the embedded SQLite backend.
//!
//! One writer connection behind a mutex serialises writes; reads go through
//! a small pool of read-only connections, so that in WAL mode a reader
//! never waits behind a write. Write-once is the primary key of each table:
//! of N racing writers exactly one insert succeeds, in this process or
//! across processes sharing the file.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};

use super::{ContextStore, Provenance};
use super::{deadline, schema};

mod group_commit;

use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use group_commit::{GroupCommit, MAX_BATCH, WriteOp};

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
    /// The longest a call waits for a database that another connection or
    /// process holds locked before it fails with a storage error (default
    /// 60 s). A call made for a step invocation also stops at the
    /// invocation's deadline.
    pub busy_deadline: Duration,
    /// The SQLite VFS to open the file with (`None`: the default). Tests
    /// use it to put a fault-injecting VFS under the store.
    pub vfs: Option<String>,
    /// Whether concurrent writes share commits (default `true`): see
    /// [the store's docs](SqliteContextStore). `false` commits every write
    /// on its own, as the original store did.
    pub group_commit: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            readers: 4,
            busy_deadline: Duration::from_secs(60),
            vfs: None,
            group_commit: true,
        }
    }
}

/// A [`ContextStore`] in one SQLite file (or in memory, for tests).
pub struct SqliteContextStore {
    /// Idle read-only connections; `None` for an in-memory store, whose
    /// reads use the writer connection. Declared before `writer` so that
    /// they close first: the writer, closing last, checkpoints the WAL and
    /// removes the `-wal` file.
    readers: Option<ReaderPool>,
    /// The writer connection behind group commit; `None` for a store
    /// opened with [`SqliteContextStore::open_read_only`].
    writer: Option<GroupCommit>,
    options: SqliteOptions,
}

struct ReaderPool {
    path: PathBuf,
    /// Open the file as immutable (a read-only file whose WAL index cannot be made).
    immutable: bool,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteContextStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteContextStore")
            .field("path", &self.readers.as_ref().map(|r| &r.path))
            .field("read_only", &self.writer.is_none())
            .field("options", &self.options)
            .finish()
    }
}

impl SqliteContextStore {
    /// Opens (creating if missing) the database at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ContextStoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if missing) the database at `path`, migrating its
    /// schema to this build's version.
    ///
    /// Fails with a [`ContextStoreError::StorageError`] naming the path when
    /// the file is not a SQLite database, is corrupt, belongs to another
    /// application, has a newer schema, or cannot be written.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, ContextStoreError> {
        let path = path.as_ref();
        let at = |e| naming(path, e);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let mut writer = match &options.vfs {
            Some(vfs) => Connection::open_with_flags_and_vfs(path, flags, vfs.as_str()),
            None => Connection::open_with_flags(path, flags),
        }
        .map_err(|e| at(e.into()))?;
        configure_writer(&mut writer, &options).map_err(at)?;
        let readers = ReaderPool {
            path: path.to_path_buf(),
            immutable: false,
            idle: Mutex::new(Vec::new()),
        };
        // Open one reader now, so that a broken setup fails at open, not at first read.
        let first = readers.open(&options).map_err(at)?;
        lock(&readers.idle).push(first);
        tracing::debug!(path = %path.display(), ?options, "opened sqlite context store");
        let max_batch = if options.group_commit { MAX_BATCH } else { 1 };
        Ok(Self {
            readers: Some(readers),
            writer: Some(GroupCommit::new(writer, max_batch)),
            options,
        })
    }

    /// Opens an existing database for reading only: nothing is created or
    /// migrated, and a file the process may not write (or a read-only
    /// medium) is fine. Every write fails with a storage error.
    ///
    /// Fails, naming the path, when the file does not exist, is not a
    /// contextstore database, or has a schema other than this build's.
    pub fn open_read_only(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, ContextStoreError> {
        let path = path.as_ref();
        let at = |e| naming(path, e);
        if !path.exists() {
            return Err(at(ContextStoreError::StorageError(
                "no such database file".into(),
            )));
        }
        let mut readers = ReaderPool {
            path: path.to_path_buf(),
            immutable: false,
            idle: Mutex::new(Vec::new()),
        };
        let first = match readers
            .open(&options)
            .and_then(|c| check_readable(&c).map(|()| c))
        {
            Ok(conn) => conn,
            // A WAL file that cannot be attached to (no write access to make
            // its index): read the file as it is.
            Err(ContextStoreError::StorageError(msg))
                if msg.contains("unable to open") || msg.contains("readonly") =>
            {
                readers.immutable = true;
                let conn = readers.open(&options).map_err(at)?;
                check_readable(&conn).map_err(at)?;
                conn
            }
            Err(e) => return Err(at(e)),
        };
        lock(&readers.idle).push(first);
        Ok(Self {
            readers: Some(readers),
            writer: None,
            options,
        })
    }

    /// A private in-memory store, gone when dropped. Reads share the writer
    /// connection. For tests and short-lived tools.
    pub fn in_memory() -> Result<Self, ContextStoreError> {
        let mut writer = Connection::open_in_memory()?;
        schema::migrate(&mut writer)?;
        Ok(Self {
            readers: None,
            writer: Some(GroupCommit::new(writer, MAX_BATCH)),
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
            let writer = self.writer()?;
            return Ok(self.retry_busy(|| f(&writer.connection()))?);
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

    fn writer(&self) -> Result<&GroupCommit, ContextStoreError> {
        self.writer
            .as_ref()
            .ok_or_else(|| ContextStoreError::StorageError("the store was opened read-only".into()))
    }

    /// Runs one write through group commit: it shares the next commit
    /// with the writes of other threads, and returns its own result once
    /// that commit is done.
    fn write(&self, op: WriteOp) -> Result<(), ContextStoreError> {
        let give_up = deadline::cap(Instant::now() + self.options.busy_deadline);
        self.writer()?.submit(op, give_up)
    }

    /// Runs `f`, waiting out a busy database (a lock held by another
    /// process, or WAL recovery after a crash) until
    /// [`SqliteOptions::busy_deadline`] or the call's
    /// [deadline](super::deadline), whichever is first. Each statement is
    /// atomic, so a retry never applies anything twice.
    fn retry_busy<T>(&self, f: impl Fn() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let give_up = deadline::cap(Instant::now() + self.options.busy_deadline);
        busy::wait_until(give_up, || {
            loop {
                match f() {
                    Err(e) if is_busy(&e) && Instant::now() < give_up => {
                        tracing::debug!(error = %e, "database busy, retrying");
                        std::thread::sleep(
                            busy::PAUSE.min(give_up.saturating_duration_since(Instant::now())),
                        );
                    }
                    other => return other,
                }
            }
        })
    }
}

/// Puts the path in front of a storage error's message.
fn naming(path: &Path, error: ContextStoreError) -> ContextStoreError {
    match error {
        ContextStoreError::StorageError(msg) => {
            ContextStoreError::StorageError(format!("cannot open {}: {msg}", path.display()))
        }
        other => other,
    }
}

/// Waiting on a busy database. SQLite calls [`handler`] while a lock is
/// held elsewhere; it sleeps in short pauses until the give-up time of the
/// call in progress on this thread, so a statement never waits past the
/// store's busy deadline or the call's deadline.
mod busy {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    /// The longest single pause while waiting.
    pub const PAUSE: Duration = Duration::from_millis(5);

    thread_local! {
        static GIVE_UP: Cell<Option<Instant>> = const { Cell::new(None) };
    }

    /// Runs `f` with `give_up` as this thread's busy give-up time.
    pub fn wait_until<T>(give_up: Instant, f: impl FnOnce() -> T) -> T {
        crate::store::deadline::scoped(&GIVE_UP, give_up, f)
    }

    /// SQLite's busy handler: `true` to try again, `false` to give up
    /// (the statement then fails with `SQLITE_BUSY`).
    pub fn handler(_attempts: i32) -> bool {
        let give_up = GIVE_UP
            .with(Cell::get)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(5));
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(PAUSE.min(left));
        true
    }
}

impl ReaderPool {
    fn open(&self, options: &SqliteOptions) -> Result<Connection, ContextStoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let target = if self.immutable {
            PathBuf::from(format!("file:{}?immutable=1", uri_path(&self.path)))
        } else {
            self.path.clone()
        };
        let mut conn = match &options.vfs {
            Some(vfs) => Connection::open_with_flags_and_vfs(&target, flags, vfs.as_str())?,
            None => Connection::open_with_flags(&target, flags)?,
        };
        conn.busy_handler(Some(busy::handler))?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }
}

/// A path as the path part of an SQLite `file:` URI.
fn uri_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '?' | '#' | '%' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Checks that a read connection sees a contextstore database of this
/// build's schema.
fn check_readable(conn: &Connection) -> Result<(), ContextStoreError> {
    schema::check(conn)
}

fn configure_writer(
    conn: &mut Connection,
    options: &SqliteOptions,
) -> Result<(), ContextStoreError> {
    conn.busy_handler(Some(busy::handler))?;
    let give_up = Instant::now() + options.busy_deadline;
    busy::wait_until(give_up, || {
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
        // Another process may hold the database while it migrates or writes:
        // wait for it like any busy write.
        loop {
            match schema::migrate(conn) {
                Err(ContextStoreError::StorageError(msg))
                    if msg.contains("database is locked") && Instant::now() < give_up =>
                {
                    std::thread::sleep(busy::PAUSE);
                }
                other => return other,
            }
        }
    })
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

impl ContextStore for SqliteContextStore {
    fn put_text(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        self.write(WriteOp::Put {
            flow_run_id,
            node_id,
            value: value.clone(),
            provenance: None,
        })
    }

    fn put_text_with_provenance(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
        provenance: &Provenance,
    ) -> Result<(), ContextStoreError> {
        self.write(WriteOp::Put {
            flow_run_id,
            node_id,
            value: value.clone(),
            provenance: Some(Box::new(provenance.clone())),
        })
    }

    fn provenance(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError> {
        let found = self.read(|conn| {
            conn.prepare_cached(
                "SELECT component_hash, params_hash, upstream_hash, attempt, host, started_at, ended_at
                 FROM outputs WHERE flow_run_id = ?1 AND node_id = ?2 AND component_hash IS NOT NULL",
            )?
            .query_row(params![flow_run_id.as_bytes(), node_id.as_bytes()], |row| {
                Ok(Provenance {
                    component_hash: row.get(0)?,
                    params_hash: row.get(1)?,
                    upstream_hash: row.get(2)?,
                    attempt: row.get(3)?,
                    host: row.get(4)?,
                    started_at: row.get(5)?,
                    ended_at: row.get(6)?,
                })
            })
            .optional()
        })?;
        Ok(found)
    }

    fn get_text(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        let text: Option<String> = self.read(|conn| {
            conn.prepare_cached(
                "SELECT value FROM outputs WHERE flow_run_id = ?1 AND node_id = ?2",
            )?
            .query_row(params![flow_run_id.as_bytes(), node_id.as_bytes()], |row| {
                row.get(0)
            })
            .optional()
        })?;
        Ok(text.map(JsonText::from_stored))
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

    fn put_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError> {
        self.write(WriteOp::PutGlobal {
            key: key.to_owned(),
            value: value.clone(),
        })
    }

    fn upsert_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError> {
        self.write(WriteOp::UpsertGlobal {
            key: key.to_owned(),
            value: value.clone(),
        })
    }

    fn get_global_text(&self, key: &str) -> Result<Option<JsonText>, ContextStoreError> {
        let text: Option<String> = self.read(|conn| {
            conn.prepare_cached("SELECT value FROM globals WHERE key = ?1")?
                .query_row(params![key], |row| row.get(0))
                .optional()
        })?;
        Ok(text.map(JsonText::from_stored))
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
