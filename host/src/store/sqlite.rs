//! [`SqliteContextStore`]: the embedded SQLite backend.
//!
//! One writer connection serialises writes, and concurrent writes share
//! its commits (group commit); reads go through a small pool of read-only
//! connections, so that in WAL mode a reader never waits behind a write.
//! Write-once is the primary key of each table: of N racing writers exactly
//! one insert succeeds, in this process or across processes sharing the
//! file.
//!
//! # Deadlines
//!
//! Every call has a give-up time: through the synchronous [`ContextStore`]
//! interface it is [`SqliteOptions::busy_deadline`] from the call's start;
//! through the async one (feature `async`) the earlier of that and the
//! [`CallContext`]'s deadline. A call that waits (for a database another
//! process holds locked, or behind other writes) fails at its give-up time
//! with [`ContextStoreError::Timeout`], and a write answered so was not
//! applied and never will be. A write already inside a committing
//! transaction is answered with that commit's result.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::{CallContext, ContextStore, Provenance, schema};

#[cfg(feature = "async")]
mod asynchronous;
mod busy;
mod group_commit;
mod open;
mod ops;
#[cfg(feature = "async")]
mod runs;
#[cfg(test)]
mod tests;

use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use crate::store::{Backend, StoreInfo};
use group_commit::{GroupCommit, MAX_BATCH};
use open::ReaderPool;
use ops::WriteOp;

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
    /// process holds locked, or behind other writes, before it fails with
    /// [`ContextStoreError::Timeout`] (default 60 s). A call made through
    /// the async interface also stops at its [`CallContext`]'s deadline.
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
///
/// Concurrent writes share commits: a write that arrives while another
/// commits waits for it and then goes, with the others that arrived
/// meanwhile, into the next transaction; each write keeps its own result,
/// and `Ok` means the commit that held it is done.
///
/// With the `async` feature it is also an
/// [`AsyncContextStore`](crate::store::AsyncContextStore) (see
/// [`ContextStore::as_async`]). That interface's [`CallContext::fence`] is
/// ignored here: an SQLite file has one process per run and no coordinator
/// hands out claims, so there is no fencing token to check.
pub struct SqliteContextStore {
    /// Idle read-only connections; `None` for an in-memory store, whose
    /// reads use the writer connection. Declared before `writer` so that
    /// they close first: the writer, closing last, checkpoints the WAL and
    /// removes the `-wal` file.
    readers: Option<ReaderPool>,
    /// The connection gc checkpoints the write-ahead log with, once it
    /// has removed a batch (see `runs.rs`); opened on first use. Closes
    /// before the writer, too.
    #[cfg(feature = "async")]
    checkpointer: Arc<Mutex<Option<Connection>>>,
    /// The writer connection behind group commit; `None` for a store
    /// opened with [`SqliteContextStore::open_read_only`]. Shared with the
    /// blocking threads that async writes run on.
    writer: Option<Arc<GroupCommit>>,
    options: SqliteOptions,
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
    /// application, has a newer schema, or cannot be written. A file that
    /// is refused is left as it was: nothing is written to it, and no
    /// `-wal` or `-shm` file is made beside it. Opening a database whose
    /// schema is current takes no write lock, so it does not wait behind
    /// another process's write; a migration waits for the lock at most
    /// [`SqliteOptions::busy_deadline`] (then
    /// [`ContextStoreError::Timeout`]).
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, ContextStoreError> {
        let path = path.as_ref();
        let at = |e| naming(path, e);
        let writer = open::writer(path, &options).map_err(at)?;
        let readers = open::ReaderPool::new(path);
        // Open one reader now, so that a broken setup fails at open, not at first read.
        let first = readers.open(&options).map_err(at)?;
        lock(&readers.idle).push(first);
        tracing::debug!(path = %path.display(), ?options, "opened sqlite context store");
        let max_batch = if options.group_commit { MAX_BATCH } else { 1 };
        Ok(Self {
            readers: Some(readers),
            writer: Some(Arc::new(GroupCommit::new(writer, max_batch))),
            options,
            #[cfg(feature = "async")]
            checkpointer: Arc::default(),
        })
    }

