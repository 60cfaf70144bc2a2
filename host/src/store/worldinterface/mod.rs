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
    crate::store::sqlite::check_before_opening(path).map_err(at)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| at(e.into()))?;
    conn.busy_timeout(std::time::Duration::from_secs(60))
        .map_err(|e| at(e.into()))?;
    crate::store::schema::migrate_reporting(&mut conn, None).map_err(at)
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
    crate::text::quoted(text, 64)
}

mod back;
mod backup;
mod files;
#[cfg(test)]
mod tests;

pub use back::{BackReport, Dropped, ORIGINAL_READ_DEPTH, write_back};
pub use backup::{BACKUP_SUFFIX, backup_path};
pub(crate) use backup::{PendingCopy, keep_copy};
// What the tests reach beyond the public items.
#[cfg(test)]
use back::*;
use files::*;
