//! The SQLite schema and its migrations, versioned by `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

use super::worldinterface::{self, MigrationReport};
use crate::error::ContextStoreError;

/// Marks a file as a contextstore database (`PRAGMA application_id`): "ctxs".
pub const APPLICATION_ID: i64 = 0x6374_7873;

/// Migrations in order; migration `i` takes the schema from version `i` to `i + 1`.
/// Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[
    // 1: outputs and globals. Ids are 16-byte UUIDs; values are JSON text;
    // `written_at` is Unix time in milliseconds. Write-once is the primary key.
    "CREATE TABLE outputs (
        flow_run_id BLOB NOT NULL CHECK (length(flow_run_id) = 16),
        node_id     BLOB NOT NULL CHECK (length(node_id) = 16),
        value       TEXT NOT NULL,
        written_at  INTEGER NOT NULL,
        PRIMARY KEY (flow_run_id, node_id)
    ) STRICT;
    CREATE TABLE globals (
        key        TEXT NOT NULL PRIMARY KEY,
        value      TEXT NOT NULL,
        written_at INTEGER NOT NULL
    ) STRICT;",
    // 2: provenance beside each output (NULL for outputs written without
    // it). Hashes are BLAKE3 in hex; times are Unix milliseconds.
    "ALTER TABLE outputs ADD COLUMN component_hash TEXT;
    ALTER TABLE outputs ADD COLUMN params_hash TEXT;
    ALTER TABLE outputs ADD COLUMN upstream_hash TEXT;
    ALTER TABLE outputs ADD COLUMN attempt INTEGER;
    ALTER TABLE outputs ADD COLUMN host TEXT;
    ALTER TABLE outputs ADD COLUMN started_at INTEGER;
    ALTER TABLE outputs ADD COLUMN ended_at INTEGER;",
    // 3: the runs index (`crate::runs`): one row per run recorded by a
    // worker, and one per worker (incarnation) on it. Times are Unix
    // milliseconds; a worker's `outcome` is NULL until it ends; `removing`
    // is set once gc has begun removing the run.
    "CREATE TABLE runs (
        flow_run_id BLOB NOT NULL PRIMARY KEY CHECK (length(flow_run_id) = 16),
        flow_name   TEXT NOT NULL,
        flow_hash   TEXT NOT NULL,
        graph       TEXT NOT NULL,
        nodes       INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        removing    INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE TABLE run_workers (
        flow_run_id BLOB NOT NULL,
        incarnation BLOB NOT NULL CHECK (length(incarnation) = 16),
        worker      TEXT NOT NULL,
        started_at  INTEGER NOT NULL,
        seen_at     INTEGER NOT NULL,
        lease_ms    INTEGER NOT NULL,
        ended_at    INTEGER,
        outcome     TEXT,
        PRIMARY KEY (flow_run_id, incarnation)
    ) STRICT;",
];

/// The schema version this build writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// What a database holds, as far as this build is concerned: the answer
/// of [`inspect`] for a file this build may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// An empty database: no tables, no `application_id`, no
    /// `user_version`. The migrations create the schema.
    Empty,
    /// The tables of a WorldInterface store, to convert.
    WorldInterface,
    /// A contextstore database of schema `version`, at most
    /// [`CURRENT_VERSION`].
    Contextstore {
        /// Its `user_version`.
        version: i64,
    },
}

impl Found {
    /// Whether the database is at this build's schema: nothing to migrate.
    pub(crate) fn is_current(self) -> bool {
        self == Self::Contextstore {
            version: CURRENT_VERSION,
        }
    }

    /// The schema version found (0 for an empty or a WorldInterface database).
    fn version(self) -> i64 {
        match self {
            Self::Empty | Self::WorldInterface => 0,
            Self::Contextstore { version } => version,
        }
    }
}