    /// Opens an existing database for reading only: nothing is created or
    /// migrated, and a file the process may not write (or a read-only
    /// medium) is fine. Every write fails with a storage error.
    ///
    /// Commits still in the file's write-ahead log are read. A file whose
    /// log this process cannot read (its `-shm` file is missing, and the
    /// process may not create it in the file's directory) is refused with
    /// an error that says so, rather than read without the log and seen
    /// with committed rows missing.
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
        let readers = open::readers(path, &options).map_err(at)?;
        Ok(Self {
            readers: Some(readers),
            writer: None,
            options,
            #[cfg(feature = "async")]
            checkpointer: Arc::default(),
        })
    }

    /// A private in-memory store, gone when dropped. Reads share the writer
    /// connection. For tests and short-lived tools.
    pub fn in_memory() -> Result<Self, ContextStoreError> {
        let mut writer = Connection::open_in_memory()?;
        schema::migrate(&mut writer)?;
        Ok(Self {
            readers: None,
            writer: Some(Arc::new(GroupCommit::new(writer, MAX_BATCH))),
            options: SqliteOptions::default(),
            #[cfg(feature = "async")]
            checkpointer: Arc::default(),
        })
    }

    /// The give-up time of a call made through the synchronous interface:
    /// the store's busy deadline from now.
    fn own_give_up(&self) -> Instant {
        CallContext::none().give_up(self.options.busy_deadline)
    }

    /// Runs `f` on a read connection (a pooled read-only one for a file,
    /// the writer for an in-memory store), on the calling thread, waiting
    /// out a busy database until `give_up`.
    fn read<T>(
        &self,
        give_up: Instant,
        f: impl Fn(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ContextStoreError> {
        if give_up <= Instant::now() {
            return Err(ContextStoreError::Timeout(
                "the call's deadline passed before the read started".into(),
            ));
        }
        let Some(pool) = &self.readers else {
            let writer = self.writer()?.connection();
            return retry_busy(give_up, || f(&writer));
        };
        let idle = lock(&pool.idle).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => pool.open(&self.options)?,
        };
        let result = retry_busy(give_up, || f(&conn));
        let mut idle = lock(&pool.idle);
        if idle.len() < self.options.readers {
            idle.push(conn);
        }
        result
    }

    fn writer(&self) -> Result<&Arc<GroupCommit>, ContextStoreError> {
        self.writer
            .as_ref()
            .ok_or_else(|| ContextStoreError::StorageError("the store was opened read-only".into()))
    }

    /// Runs one write through group commit on the calling thread: it
    /// shares the next commit with the writes of other threads, and returns
    /// its own result once that commit is done, or
    /// [`ContextStoreError::Timeout`] (not applied) if it could not start
    /// by `give_up`.
    fn write(&self, op: WriteOp, give_up: Instant) -> Result<(), ContextStoreError> {
        self.writer()?.submit(op, give_up)
    }

    fn get_text_until(
        &self,
        give_up: Instant,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        let text: Option<String> = self.read(give_up, |conn| {
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

    /// Runs `sql` (`?1` the run, `?2` a node) once for each of `node_ids`
    /// on one reader connection, mapping the row found with `f`.
    #[cfg(feature = "async")]
    fn read_each_node<T>(
        &self,
        give_up: Instant,
        flow_run_id: FlowRunId,
        node_ids: &[NodeId],
        sql: &str,
        f: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<Option<T>>, ContextStoreError> {
        self.read(give_up, |conn| {
            let mut select = conn.prepare_cached(sql)?;
            node_ids
                .iter()
                .map(|node_id| {
                    select
                        .query_row(params![flow_run_id.as_bytes(), node_id.as_bytes()], &f)
                        .optional()
                })
                .collect()
        })
    }

    #[cfg(feature = "async")]
    fn get_many_until(
        &self,
        give_up: Instant,
        flow_run_id: FlowRunId,
        node_ids: &[NodeId],
    ) -> Result<Vec<Option<JsonText>>, ContextStoreError> {
        self.read_each_node(
            give_up,
            flow_run_id,
            node_ids,
            "SELECT value FROM outputs WHERE flow_run_id = ?1 AND node_id = ?2",
            |row| Ok(JsonText::from_stored(row.get(0)?)),
        )
    }

    #[cfg(feature = "async")]
    fn get_many_with_provenance_until(
        &self,
        give_up: Instant,
        flow_run_id: FlowRunId,
        node_ids: &[NodeId],
    ) -> Result<Vec<Option<super::Stored>>, ContextStoreError> {
        self.read_each_node(
            give_up,
            flow_run_id,
            node_ids,
            "SELECT value, component_hash, params_hash, upstream_hash, attempt, host,
                    started_at, ended_at
             FROM outputs WHERE flow_run_id = ?1 AND node_id = ?2",
            |row| {
                Ok(super::Stored {
                    value: JsonText::from_stored(row.get(0)?),
                    provenance: provenance_at(row, 1)?,
                })
            },
        )
    }

    #[cfg(feature = "async")]
    fn get_globals_until(
        &self,
        give_up: Instant,
        keys: &[String],
    ) -> Result<Vec<Option<JsonText>>, ContextStoreError> {
        let texts: Vec<Option<String>> = self.read(give_up, |conn| {
            let mut select = conn.prepare_cached("SELECT value FROM globals WHERE key = ?1")?;
            keys.iter()
                .map(|key| select.query_row(params![key], |row| row.get(0)).optional())
                .collect()
        })?;
        Ok(texts
            .into_iter()
            .map(|text| text.map(JsonText::from_stored))
            .collect())
    }

    fn list_keys_until(
        &self,
        give_up: Instant,
        flow_run_id: FlowRunId,
    ) -> Result<Vec<NodeId>, ContextStoreError> {
        let ids: Vec<[u8; 16]> = self.read(give_up, |conn| {
            conn.prepare_cached("SELECT node_id FROM outputs WHERE flow_run_id = ?1")?
                .query_map(params![flow_run_id.as_bytes()], |row| row.get(0))?
                .collect()
        })?;
        Ok(ids
            .into_iter()
            .map(|b| NodeId::from_uuid(uuid::Uuid::from_bytes(b)))
            .collect())
    }

    fn get_global_until(
        &self,
        give_up: Instant,
        key: &str,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        let text: Option<String> = self.read(give_up, |conn| {
            conn.prepare_cached("SELECT value FROM globals WHERE key = ?1")?
                .query_row(params![key], |row| row.get(0))
                .optional()
        })?;
        Ok(text.map(JsonText::from_stored))
    }

    fn provenance_until(
        &self,
        give_up: Instant,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError> {
        self.read(give_up, |conn| {
            conn.prepare_cached(
                "SELECT component_hash, params_hash, upstream_hash, attempt, host, started_at, ended_at
                 FROM outputs WHERE flow_run_id = ?1 AND node_id = ?2 AND component_hash IS NOT NULL",
            )?
            .query_row(params![flow_run_id.as_bytes(), node_id.as_bytes()], |row| {
                provenance_at(row, 0)
            })
            .optional()
            .map(Option::flatten)
        })
    }
}

/// The provenance in the seven columns of `row` from `first` on (`None`
/// when its component hash is NULL: an output written without it).
fn provenance_at(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Option<Provenance>> {
    let Some(component_hash) = row.get::<_, Option<String>>(first)? else {
        return Ok(None);
    };
    Ok(Some(Provenance {
        component_hash,
        params_hash: row.get(first + 1)?,
        upstream_hash: row.get(first + 2)?,
        attempt: row.get(first + 3)?,
        host: row.get(first + 4)?,
        started_at: row.get(first + 5)?,
        ended_at: row.get(first + 6)?,
    }))
}

/// Refuses, touching nothing, a file at `path` that is not this build's to
/// open for writing (another application's, or a newer schema): what
/// [`SqliteContextStore::open`] checks first, for other ways of opening a
/// file for writing (`contextstore migrate`).
pub(crate) fn check_before_opening(path: &Path) -> Result<(), ContextStoreError> {
    open::check_before_opening(path, &SqliteOptions::default())
}

/// [`check_before_opening`], with `check` deciding what the tables must be
/// (`migrate --back` wants this build's schema, not a WorldInterface one).
pub(crate) fn check_before_reading(
    path: &Path,
    check: impl FnOnce(&Connection) -> Result<(), ContextStoreError>,
) -> Result<(), ContextStoreError> {
    open::check_unopened(path, &SqliteOptions::default(), check)
}

/// Runs `f`, waiting out a busy database (a lock held by another process,
/// or WAL recovery after a crash) until `give_up`; then fails with
/// [`ContextStoreError::Timeout`]. Each statement is atomic, so a retry
/// never applies anything twice.
fn retry_busy<T>(
    give_up: Instant,
    f: impl Fn() -> rusqlite::Result<T>,
) -> Result<T, ContextStoreError> {
    busy::wait_until(give_up, || {
        loop {
            match f() {
                Err(e) if is_busy(&e) => {
                    if Instant::now() >= give_up {
                        return Err(ContextStoreError::Timeout(format!(
                            "the database stayed locked by another connection until the \
                             call's deadline ({e})"
                        )));
                    }
                    tracing::debug!(error = %e, "database busy, retrying");
                    busy::pause_until(give_up);
                }
                other => return other.map_err(ContextStoreError::from),
            }
        }
    })
}

/// Puts the path in front of a storage error's (or a timeout's) message.
fn naming(path: &Path, error: ContextStoreError) -> ContextStoreError {
    let at = |msg: String| format!("cannot open {}: {msg}", path.display());
    match error {
        ContextStoreError::StorageError(msg) => ContextStoreError::StorageError(at(msg)),
        ContextStoreError::Timeout(msg) => ContextStoreError::Timeout(at(msg)),
        other => other,
    }
}

/// Locks a mutex, recovering from poisoning: the guarded state stays
/// consistent across a panic (a connection left inside a transaction is
/// rolled back before its next use).
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

/// A node output's write, with its provenance if given.
fn put_op(
    flow_run_id: FlowRunId,
    node_id: NodeId,
    value: &JsonText,
    provenance: Option<&Provenance>,
) -> WriteOp {
    WriteOp::Put {
        flow_run_id,
        node_id,
        value: value.clone(),
        provenance: provenance.map(|p| Box::new(p.clone())),
    }
}

impl ContextStore for SqliteContextStore {
    fn put_text(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        let op = put_op(flow_run_id, node_id, value, None);
        self.write(op, self.own_give_up())
    }

    fn put_text_with_provenance(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
        provenance: &Provenance,
    ) -> Result<(), ContextStoreError> {
        let op = put_op(flow_run_id, node_id, value, Some(provenance));
        self.write(op, self.own_give_up())
    }

    fn provenance(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError> {
        self.provenance_until(self.own_give_up(), flow_run_id, node_id)
    }

    fn get_text(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        self.get_text_until(self.own_give_up(), flow_run_id, node_id)
    }

    fn list_keys(&self, flow_run_id: FlowRunId) -> Result<Vec<NodeId>, ContextStoreError> {
        self.list_keys_until(self.own_give_up(), flow_run_id)
    }

    fn put_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError> {
        let op = WriteOp::PutGlobal {
            key: key.to_owned(),
            value: value.clone(),
        };
        self.write(op, self.own_give_up())
    }

    fn upsert_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError> {
        let op = WriteOp::UpsertGlobal {
            key: key.to_owned(),
            value: value.clone(),
        };
        self.write(op, self.own_give_up())
    }

    fn get_global_text(&self, key: &str) -> Result<Option<JsonText>, ContextStoreError> {
        self.get_global_until(self.own_give_up(), key)
    }

    fn describe(&self) -> Result<StoreInfo, ContextStoreError> {
        let (journal_mode, schema_version): (String, i64) =
            self.read(self.own_give_up(), |conn| {
                Ok((
                    conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?,
                    conn.pragma_query_value(None, "user_version", |row| row.get(0))?,
                ))
            })?;
        let durability = match (&self.writer, self.options.durability) {
            (None, _) => "none (read only)",
            (Some(_), Durability::Full) => "full",
            (Some(_), Durability::Normal) => "normal",
        };
        Ok(StoreInfo {
            backend: Backend::Sqlite,
            location: match &self.readers {
                Some(readers) => readers.path.display().to_string(),
                None => ":memory:".into(),
            },
            read_only: self.writer.is_none(),
            schema_version,
            durability: durability.into(),
            journal_mode: Some(journal_mode.to_ascii_lowercase()),
            group_commit: self.writer.is_some() && self.options.group_commit,
            engine_version: format!("SQLite {}", rusqlite::version()),
        })
    }

    #[cfg(feature = "async")]
    fn as_async(&self) -> Option<&dyn crate::store::AsyncContextStore> {
        Some(self)
    }

    #[cfg(feature = "async")]
    fn into_async(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn crate::store::AsyncContextStore>> {
        Some(self)
    }
}
