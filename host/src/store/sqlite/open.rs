//! Opening a database file: the checks that come before anything is
//! written to it, the writer connection's settings, and the read
//! connections.
//!
//! A file this build must leave alone (another application's, or a newer
//! schema) is refused before any statement that writes: its bytes stay as
//! they were, and no `-wal` or `-shm` file is made beside it. To that end
//! the file's header is read first, as plain bytes; then, for a file in
//! WAL mode with no `-wal` beside it, its tables are looked at through an
//! immutable read-only connection (which makes no files). Only once the
//! file is known to be a contextstore database (or an empty one, or a
//! WorldInterface store to convert) is WAL mode set, and the write lock is
//! taken only if the schema needs migrating: opening a current database
//! does not wait behind another process's write transaction.
//!
//! With a custom VFS ([`SqliteOptions::vfs`]) the path need not name a file
//! on disk: the checks then run through SQLite only.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::{Durability, SqliteOptions, busy};
use crate::error::ContextStoreError;
use crate::store::{CallContext, schema};

/// The read connections of a file-backed store.
pub(super) struct ReaderPool {
    /// The database file.
    pub(super) path: PathBuf,
    /// Open the file as immutable: only for a read-only open of a file that
    /// has no write-ahead log (so the file alone holds every commit) and
    /// whose `-shm` this process cannot make.
    immutable: bool,
    /// Idle read-only connections.
    pub(super) idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    /// A pool for the file at `path`, with no connection yet.
    pub(super) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            immutable: false,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Opens one more read-only connection.
    pub(super) fn open(&self, options: &SqliteOptions) -> Result<Connection, ContextStoreError> {
        Ok(self.connect(options)?)
    }

    fn connect(&self, options: &SqliteOptions) -> rusqlite::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let mut conn = if self.immutable {
            connect(&immutable_uri(&self.path), flags, options)?
        } else {
            connect(&self.path, flags, options)?
        };
        busy::install(&mut conn)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }
}

/// Opens the writer connection of the database at `path`, creating the
/// file if missing: checks it, sets WAL mode and the durability, and
/// migrates the schema if it needs it. Waits for a database another
/// process holds locked at most [`SqliteOptions::busy_deadline`].
pub(super) fn writer(
    path: &Path,
    options: &SqliteOptions,
) -> Result<Connection, ContextStoreError> {
    if options.vfs.is_none() {
        check_before_opening(path, options)?;
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let mut conn = connect(path, flags, options)?;
    busy::install(&mut conn)?;
    let give_up = CallContext::none().give_up(options.busy_deadline);
    busy::wait_until(give_up, || configure_writer(&mut conn, options, give_up))?;
    Ok(conn)
}

/// The read connections of an existing database at `path`, for a
/// read-only open: nothing is created or migrated.
///
/// A file in WAL mode is read with its write-ahead log. Where that cannot
/// be done (the `-shm` file is missing and this process may not make it),
/// the file is read as immutable only if it has no write-ahead log to
/// miss; otherwise the open is refused, saying why.
pub(super) fn readers(
    path: &Path,
    options: &SqliteOptions,
) -> Result<ReaderPool, ContextStoreError> {
    let mut pool = ReaderPool::new(path);
    let give_up = CallContext::none().give_up(options.busy_deadline);
    let probe = busy::wait_until(give_up, || {
        let conn = pool.connect(options)?;
        // The first read opens the write-ahead log, if there is one.
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |row| {
            row.get::<_, i64>(0)
        })?;
        Ok(conn)
    });
    let first = match probe {
        Ok(conn) => conn,
        Err(e) if cannot_reach_the_log(&e) => {
            let wal = sidecar(path, "-wal");
            if has_content(&wal) {
                return Err(ContextStoreError::StorageError(format!(
                    "it has a write-ahead log ({}) that this process cannot read without write \
                     access to its directory or its -shm file ({e}); open it as a user who can, \
                     or checkpoint it first (open it for writing once)",
                    wal.display()
                )));
            }
            tracing::debug!(
                path = %path.display(),
                error = %e,
                "no write-ahead log, and no -shm can be made: reading the file as immutable"
            );
            pool.immutable = true;
            pool.connect(options)?
        }
        Err(e) => return Err(locked_or(e, "reading the database")),
    };
    busy::wait_until(give_up, || schema::check(&first))?;
    super::lock(&pool.idle).push(first);
    Ok(pool)
}

/// Whether a read-only open failed because SQLite could not get at the
/// file's WAL index (no `-shm`, and no right to make one).
fn cannot_reach_the_log(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly)
    )
}

/// Whether `path` is a file with something in it. A file whose size
/// cannot be learned (for any reason but that it is not there) counts as
/// having content.
fn has_content(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(meta) => meta.len() > 0,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// `path` with `suffix` appended (`ctx.db` → `ctx.db-wal`).
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// What an SQLite file's 100-byte header says about whose it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    /// The file is in WAL mode.
    wal: bool,
    /// `PRAGMA user_version`.
    user_version: i64,
    /// `PRAGMA application_id`.
    application_id: i64,
}

/// The header of the SQLite database file at `path`; `None` if there is
/// no such file, it cannot be read, or it is not an SQLite file (SQLite
/// then says what is wrong when it opens it).
fn read_header(path: &Path) -> Option<Header> {
    let mut bytes = Vec::with_capacity(100);
    std::fs::File::open(path)
        .ok()?
        .take(100)
        .read_to_end(&mut bytes)
        .ok()?;
    parse_header(&bytes)
}

