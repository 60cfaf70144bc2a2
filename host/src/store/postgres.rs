//! [`PostgresContextStore`]: the PostgreSQL backend, for stores shared by
//! workers on many hosts.
//!
//! The same contract as the SQLite store: write-once is the primary key of
//! each table (of N racing writers, on any number of hosts, exactly one
//! insert succeeds), values rest as `text` byte for byte (not `jsonb`, which
//! rewrites them), run and node ids as `uuid`, global keys as `bytea` (a
//! Rust string may hold NUL, which `text` cannot), `written_at` on the
//! server's clock. Every call takes a connection from a pool; a call made
//! for a step invocation waits for a connection and for its statement no
//! longer than the invocation's [deadline](super::deadline).
//!
//! The schema lives in four tables, `contextstore_meta` (application
//! marker and schema version), `contextstore_outputs`,
//! `contextstore_globals` and `contextstore_claims` (node leases of
//! [`NodeClaims`], which no guest call reaches), in the connection's
//! current schema (`search_path`). It is created and migrated at connect,
//! under an advisory lock, so that several workers starting at once
//! migrate once.

use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};
use r2d2_postgres::PostgresConnectionManager;
use uuid::Uuid;

use super::claims::{Claim, ClaimRecord, NodeClaims};
use super::deadline;
use super::{ContextStore, Provenance};
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;

/// The application marker in `contextstore_meta`.
const APPLICATION: &str = "contextstore";

/// The advisory lock key that serialises migrations ("ctxs").
const MIGRATION_LOCK: i64 = 0x6374_7873;

/// Migrations in order; migration `i` takes the schema from version `i`
/// to `i + 1`. Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[
    // 1: outputs, globals and node claims.
    "CREATE TABLE contextstore_outputs (
        flow_run_id uuid NOT NULL,
        node_id     uuid NOT NULL,
        value       text NOT NULL,
        written_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (flow_run_id, node_id)
    );
    CREATE TABLE contextstore_globals (
        key        bytea NOT NULL PRIMARY KEY,
        value      text NOT NULL,
        written_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE contextstore_claims (
        flow_run_id uuid NOT NULL,
        node_id     uuid NOT NULL,
        worker      text NOT NULL,
        lease_until timestamptz NOT NULL,
        attempt     integer NOT NULL,
        claimed_at  timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        PRIMARY KEY (flow_run_id, node_id)
    );",
    // 2: provenance beside each output (NULL for outputs written without).
    "ALTER TABLE contextstore_outputs
        ADD COLUMN component_hash text,
        ADD COLUMN params_hash    text,
        ADD COLUMN upstream_hash  text,
        ADD COLUMN attempt        bigint,
        ADD COLUMN host           text,
        ADD COLUMN started_at     bigint,
        ADD COLUMN ended_at       bigint;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Settings for [`PostgresContextStore::connect_with`].
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Most connections open at once (default 16).
    pub pool_size: u32,
    /// The longest a new connection may take to establish (default 10 s).
    pub connect_timeout: Duration,
    /// The longest a call waits for a free connection before it fails with
    /// a storage error (default 60 s). A call made for a step invocation
    /// also stops at the invocation's deadline.
    pub checkout_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            connect_timeout: Duration::from_secs(10),
            checkout_timeout: Duration::from_secs(60),
        }
    }
}

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// A [`ContextStore`] in a PostgreSQL database, shared by any number of
/// processes and hosts.
pub struct PostgresContextStore {
    pool: Pool,
    /// The connection target, password left out, for error messages.
    target: String,
    options: PostgresOptions,
}

impl std::fmt::Debug for PostgresContextStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresContextStore")
            .field("target", &self.target)
            .field("options", &self.options)
            .finish()
    }
}

impl PostgresContextStore {
    /// Connects with default options; see [`connect_with`](Self::connect_with).
    pub fn connect(url: &str) -> Result<Self, ContextStoreError> {
        Self::connect_with(url, PostgresOptions::default())
    }

