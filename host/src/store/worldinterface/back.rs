//! The way back: a contextstore database written out in the original
//! WorldInterface store's schema.

use super::*;

/// The original store's schema, as it creates it: what [`write_back`]
/// makes a new file with.
pub(super) const ORIGINAL_SCHEMA: &str = "
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
pub(super) const PROVENANCE_COLUMNS: &[&str] = &[
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
    if db.to_str().is_some_and(crate::store::is_postgres_url) {
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
pub(super) fn write_back_into(
    db: &Path,
    partial: &Path,
    out: &Path,
) -> Result<BackReport, ContextStoreError> {
    // Refused without a `-wal` or `-shm` made beside it.
    crate::store::sqlite::check_before_reading(db, check_source)?;
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
pub(super) fn check_source(conn: &Connection) -> Result<(), ContextStoreError> {
    match crate::store::schema::inspect(conn)? {
        crate::store::schema::Found::WorldInterface => Err(ContextStoreError::StorageError(
            "it is a WorldInterface database already (the original store's own format): \
             there is nothing to write back; copy the file instead"
                .into(),
        )),
        _ => crate::store::schema::check(conn),
    }
}

/// A read-only, query-only connection to the existing file `db`.
pub(super) fn open_source(db: &Path) -> Result<Connection, ContextStoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Creates the file `path` with the original store's schema, in WAL mode.
pub(super) fn create_original(path: &Path) -> Result<Connection, ContextStoreError> {
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
pub(super) fn finish_original(conn: Connection, path: &Path) -> Result<(), ContextStoreError> {
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
pub(super) struct PartialFile {
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
pub(super) fn copy_outputs_back(
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
pub(super) fn copy_globals_back(
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
pub(super) fn too_deep_for_original(value: &str) -> bool {
    crate::json::nesting_depth(value, ORIGINAL_READ_DEPTH) > ORIGINAL_READ_DEPTH
}

/// What `source` holds that the original schema has no place for:
/// provenance, then every table but `outputs` and `globals` (the runs
/// index first), with their counts.
pub(super) fn dropped(source: &Connection) -> Result<Vec<Dropped>, ContextStoreError> {
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
pub(super) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// 16 stored bytes as hyphenated lowercase UUID text.
pub(super) fn uuid_text(bytes: &[u8]) -> Result<String, String> {
    uuid::Uuid::from_slice(bytes)
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| format!("an id of {} bytes, not 16", bytes.len()))
}

/// A stored id for an error message: as a UUID if it is one, else in hex.
pub(super) fn id_shown(bytes: &[u8]) -> String {
    uuid_text(bytes).unwrap_or_else(|_| {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("x'{hex}'")
    })
}

/// Unix milliseconds as RFC 3339 text in UTC with milliseconds
/// (`2024-05-01T12:34:56.123Z`).
pub(super) fn rfc3339_millis(millis: i64) -> Result<String, String> {
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
