//! [`PostgresContextStore`]: the PostgreSQL backend, for stores shared by
//! workers on many hosts.
//!
//! The same contract as the SQLite store: write-once is the primary key of
//! each table (of N racing writers, on any number of hosts, exactly one
//! insert succeeds), values rest as `text` byte for byte (not `jsonb`, which
//! rewrites them), run and node ids as `uuid`, global keys as `bytea` (a
//! Rust string may hold NUL, which `text` cannot), `written_at` on the
//! server's clock.
//!
//! # Calls
//!
//! The store runs on the async client (`tokio-postgres`) with a pool of
//! connections, driven by a small tokio runtime of its own; its native
//! interface is [`AsyncContextStore`] and, for workers sharing runs,
//! [`Coordinator`]. The synchronous
//! [`ContextStore`] blocks on the same calls. Every call has a deadline
//! (its [`CallContext`]'s, else [`PostgresOptions::call_timeout`]): the wait
//! for a connection and the statement stop there, and a statement running
//! at the deadline is cancelled on the server. Transient faults (a dropped
//! connection, a server restart or failover) are retried with backoff
//! inside the deadline; a write-once insert whose first commit was
//! interrupted re-reads its row to learn whether it landed. Each
//! connection has TCP keepalives and a TCP user timeout, so that a dead
//! peer is noticed in seconds, and a `statement_timeout` set once when it
//! connects. See `retry` for the details.
//!
//! # Schema
//!
//! Four tables, `contextstore_meta` (application marker and schema
//! version), `contextstore_outputs`, `contextstore_globals` and
//! `contextstore_claims` (node claims, which no guest call reaches), in the
//! connection's current schema (`search_path`). [`connect`](PostgresContextStore::connect)
//! creates and migrates them under an advisory lock, so that several
//! workers starting at once migrate once;
//! [`connect_read_only`](PostgresContextStore::connect_read_only) changes
//! nothing and requires this build's schema.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio_postgres::Config;

use self::errors::{describe, naming};
use self::pool::{Manager, Pool};
use self::retry::{Effect, Fault};
use super::{AsyncContextStore, CallContext, ContextStore, Provenance, Stored};
use crate::coord::Coordinator;
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use crate::store::{Backend, StoreInfo};

mod claims;
mod errors;
mod pool;
mod retry;
mod runs;
mod schema;
mod values;

pub use schema::SCHEMA_VERSION;

/// TCP keepalive: idle time before the first probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// TCP keepalive: time between probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// TCP keepalive: unanswered probes before the connection is dropped.
const KEEPALIVE_RETRIES: u32 = 3;

/// Settings for [`PostgresContextStore::connect_with`].
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Most connections open at once (default 16).
    pub pool_size: u32,
    /// The longest a new connection may take to establish (default 10 s).
    pub connect_timeout: Duration,
    /// The deadline of a call whose [`CallContext`] has none, and of every
    /// call through the synchronous [`ContextStore`] (default 60 s).
    pub call_timeout: Duration,
    /// The server's limit on each statement (`statement_timeout`), set
    /// once per connection when it connects: it stops a statement whose
    /// caller is gone (default 60 s; `None` keeps the server's setting).
    pub statement_timeout: Option<Duration>,
    /// How long data sent on a TCP connection may stay unacknowledged
    /// before the connection is dropped (`TCP_USER_TIMEOUT`, default 10 s).
    /// With TCP keepalives (probes after 5 s idle, every 2 s, 3 of them) it
    /// bounds how long a call waits on a server that vanished.
    pub tcp_user_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(60),
            statement_timeout: Some(Duration::from_secs(60)),
            tcp_user_timeout: Duration::from_secs(10),
        }
    }
}

/// A [`ContextStore`] in a PostgreSQL database, shared by any number of
/// processes and hosts; also an [`AsyncContextStore`] and a
/// [`Coordinator`] of the workers sharing its runs. See the [module docs](self).
pub struct PostgresContextStore {
    pool: Pool,
    /// Drives every connection; `None` only while the store drops.
    runtime: Option<Runtime>,
    handle: Handle,
    /// The connection target, password left out, for error messages.
    target: String,
    options: PostgresOptions,
    read_only: bool,
    /// How many times a call was tried again after a transient fault.
    retries: AtomicU64,
}