    /// Connects to the database named by `url` (a `postgres://` or
    /// `postgresql://` URL, or a `host=… dbname=…` key-value string; a Unix
    /// socket directory goes percent-encoded in the host part, or as
    /// `host=/dir`), creating or migrating the schema.
    ///
    /// Fails with a [`ContextStoreError::StorageError`] naming the target
    /// (never the password) when the URL is invalid, the server refuses
    /// the connection or the credentials, the database's encoding is not
    /// UTF-8, or the database belongs to another application or has a
    /// newer schema.
    pub fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, ContextStoreError> {
        let mut config: Config = url
            .parse()
            .map_err(|e| ContextStoreError::StorageError(format!("invalid PostgreSQL URL: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("contextstore");
        }
        let target = describe(&config);
        let at = |e: ContextStoreError| naming(&target, e);
        // One connection first, outside the pool: it reports exactly why
        // it fails, and migrates.
        let mut first = config.connect(NoTls).map_err(|e| at(error(e)))?;
        migrate(&mut first).map_err(at)?;
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(options.checkout_timeout)
            // A broken connection is found by `is_closed`; a test query on
            // every checkout would cost a round trip per call.
            .test_on_check_out(false)
            .build_unchecked(PostgresConnectionManager::new(config, NoTls));
        drop(first);
        tracing::debug!(%target, ?options, "connected postgres context store");
        Ok(Self {
            pool,
            target,
            options,
        })
    }

    /// The database this store is connected to, password left out.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `f` on a pooled connection, within the call's deadline: the
    /// wait for a connection and the statement itself stop there.
    ///
    /// The blocking client drives its connection with a small runtime of
    /// its own, which cannot run on a thread that is driving async tasks
    /// (the sandbox calls the store from inside its async host functions):
    /// there the call runs on a helper thread while this one waits.
    fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send,
    ) -> Result<Result<T, postgres::Error>, ContextStoreError> {
        let deadline = deadline::current();
        if tokio::runtime::Handle::try_current().is_err() {
            return self.with_deadline(deadline, f);
        }
        std::thread::scope(|scope| {
            match std::thread::Builder::new()
                .name("contextstore-pg".into())
                .spawn_scoped(scope, || self.with_deadline(deadline, f))
            {
                Ok(helper) => helper
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(e) => Err(ContextStoreError::StorageError(format!(
                    "cannot start a thread for a database call: {e}"
                ))),
            }
        })
    }

    fn with_deadline<T>(
        &self,
        deadline: Option<Instant>,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<Result<T, postgres::Error>, ContextStoreError> {
        let wait = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ContextStoreError::StorageError(
                        "the call's deadline passed before it reached the database".into(),
                    ));
                }
                left.min(self.options.checkout_timeout)
            }
            None => self.options.checkout_timeout,
        };
        let mut conn = self.pool.get_timeout(wait).map_err(|e| {
            naming(
                &self.target,
                ContextStoreError::StorageError(format!("no database connection: {e}")),
            )
        })?;
        let Some(d) = deadline else {
            return Ok(f(&mut conn));
        };
        // At least 1 ms: a statement_timeout of 0 means none.
        let ms = d
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1);
        conn.batch_execute(&format!("SET statement_timeout = {ms}"))
            .map_err(error)?;
        let result = f(&mut conn);
        if let Err(e) = conn.batch_execute("RESET statement_timeout") {
            tracing::debug!(error = %e, "could not reset statement_timeout");
        }
        Ok(result)
    }
}

/// The connection target as `user@host:port/dbname`, without the password.
fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
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
fn naming(target: &str, error: ContextStoreError) -> ContextStoreError {
    match error {
        ContextStoreError::StorageError(msg) => {
            ContextStoreError::StorageError(format!("{target}: {msg}"))
        }
        other => other,
    }
}

