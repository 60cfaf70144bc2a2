//! Carrying a WorldInterface database over.
//!
//! The WorldInterface flow engine's own SQLite store keeps the same data in
//! another layout: STRICT tables `outputs(flow_run_id TEXT, node_id TEXT,
//! value BLOB, written_at TEXT)` and `globals(key TEXT, value BLOB,
//! written_at TEXT)`, ids as hyphenated UUID text, values as
//! `serde_json::to_vec` bytes, times as RFC 3339 text, and no
//! `application_id` or `user_version`.
//!
//! Opening such a file for writing with
//! [`SqliteContextStore::open`](crate::SqliteContextStore::open) (or
//! [`migrate_file`], behind `contextstore migrate`) converts it in place, in
//! the same single transaction that creates this build's schema: ids become
//! 16-byte UUIDs, values are kept as the exact JSON text they were, times
//! become Unix milliseconds. Every row is checked first; a row that cannot
//! be carried over (an id that is not a UUID, a value that is not UTF-8
//! JSON, a time that is not RFC 3339) fails the whole conversion with an
//! error naming the row, and the file is left as it was. Once converted the
//! file is a contextstore database, and opening it again changes nothing.
//!
//! # The way back
//!
//! Before it converts, the conversion keeps an exact copy of the original
//! beside it, [`backup_path`] (`<db>.worldinterface-backup`): made inside
//! the converting transaction, while it holds the write lock, so it is the
//! very state that was converted (see [`MigrationReport::backup`]). The
//! original engine can open that copy as it was.
//!
//! [`write_back`] (`contextstore migrate --back --db FILE --to OUT`) goes
//! further: it writes a new file in the original store's own schema that
//! holds every output and every global of a contextstore database,
//! including those written since the conversion. What the original schema
//! has no place for (provenance, the runs index) is left out, and counted
//! in its [`BackReport`].

use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use serde::Serialize;

use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::{JsonText, MAX_DEPTH};

/// What [`migrate_file`] (or a migrating open) did to a database.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// The schema version found (0 for a new or a WorldInterface file).
    pub from_version: i64,
    /// The schema version the file has now.
    pub to_version: i64,
    /// What was carried over from a WorldInterface database, if the file was one.
    pub worldinterface: Option<Converted>,
    /// Where the copy of the WorldInterface original was kept, exactly as
    /// it was when it was converted: [`backup_path`] of the file's full
    /// path, as SQLite names it (`/…/<db>.worldinterface-backup`). `None`
    /// when nothing was converted, or for a database that has no file.
    /// Should the last step (renaming the finished copy from its
    /// `.partial` name) fail after the conversion committed, this is the
    /// `.partial` name, which then holds the complete copy (a warning is
    /// logged).
    pub backup: Option<PathBuf>,
}

/// How many rows a WorldInterface conversion carried over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Converted {
    /// Node outputs.
    pub outputs: u64,
    /// Globals.
    pub globals: u64,
}

/// The original tables: each column's name, declared type and primary-key
/// position (all are `NOT NULL`).
const OUTPUTS: &[(&str, &str, i64)] = &[
    ("flow_run_id", "TEXT", 1),
    ("node_id", "TEXT", 2),
    ("value", "BLOB", 0),
    ("written_at", "TEXT", 0),
];
const GLOBALS: &[(&str, &str, i64)] = &[
    ("key", "TEXT", 1),
    ("value", "BLOB", 0),
    ("written_at", "TEXT", 0),
];

/// The names the original tables are moved to while their rows are copied.
const OLD_OUTPUTS: &str = "worldinterface_outputs";
const OLD_GLOBALS: &str = "worldinterface_globals";

/// Opens the database file at `path` (which must exist) and brings it to
/// this build's schema, converting a WorldInterface database: what
/// `contextstore migrate` does. A contextstore file already up to date is
/// left alone. A WorldInterface file's original is first copied to
/// [`backup_path`] (see [`MigrationReport::backup`]); if that name is taken
/// already, the conversion is refused and the file left as it was.
pub fn migrate_file(path: impl AsRef<Path>) -> Result<MigrationReport, ContextStoreError> {
    let path = path.as_ref();
    let at = |e: ContextStoreError| match e {
        ContextStoreError::StorageError(msg) => {
            ContextStoreError::StorageError(format!("{}: {msg}", path.display()))
        }
        other => other,
    };
    if !path.exists() {
        return Err(at(ContextStoreError::StorageError(
            "no such database file".into(),
        )));
    }
    // A file that is not this build's to change is refused before anything
    // (not even a -wal or -shm beside it) is written.
    super::sqlite::check_before_opening(path).map_err(at)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| at(e.into()))?;
    conn.busy_timeout(std::time::Duration::from_secs(60))
        .map_err(|e| at(e.into()))?;
    super::schema::migrate_reporting(&mut conn, None).map_err(at)
}

/// Whether `conn` holds exactly the original WorldInterface tables and
/// nothing else (indexes SQLite made for the primary keys aside).
pub(crate) fn detect(conn: &Connection) -> Result<bool, ContextStoreError> {
    let mut names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY name")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    names.sort();
    if names != ["globals", "outputs"] {
        return Ok(false);
    }
    Ok(has_layout(conn, "outputs", OUTPUTS)? && has_layout(conn, "globals", GLOBALS)?)
}

fn has_layout(
    conn: &Connection,
    table: &str,
    columns: &[(&str, &str, i64)],
) -> Result<bool, ContextStoreError> {
    let strict: i64 = conn.query_row(
        "SELECT strict FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
        [table],
        |row| row.get(0),
    )?;
    let found: Vec<(String, String, bool, i64)> = conn
        .prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid")?
        .query_map([table], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let matches = found.len() == columns.len()
        && found
            .iter()
            .zip(columns)
            .all(|(f, c)| f.0 == c.0 && f.1.eq_ignore_ascii_case(c.1) && f.2 && f.3 == c.2);
    Ok(strict == 1 && matches)
}

/// Moves the original tables aside, so that the schema's migrations can
/// create this build's tables under the same names.
pub(crate) fn set_aside(conn: &Connection) -> Result<(), ContextStoreError> {
    conn.execute_batch(&format!(
        "ALTER TABLE outputs RENAME TO {OLD_OUTPUTS};
         ALTER TABLE globals RENAME TO {OLD_GLOBALS};"
    ))?;
    Ok(())
}

/// Copies every row of the tables [`set_aside`] moved into this build's
/// tables, converting ids, values and times, then drops the old tables.
/// Runs inside the caller's transaction: an error leaves it to roll back.
pub(crate) fn copy_over(conn: &Connection) -> Result<Converted, ContextStoreError> {
    let mut converted = Converted::default();
    {
        let mut insert = conn.prepare(
            "INSERT INTO outputs (flow_run_id, node_id, value, written_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut select = conn.prepare(&format!(
            "SELECT flow_run_id, node_id, value, written_at FROM {OLD_OUTPUTS} ORDER BY rowid"
        ))?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            let (run, node): (String, String) = (row.get(0)?, row.get(1)?);
            let (value, written_at): (Vec<u8>, String) = (row.get(2)?, row.get(3)?);
            let refuse = |what: String| {
                ContextStoreError::StorageError(format!(
                    "cannot convert the WorldInterface database: outputs row \
                     (flow_run_id {}, node_id {}): {what}; nothing was changed",
                    shown(&run),
                    shown(&node)
                ))
            };
            let run_id = FlowRunId::from_str(&run).map_err(|e| refuse(e.to_string()))?;
            let node_id = NodeId::from_str(&node).map_err(|e| refuse(e.to_string()))?;
            let text = json_text(value).map_err(&refuse)?;
            let millis = unix_millis(&written_at).map_err(&refuse)?;
            insert
                .execute(params![
                    run_id.as_bytes(),
                    node_id.as_bytes(),
                    text.as_str(),
                    millis
                ])
                .map_err(|e| refuse(e.to_string()))?;
            converted.outputs += 1;
        }
    }
    {
        let mut insert =
            conn.prepare("INSERT INTO globals (key, value, written_at) VALUES (?1, ?2, ?3)")?;
        let mut select = conn.prepare(&format!(
            "SELECT key, value, written_at FROM {OLD_GLOBALS} ORDER BY rowid"
        ))?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            let (key, value, written_at): (String, Vec<u8>, String) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            let refuse = |what: String| {
                ContextStoreError::StorageError(format!(
                    "cannot convert the WorldInterface database: globals row (key {}): {what}; \
                     nothing was changed",
                    shown(&key)
                ))
            };
            let text = json_text(value).map_err(&refuse)?;
            let millis = unix_millis(&written_at).map_err(&refuse)?;
            insert
                .execute(params![key, text.as_str(), millis])
                .map_err(|e| refuse(e.to_string()))?;
            converted.globals += 1;
        }
    }
    conn.execute_batch(&format!(
        "DROP TABLE {OLD_OUTPUTS}; DROP TABLE {OLD_GLOBALS};"
    ))?;
    Ok(converted)
}

