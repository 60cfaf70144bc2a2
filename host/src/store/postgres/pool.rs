//! Connections: the runtime that drives them, the pool's manager, and a
//! connection's cache of prepared statements.
//!
//! Every connection is made, and its driver task runs, on a small tokio
//! runtime the store owns: a connection never belongs to (and never dies
//! with) the runtime of whoever called the store. Checking a connection out
//! of the pool costs no round trip: a connection is reused unless its
//! client is closed, and a call that finds it broken anyway drops it and
//! tries again on another (see `retry`).

use std::collections::HashMap;
use std::future::Future;

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::retry::Fault;
use crate::error::ContextStoreError;

/// Threads of the store's runtime: they only move bytes between sockets
/// and callers, and time calls out.
const RUNTIME_THREADS: usize = 2;

/// The store's own runtime.
pub(super) fn runtime() -> Result<Runtime, ContextStoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .thread_name("contextstore-pg")
        .enable_all()
        .build()
        .map_err(|e| {
            ContextStoreError::StorageError(format!("cannot start the database runtime: {e}"))
        })
}

/// Runs `work` to its end on `runtime`, blocking this thread. A thread
/// that is inside a tokio runtime (where `block_on` is not allowed) waits
/// on a scoped helper thread instead.
pub(super) fn block_on<T: Send>(
    runtime: &Runtime,
    work: impl Future<Output = Result<T, ContextStoreError>> + Send,
) -> Result<T, ContextStoreError> {
    if Handle::try_current().is_err() {
        return runtime.block_on(work);
    }
    std::thread::scope(|scope| {
        match std::thread::Builder::new()
            .name("contextstore-pg-call".into())
            .spawn_scoped(scope, || runtime.block_on(work))
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

/// One pooled connection: its client, and the statements prepared on it.
pub(super) struct Conn {
    /// The connection's client (its driver task runs on the store's runtime).
    pub(super) client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    /// `sql` prepared on this connection, once per connection.
    pub(super) async fn prepare(
        &mut self,
        sql: &'static str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

/// The pool of a store.
pub(super) type Pool = deadpool::managed::Pool<Manager>;

/// Makes the pool's connections on the store's runtime.
pub(super) struct Manager {
    config: Config,
    runtime: Handle,
}

impl Manager {
    /// A manager connecting with `config`, on `runtime`.
    pub(super) fn new(config: Config, runtime: Handle) -> Self {
        Self { config, runtime }
    }

    /// Connects, and spawns the connection's driver on the store's runtime.
    pub(super) async fn connect(&self) -> Result<Client, Fault> {
        let config = self.config.clone();
        let task = self.runtime.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgres connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        match task.await {
            Ok(connected) => connected.map_err(Fault::Pg),
            Err(e) => Err(Fault::Store(ContextStoreError::StorageError(format!(
                "the connection task failed: {e}"
            )))),
        }
    }
}

impl deadpool::managed::Manager for Manager {
    type Type = Conn;
    type Error = Fault;

    async fn create(&self) -> Result<Conn, Fault> {
        Ok(Conn {
            client: self.connect().await?,
            statements: HashMap::new(),
        })
    }

    async fn recycle(&self, conn: &mut Conn, _: &Metrics) -> RecycleResult<Fault> {
        if conn.client.is_closed() {
            Err(RecycleError::message("the connection is closed"))
        } else {
            Ok(())
        }
    }
}