/// A database error as a storage error, worded for an operator.
fn error(e: postgres::Error) -> ContextStoreError {
    let message = match (e.code(), e.as_db_error()) {
        (Some(code), Some(db))
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            format!("authentication failed: {}", db.message())
        }
        (Some(code), Some(db)) if *code == SqlState::QUERY_CANCELED => {
            format!("statement stopped at the call's deadline: {}", db.message())
        }
        (_, Some(db)) => format!("{}: {}", db.severity(), db.message()),
        (_, None) => {
            // Connection errors carry their cause (refused, timed out, DNS).
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let more = s.to_string();
                if !text.contains(&more) {
                    text = format!("{text}: {more}");
                }
                source = s.source();
            }
            text
        }
    };
    ContextStoreError::StorageError(message)
}

/// Whether `e` is a unique violation of `constraint`.
fn is_unique_violation(e: &postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some(constraint)
    })
}

/// Creates or migrates the schema in one transaction, under an advisory
/// lock; refuses a database of another application or of a newer build.
fn migrate(client: &mut Client) -> Result<(), ContextStoreError> {
    let encoding: String = client
        .query_one("SHOW server_encoding", &[])
        .map_err(error)?
        .get(0);
    if !encoding.eq_ignore_ascii_case("UTF8") {
        return Err(ContextStoreError::StorageError(format!(
            "the database's encoding is {encoding}, not UTF8 (create it with ENCODING 'UTF8')"
        )));
    }
    let mut tx = client.transaction().map_err(error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(error)?;
    let has_meta: bool = tx
        .query_one("SELECT to_regclass('contextstore_meta') IS NOT NULL", &[])
        .map_err(error)?
        .get(0);
    let version = if has_meta {
        let rows = tx
            .query("SELECT key, value FROM contextstore_meta", &[])
            .map_err(error)?;
        let get = |name: &str| {
            rows.iter()
                .find(|r| r.get::<_, &str>(0) == name)
                .map(|r| r.get::<_, String>(1))
        };
        match get("application") {
            Some(app) if app == APPLICATION => {}
            Some(app) => {
                return Err(ContextStoreError::StorageError(format!(
                    "not a contextstore database (contextstore_meta names application {app:?})"
                )));
            }
            None => {
                return Err(ContextStoreError::StorageError(
                    "not a contextstore database (contextstore_meta has no application marker)"
                        .into(),
                ));
            }
        }
        let version = get("schema_version").unwrap_or_default();
        version.parse::<i64>().map_err(|_| {
            ContextStoreError::StorageError(format!(
                "not a contextstore database (schema version {version:?})"
            ))
        })?
    } else {
        tx.batch_execute(
            "CREATE TABLE contextstore_meta (key text PRIMARY KEY, value text NOT NULL)",
        )
        .map_err(error)?;
        tx.execute(
            "INSERT INTO contextstore_meta (key, value) VALUES ('application', $1), ('schema_version', '0')",
            &[&APPLICATION],
        )
        .map_err(error)?;
        0
    };
    if version > SCHEMA_VERSION {
        return Err(ContextStoreError::StorageError(format!(
            "database schema version {version} is newer than this build supports ({SCHEMA_VERSION})"
        )));
    }
    let from = usize::try_from(version).unwrap_or(0);
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        tracing::info!(from = step, to = step + 1, "migrating contextstore schema");
        tx.batch_execute(sql).map_err(error)?;
    }
    if from < MIGRATIONS.len() {
        tx.execute(
            "UPDATE contextstore_meta SET value = $1 WHERE key = 'schema_version'",
            &[&SCHEMA_VERSION.to_string()],
        )
        .map_err(error)?;
    }
    tx.commit().map_err(error)
}