/// Reads, without writing anything, what `conn` holds, and refuses what
/// this build must leave alone: a file of another application (another
/// `application_id`; a `user_version` without contextstore's
/// `application_id`; tables that are neither contextstore's nor a
/// WorldInterface store's), or a contextstore file of a newer schema.
///
/// Runs its statements as they come: a caller that needs one consistent
/// view runs it inside a transaction.
pub(crate) fn inspect(conn: &Connection) -> Result<Found, ContextStoreError> {
    let app: i64 = conn.pragma_query_value(None, "application_id", |row| row.get(0))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    refuse_marks(app, version)?;
    if app == APPLICATION_ID {
        return Ok(Found::Contextstore { version });
    }
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'",
        [],
        |row| row.get(0),
    )?;
    if tables == 0 {
        return Ok(Found::Empty);
    }
    if worldinterface::detect(conn)? {
        return Ok(Found::WorldInterface);
    }
    Err(ContextStoreError::StorageError(
        "not a contextstore database (it holds other tables, \
         and not those of a WorldInterface store)"
            .into(),
    ))
}

/// Refuses a database by its `application_id` and `user_version` alone:
/// another application's mark, a version without contextstore's mark
/// (the file is another application's, and must not be stamped as
/// contextstore's), or a newer schema. What [`inspect`] checks first, and
/// what the file's header can tell before SQLite opens it.
pub(crate) fn refuse_marks(app: i64, version: i64) -> Result<(), ContextStoreError> {
    if app != 0 && app != APPLICATION_ID {
        return Err(ContextStoreError::StorageError(format!(
            "not a contextstore database (application_id {app:#x})"
        )));
    }
    if app == 0 && version != 0 {
        return Err(ContextStoreError::StorageError(format!(
            "not a contextstore database (user_version {version} without \
             contextstore's application_id)"
        )));
    }
    if version < 0 {
        return Err(ContextStoreError::StorageError(format!(
            "not a contextstore database (user_version {version})"
        )));
    }
    if version > CURRENT_VERSION {
        return Err(ContextStoreError::StorageError(format!(
            "database schema version {version} is newer than this build supports ({CURRENT_VERSION})"
        )));
    }
    Ok(())
}

/// Brings the database up to [`CURRENT_VERSION`], in one transaction.
///
/// Refuses files that belong to another application and files written by
/// a newer build, rather than guessing, before anything is written. A
/// WorldInterface database is converted (see [`worldinterface`]). A
/// database already at this build's schema is only read: no write lock is
/// taken, so another process's write transaction does not hold it up.
pub fn migrate(conn: &mut Connection) -> Result<(), ContextStoreError> {
    migrate_reporting(conn, None).map(drop)
}

/// [`migrate`], saying what it did.
///
/// Converting a WorldInterface database, it first keeps a copy of the
/// original beside the file ([`worldinterface::backup_path`]), made once
/// the transaction holds the write lock and before anything is changed,
/// through a second connection opened with `vfs` (the VFS `conn` was
/// opened with; `None`: the default). The copy is made under a `.partial`
/// name and renamed only after the commit; a failed conversion removes it.
/// If the copy's final name exists already, the conversion is refused.
pub fn migrate_reporting(
    conn: &mut Connection,
    vfs: Option<&str>,
) -> Result<MigrationReport, ContextStoreError> {
    let found = {
        // A read transaction: one consistent view, and no write lock.
        let read = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        inspect(&read)?
    };
    if found.is_current() {
        return Ok(MigrationReport {
            from_version: CURRENT_VERSION,
            to_version: CURRENT_VERSION,
            worldinterface: None,
            backup: None,
        });
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Another process may have migrated the file since it was read.
    let found = inspect(&tx)?;
    let version = found.version();
    // Dropped unpublished (an error below), the copy is removed.
    let mut copy = None;
    if found == Found::WorldInterface {
        copy = worldinterface::keep_copy(&tx, vfs)?;
        worldinterface::set_aside(&tx)?;
    }
    let from = usize::try_from(version).unwrap_or(0);
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        tracing::info!(from, to = from + 1, "migrating contextstore schema");
        tx.execute_batch(sql)?;
    }
    let converted = if found == Found::WorldInterface {
        let converted = worldinterface::copy_over(&tx)?;
        tracing::info!(
            outputs = converted.outputs,
            globals = converted.globals,
            "converted a WorldInterface database"
        );
        Some(converted)
    } else {
        None
    };
    if !found.is_current() {
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", CURRENT_VERSION)?;
    }
    tx.commit()?;
    let backup = copy.map(worldinterface::PendingCopy::publish);
    if let Some(backup) = &backup {
        tracing::info!(
            backup = %backup.display(),
            "kept a copy of the WorldInterface original"
        );
    }
    Ok(MigrationReport {
        from_version: version,
        to_version: CURRENT_VERSION,
        worldinterface: converted,
        backup,
    })
}