/// A stored value's bytes as checked JSON text, unchanged.
fn json_text(bytes: Vec<u8>) -> Result<JsonText, String> {
    let text =
        String::from_utf8(bytes).map_err(|e| format!("value is not UTF-8 JSON text ({e})"))?;
    JsonText::parse(text, MAX_DEPTH).map_err(|e| format!("value is not valid JSON ({e})"))
}

/// An RFC 3339 time as Unix milliseconds.
fn unix_millis(text: &str) -> Result<i64, String> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("written_at {} is not an RFC 3339 time ({e})", shown(text)))?;
    i64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| format!("written_at {} is out of range", shown(text)))
}

/// A text from the file, quoted and cut to 64 characters for an error message.
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(64).collect();
    if cut.len() < text.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// The suffix a conversion's copy of the original is named with: the
/// database file's name with this appended (see [`backup_path`]).
pub const BACKUP_SUFFIX: &str = ".worldinterface-backup";

/// What a file being written is named until it is complete: its final name
/// with this appended. A `.partial` file left by a process that died is
/// replaced by the next attempt.
const PARTIAL_SUFFIX: &str = ".partial";

/// How long the connections of a copy or a write-back wait for a database
/// that another connection holds locked.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where converting the WorldInterface database at `db` keeps its original:
/// `<db>.worldinterface-backup`, beside it.
///
/// A conversion never overwrites that file: if it exists already (a copy
/// kept by an earlier conversion), the conversion is refused, and the
/// database left as it was, until it is moved away.
pub fn backup_path(db: impl AsRef<Path>) -> PathBuf {
    suffixed(db.as_ref(), BACKUP_SUFFIX)
}

/// `path` with `suffix` appended to its last component.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The complete copy of a WorldInterface original, under its `.partial`
/// name until the conversion has committed ([`publish`](Self::publish)).
/// Dropped unpublished (the conversion failed), it is removed.
#[must_use = "a copy dropped unpublished is removed"]
pub(crate) struct PendingCopy {
    partial: PathBuf,
    backup: PathBuf,
    published: bool,
}

impl PendingCopy {
    /// Gives the copy its final name, never over an existing file, and
    /// syncs the directory: once the conversion has committed. Returns
    /// where the copy is: its final name or, if renaming failed, its
    /// `.partial` name, with a warning (the conversion is done and stays
    /// done; the copy is complete under either name).
    pub(crate) fn publish(mut self) -> PathBuf {
        self.published = true;
        match publish(&self.partial, &self.backup) {
            Ok(()) => std::mem::take(&mut self.backup),
            Err(e) => {
                tracing::warn!(
                    copy = %self.partial.display(),
                    backup = %self.backup.display(),
                    error = %e,
                    "converted the WorldInterface database, but could not give the copy of \
                     its original its final name: the complete copy is at the .partial name"
                );
                std::mem::take(&mut self.partial)
            }
        }
    }
}

impl Drop for PendingCopy {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        if let Err(e) = remove_if_there(&self.partial) {
            tracing::warn!(
                copy = %self.partial.display(),
                error = %e,
                "cannot remove the copy of a WorldInterface database whose conversion failed"
            );
        }
    }
}

/// Copies the WorldInterface database that `conn` holds, as it is, to
/// `<db>.worldinterface-backup.partial`: called inside the converting
/// transaction once it holds the write lock and before it changes
/// anything, so that the copy is exactly the state that is converted.
///
/// The copy is made by a second, read-only connection (`VACUUM INTO`; a
/// read, which the write lock allows beside it), opened with `vfs` (the
/// VFS the database was opened with; `None`: the default), and synced to
/// disk. `None` for a database that has no file (in memory). Refuses,
/// changing nothing, when the final name exists already.
pub(crate) fn keep_copy(
    conn: &Connection,
    vfs: Option<&str>,
) -> Result<Option<PendingCopy>, ContextStoreError> {
    let Some(db) = conn.path().filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let refuse = |what: String| {
        ContextStoreError::StorageError(format!(
            "cannot convert the WorldInterface database: {what}; nothing was changed"
        ))
    };
    let backup = backup_path(db);
    let partial = suffixed(&backup, PARTIAL_SUFFIX);
    let exists = is_there(&backup)
        .map_err(|e| refuse(format!("cannot look for {}: {e}", backup.display())))?;
    if exists {
        return Err(refuse(format!(
            "{} already exists (the original kept by an earlier conversion?), and a conversion \
             keeps a copy of the original there and never overwrites one: move that file \
             elsewhere (or remove it), then open or migrate the database again",
            backup.display()
        )));
    }
    // A copy left by a conversion that did not finish is replaced.
    remove_if_there(&partial).map_err(|e| {
        refuse(format!(
            "cannot remove {}, left by an earlier attempt: {e}",
            partial.display()
        ))
    })?;
    let copy = PendingCopy {
        partial,
        backup,
        published: false,
    };
    copy_with_vacuum(db, &copy.partial, vfs).map_err(|e| {
        refuse(format!(
            "cannot keep a copy of the original at {} first: {}",
            copy.partial.display(),
            message(e)
        ))
    })?;
    Ok(Some(copy))
}

/// `VACUUM INTO to` on a new read-only connection to `db`, then syncs the copy.
fn copy_with_vacuum(db: &str, to: &Path, vfs: Option<&str>) -> Result<(), ContextStoreError> {
    // No URI flag: both names are taken as plain file names.
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let reader = match vfs {
        Some(vfs) => Connection::open_with_flags_and_vfs(db, flags, vfs)?,
        None => Connection::open_with_flags(db, flags)?,
    };
    reader.busy_timeout(BUSY_TIMEOUT)?;
    let target = to
        .to_str()
        .ok_or_else(|| ContextStoreError::StorageError("the copy's name is not UTF-8".into()))?;
    reader.execute("VACUUM INTO ?1", [target])?;
    let mode: String = reader.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
    reader.close().map_err(|(_, e)| e)?;
    // `VACUUM INTO` writes a rollback-journal file; the original is in
    // WAL mode (which its store sets), and so is its copy.
    if mode.eq_ignore_ascii_case("wal") {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let copy = match vfs {
            Some(vfs) => Connection::open_with_flags_and_vfs(to, flags, vfs)?,
            None => Connection::open_with_flags(to, flags)?,
        };
        let set: String =
            copy.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !set.eq_ignore_ascii_case("wal") {
            return Err(ContextStoreError::StorageError(format!(
                "could not set the copy's journal_mode to WAL (it is {set})"
            )));
        }
        copy.close().map_err(|(_, e)| e)?;
    }
    sync_file(to).map_err(|e| ContextStoreError::StorageError(format!("cannot sync it: {e}")))
}

