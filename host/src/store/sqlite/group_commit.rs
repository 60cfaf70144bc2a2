//! Group commit: concurrent writers share one transaction and one sync.
//!
//! A writer queues its write. If no commit is in progress it becomes the
//! leader: it takes the queued writes, its own and those of the threads
//! waiting behind it, runs them in one `BEGIN IMMEDIATE … COMMIT`, and
//! hands each its own result. Otherwise it waits until a leader answers
//! it, or until the commit in progress is over and it may lead the next
//! one. Waiting writers are woken as soon as their answer is there (they
//! never queue for the connection just to learn it). So a lone writer
//! commits alone with no added wait, and writers that arrive while a commit
//! waits for the disk go together in the next one.
//!
//! Each write keeps its own result: a write-once conflict fails that write
//! only (SQLite rolls back the statement, not the transaction). A write is
//! answered only after the commit that holds it returned, so `Ok` means
//! what the store's durability promises. If a batch cannot commit (an I/O
//! error, a full disk), its writes are run again one transaction each, so
//! that each caller gets the answer its own write deserves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use rusqlite::{Connection, params};

use super::{busy, is_busy, is_primary_key_violation, lock, now_millis};
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use crate::store::Provenance;

/// Most writes in one transaction.
pub(crate) const MAX_BATCH: usize = 1024;

/// One write, as the caller asked for it.
#[derive(Debug)]
pub(crate) enum WriteOp {
    /// `put_text`.
    Put {
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: JsonText,
        provenance: Option<Box<Provenance>>,
    },
    /// `put_global_text`.
    PutGlobal { key: String, value: JsonText },
    /// `upsert_global_text`.
    UpsertGlobal { key: String, value: JsonText },
}

impl WriteOp {
    /// Runs the write's one statement on `conn` (inside a transaction or
    /// on its own).
    pub(crate) fn execute(&self, conn: &Connection) -> Result<(), ContextStoreError> {
        let result = match self {
            Self::Put {
                flow_run_id,
                node_id,
                value,
                provenance: None,
            } => conn
                .prepare_cached(
                    "INSERT INTO outputs (flow_run_id, node_id, value, written_at) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    flow_run_id.as_bytes(),
                    node_id.as_bytes(),
                    value.as_str(),
                    now_millis()
                ]),
            Self::Put {
                flow_run_id,
                node_id,
                value,
                provenance: Some(p),
            } => conn
                .prepare_cached(
                    "INSERT INTO outputs (flow_run_id, node_id, value, written_at, component_hash,
                         params_hash, upstream_hash, attempt, host, started_at, ended_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    flow_run_id.as_bytes(),
                    node_id.as_bytes(),
                    value.as_str(),
                    now_millis(),
                    p.component_hash,
                    p.params_hash,
                    p.upstream_hash,
                    p.attempt,
                    p.host,
                    p.started_at,
                    p.ended_at
                ]),
            Self::PutGlobal { key, value } => conn
                .prepare_cached("INSERT INTO globals (key, value, written_at) VALUES (?1, ?2, ?3)")?
                .execute(params![key, value.as_str(), now_millis()]),
            Self::UpsertGlobal { key, value } => conn
                .prepare_cached(
                    "INSERT INTO globals (key, value, written_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, written_at = excluded.written_at",
                )?
                .execute(params![key, value.as_str(), now_millis()]),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_primary_key_violation(&e) => Err(match self {
                Self::Put {
                    flow_run_id,
                    node_id,
                    ..
                } => ContextStoreError::AlreadyExists {
                    flow_run_id: *flow_run_id,
                    node_id: *node_id,
                },
                Self::PutGlobal { key, .. } | Self::UpsertGlobal { key, .. } => {
                    ContextStoreError::GlobalAlreadyExists { key: key.clone() }
                }
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// A queued write and, once it ran, its result.
struct Request {
    op: WriteOp,
    /// The latest moment the caller waits for (its call deadline, or the
    /// store's busy deadline).
    give_up: Instant,
    /// Set when a leader took the request from the queue.
    taken: AtomicBool,
    result: Mutex<Option<Result<(), ContextStoreError>>>,
}

/// The writes waiting for a commit, and whether a leader is committing.
#[derive(Default)]
struct Queue {
    pending: Vec<Arc<Request>>,
    leading: bool,
}

/// The writer connection and the queue of writes waiting for it.
pub(crate) struct GroupCommit {
    conn: Mutex<Connection>,
    queue: Mutex<Queue>,
    /// Notified when a leader is done: its writes are answered, and the
    /// next leader may start.
    turn: Condvar,
    max_batch: usize,
}

/// Ends a leader's turn, also if the batch panicked: the next writer may
/// lead, and every waiting writer looks at its answer.
struct Turn<'a>(&'a GroupCommit);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        lock(&self.0.queue).leading = false;
        self.0.turn.notify_all();
    }
}