/// A lease as whole milliseconds for SQL.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PostgresContextStore {
    /// Writes an output once, with its provenance if it has one (the
    /// provenance columns are NULL otherwise).
    fn insert_output(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
        provenance: Option<&Provenance>,
    ) -> Result<(), ContextStoreError> {
        let p = provenance;
        let attempt = p.map(|p| i64::from(p.attempt));
        let result = self.with(|c| {
            c.execute(
                "INSERT INTO contextstore_outputs (flow_run_id, node_id, value, component_hash,
                     params_hash, upstream_hash, attempt, host, started_at, ended_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    &flow_run_id.as_uuid(),
                    &node_id.as_uuid(),
                    &value.as_str(),
                    &p.map(|p| p.component_hash.as_str()),
                    &p.map(|p| p.params_hash.as_str()),
                    &p.map(|p| p.upstream_hash.as_str()),
                    &attempt,
                    &p.map(|p| p.host.as_str()),
                    &p.map(|p| p.started_at),
                    &p.map(|p| p.ended_at),
                ],
            )
        })?;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e, "contextstore_outputs_pkey") => {
                Err(ContextStoreError::AlreadyExists {
                    flow_run_id,
                    node_id,
                })
            }
            Err(e) => Err(error(e)),
        }
    }
}

impl ContextStore for PostgresContextStore {
    fn put_text(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        self.insert_output(flow_run_id, node_id, value, None)
    }

    fn put_text_with_provenance(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
        provenance: &Provenance,
    ) -> Result<(), ContextStoreError> {
        self.insert_output(flow_run_id, node_id, value, Some(provenance))
    }

    fn provenance(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError> {
        let row = self
            .with(|c| {
                c.query_opt(
                    "SELECT component_hash, params_hash, upstream_hash, attempt, host, started_at, ended_at
                     FROM contextstore_outputs
                     WHERE flow_run_id = $1 AND node_id = $2 AND component_hash IS NOT NULL",
                    &[&flow_run_id.as_uuid(), &node_id.as_uuid()],
                )
            })?
            .map_err(error)?;
        row.map(|r| -> Result<Provenance, postgres::Error> {
            Ok(Provenance {
                component_hash: r.try_get(0)?,
                params_hash: r.try_get(1)?,
                upstream_hash: r.try_get(2)?,
                attempt: u32::try_from(r.try_get::<_, i64>(3)?).unwrap_or(u32::MAX),
                host: r.try_get(4)?,
                started_at: r.try_get(5)?,
                ended_at: r.try_get(6)?,
            })
        })
        .transpose()
        .map_err(error)
    }

    fn get_text(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        let row = self
            .with(|c| {
                c.query_opt(
                    "SELECT value FROM contextstore_outputs WHERE flow_run_id = $1 AND node_id = $2",
                    &[&flow_run_id.as_uuid(), &node_id.as_uuid()],
                )
            })?
            .map_err(error)?;
        Ok(row.map(|r| JsonText::from_stored(r.get::<_, String>(0))))
    }

    fn list_keys(&self, flow_run_id: FlowRunId) -> Result<Vec<NodeId>, ContextStoreError> {
        let rows = self
            .with(|c| {
                c.query(
                    "SELECT node_id FROM contextstore_outputs WHERE flow_run_id = $1",
                    &[&flow_run_id.as_uuid()],
                )
            })?
            .map_err(error)?;
        Ok(rows
            .iter()
            .map(|r| NodeId::from_uuid(r.get::<_, Uuid>(0)))
            .collect())
    }

    fn put_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError> {
        let result = self.with(|c| {
            c.execute(
                "INSERT INTO contextstore_globals (key, value) VALUES ($1, $2)",
                &[&key.as_bytes(), &value.as_str()],
            )
        })?;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e, "contextstore_globals_pkey") => {
                Err(ContextStoreError::GlobalAlreadyExists {
                    key: key.to_owned(),
                })
            }
            Err(e) => Err(error(e)),
        }
    }

    fn upsert_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO contextstore_globals (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, written_at = now()",
                &[&key.as_bytes(), &value.as_str()],
            )
        })?
        .map_err(error)?;
        Ok(())
    }

    fn get_global_text(&self, key: &str) -> Result<Option<JsonText>, ContextStoreError> {
        let row = self
            .with(|c| {
                c.query_opt(
                    "SELECT value FROM contextstore_globals WHERE key = $1",
                    &[&key.as_bytes()],
                )
            })?
            .map_err(error)?;
        Ok(row.map(|r| JsonText::from_stored(r.get::<_, String>(0))))
    }

    fn node_claims(&self) -> Option<&dyn NodeClaims> {
        Some(self)
    }
}

