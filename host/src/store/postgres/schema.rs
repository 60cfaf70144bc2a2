//! The schema: its migrations, run at connect under an advisory lock, and
//! the check a read-only store makes instead.

use tokio_postgres::{Client, Row};

use super::errors::{error, naming};
use super::pool::Conn;
use super::retry::Fault;
use crate::error::ContextStoreError;

/// The application marker in `contextstore_meta`.
const APPLICATION: &str = "contextstore";

/// The advisory lock key that serialises migrations ("ctxs").
const MIGRATION_LOCK: i64 = 0x6374_7873;

/// Migrations in order; migration `i` takes the schema from version `i`
/// to `i + 1`. Append only: a released migration never changes.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 3: fencing. A claim belongs to a worker's incarnation (NULL for the
    // claims of builds before it) and carries a fencing token that grows
    // with every win; the claims made so far have had `attempt` wins.
    "ALTER TABLE contextstore_claims
        ADD COLUMN incarnation uuid,
        ADD COLUMN token       bigint NOT NULL DEFAULT 0;
    UPDATE contextstore_claims SET token = attempt;",
    // 4: the runs index (`crate::runs`): one row per run recorded by a
    // worker, one per worker (incarnation) on it. Times are Unix
    // milliseconds on the database's clock; a worker's `outcome` is NULL
    // until it ends; `removing` is set once gc has begun removing the run.
    "CREATE TABLE contextstore_runs (
        flow_run_id uuid NOT NULL PRIMARY KEY,
        flow_name   text NOT NULL,
        flow_hash   text NOT NULL,
        graph       text NOT NULL,
        nodes       integer NOT NULL,
        created_at  bigint NOT NULL,
        removing    boolean NOT NULL DEFAULT false
    );
    CREATE TABLE contextstore_run_workers (
        flow_run_id uuid NOT NULL,
        incarnation uuid NOT NULL,
        worker      text NOT NULL,
        started_at  bigint NOT NULL,
        seen_at     bigint NOT NULL,
        lease_ms    bigint NOT NULL,
        ended_at    bigint,
        outcome     text,
        PRIMARY KEY (flow_run_id, incarnation)
    );",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Creates or migrates the schema in one transaction, under an advisory
/// lock; refuses a database of another application or of a newer build.
pub(super) async fn migrate(client: &mut Client) -> Result<(), ContextStoreError> {
    let encoding: String = client
        .query_one("SHOW server_encoding", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| error(&e))?;
    if !encoding.eq_ignore_ascii_case("UTF8") {
        return Err(ContextStoreError::StorageError(format!(
            "the database's encoding is {encoding}, not UTF8 (create it with ENCODING 'UTF8')"
        )));
    }
    let tx = client.transaction().await.map_err(|e| error(&e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| error(&e))?;
    let has_meta = tx.query(HAS_META, &[]).await.map_err(|e| error(&e))?;
    let version = if has_meta_table(&has_meta)? {
        let rows = tx.query(META, &[]).await.map_err(|e| error(&e))?;
        version_in(&rows)?
    } else {
        tx.batch_execute(
            "CREATE TABLE contextstore_meta (key text PRIMARY KEY, value text NOT NULL)",
        )
        .await
        .map_err(|e| error(&e))?;
        tx.execute(
                "INSERT INTO contextstore_meta (key, value) VALUES ('application', $1), ('schema_version', '0')",
                &[&APPLICATION],
            )
            .await
            .map_err(|e| error(&e))?;
        0
    };
    if version > SCHEMA_VERSION {
        return Err(newer(version));
    }
    let from = usize::try_from(version).unwrap_or(0);
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        tracing::info!(from = step, to = step + 1, "migrating contextstore schema");
        tx.batch_execute(sql).await.map_err(|e| error(&e))?;
    }
    if from < MIGRATIONS.len() {
        tx.execute(
            "UPDATE contextstore_meta SET value = $1 WHERE key = 'schema_version'",
            &[&SCHEMA_VERSION.to_string()],
        )
        .await
        .map_err(|e| error(&e))?;
    }
    tx.commit().await.map_err(|e| error(&e))
}