/// Checks, without writing, that `conn` holds a contextstore database of
/// exactly this build's schema: what a read-only open needs.
pub fn check(conn: &Connection) -> Result<(), ContextStoreError> {
    match inspect(conn)? {
        found if found.is_current() => Ok(()),
        Found::WorldInterface => Err(ContextStoreError::StorageError(
            "a WorldInterface database: open it for writing once, or run \
             `contextstore migrate --db PATH`, to convert it"
                .into(),
        )),
        Found::Empty => Err(ContextStoreError::StorageError(
            "not a contextstore database".into(),
        )),
        Found::Contextstore { version } => Err(ContextStoreError::StorageError(format!(
            "database schema version {version} is older than this build's ({CURRENT_VERSION}); \
             open it for writing once to migrate it"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_new_database_and_is_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, CURRENT_VERSION);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.pragma_update(None, "user_version", CURRENT_VERSION + 1)
            .unwrap();
        let err = migrate(&mut conn).unwrap_err().to_string();
        assert!(err.contains("newer than this build"), "{err}");
    }

    #[test]
    fn migrating_a_current_database_takes_no_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("current.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL").unwrap();
        migrate(&mut conn).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        // Fail at once, rather than wait, if the lock were wanted.
        conn.busy_timeout(std::time::Duration::ZERO).unwrap();
        let report = migrate_reporting(&mut conn, None).unwrap();
        assert_eq!(
            (report.from_version, report.to_version),
            (CURRENT_VERSION, CURRENT_VERSION)
        );
        other.execute_batch("ROLLBACK").unwrap();
    }

    #[test]
    fn refuses_marks_that_are_not_contextstore_s() {
        assert!(refuse_marks(0, 0).is_ok());
        assert!(refuse_marks(APPLICATION_ID, CURRENT_VERSION).is_ok());
        for (app, version, expected) in [
            (0x1234, 0, "application_id 0x1234"),
            (0, 2, "user_version 2 without"),
            (APPLICATION_ID, -1, "user_version -1"),
            (APPLICATION_ID, CURRENT_VERSION + 1, "newer than this build"),
        ] {
            let err = refuse_marks(app, version).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn refuses_a_user_version_without_the_application_id_and_writes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        let err = migrate(&mut conn).unwrap_err().to_string();
        assert!(err.contains("not a contextstore database"), "{err}");
        let app: i64 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .unwrap();
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!((app, tables), (0, 0));
    }

    #[test]
    fn refuses_a_foreign_database() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE users (id INTEGER)")
            .unwrap();
        let err = migrate(&mut conn).unwrap_err().to_string();
        assert!(err.contains("not a contextstore database"), "{err}");
    }

    #[test]
    fn a_version_1_file_gains_empty_provenance_columns_and_keeps_its_rows() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO outputs VALUES (zeroblob(16), zeroblob(16), '[1]', 5)",
            [],
        )
        .unwrap();
        let report = migrate_reporting(&mut conn, None).unwrap();
        assert_eq!(
            (report.from_version, report.to_version),
            (1, CURRENT_VERSION)
        );
        let (value, hash): (String, Option<String>) = conn
            .query_row("SELECT value, component_hash FROM outputs", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((value.as_str(), hash), ("[1]", None));
    }
}