/// The message of a storage error or a timeout; any other error as it displays.
fn message(error: ContextStoreError) -> String {
    match error {
        ContextStoreError::StorageError(msg) | ContextStoreError::Timeout(msg) => msg,
        other => other.to_string(),
    }
}

/// Whether something (a file, a directory, a link, even a dangling one) is at `path`.
fn is_there(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the file at `path`, if there is one.
fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Flushes the file at `path` to disk.
fn sync_file(path: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?
        .sync_all()
}

/// Flushes the directory that holds `path` to disk, so that a file just
/// renamed into it keeps its name after a power loss. A no-op where
/// directories cannot be opened (Windows).
fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Gives the complete file `from` the name `to`, never over an existing
/// file (a hard link, then the old name removed; a rename, having looked
/// first, where the file system has no hard links), then syncs the
/// directory (a failure there is only logged: the file has its name).
fn publish(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::hard_link(from, to) {
        Ok(()) => {
            if let Err(e) = std::fs::remove_file(from) {
                tracing::warn!(file = %from.display(), error = %e, "cannot remove a file's temporary name");
            }
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
        Err(_) => {
            if is_there(to)? {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists", to.display()),
                ));
            }
            std::fs::rename(from, to)?;
        }
    }
    if let Err(e) = sync_dir(to) {
        tracing::warn!(file = %to.display(), error = %e, "cannot sync the directory of a file just named");
    }
    Ok(())
}

/// The original store's schema, as it creates it: what [`write_back`]
/// makes a new file with.
const ORIGINAL_SCHEMA: &str = "
            PRAGMA journal_mode = WAL;
            CREATE TABLE IF NOT EXISTS outputs (
                flow_run_id TEXT NOT NULL,
                node_id     TEXT NOT NULL,
                value       BLOB NOT NULL,
                written_at  TEXT NOT NULL,
                PRIMARY KEY (flow_run_id, node_id)
            ) STRICT;
            CREATE TABLE IF NOT EXISTS globals (
                key        TEXT NOT NULL PRIMARY KEY,
                value      BLOB NOT NULL,
                written_at TEXT NOT NULL
            ) STRICT;";

/// The deepest nesting of arrays and objects that the original store reads
/// back: it reads values with `serde_json::from_slice`, whose default
/// recursion limit refuses documents nested deeper. contextstore keeps
/// values up to [`MAX_DEPTH`] deep.
pub const ORIGINAL_READ_DEPTH: usize = 127;

/// The output columns that hold an output's provenance, which the original
/// schema has no place for.
const PROVENANCE_COLUMNS: &[&str] = &[
    "component_hash",
    "params_hash",
    "upstream_hash",
    "attempt",
    "host",
    "started_at",
    "ended_at",
];

/// What [`write_back`] wrote, and what it had to leave out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BackReport {
    /// The file written, in the WorldInterface store's schema.
    pub path: PathBuf,
    /// Node outputs written (all of them).
    pub outputs: u64,
    /// Globals written (all of them, the flow runner's journal entries and
    /// cancellation marks included: they are globals).
    pub globals: u64,
    /// What the source holds that the original schema has no place for,
    /// and so was left out: every kind this build's schema keeps beside
    /// outputs and globals, in a fixed order, each with its count (0
    /// included).
    pub dropped: Vec<Dropped>,
    /// How many of the values written nest deeper than
    /// [`ORIGINAL_READ_DEPTH`]: they are in the file (and convert forward
    /// again), but the original store cannot read them back.
    pub too_deep_for_original: u64,
}

/// One kind of thing a write-back left out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// `provenance`, or the name of a table (`runs`, `run_workers`).
    pub what: String,
    /// How many: outputs that had provenance, or the table's rows.
    pub count: u64,
    /// What it is, in a few words.
    pub about: String,
}

/// Writes a new file `out` in the WorldInterface store's own schema (its
/// tables, `journal_mode` WAL, no `application_id`, `user_version` 0),
/// holding every node output and every global of the contextstore database
/// `db`, also those written after a conversion: the way back to the
/// original engine. What `contextstore migrate --back` does.
///
/// Ids are written as hyphenated lowercase UUID text, values as the bytes
/// of their JSON text in a BLOB (what the original reads with
/// `serde_json::from_slice`), times as RFC 3339 text in UTC with
/// milliseconds. What the original schema cannot hold (provenance, the runs
/// index, any other table) is left out and counted in the report.
///
/// `db` is only read, in one read transaction (a consistent snapshot: a
/// store may be writing it meanwhile), through a read-only connection; it
/// is not migrated or changed. It must be a contextstore database of this
/// build's schema: a WorldInterface database, another application's file,
/// a file that is not a database, or a PostgreSQL URL are refused. `out`
/// must not exist: the file is written as `<out>.partial`, synced, and
/// then renamed to `out`; on failure nothing is left at either name.
pub fn write_back(
    db: impl AsRef<Path>,
    out: impl AsRef<Path>,
) -> Result<BackReport, ContextStoreError> {
    let (db, out) = (db.as_ref(), out.as_ref());
    let refuse = |what: String| {
        ContextStoreError::StorageError(format!("cannot write {} back: {what}", db.display()))
    };
    if db.to_str().is_some_and(super::is_postgres_url) {
        return Err(refuse(
            "write-back reads SQLite files only; a PostgreSQL store cannot be written back".into(),
        ));
    }
    if !is_there(db).map_err(|e| refuse(e.to_string()))? {
        return Err(refuse("no such database file".into()));
    }
    let out_exists = is_there(out).map_err(|e| refuse(format!("{}: {e}", out.display())))?;
    if out_exists {
        return Err(refuse(format!(
            "{} already exists; write-back only makes a new file: name another, or remove it first",
            out.display()
        )));
    }
    let partial = PartialFile::new(suffixed(out, PARTIAL_SUFFIX)).map_err(|e| {
        refuse(format!(
            "cannot remove {}: {e}",
            suffixed(out, PARTIAL_SUFFIX).display()
        ))
    })?;
    let report = write_back_into(db, &partial.path, out).map_err(|e| refuse(message(e)))?;
    publish(&partial.path, out).map_err(|e| {
        refuse(format!(
            "cannot rename {} to {}: {e}",
            partial.path.display(),
            out.display()
        ))
    })?;
    partial.keep();
    Ok(report)
}

/// Reads `db` in one read transaction and writes `partial` in the original
/// schema; syncs it. Leaves `partial` for the caller to rename or remove.
fn write_back_into(db: &Path, partial: &Path, out: &Path) -> Result<BackReport, ContextStoreError> {
    check_before_reading(db)?;
    let mut source = open_source(db)?;
    let read = source.transaction_with_behavior(TransactionBehavior::Deferred)?;
    check_source(&read)?;
    let mut report = BackReport {
        path: out.to_path_buf(),
        ..BackReport::default()
    };
    let mut target = create_original(partial)?;
    {
        let write = target.transaction()?;
        copy_outputs_back(&read, &write, &mut report)?;
        copy_globals_back(&read, &write, &mut report)?;
        write.commit()?;
    }
    report.dropped = dropped(&read)?;
    // The read transaction only read: ending it changes nothing.
    drop(read);
    drop(source);
    finish_original(target, partial)?;
    Ok(report)
}

/// Refuses a source that is not a contextstore database of this build's
/// schema.
fn check_source(conn: &Connection) -> Result<(), ContextStoreError> {
    match super::schema::inspect(conn)? {
        super::schema::Found::WorldInterface => Err(ContextStoreError::StorageError(
            "it is a WorldInterface database already (the original store's own format): \
             there is nothing to write back; copy the file instead"
                .into(),
        )),
        _ => super::schema::check(conn),
    }
}

