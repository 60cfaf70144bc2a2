//! Database errors as store errors, worded for an operator, and which of
//! them are worth trying again.

use tokio_postgres::Config;
use tokio_postgres::error::SqlState;

use crate::error::ContextStoreError;

/// The connection target as `user@host:port/dbname`, without the password.
pub(super) fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let port = config
        .get_ports()
        .first()
        .map_or_else(String::new, |p| format!(":{p}"));
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    let hosts = if hosts.is_empty() {
        "localhost".to_owned()
    } else {
        hosts.join(",")
    };
    format!("postgres://{user}@{hosts}{port}/{db}")
}

/// Puts the target in front of a storage error's message.
pub(super) fn naming(target: &str, error: ContextStoreError) -> ContextStoreError {
    match error {
        ContextStoreError::StorageError(msg) => {
            ContextStoreError::StorageError(format!("{target}: {msg}"))
        }
        other => other,
    }
}

/// A database error as a storage error, worded for an operator.
pub(super) fn error(e: &tokio_postgres::Error) -> ContextStoreError {
    ContextStoreError::StorageError(message(e))
}

/// A database error worded for an operator.
pub(super) fn message(e: &tokio_postgres::Error) -> String {
    match (e.code(), e.as_db_error()) {
        (Some(code), Some(db))
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            format!("authentication failed: {}", db.message())
        }
        (Some(code), Some(db)) if *code == SqlState::QUERY_CANCELED => {
            format!("statement stopped: {}", db.message())
        }
        (_, Some(db)) => format!("{}: {}", db.severity(), db.message()),
        (_, None) => {
            // Connection errors carry their cause (refused, timed out, DNS).
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                let more = s.to_string();
                if !text.contains(&more) {
                    text = format!("{text}: {more}");
                }
                source = s.source();
            }
            text
        }
    }
}

/// Whether `e` is a unique violation of `constraint`.
pub(super) fn is_unique_violation(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some(constraint)
    })
}

/// Whether `e` is a cancelled statement (by the client's cancel request
/// or by `statement_timeout`).
pub(super) fn is_cancelled(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::QUERY_CANCELED)
}

/// Whether `e` may pass if the statement is tried again on another
/// connection: the connection broke or could not be made (an I/O error, a
/// closed client, SQLSTATE class 08), the server is shutting down or
/// starting (`57P01`, `57P02`, `57P03`) or has no connection to spare
/// (`53300`), or the transaction lost a serialization race (`40001`,
/// `40P01`). Every other database error (a constraint, a type, a
/// permission, a wrong password) would come back the same.
pub(super) fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08")
            || matches!(
                code,
                "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
            );
    }
    if e.as_db_error().is_some() {
        return false;
    }
    // I/O anywhere in the chain: refused, reset, timed out, no socket.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Whether a transient error leaves the connection usable (a lost
/// serialization race) rather than broken.
pub(super) fn keeps_connection(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("40") && !e.is_closed())
}