impl GroupCommit {
    /// Group commit over `conn`, the store's one writer connection, with
    /// at most `max_batch` writes a transaction (1: every write alone).
    pub(crate) fn new(conn: Connection, max_batch: usize) -> Self {
        Self {
            conn: Mutex::new(conn),
            queue: Mutex::new(Queue::default()),
            turn: Condvar::new(),
            max_batch: max_batch.max(1),
        }
    }

    /// The writer connection, for work outside the queue (tests, checks).
    pub(crate) fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        lock(&self.conn)
    }

    /// Runs `op` in the next commit and returns its own result once that
    /// commit is done. Waits at most until `give_up` for a database that
    /// another process holds busy.
    pub(crate) fn submit(&self, op: WriteOp, give_up: Instant) -> Result<(), ContextStoreError> {
        let request = Arc::new(Request {
            op,
            give_up,
            taken: AtomicBool::new(false),
            result: Mutex::new(None),
        });
        let mut queue = lock(&self.queue);
        queue.pending.push(request.clone());
        loop {
            if let Some(result) = lock(&request.result).take() {
                return result;
            }
            if queue.leading {
                queue = self
                    .turn
                    .wait(queue)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            if request.taken.load(Ordering::Acquire) {
                // Our request left the queue but was never answered: the
                // thread that took it failed before it could answer.
                return Err(ContextStoreError::StorageError(
                    "the write was lost by a failed writer; it may or may not be stored".into(),
                ));
            }
            // Lead this commit.
            queue.leading = true;
            let n = queue.pending.len().min(self.max_batch);
            let batch: Vec<Arc<Request>> = queue.pending.drain(..n).collect();
            drop(queue);
            for taken in &batch {
                taken.taken.store(true, Ordering::Release);
            }
            {
                let _turn = Turn(self);
                let conn = lock(&self.conn);
                run_batch(&conn, &batch);
            }
            queue = lock(&self.queue);
        }
    }
}

/// Runs a batch: expired requests are answered without running, the rest
/// in one transaction (or alone, for a batch of one).
fn run_batch(conn: &Connection, batch: &[Arc<Request>]) {
    let now = Instant::now();
    let (live, expired): (Vec<&Arc<Request>>, Vec<&Arc<Request>>) =
        batch.iter().partition(|r| r.give_up > now);
    for request in expired {
        answer(
            request,
            Err(ContextStoreError::StorageError(
                "the call's deadline passed before the write could run".into(),
            )),
        );
    }
    let Some(give_up) = live.iter().map(|r| r.give_up).max() else {
        return;
    };
    busy::wait_until(give_up, || {
        if let [single] = live.as_slice() {
            answer(single, run_alone(conn, single));
            return;
        }
        match run_together(conn, &live) {
            Ok(results) => {
                for (request, result) in live.iter().zip(results) {
                    answer(request, result);
                }
            }
            Err(error) => {
                tracing::debug!(%error, writes = live.len(), "batch failed; running its writes one by one");
                for request in &live {
                    answer(request, run_alone(conn, request));
                }
            }
        }
    });
}

fn answer(request: &Request, result: Result<(), ContextStoreError>) {
    *lock(&request.result) = Some(result);
}

/// One write in its own transaction, waiting out a busy database until the
/// request gives up.
fn run_alone(conn: &Connection, request: &Request) -> Result<(), ContextStoreError> {
    loop {
        match request.op.execute(conn) {
            Err(ContextStoreError::StorageError(ref msg))
                if msg.contains("database is locked") && Instant::now() < request.give_up =>
            {
                std::thread::sleep(busy::PAUSE);
            }
            other => return other,
        }
    }
}

/// All writes in one transaction. `Err` if the transaction as a whole
/// failed (nothing of it is committed); otherwise each write's own result.
fn run_together(
    conn: &Connection,
    batch: &[&Arc<Request>],
) -> Result<Vec<Result<(), ContextStoreError>>, String> {
    loop {
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Err(e) if is_busy(&e) && batch.iter().any(|r| Instant::now() < r.give_up) => {
                std::thread::sleep(busy::PAUSE);
            }
            Err(e) => return Err(e.to_string()),
            Ok(()) => break,
        }
    }
    let mut results = Vec::with_capacity(batch.len());
    for request in batch {
        let result = request.op.execute(conn);
        if let Err(ContextStoreError::StorageError(msg)) = &result {
            // Not a write-once conflict: the transaction may be gone.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            return Err(msg.clone());
        }
        results.push(result);
    }
    if let Err(error) = conn.execute_batch("COMMIT") {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return Err(error.to_string());
    }
    Ok(results)
}