fn parse_header(bytes: &[u8]) -> Option<Header> {
    let be_i32 = |at: usize| -> Option<i64> {
        let field: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(i64::from(i32::from_be_bytes(field)))
    };
    if bytes.len() < 100 || !bytes.starts_with(b"SQLite format 3\0") {
        return None;
    }
    Some(Header {
        // The file format's write and read versions: 2 is WAL.
        wal: bytes.get(18) == Some(&2) || bytes.get(19) == Some(&2),
        user_version: be_i32(60)?,
        application_id: be_i32(68)?,
    })
}

/// Refuses, touching nothing, a file that is not this build's to open: by
/// its header's marks, then (for a file in WAL mode with no `-wal`, which a
/// plain connection would make) by its tables, read through an immutable
/// connection.
pub(super) fn check_before_opening(
    path: &Path,
    options: &SqliteOptions,
) -> Result<(), ContextStoreError> {
    check_unopened(path, options, |conn| schema::inspect(conn).map(drop))
}

/// [`check_before_opening`], with `check` deciding what the tables must
/// be (a caller that only reads may want more than [`schema::inspect`]).
pub(super) fn check_unopened(
    path: &Path,
    options: &SqliteOptions,
    check: impl FnOnce(&Connection) -> Result<(), ContextStoreError>,
) -> Result<(), ContextStoreError> {
    let Some(header) = read_header(path) else {
        return Ok(());
    };
    schema::refuse_marks(header.application_id, header.user_version)?;
    if header.wal && !sidecar(path, "-wal").exists() {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = connect(&immutable_uri(path), flags, options)?;
        check(&conn)?;
    }
    Ok(())
}

/// Checks what the file holds, then sets WAL mode and the connection's
/// settings, and migrates if the schema is not current.
fn configure_writer(
    conn: &mut Connection,
    options: &SqliteOptions,
    give_up: Instant,
) -> Result<(), ContextStoreError> {
    // Read only: refuses what is not this build's before anything is written.
    let found = retry_locked(give_up, || {
        let read = conn.unchecked_transaction()?;
        schema::inspect(&read)
    })?;
    let mode: String = retry_locked(give_up, || {
        Ok(conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?)
    })?;
    if !mode.eq_ignore_ascii_case("wal") {
        let mode: String = retry_locked(give_up, || {
            Ok(conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?)
        })?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(ContextStoreError::StorageError(format!(
                "could not switch to WAL mode (journal_mode is {mode})"
            )));
        }
    }
    let synchronous = match options.durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    if !found.is_current() {
        // Another process may hold the database while it migrates or
        // writes: wait for it like any busy write. A WorldInterface
        // file's copy is made through the same VFS.
        retry_locked(give_up, || {
            schema::migrate_reporting(conn, options.vfs.as_deref()).map(drop)
        })?;
    }
    Ok(())
}

/// Runs `f` again while it fails because the database is locked, until
/// `give_up`; then fails with [`ContextStoreError::Timeout`].
fn retry_locked<T>(
    give_up: Instant,
    mut f: impl FnMut() -> Result<T, ContextStoreError>,
) -> Result<T, ContextStoreError> {
    loop {
        match f() {
            Err(ContextStoreError::StorageError(msg)) if msg.contains("database is locked") => {
                if Instant::now() >= give_up {
                    return Err(ContextStoreError::Timeout(format!(
                        "the database stayed locked by another connection until the busy deadline ({msg})"
                    )));
                }
                busy::pause_until(give_up);
            }
            other => return other,
        }
    }
}

/// A busy error as [`ContextStoreError::Timeout`] (the busy handler gave up
/// at the deadline), any other as a storage error.
fn locked_or(error: rusqlite::Error, doing: &str) -> ContextStoreError {
    if super::is_busy(&error) {
        ContextStoreError::Timeout(format!(
            "{doing}: the database stayed locked by another connection until the deadline ({error})"
        ))
    } else {
        error.into()
    }
}

/// Opens a connection with `options`' VFS.
fn connect(
    target: &Path,
    flags: OpenFlags,
    options: &SqliteOptions,
) -> rusqlite::Result<Connection> {
    match &options.vfs {
        Some(vfs) => Connection::open_with_flags_and_vfs(target, flags, vfs.as_str()),
        None => Connection::open_with_flags(target, flags),
    }
}

/// The `file:` URI that opens `path` as immutable: no locks, no `-wal` or
/// `-shm`, the file taken as it is.
fn immutable_uri(path: &Path) -> PathBuf {
    PathBuf::from(format!("file:{}?immutable=1", uri_path(path)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_says_whose_the_file_is() {
        let mut bytes = b"SQLite format 3\0".to_vec();
        bytes.resize(100, 0);
        bytes[18] = 2;
        bytes[19] = 2;
        bytes[60..64].copy_from_slice(&2i32.to_be_bytes());
        bytes[68..72].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(
            parse_header(&bytes),
            Some(Header {
                wal: true,
                user_version: 2,
                application_id: -5
            })
        );
        assert_eq!(parse_header(&bytes[..99]), None);
        bytes[0] = b'X';
        assert_eq!(parse_header(&bytes), None);
    }

    #[test]
    fn a_path_with_uri_characters_is_escaped() {
        assert_eq!(uri_path(Path::new("/a?b#c%d")), "/a%3Fb%23c%25d");
        assert_eq!(
            sidecar(Path::new("/x/ctx.db"), "-wal"),
            PathBuf::from("/x/ctx.db-wal")
        );
    }
}