impl NodeClaims for PostgresContextStore {
    fn claim(
        &self,
        run: FlowRunId,
        node: NodeId,
        worker: &str,
        lease: Duration,
    ) -> Result<Claim, ContextStoreError> {
        let (run, node) = (run.as_uuid(), node.as_uuid());
        let lease = millis(lease);
        self.with(|c| {
            // Wins a new claim, or takes over one whose lease expired.
            let won = c.query_opt(
                "INSERT INTO contextstore_claims (flow_run_id, node_id, worker, lease_until, attempt)
                 VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond', 1)
                 ON CONFLICT (flow_run_id, node_id) DO UPDATE
                   SET worker = excluded.worker, lease_until = excluded.lease_until,
                       attempt = contextstore_claims.attempt + 1, claimed_at = now()
                   WHERE contextstore_claims.finished_at IS NULL
                     AND contextstore_claims.lease_until < now()
                 RETURNING attempt",
                &[&run, &node, &worker, &lease],
            )?;
            if let Some(row) = won {
                let attempt: i32 = row.get(0);
                return Ok(Claim::Won {
                    attempt: u32::try_from(attempt).unwrap_or(0),
                });
            }
            let row = c.query_one(
                "SELECT worker, finished_at IS NOT NULL,
                        greatest(0, extract(epoch FROM lease_until - now()) * 1000)::bigint
                 FROM contextstore_claims WHERE flow_run_id = $1 AND node_id = $2",
                &[&run, &node],
            )?;
            let worker: String = row.get(0);
            Ok(if row.get::<_, bool>(1) {
                Claim::Finished { worker }
            } else {
                let left: i64 = row.get(2);
                Claim::Held {
                    worker,
                    lease_left: Duration::from_millis(u64::try_from(left).unwrap_or(0)),
                }
            })
        })?
        .map_err(error)
    }

    fn renew(
        &self,
        run: FlowRunId,
        worker: &str,
        lease: Duration,
    ) -> Result<u64, ContextStoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE contextstore_claims SET lease_until = now() + $3::bigint * interval '1 millisecond'
                 WHERE flow_run_id = $1 AND worker = $2 AND finished_at IS NULL",
                &[&run.as_uuid(), &worker, &millis(lease)],
            )
        })?
        .map_err(error)
    }

    fn finish(&self, run: FlowRunId, node: NodeId, worker: &str) -> Result<(), ContextStoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE contextstore_claims SET finished_at = now(), lease_until = now()
                 WHERE flow_run_id = $1 AND node_id = $2 AND worker = $3 AND finished_at IS NULL",
                &[&run.as_uuid(), &node.as_uuid(), &worker],
            )
        })?
        .map_err(error)?;
        Ok(())
    }

    fn release(&self, run: FlowRunId, node: NodeId, worker: &str) -> Result<(), ContextStoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE contextstore_claims SET lease_until = now() - interval '1 millisecond'
                 WHERE flow_run_id = $1 AND node_id = $2 AND worker = $3 AND finished_at IS NULL",
                &[&run.as_uuid(), &node.as_uuid(), &worker],
            )
        })?
        .map_err(error)?;
        Ok(())
    }

    fn claims(&self, run: FlowRunId) -> Result<Vec<ClaimRecord>, ContextStoreError> {
        let rows = self
            .with(|c| {
                c.query(
                    "SELECT node_id, worker, attempt, finished_at IS NOT NULL,
                            greatest(0, extract(epoch FROM lease_until - now()) * 1000)::bigint
                     FROM contextstore_claims WHERE flow_run_id = $1",
                    &[&run.as_uuid()],
                )
            })?
            .map_err(error)?;
        Ok(rows
            .iter()
            .map(|r| {
                let finished: bool = r.get(3);
                let left: i64 = r.get(4);
                ClaimRecord {
                    node_id: NodeId::from_uuid(r.get::<_, Uuid>(0)),
                    worker: r.get(1),
                    attempt: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                    finished,
                    lease_left: if finished {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(u64::try_from(left).unwrap_or(0))
                    },
                }
            })
            .collect())
    }
}

