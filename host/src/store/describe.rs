//! What an open store is: [`StoreInfo`], answered by
//! [`ContextStore::describe`](crate::ContextStore::describe) and shown by
//! `contextstore info`.
//!
//! Everything in it is read from the open store itself (the database's own
//! settings and schema marker), not from the options it was asked to open
//! with, so that an embedder's log line or a support question states what
//! is true of the file or database in use.

use std::fmt;

use serde::Serialize;

/// Which backend a store is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// [`SqliteContextStore`](crate::SqliteContextStore): one file (or memory).
    Sqlite,
    /// `PostgresContextStore`: a PostgreSQL database.
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        })
    }
}

/// What an open store is: its backend, where it is, what its commits
/// survive and which schema it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StoreInfo {
    /// The backend.
    pub backend: Backend,
    /// Where the data is: the SQLite file's path (`:memory:` for an
    /// in-memory store), or the PostgreSQL target without its password.
    pub location: String,
    /// Whether the store was opened for reading only.
    pub read_only: bool,
    /// The schema version the store holds (this build's; an older one is
    /// migrated at open, a newer one refused).
    pub schema_version: i64,
    /// What a write answered `Ok` survives, as the database is set now:
    /// SQLite's `synchronous` (`full`: power loss; `normal`: a crash of the
    /// process, not of the machine), PostgreSQL's `synchronous_commit`
    /// (`on`: the server's crash and power loss; `off`: may lose the last
    /// commits; `remote_apply` and the like: also a standby's).
    pub durability: String,
    /// SQLite's `journal_mode` (`wal` for a file, `memory` in memory);
    /// `None` for PostgreSQL.
    pub journal_mode: Option<String>,
    /// Whether concurrent writes share commits (SQLite's group commit,
    /// [`SqliteOptions::group_commit`](crate::store::sqlite::SqliteOptions::group_commit));
    /// PostgreSQL commits every call in its own transaction.
    pub group_commit: bool,
    /// The database engine's version: SQLite's library, or the PostgreSQL
    /// server's `server_version`.
    pub engine_version: String,
}

impl fmt::Display for StoreInfo {
    /// One `name: value` line per field, as `contextstore info` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "backend: {}", self.backend)?;
        writeln!(f, "location: {}", self.location)?;
        writeln!(f, "read only: {}", self.read_only)?;
        writeln!(f, "schema version: {}", self.schema_version)?;
        writeln!(f, "durability: {}", self.durability)?;
        if let Some(mode) = &self.journal_mode {
            writeln!(f, "journal mode: {mode}")?;
        }
        writeln!(
            f,
            "group commit: {}",
            if self.group_commit { "on" } else { "off" }
        )?;
        write!(f, "engine version: {}", self.engine_version)
    }
}