/// Refuses, without making a `-wal` or `-shm` beside it, a source that is
/// not a contextstore database: by its header's marks, then, for a file in
/// WAL mode with no `-wal` (which a read-only connection would make, and
/// leave), by its tables, read through an immutable connection. (A
/// contextstore file is then read as any read-only open reads it.)
fn check_before_reading(db: &Path) -> Result<(), ContextStoreError> {
    super::sqlite::check_before_opening(db)?;
    let Some(text) = db.to_str() else {
        return Ok(());
    };
    if is_there(&suffixed(db, "-wal")).unwrap_or(true) || !in_wal_mode(db) {
        return Ok(());
    }
    let mut uri = String::from("file:");
    for c in text.chars() {
        match c {
            '?' | '#' | '%' => uri.push_str(&format!("%{:02X}", c as u32)),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    check_source(&Connection::open_with_flags(uri, flags)?)
}

/// Whether the file at `path` is an SQLite database in WAL mode, by its
/// header (the file format's write and read versions: 2 is WAL).
fn in_wal_mode(path: &Path) -> bool {
    use std::io::Read as _;
    let mut header = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .is_ok()
        && header.starts_with(b"SQLite format 3\0")
        && (header[18] == 2 || header[19] == 2)
}

/// A read-only, query-only connection to the existing file `db`.
fn open_source(db: &Path) -> Result<Connection, ContextStoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Creates the file `path` with the original store's schema, in WAL mode.
fn create_original(path: &Path) -> Result<Connection, ContextStoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.execute_batch(ORIGINAL_SCHEMA)?;
    let mode: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(ContextStoreError::StorageError(format!(
            "{}: could not set WAL mode (journal_mode is {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Folds the write-ahead log of the file written into it, closes it (so
/// that the file alone holds everything) and syncs it.
fn finish_original(conn: Connection, path: &Path) -> Result<(), ContextStoreError> {
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
    if busy != 0 {
        return Err(ContextStoreError::StorageError(format!(
            "{}: could not checkpoint its write-ahead log",
            path.display()
        )));
    }
    conn.close().map_err(|(_, e)| e)?;
    let io_error =
        |e: io::Error| ContextStoreError::StorageError(format!("{}: {e}", path.display()));
    let wal = suffixed(path, "-wal");
    if is_there(&wal).map_err(io_error)? {
        return Err(ContextStoreError::StorageError(format!(
            "{} is still there after closing the file",
            wal.display()
        )));
    }
    sync_file(path).map_err(io_error)
}

/// A file being written under its `.partial` name: removed (with the
/// SQLite files beside it) when dropped, unless [`keep`](Self::keep) was
/// called.
struct PartialFile {
    path: PathBuf,
    keep: bool,
}

impl PartialFile {
    /// Clears `path` (and what SQLite keeps beside it) of what a process
    /// that died while writing it left.
    fn new(path: PathBuf) -> io::Result<Self> {
        let file = Self { path, keep: false };
        file.remove()?;
        Ok(file)
    }

    fn remove(&self) -> io::Result<()> {
        for suffix in ["-wal", "-shm", "-journal"] {
            remove_if_there(&suffixed(&self.path, suffix))?;
        }
        remove_if_there(&self.path)
    }

    /// The file has been renamed: nothing is left to remove.
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = self.remove() {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot remove a partly written file");
        }
    }
}

/// Copies every output of `source` into the original's table.
fn copy_outputs_back(
    source: &Connection,
    target: &Connection,
    report: &mut BackReport,
) -> Result<(), ContextStoreError> {
    let mut insert = target.prepare(
        "INSERT INTO outputs (flow_run_id, node_id, value, written_at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut select = source
        .prepare("SELECT flow_run_id, node_id, value, written_at FROM outputs ORDER BY rowid")?;
    let mut rows = select.query([])?;
    while let Some(row) = rows.next()? {
        let (run, node): (Vec<u8>, Vec<u8>) = (row.get(0)?, row.get(1)?);
        let (value, written_at): (String, i64) = (row.get(2)?, row.get(3)?);
        let refuse = |what: String| {
            ContextStoreError::StorageError(format!(
                "outputs row (flow_run_id {}, node_id {}): {what}; nothing was written",
                id_shown(&run),
                id_shown(&node)
            ))
        };
        let run_text = uuid_text(&run).map_err(&refuse)?;
        let node_text = uuid_text(&node).map_err(&refuse)?;
        let time = rfc3339_millis(written_at).map_err(&refuse)?;
        if too_deep_for_original(&value) {
            report.too_deep_for_original += 1;
        }
        insert
            .execute(params![run_text, node_text, value.as_bytes(), time])
            .map_err(|e| refuse(e.to_string()))?;
        report.outputs += 1;
    }
    Ok(())
}

/// Copies every global of `source` into the original's table.
fn copy_globals_back(
    source: &Connection,
    target: &Connection,
    report: &mut BackReport,
) -> Result<(), ContextStoreError> {
    let mut insert =
        target.prepare("INSERT INTO globals (key, value, written_at) VALUES (?1, ?2, ?3)")?;
    let mut select = source.prepare("SELECT key, value, written_at FROM globals ORDER BY rowid")?;
    let mut rows = select.query([])?;
    while let Some(row) = rows.next()? {
        let (key, value, written_at): (String, String, i64) =
            (row.get(0)?, row.get(1)?, row.get(2)?);
        let refuse = |what: String| {
            ContextStoreError::StorageError(format!(
                "globals row (key {}): {what}; nothing was written",
                shown(&key)
            ))
        };
        let time = rfc3339_millis(written_at).map_err(&refuse)?;
        if too_deep_for_original(&value) {
            report.too_deep_for_original += 1;
        }
        insert
            .execute(params![key, value.as_bytes(), time])
            .map_err(|e| refuse(e.to_string()))?;
        report.globals += 1;
    }
    Ok(())
}

/// Whether the original store could not read `value` back.
fn too_deep_for_original(value: &str) -> bool {
    crate::json::nesting_depth(value, ORIGINAL_READ_DEPTH) > ORIGINAL_READ_DEPTH
}

/// What `source` holds that the original schema has no place for:
/// provenance, then every table but `outputs` and `globals` (the runs
/// index first), with their counts.
fn dropped(source: &Connection) -> Result<Vec<Dropped>, ContextStoreError> {
    let any_provenance = PROVENANCE_COLUMNS
        .iter()
        .map(|c| format!("{c} IS NOT NULL"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let provenance: i64 = source.query_row(
        &format!("SELECT count(*) FROM outputs WHERE {any_provenance}"),
        [],
        |row| row.get(0),
    )?;
    let mut dropped = vec![Dropped {
        what: "provenance".into(),
        count: count(provenance),
        about: "the component, params and upstream hashes, attempt, host and times of the \
                outputs written with them"
            .into(),
    }];
    let mut tables: Vec<String> = source
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT IN ('outputs', 'globals')",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let known = ["runs", "run_workers"];
    tables.sort_by_key(|name| {
        (
            known.iter().position(|k| k == name).unwrap_or(known.len()),
            name.clone(),
        )
    });
    for table in tables {
        let rows: i64 = source.query_row(
            &format!("SELECT count(*) FROM \"{}\"", table.replace('"', "\"\"")),
            [],
            |row| row.get(0),
        )?;
        let about = match table.as_str() {
            "runs" => "the runs index: one row per run a flow runner recorded",
            "run_workers" => "the runs index: the workers that ran each run",
            _ => "a table the original schema has no place for",
        };
        dropped.push(Dropped {
            what: table,
            count: count(rows),
            about: about.into(),
        });
    }
    Ok(dropped)
}

/// A row count as read (never negative).
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// 16 stored bytes as hyphenated lowercase UUID text.
fn uuid_text(bytes: &[u8]) -> Result<String, String> {
    uuid::Uuid::from_slice(bytes)
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| format!("an id of {} bytes, not 16", bytes.len()))
}

/// A stored id for an error message: as a UUID if it is one, else in hex.
fn id_shown(bytes: &[u8]) -> String {
    uuid_text(bytes).unwrap_or_else(|_| {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("x'{hex}'")
    })
}

/// Unix milliseconds as RFC 3339 text in UTC with milliseconds
/// (`2024-05-01T12:34:56.123Z`).
fn rfc3339_millis(millis: i64) -> Result<String, String> {
    let out_of_range = || {
        format!(
            "written_at {millis} (Unix ms) is outside the years 0000 to 9999 RFC 3339 can write"
        )
    };
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .map_err(|_| out_of_range())?;
    if !(0..=9999).contains(&time.year()) {
        return Err(out_of_range());
    }
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.millisecond()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_become_unix_milliseconds() {
        assert_eq!(unix_millis("1970-01-01T00:00:01.5+00:00"), Ok(1_500));
        assert_eq!(
            unix_millis("2024-05-01T12:34:56.123456789+00:00"),
            Ok(1_714_566_896_123)
        );
        assert_eq!(
            unix_millis("2024-05-01T14:34:56.123Z"),
            Ok(1_714_574_096_123)
        );
        assert_eq!(unix_millis("1969-12-31T23:59:59.9995Z"), Ok(-1));
        assert!(unix_millis("yesterday").unwrap_err().contains("yesterday"));
    }

    #[test]
    fn values_are_kept_as_text_and_checked() {
        assert_eq!(
            json_text(br#"{"a":[1,2.50]}"#.to_vec()).unwrap().as_str(),
            r#"{"a":[1,2.50]}"#
        );
        assert!(json_text(vec![0xff, 0xfe]).unwrap_err().contains("UTF-8"));
        assert!(
            json_text(b"{".to_vec())
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn long_texts_are_cut_in_messages() {
        assert_eq!(shown("ab"), "\"ab\"");
        assert!(shown(&"x".repeat(100)).ends_with('…'));
    }

    mod files {
        use super::super::*;
        use crate::{ContextStore, SqliteContextStore};
        use serde_json::json;

        /// The original store's schema, as it creates it.
        const ORIGINAL: &str = "
            PRAGMA journal_mode = WAL;
            CREATE TABLE IF NOT EXISTS outputs (
                flow_run_id TEXT NOT NULL,
                node_id     TEXT NOT NULL,
                value       BLOB NOT NULL,
                written_at  TEXT NOT NULL,
                PRIMARY KEY (flow_run_id, node_id)
            ) STRICT;
            CREATE TABLE IF NOT EXISTS globals (
                key        TEXT NOT NULL PRIMARY KEY,
                value      BLOB NOT NULL,
                written_at TEXT NOT NULL
            ) STRICT;";

        struct Original {
            _dir: tempfile::TempDir,
            path: std::path::PathBuf,
            run: FlowRunId,
            nodes: [NodeId; 2],
        }

        /// A WorldInterface database with two outputs and two globals.
        fn original() -> Original {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wi.db");
            let (run, nodes) = (FlowRunId::new(), [NodeId::new(), NodeId::new()]);
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(ORIGINAL).unwrap();
            let output = "INSERT INTO outputs VALUES (?1, ?2, ?3, ?4)";
            let global = "INSERT INTO globals VALUES (?1, ?2, ?3)";
            conn.execute(
                output,
                params![
                    run.to_string(),
                    nodes[0].to_string(),
                    br#"{"greeting":"Hello, Ada!","n":1.50}"#.to_vec(),
                    "2024-05-01T12:34:56.123456789+00:00"
                ],
            )
            .unwrap();
            conn.execute(
                output,
                params![
                    run.to_string(),
                    nodes[1].to_string(),
                    b"null".to_vec(),
                    "2024-05-01T12:35:00+00:00"
                ],
            )
            .unwrap();
            conn.execute(
                global,
                params![
                    "coordinator",
                    br#"{"map":[1,2]}"#.to_vec(),
                    "2024-05-01T14:34:56.123Z"
                ],
            )
            .unwrap();
            conn.execute(
                global,
                params!["", br#""""#.to_vec(), "2024-05-01T12:00:00+02:00"],
            )
            .unwrap();
            Original {
                _dir: dir,
                path,
                run,
                nodes,
            }
        }

        /// Every row of both tables, and the two pragmas, as text.
        fn dump(path: &std::path::Path) -> Vec<String> {
            let conn = Connection::open(path).unwrap();
            let mut out: Vec<String> = ["application_id", "user_version"]
                .iter()
                .map(|p| {
                    let v: i64 = conn.pragma_query_value(None, p, |r| r.get(0)).unwrap();
                    format!("{p}={v}")
                })
                .collect();
            for sql in [
                "SELECT name || ':' || quote(sql) FROM sqlite_schema ORDER BY name",
                "SELECT quote(flow_run_id) || quote(node_id) || quote(value) || quote(written_at) \
                 FROM outputs ORDER BY rowid",
                "SELECT quote(key) || quote(value) || quote(written_at) FROM globals ORDER BY rowid",
            ] {
                let mut stmt = conn.prepare(sql).unwrap();
                let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
                out.extend(rows.map(Result::unwrap));
            }
            out
        }

        fn written_at(path: &std::path::Path, table: &str) -> Vec<i64> {
            let conn = Connection::open(path).unwrap();
            let mut stmt = conn
                .prepare(&format!("SELECT written_at FROM {table} ORDER BY rowid"))
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }

        #[test]
        fn opening_converts_every_output_and_global_with_values_and_times() {
            let wi = original();
            let store = SqliteContextStore::open(&wi.path).unwrap();
            assert_eq!(
                store
                    .get_text(wi.run, wi.nodes[0])
                    .unwrap()
                    .unwrap()
                    .as_str(),
                r#"{"greeting":"Hello, Ada!","n":1.50}"#,
                "the value's text is kept byte for byte"
            );
            assert_eq!(store.get(wi.run, wi.nodes[1]).unwrap(), Some(json!(null)));
            let mut keys = store.list_keys(wi.run).unwrap();
            keys.sort();
            let mut expected = wi.nodes.to_vec();
            expected.sort();
            assert_eq!(keys, expected);
            assert_eq!(
                store.get_global("coordinator").unwrap(),
                Some(json!({"map": [1, 2]}))
            );
            assert_eq!(store.get_global("").unwrap(), Some(json!("")));
            // Write-once holds for the carried-over rows.
            assert!(matches!(
                store.put(wi.run, wi.nodes[0], &json!(2)),
                Err(ContextStoreError::AlreadyExists { .. })
            ));
            drop(store);
            assert_eq!(
                written_at(&wi.path, "outputs"),
                [1_714_566_896_123, 1_714_566_900_000]
            );
            assert_eq!(
                written_at(&wi.path, "globals"),
                [1_714_574_096_123, 1_714_557_600_000]
            );
        }

        #[test]
        fn a_second_open_changes_nothing() {
            let wi = original();
            drop(SqliteContextStore::open(&wi.path).unwrap());
            let once = dump(&wi.path);
            drop(SqliteContextStore::open(&wi.path).unwrap());
            assert_eq!(dump(&wi.path), once);
            assert_eq!(
                migrate_file(&wi.path).unwrap(),
                MigrationReport {
                    from_version: crate::store::schema::CURRENT_VERSION,
                    to_version: crate::store::schema::CURRENT_VERSION,
                    worldinterface: None,
                    backup: None,
                }
            );
        }

        #[test]
        fn migrate_file_reports_what_it_carried_over() {
            let wi = original();
            let report = migrate_file(&wi.path).unwrap();
            assert_eq!(
                report.worldinterface,
                Some(Converted {
                    outputs: 2,
                    globals: 2
                })
            );
            assert_eq!(report.from_version, 0);
            let store = SqliteContextStore::open_read_only(&wi.path, Default::default()).unwrap();
            assert_eq!(store.get(wi.run, wi.nodes[1]).unwrap(), Some(json!(null)));
        }

        #[test]
        fn a_read_only_open_names_the_way_to_convert() {
            let wi = original();
            let err = SqliteContextStore::open_read_only(&wi.path, Default::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("contextstore migrate"), "{err}");
        }

        fn refused_whole(bad_row: &str, expected: &[&str]) {
            let wi = original();
            Connection::open(&wi.path)
                .unwrap()
                .execute_batch(bad_row)
                .unwrap();
            let before = dump(&wi.path);
            let err = SqliteContextStore::open(&wi.path).unwrap_err().to_string();
            for part in expected {
                assert!(err.contains(part), "{part:?} not in {err}");
            }
            assert_eq!(
                dump(&wi.path),
                before,
                "a failed conversion changed the file"
            );
            assert_no_copy(&wi.path);
            let err = migrate_file(&wi.path).unwrap_err().to_string();
            assert!(err.contains(expected[0]), "{err}");
            assert_eq!(dump(&wi.path), before);
            assert_no_copy(&wi.path);
        }

        /// Neither the copy of the original nor its `.partial` is there.
        fn assert_no_copy(db: &std::path::Path) {
            let backup = backup_path(db);
            assert!(!backup.exists(), "{} was left", backup.display());
            let partial = suffixed(&backup, PARTIAL_SUFFIX);
            assert!(!partial.exists(), "{} was left", partial.display());
        }

        #[test]
        fn a_malformed_id_refuses_the_whole_conversion() {
            refused_whole(
                "INSERT INTO outputs VALUES ('not-a-uuid', '67e55044-10b1-426f-9247-bb680e5fe0c8', \
                 CAST('1' AS BLOB), '2024-05-01T12:00:00Z')",
                &["outputs row", "\"not-a-uuid\"", "invalid flow run id"],
            );
        }

        #[test]
        fn a_value_that_is_not_utf8_json_refuses_the_whole_conversion() {
            refused_whole(
                "INSERT INTO globals VALUES ('broken', X'FF00', '2024-05-01T12:00:00Z')",
                &["globals row (key \"broken\")", "not UTF-8"],
            );
            refused_whole(
                "INSERT INTO globals VALUES ('half', CAST('{\"a\":' AS BLOB), '2024-05-01T12:00:00Z')",
                &["globals row (key \"half\")", "not valid JSON"],
            );
        }

        #[test]
        fn a_time_that_is_not_rfc3339_refuses_the_whole_conversion() {
            refused_whole(
                "INSERT INTO outputs VALUES ('67e55044-10b1-426f-9247-bb680e5fe0c8', \
                 '67e55044-10b1-426f-9247-bb680e5fe0c9', CAST('1' AS BLOB), 'last tuesday')",
                &["outputs row", "\"last tuesday\" is not an RFC 3339 time"],
            );
        }

        /// `PRAGMA journal_mode` of the file at `path`.
        fn journal_mode(path: &std::path::Path) -> String {
            let conn = Connection::open(path).unwrap();
            conn.pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap()
        }

        #[test]
        fn converting_keeps_the_original_beside_it_exactly_as_it_was() {
            let wi = original();
            let before = dump(&wi.path);
            let store = SqliteContextStore::open(&wi.path).unwrap();
            let backup = backup_path(&wi.path);
            assert_eq!(
                backup.file_name().unwrap().to_str().unwrap(),
                "wi.db.worldinterface-backup"
            );
            assert_eq!(dump(&backup), before, "the copy is not the original");
            assert_eq!(journal_mode(&backup), "wal");
            assert!(!suffixed(&backup, PARTIAL_SUFFIX).exists());
            // The original's own queries read the copy as they read the original.
            let conn = Connection::open(&backup).unwrap();
            let value: Vec<u8> = conn
                .query_row(
                    "SELECT value FROM outputs WHERE flow_run_id = ?1 AND node_id = ?2",
                    params![wi.run.to_string(), wi.nodes[0].to_string()],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(value, br#"{"greeting":"Hello, Ada!","n":1.50}"#);
            drop(conn);
            drop(store);
            // Opening again converts nothing, and leaves the copy alone.
            let copy = std::fs::read(&backup).unwrap();
            drop(SqliteContextStore::open(&wi.path).unwrap());
            assert_eq!(std::fs::read(&backup).unwrap(), copy);
        }

        #[test]
        fn migrate_file_names_the_copy_it_kept() {
            let wi = original();
            let before = dump(&wi.path);
            let report = migrate_file(&wi.path).unwrap();
            let backup = backup_path(&wi.path);
            assert_eq!(report.backup.as_deref(), Some(backup.as_path()));
            assert_eq!(dump(&backup), before);
            assert_eq!(migrate_file(&wi.path).unwrap().backup, None);
        }

        #[test]
        fn a_file_in_rollback_journal_mode_is_copied_as_it_is() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("journal.db");
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&ORIGINAL.replace("PRAGMA journal_mode = WAL;", ""))
                .unwrap();
            conn.execute(
                "INSERT INTO globals VALUES ('k', CAST('[1]' AS BLOB), '2024-05-01T12:00:00Z')",
                [],
            )
            .unwrap();
            drop(conn);
            let before = dump(&path);
            let report = migrate_file(&path).unwrap();
            let backup = backup_path(&path);
            assert_eq!(report.backup.as_deref(), Some(backup.as_path()));
            assert_eq!(dump(&backup), before);
            assert_eq!(journal_mode(&backup), "delete");
        }

        #[test]
        fn an_existing_copy_refuses_the_conversion_and_is_kept() {
            let wi = original();
            let backup = backup_path(&wi.path);
            std::fs::write(&backup, b"an earlier copy").unwrap();
            let before = dump(&wi.path);
            for err in [
                SqliteContextStore::open(&wi.path).unwrap_err().to_string(),
                migrate_file(&wi.path).unwrap_err().to_string(),
            ] {
                assert!(err.contains(&backup.display().to_string()), "{err}");
                assert!(err.contains("already exists"), "{err}");
                assert!(err.contains("move that file"), "{err}");
                assert!(err.contains("nothing was changed"), "{err}");
            }
            assert_eq!(dump(&wi.path), before);
            assert_eq!(std::fs::read(&backup).unwrap(), b"an earlier copy");
            assert!(!suffixed(&backup, PARTIAL_SUFFIX).exists());
            // Moved away, the conversion goes ahead.
            std::fs::remove_file(&backup).unwrap();
            assert!(migrate_file(&wi.path).unwrap().worldinterface.is_some());
            assert_eq!(dump(&backup), before);
        }

        #[test]
        fn a_partial_copy_left_by_a_crash_is_replaced() {
            let wi = original();
            let partial = suffixed(&backup_path(&wi.path), PARTIAL_SUFFIX);
            std::fs::write(&partial, b"half a copy").unwrap();
            let before = dump(&wi.path);
            drop(SqliteContextStore::open(&wi.path).unwrap());
            assert_eq!(dump(&backup_path(&wi.path)), before);
            assert!(!partial.exists());
        }

        /// `depth` arrays, one inside the other, around `1`.
        fn nested(depth: usize) -> String {
            format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
        }

        #[test]
        fn the_original_reads_values_as_deep_as_original_read_depth() {
            let ok = nested(ORIGINAL_READ_DEPTH);
            assert!(serde_json::from_slice::<serde_json::Value>(ok.as_bytes()).is_ok());
            let deeper = nested(ORIGINAL_READ_DEPTH + 1);
            assert!(serde_json::from_slice::<serde_json::Value>(deeper.as_bytes()).is_err());
            assert!(!too_deep_for_original(&ok));
            assert!(too_deep_for_original(&deeper));
        }

        #[test]
        fn times_are_written_back_as_rfc3339_utc_milliseconds() {
            assert_eq!(
                rfc3339_millis(1_714_566_896_123).unwrap(),
                "2024-05-01T12:34:56.123Z"
            );
            assert_eq!(rfc3339_millis(0).unwrap(), "1970-01-01T00:00:00.000Z");
            assert_eq!(rfc3339_millis(-1).unwrap(), "1969-12-31T23:59:59.999Z");
            for ms in [0, -1, 1_500, 1_714_566_896_123, 253_402_300_799_999] {
                assert_eq!(unix_millis(&rfc3339_millis(ms).unwrap()), Ok(ms));
            }
            for ms in [253_402_300_800_000, -62_167_219_200_001, i64::MAX, i64::MIN] {
                let err = rfc3339_millis(ms).unwrap_err();
                assert!(err.contains("outside the years"), "{err}");
            }
        }

        #[test]
        fn write_back_knows_every_table_and_column_of_the_schema() {
            // A migration that adds a table or a column must say here
            // what a write-back does with it.
            let mut conn = Connection::open_in_memory().unwrap();
            crate::store::schema::migrate(&mut conn).unwrap();
            let columns = |table: &str| -> Vec<String> {
                conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
                    .unwrap()
                    .query_map([table], |r| r.get(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            };
            let mut expected: Vec<&str> = vec!["flow_run_id", "node_id", "value", "written_at"];
            expected.extend(PROVENANCE_COLUMNS);
            assert_eq!(columns("outputs"), expected);
            assert_eq!(columns("globals"), ["key", "value", "written_at"]);
            let report = dropped(&conn).unwrap();
            let kinds: Vec<&str> = report.iter().map(|d| d.what.as_str()).collect();
            assert_eq!(kinds, ["provenance", "runs", "run_workers"]);
            assert!(report.iter().all(|d| d.count == 0));
        }

        /// Every output (by run, node) and global of a contextstore file,
        /// as stored: ids, the exact text and the time; no provenance.
        fn contents(path: &std::path::Path) -> Vec<String> {
            let conn = Connection::open(path).unwrap();
            let mut out = Vec::new();
            for sql in [
                "SELECT quote(flow_run_id) || quote(node_id) || quote(value) || quote(written_at) \
                 FROM outputs ORDER BY flow_run_id, node_id",
                "SELECT quote(key) || quote(value) || quote(written_at) FROM globals ORDER BY key",
            ] {
                let mut stmt = conn.prepare(sql).unwrap();
                let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
                out.extend(rows.map(Result::unwrap));
            }
            out
        }

        /// The original store's reads of a file written back.
        struct OriginalReader(Connection);

        impl OriginalReader {
            fn open(path: &std::path::Path) -> Self {
                Self(Connection::open(path).unwrap())
            }

            fn get(&self, run: FlowRunId, node: NodeId) -> Option<serde_json::Value> {
                use rusqlite::OptionalExtension as _;
                let bytes: Option<Vec<u8>> = self
                    .0
                    .query_row(
                        "SELECT value FROM outputs WHERE flow_run_id = ?1 AND node_id = ?2",
                        params![run.to_string(), node.to_string()],
                        |r| r.get(0),
                    )
                    .optional()
                    .unwrap();
                bytes.map(|b| serde_json::from_slice(&b).unwrap())
            }

            fn list_keys(&self, run: FlowRunId) -> Vec<NodeId> {
                let mut keys: Vec<NodeId> = self
                    .0
                    .prepare("SELECT node_id FROM outputs WHERE flow_run_id = ?1")
                    .unwrap()
                    .query_map(params![run.to_string()], |r| r.get::<_, String>(0))
                    .unwrap()
                    .map(|id| id.unwrap().parse().unwrap())
                    .collect();
                keys.sort();
                keys
            }

            fn get_global(&self, key: &str) -> Option<serde_json::Value> {
                use rusqlite::OptionalExtension as _;
                let bytes: Option<Vec<u8>> = self
                    .0
                    .query_row("SELECT value FROM globals WHERE key = ?1", [key], |r| {
                        r.get(0)
                    })
                    .optional()
                    .unwrap();
                bytes.map(|b| serde_json::from_slice(&b).unwrap())
            }
        }

        fn provenance() -> crate::store::Provenance {
            crate::store::Provenance {
                component_hash: "c".repeat(64),
                params_hash: "p".repeat(64),
                upstream_hash: "u".repeat(64),
                attempt: 2,
                host: "worker-1".into(),
                started_at: 1_714_566_896_000,
                ended_at: 1_714_566_897_000,
            }
        }

        #[test]
        fn a_round_trip_to_contextstore_and_back_keeps_every_output_and_global() {
            let wi = original();
            let before = dump(&wi.path);
            let store = SqliteContextStore::open(&wi.path).unwrap();
            assert_eq!(dump(&backup_path(&wi.path)), before);

            // Written after the conversion, through contextstore's API.
            let other_run = FlowRunId::new();
            let (late, with_provenance, large) = (NodeId::new(), NodeId::new(), NodeId::new());
            let deep_value: serde_json::Value =
                serde_json::from_str(&nested(ORIGINAL_READ_DEPTH)).unwrap();
            let large_value = json!({
                "rows": (0..20_000).map(|i| json!({"i": i, "s": "é\u{1F600}\\\"\n"})).collect::<Vec<_>>(),
            });
            store.put(wi.run, late, &json!({"late": true})).unwrap();
            store
                .put_text_with_provenance(
                    other_run,
                    with_provenance,
                    &JsonText::parse("[1, 2.50, \"x\"]", MAX_DEPTH).unwrap(),
                    &provenance(),
                )
                .unwrap();
            store.put(other_run, large, &large_value).unwrap();
            store
                .upsert_global("coordinator", &json!({"map": [3]}))
                .unwrap();
            store.upsert_global("", &json!({"empty key": 1})).unwrap();
            store.put_global("deep", &deep_value).unwrap();
            let too_deep = JsonText::parse(nested(ORIGINAL_READ_DEPTH + 1), MAX_DEPTH).unwrap();
            store.put_global_text("too deep", &too_deep).unwrap();
            store
                .put_global(
                    &format!("journal/{other_run}/{large}"),
                    &json!({"attempt": 1}),
                )
                .unwrap();
            // The runs index, which the original schema has no place for.
            let conn = Connection::open(&wi.path).unwrap();
            conn.execute(
                "INSERT INTO runs VALUES (?1, 'flow', 'hash', '{}', 2, 5, 0)",
                [other_run.as_bytes()],
            )
            .unwrap();
            for incarnation in [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()] {
                conn.execute(
                    "INSERT INTO run_workers VALUES (?1, ?2, 'w', 5, 6, 1000, NULL, NULL)",
                    params![other_run.as_bytes(), incarnation.as_bytes()],
                )
                .unwrap();
            }
            drop(conn);

            // Written back while the store is still open.
            let back = wi.path.with_file_name("back.db");
            let report = write_back(&wi.path, &back).unwrap();
            assert_eq!(report.path, back);
            assert_eq!((report.outputs, report.globals), (5, 5));
            let counts: Vec<(&str, u64)> = report
                .dropped
                .iter()
                .map(|d| (d.what.as_str(), d.count))
                .collect();
            assert_eq!(counts, [("provenance", 1), ("runs", 1), ("run_workers", 2)]);
            assert_eq!(report.too_deep_for_original, 1);
            assert!(!suffixed(&back, PARTIAL_SUFFIX).exists());

            // The original store's schema, and its reads.
            let made = wi.path.with_file_name("made.db");
            Connection::open(&made)
                .unwrap()
                .execute_batch(ORIGINAL)
                .unwrap();
            assert_eq!(
                dump(&back)[..4],
                dump(&made)[..4],
                "not the original schema"
            );
            assert_eq!(journal_mode(&back), "wal");
            let original = OriginalReader::open(&back);
            assert_eq!(
                original.get(wi.run, wi.nodes[0]),
                Some(json!({"greeting": "Hello, Ada!", "n": 1.5}))
            );
            assert_eq!(original.get(wi.run, wi.nodes[1]), Some(json!(null)));
            assert_eq!(original.get(wi.run, late), Some(json!({"late": true})));
            assert_eq!(
                original.get(other_run, with_provenance),
                Some(json!([1, 2.5, "x"]))
            );
            assert_eq!(original.get(other_run, large), Some(large_value));
            assert_eq!(original.get(other_run, NodeId::new()), None);
            let mut keys = vec![wi.nodes[0], wi.nodes[1], late];
            keys.sort();
            assert_eq!(original.list_keys(wi.run), keys);
            let mut keys = vec![with_provenance, large];
            keys.sort();
            assert_eq!(original.list_keys(other_run), keys);
            assert_eq!(
                original.get_global("coordinator"),
                Some(json!({"map": [3]}))
            );
            assert_eq!(original.get_global(""), Some(json!({"empty key": 1})));
            assert_eq!(original.get_global("deep"), Some(deep_value));
            assert_eq!(
                original.get_global(&format!("journal/{other_run}/{large}")),
                Some(json!({"attempt": 1}))
            );
            // Too deep for the original's reads, but there, byte for byte.
            let text: Vec<u8> = original
                .0
                .query_row(
                    "SELECT value FROM globals WHERE key = 'too deep'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(text, nested(ORIGINAL_READ_DEPTH + 1).into_bytes());
            let time: String = original
                .0
                .query_row(
                    "SELECT written_at FROM outputs WHERE node_id = ?1",
                    [wi.nodes[0].to_string()],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(time, "2024-05-01T12:34:56.123Z");
            drop(original);

            // Converted forward again, it holds the same outputs and globals.
            drop(store);
            let again = SqliteContextStore::open(&back).unwrap();
            assert_eq!(
                again
                    .get_text(other_run, with_provenance)
                    .unwrap()
                    .unwrap()
                    .as_str(),
                "[1, 2.50, \"x\"]"
            );
            assert_eq!(again.provenance(other_run, with_provenance).unwrap(), None);
            drop(again);
            assert_eq!(contents(&back), contents(&wi.path));
        }

        #[test]
        fn a_conversion_written_back_is_the_original_again() {
            // With times as the write-back writes them, nothing differs.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wi.db");
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(ORIGINAL).unwrap();
            for (i, value) in [&br#"{"a":1}"#[..], b"[ 1 , 2 ]", b"\"\xc3\xa9\""]
                .iter()
                .enumerate()
            {
                conn.execute(
                    "INSERT INTO outputs VALUES (?1, ?2, ?3, ?4)",
                    params![
                        FlowRunId::new().to_string(),
                        NodeId::new().to_string(),
                        value.to_vec(),
                        format!("2024-05-01T12:00:0{i}.12{i}Z")
                    ],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO globals VALUES (?1, ?2, ?3)",
                    params![format!("k{i}"), value.to_vec(), "1999-12-31T23:59:59.999Z"],
                )
                .unwrap();
            }
            drop(conn);
            let before = dump(&path);
            migrate_file(&path).unwrap();
            let back = dir.path().join("back.db");
            let report = write_back(&path, &back).unwrap();
            assert!(report.dropped.iter().all(|d| d.count == 0), "{report:?}");
            assert_eq!(dump(&back), before);
        }

        #[test]
        fn write_back_refuses_an_existing_file_a_worldinterface_file_and_a_non_database() {
            let wi = original();
            let dir = wi.path.parent().unwrap().to_path_buf();
            let out = dir.join("out.db");
            let names = || -> Vec<String> {
                let mut names: Vec<String> = std::fs::read_dir(&dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                names
            };
            let wi_before = dump(&wi.path);
            let files_before = names();
            // A WorldInterface file is already in the original format.
            let err = write_back(&wi.path, &out).unwrap_err().to_string();
            assert_eq!(
                names(),
                files_before,
                "write-back made files beside its source"
            );
            assert!(err.contains("WorldInterface database already"), "{err}");
            assert!(err.contains("wi.db"), "{err}");
            assert_eq!(dump(&wi.path), wi_before, "write-back converted its source");
            assert!(!backup_path(&wi.path).exists());
            assert!(!out.exists() && !suffixed(&out, PARTIAL_SUFFIX).exists());

            drop(SqliteContextStore::open(&wi.path).unwrap());
            let mut files_before = names();
            let written = dir.join("written.db");
            write_back(&wi.path, &written).unwrap();
            files_before.push("written.db".into());
            files_before.sort();
            // Beside the file written, only what any read-only open of a
            // closed WAL-mode file leaves (SQLite's -wal and -shm).
            let mut files: Vec<String> = names();
            files.retain(|n| n != "wi.db-wal" && n != "wi.db-shm");
            assert_eq!(files, files_before, "write-back left other files");
            // An existing file is never overwritten.
            std::fs::write(&out, b"keep me").unwrap();
            let err = write_back(&wi.path, &out).unwrap_err().to_string();
            assert!(err.contains("already exists"), "{err}");
            assert!(err.contains("out.db"), "{err}");
            assert_eq!(std::fs::read(&out).unwrap(), b"keep me");

            let fresh = dir.join("fresh.db");
            for (source, expected) in [
                (dir.join("none.db"), "no such database file"),
                (dir.join("junk.db"), "not a database"),
                (dir.join("empty.db"), "not a contextstore database"),
                (dir.join("users.db"), "not a contextstore database"),
                (
                    std::path::PathBuf::from("postgres://u@localhost/db"),
                    "SQLite files only",
                ),
            ] {
                if source.ends_with("junk.db") {
                    std::fs::write(&source, b"not a database, only text. ".repeat(100)).unwrap();
                }
                if source.ends_with("empty.db") {
                    std::fs::write(&source, b"").unwrap();
                }
                if source.ends_with("users.db") {
                    Connection::open(&source)
                        .unwrap()
                        .execute_batch("CREATE TABLE users (id INTEGER)")
                        .unwrap();
                }
                let err = write_back(&source, &fresh).unwrap_err().to_string();
                assert!(err.contains(expected), "{expected:?} not in {err}");
                assert!(!fresh.exists() && !suffixed(&fresh, PARTIAL_SUFFIX).exists());
            }
            // A stale partial file is replaced.
            std::fs::write(suffixed(&fresh, PARTIAL_SUFFIX), b"half").unwrap();
            write_back(&wi.path, &fresh).unwrap();
            assert!(!suffixed(&fresh, PARTIAL_SUFFIX).exists());
            assert_eq!(
                OriginalReader::open(&fresh).get_global("coordinator"),
                Some(json!({"map": [1, 2]}))
            );
        }

        #[test]
        fn other_tables_are_still_refused() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("near.db");
            // The original layout without STRICT is not the original.
            Connection::open(&path)
                .unwrap()
                .execute_batch(&ORIGINAL.replace(") STRICT;", ");"))
                .unwrap();
            let err = SqliteContextStore::open(&path).unwrap_err().to_string();
            assert!(err.contains("not a contextstore database"), "{err}");
        }
    }
}