#[cfg(test)]
#[path = "../../tests/support/postgres_cluster.rs"]
mod test_cluster;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    use super::test_cluster as cluster;

    fn fresh() -> ((), Arc<PostgresContextStore>) {
        let url = cluster::fresh_database();
        ((), Arc::new(PostgresContextStore::connect(&url).unwrap()))
    }

    mod conformance {
        crate::conformance_tests!(super::fresh());
    }

    fn storage_error(result: Result<PostgresContextStore, ContextStoreError>) -> String {
        match result {
            Err(ContextStoreError::StorageError(msg)) => msg,
            Err(other) => panic!("expected a storage error, got {other:?}"),
            Ok(store) => panic!("expected an error, connected: {store:?}"),
        }
    }

    #[test]
    fn values_rest_as_the_exact_text_written() {
        let url = cluster::fresh_database();
        let store = PostgresContextStore::connect(&url).unwrap();
        let text = "{ \"b\" : 1.50,\n \"a\":[ 1e2 ] }";
        let value = JsonText::parse(text, crate::json::MAX_DEPTH).unwrap();
        let (run, node) = (FlowRunId::new(), NodeId::new());
        store.put_text(run, node, &value).unwrap();
        store.put_global_text("k\0with nul", &value).unwrap();
        assert_eq!(store.get_text(run, node).unwrap().unwrap().as_str(), text);
        assert_eq!(
            store
                .get_global_text("k\0with nul")
                .unwrap()
                .unwrap()
                .as_str(),
            text
        );
        assert_eq!(store.get_global_text("k").unwrap(), None);
    }

    #[test]
    fn reconnect_keeps_outputs_and_globals() {
        let url = cluster::fresh_database();
        let (run, node) = (FlowRunId::new(), NodeId::new());
        {
            let store = PostgresContextStore::connect(&url).unwrap();
            store.put(run, node, &json!({"a": 1})).unwrap();
            store.upsert_global("m", &json!(1)).unwrap();
        }
        let store = PostgresContextStore::connect(&url).unwrap();
        assert_eq!(store.get(run, node).unwrap(), Some(json!({"a": 1})));
        assert_eq!(store.get_global("m").unwrap(), Some(json!(1)));
        assert!(matches!(
            store.put(run, node, &json!(2)),
            Err(ContextStoreError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn workers_connecting_at_once_migrate_once() {
        let url = cluster::fresh_database();
        let stores: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| PostgresContextStore::connect(&url)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for store in stores {
            store.unwrap();
        }
    }

    #[test]
    fn refuses_a_database_of_another_application() {
        let url = cluster::fresh_database();
        cluster::admin_execute(
            &url,
            "CREATE TABLE contextstore_meta (key text PRIMARY KEY, value text NOT NULL);
             INSERT INTO contextstore_meta VALUES ('application', 'billing');",
        );
        let msg = storage_error(PostgresContextStore::connect(&url));
        assert!(
            msg.contains("not a contextstore database") && msg.contains("billing"),
            "{msg}"
        );
    }

    #[test]
    fn refuses_a_newer_schema() {
        let url = cluster::fresh_database();
        drop(PostgresContextStore::connect(&url).unwrap());
        cluster::admin_execute(
            &url,
            "UPDATE contextstore_meta SET value = '99' WHERE key = 'schema_version'",
        );
        let msg = storage_error(PostgresContextStore::connect(&url));
        assert!(msg.contains("schema version 99 is newer"), "{msg}");
    }

    #[test]
    fn a_refused_connection_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().to_str().unwrap().replace('/', "%2F");
        let url = format!("postgres://postgres@{socket}/nothing");
        let msg = storage_error(PostgresContextStore::connect(&url));
        assert!(msg.contains("error connecting to server"), "{msg}");
        assert!(msg.contains("No such file or directory"), "{msg}");
    }

    #[test]
    fn a_wrong_password_is_a_clear_error_that_hides_it() {
        let url = cluster::fresh_database();
        cluster::admin_execute(
            &url,
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cs_alice') THEN
                 CREATE ROLE cs_alice LOGIN PASSWORD 'right';
               END IF;
             END $$;",
        );
        let wrong = cluster::with_user(&url, "cs_alice", "wrong-secret");
        let msg = storage_error(PostgresContextStore::connect(&wrong));
        assert!(msg.contains("authentication failed"), "{msg}");
        assert!(msg.contains("cs_alice"), "{msg}");
        assert!(!msg.contains("wrong-secret"), "{msg}");
    }

    #[test]
    fn an_invalid_url_is_a_clear_error() {
        let msg = storage_error(PostgresContextStore::connect("postgres://a@b:notaport/x"));
        assert!(msg.contains("invalid PostgreSQL URL"), "{msg}");
    }

    #[test]
    fn a_passed_deadline_stops_the_call() {
        let url = cluster::fresh_database();
        let store = PostgresContextStore::connect(&url).unwrap();
        let past = Instant::now();
        let result = deadline::with_deadline(past, || store.get_global("k"));
        assert!(
            matches!(&result, Err(ContextStoreError::StorageError(m)) if m.contains("deadline")),
            "{result:?}"
        );
        let soon = Instant::now() + Duration::from_millis(200);
        let result = deadline::with_deadline(soon, || {
            store.with(|c| c.batch_execute("SELECT pg_sleep(5)"))
        });
        let err = result.unwrap().unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
        // The connection's timeout is reset afterwards.
        store
            .with(|c| c.batch_execute("SELECT pg_sleep(0.3)"))
            .unwrap()
            .unwrap();
    }

    #[test]
    fn claims_lease_expire_and_finish() {
        let url = cluster::fresh_database();
        let store = PostgresContextStore::connect(&url).unwrap();
        let (run, node) = (FlowRunId::new(), NodeId::new());
        let long = Duration::from_secs(60);
        assert_eq!(
            store.claim(run, node, "a", long).unwrap(),
            Claim::Won { attempt: 1 }
        );
        assert!(matches!(
            store.claim(run, node, "b", long).unwrap(),
            Claim::Held { worker, .. } if worker == "a"
        ));
        // A short lease that is not renewed expires, and b takes over.
        let other = NodeId::new();
        store
            .claim(run, other, "a", Duration::from_millis(50))
            .unwrap();
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(
            store.claim(run, other, "b", long).unwrap(),
            Claim::Won { attempt: 2 }
        );
        // a renews only what it still holds; finishing is only for the holder.
        assert_eq!(store.renew(run, "a", long).unwrap(), 1);
        store.finish(run, other, "a").unwrap();
        store.finish(run, node, "a").unwrap();
        assert_eq!(
            store.claim(run, node, "b", long).unwrap(),
            Claim::Finished { worker: "a".into() }
        );
        let mut records = store.claims(run).unwrap();
        records.sort_by_key(|r| r.attempt);
        assert_eq!(records.len(), 2);
        assert!(records[0].finished && records[0].worker == "a");
        assert!(!records[1].finished && records[1].worker == "b");
        // A released claim is free at once.
        store.release(run, other, "b").unwrap();
        assert_eq!(
            store.claim(run, other, "c", long).unwrap(),
            Claim::Won { attempt: 3 }
        );
    }
}