impl std::fmt::Debug for PostgresContextStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresContextStore")
            .field("target", &self.target)
            .field("options", &self.options)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl Drop for PostgresContextStore {
    fn drop(&mut self) {
        self.pool.close();
        // Never blocks, so that a store may be dropped anywhere (also
        // inside an async task): the connections close with the runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A storage error naming `target`.
fn storage(target: &str, message: String) -> ContextStoreError {
    ContextStoreError::StorageError(format!("{target}: {message}"))
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
        Self::open(url, options, false)
    }

    /// Connects with default options for reading only; see
    /// [`connect_read_only_with`](Self::connect_read_only_with).
    pub fn connect_read_only(url: &str) -> Result<Self, ContextStoreError> {
        Self::connect_read_only_with(url, PostgresOptions::default())
    }

    /// Connects to the database named by `url` for reading only: no DDL
    /// runs and no lock is taken; the database must already hold this
    /// build's schema (a worker of this build, or `contextstore migrate`,
    /// creates it). Its sessions are read-only
    /// (`default_transaction_read_only`), and every write (also a claim)
    /// fails with a [`ContextStoreError::StorageError`] saying so.
    ///
    /// Fails as [`connect_with`](Self::connect_with) does, and when the
    /// database has no contextstore schema or another version of it.
    pub fn connect_read_only_with(
        url: &str,
        options: PostgresOptions,
    ) -> Result<Self, ContextStoreError> {
        Self::open(url, options, true)
    }

    fn open(
        url: &str,
        options: PostgresOptions,
        read_only: bool,
    ) -> Result<Self, ContextStoreError> {
        let mut config: Config = url
            .parse()
            .map_err(|e| ContextStoreError::StorageError(format!("invalid PostgreSQL URL: {e}")))?;
        configure(&mut config, &options, read_only);
        let target = describe(&config);
        let at = |e: ContextStoreError| naming(&target, e);
        let runtime = pool::runtime().map_err(at)?;
        let handle = runtime.handle().clone();
        let manager = Manager::new(config, handle.clone());
        // One connection first, outside the pool: it reports exactly why
        // it fails, and migrates (or checks the schema).
        let limit = options.connect_timeout.saturating_add(options.call_timeout);
        pool::block_on(&runtime, async {
            let first = async {
                let mut client = manager.connect().await.map_err(|f| at(fault_error(f)))?;
                if read_only {
                    schema::check(&client, &target).await
                } else {
                    schema::migrate(&mut client).await.map_err(at)
                }
            };
            match tokio::time::timeout(limit, first).await {
                Ok(done) => done,
                Err(_) => Err(storage(
                    &target,
                    format!("no answer from the database in {limit:?} while connecting"),
                )),
            }
        })?;
        let pool = Pool::builder(manager)
            .max_size(usize::try_from(options.pool_size.max(1)).unwrap_or(1))
            .build()
            .map_err(|e| storage(&target, format!("cannot make the connection pool: {e}")))?;
        tracing::debug!(%target, ?options, read_only, "connected postgres context store");
        Ok(Self {
            pool,
            runtime: Some(runtime),
            handle,
            target,
            options,
            read_only,
            retries: AtomicU64::new(0),
        })
    }

    /// The database this store is connected to, password left out.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether the store was opened with [`connect_read_only`](Self::connect_read_only).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Runs an async call to its end, blocking this thread, under the
    /// store's `call_timeout` (the calls set their own deadline).
    fn block<T: Send>(
        &self,
        call: impl Future<Output = Result<T, ContextStoreError>> + Send,
    ) -> Result<T, ContextStoreError> {
        match &self.runtime {
            Some(runtime) => pool::block_on(runtime, call),
            None => Err(storage(&self.target, "the store is closed".into())),
        }
    }
}

/// The settings every connection gets: a name, the connect timeout, TCP
/// keepalives and user timeout, `statement_timeout`, and read-only
/// sessions for a read-only store. Options given in the URL are kept.
fn configure(config: &mut Config, options: &PostgresOptions, read_only: bool) {
    config.connect_timeout(options.connect_timeout);
    if config.get_application_name().is_none() {
        config.application_name("contextstore");
    }
    config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(options.tcp_user_timeout);
    let mut settings: Vec<String> = config
        .get_options()
        .map(str::to_owned)
        .into_iter()
        .collect();
    if let Some(limit) = options.statement_timeout {
        // At least 1 ms: a statement_timeout of 0 means none.
        settings.push(format!("-c statement_timeout={}", limit.as_millis().max(1)));
    }
    if read_only {
        settings.push("-c default_transaction_read_only=on".into());
    }
    if !settings.is_empty() {
        config.options(settings.join(" "));
    }
}

/// A fault met while connecting, as the store's error.
fn fault_error(fault: Fault) -> ContextStoreError {
    match fault {
        Fault::Pg(e) => errors::error(&e),
        Fault::Store(e) => e,
    }
}

#[async_trait::async_trait]
impl AsyncContextStore for PostgresContextStore {
    async fn put(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
        provenance: Option<&Provenance>,
    ) -> Result<(), ContextStoreError> {
        let put = values::Put {
            flow_run_id,
            node_id,
            value,
            provenance,
            fence: cx.fence,
        };
        self.call(cx, Effect::Write, "put", &put, |c, a, retry| {
            Box::pin(values::put(c, a, retry))
        })
        .await
    }

    async fn get(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        self.call(
            cx,
            Effect::Read,
            "get",
            &(flow_run_id, node_id),
            |c, a, _| Box::pin(values::get(c, a)),
        )
        .await
    }

    async fn get_many(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_ids: &[NodeId],
    ) -> Result<Vec<Option<JsonText>>, ContextStoreError> {
        self.call(
            cx,
            Effect::Read,
            "get_many",
            &(flow_run_id, node_ids),
            |c, a, _| Box::pin(values::get_many(c, a)),
        )
        .await
    }

    async fn get_many_with_provenance(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_ids: &[NodeId],
    ) -> Result<Vec<Option<Stored>>, ContextStoreError> {
        self.call(
            cx,
            Effect::Read,
            "get_many_with_provenance",
            &(flow_run_id, node_ids),
            |c, a, _| Box::pin(values::get_many_with_provenance(c, a)),
        )
        .await
    }

    async fn get_globals(
        &self,
        cx: &CallContext,
        keys: &[String],
    ) -> Result<Vec<Option<JsonText>>, ContextStoreError> {
        self.call(cx, Effect::Read, "get_globals", keys, |c, a, _| {
            Box::pin(values::get_globals(c, a))
        })
        .await
    }

    async fn list_keys(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
    ) -> Result<Vec<NodeId>, ContextStoreError> {
        self.call(cx, Effect::Read, "list_keys", &flow_run_id, |c, a, _| {
            Box::pin(values::list_keys(c, a))
        })
        .await
    }

    async fn put_global(
        &self,
        cx: &CallContext,
        key: &str,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        let global = values::Global {
            key,
            value,
            fence: cx.fence,
        };
        self.call(cx, Effect::Write, "put_global", &global, |c, a, retry| {
            Box::pin(values::put_global(c, a, retry))
        })
        .await
    }

    async fn upsert_global(
        &self,
        cx: &CallContext,
        key: &str,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        let global = values::Global {
            key,
            value,
            fence: cx.fence,
        };
        self.call(
            cx,
            Effect::Write,
            "upsert_global",
            &global,
            |c, a, retry| Box::pin(values::upsert_global(c, a, retry)),
        )
        .await
    }

    async fn get_global(
        &self,
        cx: &CallContext,
        key: &str,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        self.call(cx, Effect::Read, "get_global", key, |c, k, _| {
            Box::pin(values::get_global(c, k))
        })
        .await
    }

    async fn provenance(
        &self,
        cx: &CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError> {
        self.call(
            cx,
            Effect::Read,
            "provenance",
            &(flow_run_id, node_id),
            |c, a, _| Box::pin(values::provenance(c, a)),
        )
        .await
    }

    fn runs(&self) -> Option<&dyn crate::runs::RunIndex> {
        Some(self)
    }

    fn coordinator(&self) -> Option<&dyn Coordinator> {
        Some(self)
    }
}

/// The synchronous contract: each call blocks on its async form, under the
/// store's `call_timeout`.
impl ContextStore for PostgresContextStore {
    fn put_text(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        self.block(AsyncContextStore::put(
            self,
            &CallContext::none(),
            flow_run_id,
            node_id,
            value,
            None,
        ))
    }

    fn put_text_with_provenance(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
        provenance: &Provenance,
    ) -> Result<(), ContextStoreError> {
        self.block(AsyncContextStore::put(
            self,
            &CallContext::none(),
            flow_run_id,
            node_id,
            value,
            Some(provenance),
        ))
    }

    fn provenance(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError> {
        self.block(AsyncContextStore::provenance(
            self,
            &CallContext::none(),
            flow_run_id,
            node_id,
        ))
    }

    fn get_text(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        self.block(AsyncContextStore::get(
            self,
            &CallContext::none(),
            flow_run_id,
            node_id,
        ))
    }

    fn list_keys(&self, flow_run_id: FlowRunId) -> Result<Vec<NodeId>, ContextStoreError> {
        self.block(AsyncContextStore::list_keys(
            self,
            &CallContext::none(),
            flow_run_id,
        ))
    }

    fn put_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError> {
        self.block(AsyncContextStore::put_global(
            self,
            &CallContext::none(),
            key,
            value,
        ))
    }

    fn upsert_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError> {
        self.block(AsyncContextStore::upsert_global(
            self,
            &CallContext::none(),
            key,
            value,
        ))
    }

    fn get_global_text(&self, key: &str) -> Result<Option<JsonText>, ContextStoreError> {
        self.block(AsyncContextStore::get_global(
            self,
            &CallContext::none(),
            key,
        ))
    }

    fn describe(&self) -> Result<StoreInfo, ContextStoreError> {
        let facts = self.block(self.call(
            &CallContext::none(),
            Effect::Read,
            "describe",
            &(),
            |c, _, _| Box::pin(schema::facts(c)),
        ))?;
        Ok(StoreInfo {
            backend: Backend::Postgres,
            location: self.target.clone(),
            read_only: self.read_only,
            schema_version: facts.schema_version,
            durability: facts.synchronous_commit,
            journal_mode: None,
            group_commit: false,
            engine_version: format!("PostgreSQL {}", facts.server_version),
        })
    }

    fn as_async(&self) -> Option<&dyn AsyncContextStore> {
        Some(self)
    }

    fn into_async(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn AsyncContextStore>> {
        Some(self)
    }
}

#[cfg(test)]
#[path = "../../tests/support/postgres_cluster.rs"]
mod test_cluster;

#[cfg(test)]
mod tests;