/// Checks, without changing anything, that the database holds this
/// build's schema: for a read-only store. Errors name `target`.
pub(super) async fn check(client: &Client, target: &str) -> Result<(), ContextStoreError> {
    let at = |e: ContextStoreError| naming(target, e);
    let has_meta = client
        .query(HAS_META, &[])
        .await
        .map_err(|e| at(error(&e)))?;
    if !has_meta_table(&has_meta).map_err(at)? {
        return Err(ContextStoreError::StorageError(format!(
            "no contextstore schema in {target}; start a worker or run `contextstore migrate` first"
        )));
    }
    let rows = client.query(META, &[]).await.map_err(|e| at(error(&e)))?;
    let version = version_in(&rows).map_err(at)?;
    if version > SCHEMA_VERSION {
        return Err(at(newer(version)));
    }
    if version < SCHEMA_VERSION {
        return Err(ContextStoreError::StorageError(format!(
            "the contextstore schema in {target} is version {version} and this build reads \
             version {SCHEMA_VERSION}; start a worker \
             of this build or run `contextstore migrate` first"
        )));
    }
    Ok(())
}

/// Whether the marker table exists, as one row of one boolean.
const HAS_META: &str = "SELECT to_regclass('contextstore_meta') IS NOT NULL";

/// The marker table's rows.
const META: &str = "SELECT key, value FROM contextstore_meta";

/// Whether [`HAS_META`] found the marker table.
fn has_meta_table(rows: &[Row]) -> Result<bool, ContextStoreError> {
    match rows.first() {
        Some(row) => row.try_get::<_, bool>(0).map_err(|e| error(&e)),
        None => Ok(false),
    }
}

/// The schema version the marker rows record, after checking that they
/// mark a contextstore database.
fn version_in(rows: &[Row]) -> Result<i64, ContextStoreError> {
    let mut application = None;
    let mut version = None;
    for row in rows {
        let key: String = row.try_get(0).map_err(|e| not_ours(&e.to_string()))?;
        let value: String = row.try_get(1).map_err(|e| not_ours(&e.to_string()))?;
        match key.as_str() {
            "application" => application = Some(value),
            "schema_version" => version = Some(value),
            _ => {}
        }
    }
    match application {
        Some(app) if app == APPLICATION => {}
        Some(app) => {
            return Err(not_ours(&format!(
                "contextstore_meta names application {app:?}"
            )));
        }
        None => return Err(not_ours("contextstore_meta has no application marker")),
    }
    let version = version.unwrap_or_default();
    version
        .parse::<i64>()
        .map_err(|_| not_ours(&format!("schema version {version:?}")))
}

fn not_ours(why: &str) -> ContextStoreError {
    ContextStoreError::StorageError(format!("not a contextstore database ({why})"))
}

fn newer(version: i64) -> ContextStoreError {
    ContextStoreError::StorageError(format!(
        "database schema version {version} is newer than this build supports ({SCHEMA_VERSION})"
    ))
}

/// What [`facts`] reads of the database a store is connected to.
pub(super) struct Facts {
    /// The schema version its marker records.
    pub(super) schema_version: i64,
    /// The session's `synchronous_commit`.
    pub(super) synchronous_commit: String,
    /// The server's `server_version`.
    pub(super) server_version: String,
}

/// Reads the schema version, `synchronous_commit` and the server's version:
/// for [`describe`](crate::ContextStore::describe).
pub(super) async fn facts(c: &mut Conn) -> Result<Facts, Fault> {
    let rows = c.client.query(META, &[]).await?;
    let schema_version = version_in(&rows)?;
    let row = c
        .client
        .query_one(
            "SELECT current_setting('synchronous_commit'), current_setting('server_version')",
            &[],
        )
        .await?;
    Ok(Facts {
        schema_version,
        synchronous_commit: row.try_get(0)?,
        server_version: row.try_get(1)?,
    })
}
