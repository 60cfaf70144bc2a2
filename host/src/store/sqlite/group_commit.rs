//! Group commit: concurrent writers share one transaction and one sync.
//!
//! A writer queues its write. If no commit is in progress it becomes the
//! leader: it takes its own write and those queued behind it, runs them in
//! one `BEGIN IMMEDIATE … COMMIT`, and hands each its own result.
//! Otherwise it waits until a leader answers it, or until the commit in
//! progress is over and it may lead the next one. Waiting writers are
//! woken as soon as their answer is there (they never queue for the
//! connection just to learn it). So a lone writer commits alone with no
//! added wait, and writers that arrive while a commit waits for the disk go
//! together in the next one.
//!
//! Each write keeps its own result: a write-once conflict fails that write
//! only (SQLite rolls back the statement, not the transaction). A write is
//! answered only after the commit that holds it returned, so `Ok` means
//! what the store's durability promises. If a batch cannot commit (an I/O
//! error, a full disk), its writes are run again one transaction each, so
//! that each caller gets the answer its own write deserves.
//!
//! # Deadlines
//!
//! Every write carries its own give-up time (the call's deadline, capped by
//! the store's busy deadline), and no write is held past it by another:
//!
//! - A writer waits for its answer only until its give-up time. If its
//!   write is still queued then, it takes it out of the queue and fails
//!   with [`ContextStoreError::Timeout`]: the write never runs.
//! - A leader answers the writes of its batch whose give-up time passed
//!   before it began the transaction with `Timeout`, and drops them.
//! - While the batch waits for the write lock (another process holds it),
//!   the wait is bounded by the earliest give-up time in the batch: when it
//!   passes, the writes whose time it was are answered `Timeout` and
//!   dropped, and the wait goes on for the rest until the next earliest.
//! - A leader never waits past its own give-up time for others: it then
//!   puts the writes it has not run back at the head of the queue, where
//!   their own callers take them over.
//! - Once the transaction has begun, every write in it is committed or
//!   not together, and each caller is answered with that result, also if
//!   its give-up time passed meanwhile.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::ops::WriteOp;
use super::{busy, is_busy, lock};
use crate::error::ContextStoreError;

/// Most writes in one transaction.
pub(crate) const MAX_BATCH: usize = 1024;

/// How often a writer whose give-up time has passed, while its write is in
/// a leader's transaction, looks again at its answer (it is woken when the
/// answer is there: this only bounds each wait).
const RECHECK: Duration = Duration::from_millis(100);

/// Where a write is.
enum Stage {
    /// In the queue: no leader has it.
    Queued,
    /// In a leader's batch: waiting for the write lock, or committing.
    Taken,
    /// Answered; the result is taken by the writer.
    Done(Option<Result<(), ContextStoreError>>),
}

/// A queued write and where it is.
struct Request {
    op: WriteOp,
    /// The latest moment the caller waits for (its call deadline, or the
    /// store's busy deadline).
    give_up: Instant,
    /// Changed and read only with [`GroupCommit::queue`] locked (so that a
    /// writer cannot miss the notification of its answer).
    stage: Mutex<Stage>,
}

impl Request {
    fn expired(&self, now: Instant) -> bool {
        self.give_up <= now
    }
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
    /// Notified when writes are answered, and when a leader is done (the
    /// next one may start).
    turn: Condvar,
    max_batch: usize,
}

/// Ends a leader's turn, also if the batch panicked: a write of the batch
/// left unanswered (the leader failed) is answered as lost, the next
/// writer may lead, and every waiting writer looks at its answer.
struct Turn<'a> {
    group: &'a GroupCommit,
    batch: Vec<Arc<Request>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut queue = lock(&self.group.queue);
        for request in &self.batch {
            let mut stage = lock(&request.stage);
            if matches!(*stage, Stage::Taken) {
                *stage = Stage::Done(Some(Err(lost())));
            }
        }
        queue.leading = false;
        drop(queue);
        self.group.turn.notify_all();
    }
}

/// What a waiting writer does next.
enum Next {
    Return(Result<(), ContextStoreError>),
    /// Still queued at its give-up time: out of the queue, never to run.
    Expire,
    Lead,
    Wait(Duration),
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

    /// The writer connection, for work outside the queue (in-memory reads,
    /// tests, checks). A transaction left open on it is rolled back first.
    pub(crate) fn connection(&self) -> MutexGuard<'_, Connection> {
        let conn = lock(&self.conn);
        reset(&conn);
        conn
    }

    /// Runs `op` in the next commit and returns its own result once that
    /// commit is done, or [`ContextStoreError::Timeout`] if `give_up`
    /// passes before the write's transaction began (the write then never
    /// runs). See the [module docs](self).
    pub(crate) fn submit(&self, op: WriteOp, give_up: Instant) -> Result<(), ContextStoreError> {
        if give_up <= Instant::now() {
            return Err(timed_out());
        }
        let me = Arc::new(Request {
            op,
            give_up,
            stage: Mutex::new(Stage::Queued),
        });
        let mut queue = lock(&self.queue);
        queue.pending.push(Arc::clone(&me));
        loop {
            let now = Instant::now();
            let next = match &mut *lock(&me.stage) {
                Stage::Done(result) => Next::Return(result.take().unwrap_or_else(|| Err(lost()))),
                Stage::Queued if me.expired(now) => Next::Expire,
                Stage::Queued if !queue.leading => Next::Lead,
                Stage::Queued => Next::Wait(me.give_up.saturating_duration_since(now)),
                Stage::Taken if !me.expired(now) => {
                    Next::Wait(me.give_up.saturating_duration_since(now))
                }
                // Past the give-up time, in a transaction: its result comes
                // (the leader answers every write it took, or hands it back).
                Stage::Taken => Next::Wait(RECHECK),
            };
            match next {
                Next::Return(result) => return result,
                Next::Expire => {
                    queue.pending.retain(|r| !Arc::ptr_eq(r, &me));
                    return Err(timed_out());
                }
                Next::Lead => queue = self.lead(queue, &me),
                Next::Wait(time) => {
                    queue = self
                        .turn
                        .wait_timeout(queue, time)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    /// Leads one commit: takes `me` and the oldest queued writes behind it,
    /// runs them, and gives the queue back.
    fn lead<'a>(
        &'a self,
        mut queue: MutexGuard<'a, Queue>,
        me: &Arc<Request>,
    ) -> MutexGuard<'a, Queue> {
        queue.leading = true;
        let mut batch = Vec::with_capacity(queue.pending.len().min(self.max_batch));
        if let Some(at) = queue.pending.iter().position(|r| Arc::ptr_eq(r, me)) {
            batch.push(queue.pending.remove(at));
        }
        let others = queue.pending.len().min(self.max_batch - batch.len());
        batch.extend(queue.pending.drain(..others));
        for request in &batch {
            *lock(&request.stage) = Stage::Taken;
        }
        drop(queue);
        {
            let _turn = Turn {
                group: self,
                batch: batch.clone(),
            };
            let conn = lock(&self.conn);
            reset(&conn);
            Leader {
                group: self,
                conn: &conn,
                give_up: me.give_up,
            }
            .run(batch);
        }
        lock(&self.queue)
    }

    /// Answers each request with its result and wakes the writers.
    fn answer<I>(&self, answers: I)
    where
        I: IntoIterator<Item = (Arc<Request>, Result<(), ContextStoreError>)>,
    {
        {
            let _queue = lock(&self.queue);
            for (request, result) in answers {
                *lock(&request.stage) = Stage::Done(Some(result));
            }
        }
        self.turn.notify_all();
    }

    /// Puts writes that have not run back at the head of the queue, in
    /// their order, for their own callers to take over.
    fn hand_back(&self, requests: Vec<Arc<Request>>) {
        if requests.is_empty() {
            return;
        }
        tracing::debug!(
            writes = requests.len(),
            "the leader's deadline passed while waiting for the write lock; handing its batch back"
        );
        {
            let mut queue = lock(&self.queue);
            for request in &requests {
                *lock(&request.stage) = Stage::Queued;
            }
            let behind = std::mem::replace(&mut queue.pending, requests);
            queue.pending.extend(behind);
        }
        self.turn.notify_all();
    }
}

/// A leader's batch at work.
struct Leader<'a> {
    group: &'a GroupCommit,
    conn: &'a Connection,
    /// The leader's own give-up time: it waits for no one past it.
    give_up: Instant,
}

/// How a transaction attempt ended.
enum Ran {
    /// Every request in it was answered.
    Done,
    /// The leader's give-up time passed before the transaction began: these
    /// requests have not run.
    HandBack(Vec<Arc<Request>>),
    /// The transaction as a whole failed (nothing of it is committed).
    Failed(Vec<Arc<Request>>, String),
}

impl Leader<'_> {
    /// Runs a batch: in one transaction, or, if that fails, one
    /// transaction a write.
    fn run(&self, batch: Vec<Arc<Request>>) {
        let (batch, error) = match self.transaction(batch) {
            Ran::Done => return,
            Ran::HandBack(rest) => return self.group.hand_back(rest),
            Ran::Failed(batch, error) if batch.len() > 1 => (batch, error),
            Ran::Failed(batch, error) => {
                let failed = batch.into_iter().map(|r| (r, Err(storage(&error))));
                return self.group.answer(failed);
            }
        };
        tracing::debug!(%error, writes = batch.len(), "batch failed; running its writes one by one");
        let mut rest = batch.into_iter();
        while let Some(request) = rest.next() {
            match self.transaction(vec![request]) {
                Ran::Done => {}
                Ran::HandBack(back) => {
                    return self.group.hand_back(back.into_iter().chain(rest).collect());
                }
                Ran::Failed(one, error) => {
                    let failed = one.into_iter().map(|r| (r, Err(storage(&error))));
                    self.group.answer(failed);
                }
            }
        }
    }

    /// Answers the requests whose give-up time is past with `Timeout`, and
    /// returns the others.
    fn expire(&self, batch: Vec<Arc<Request>>, now: Instant) -> Vec<Arc<Request>> {
        let (expired, live): (Vec<_>, Vec<_>) = batch.into_iter().partition(|r| r.expired(now));
        if !expired.is_empty() {
            self.group
                .answer(expired.into_iter().map(|r| (r, Err(timed_out()))));
        }
        live
    }

    /// Runs `batch` in one transaction. Waits for the write lock at most
    /// until the earliest give-up time among the batch and the leader,
    /// again and again as expired requests leave the batch.
    fn transaction(&self, mut batch: Vec<Arc<Request>>) -> Ran {
        #[cfg(feature = "metrics")]
        let began = Instant::now();
        let bound = loop {
            let now = Instant::now();
            batch = self.expire(batch, now);
            if batch.is_empty() {
                return Ran::Done;
            }
            if self.give_up <= now {
                return Ran::HandBack(batch);
            }
            let bound = batch
                .iter()
                .map(|r| r.give_up)
                .fold(self.give_up, Instant::min);
            match busy::wait_until(bound, || self.conn.execute_batch("BEGIN IMMEDIATE")) {
                Ok(()) => break bound,
                Err(e) if is_busy(&e) => busy::pause_until(bound),
                Err(e) => return Ran::Failed(batch, e.to_string()),
            }
        };
        // A batch of removals alone commits without waiting for the disk:
        // the next commit that does makes it durable with itself, and one
        // lost to a power cut is removed again by the next gc.
        let _lazy = batch
            .iter()
            .all(|r| r.op.may_skip_sync())
            .then(|| LazyCommit::new(self.conn));
        // In the transaction: from here on, each request gets its result.
        busy::wait_until(bound, || {
            let mut results = Vec::with_capacity(batch.len());
            for request in &batch {
                let result = request.op.execute(self.conn);
                if let Err(ContextStoreError::StorageError(msg)) = &result {
                    // Not a write-once conflict: the transaction may be gone.
                    let msg = msg.clone();
                    rollback(self.conn);
                    return Ran::Failed(batch, msg);
                }
                results.push(result);
            }
            if let Err(error) = self.conn.execute_batch("COMMIT") {
                rollback(self.conn);
                return Ran::Failed(batch, error.to_string());
            }
            #[cfg(feature = "metrics")]
            {
                crate::metrics::record_commit(crate::metrics::Backend::Sqlite, began.elapsed());
                crate::metrics::record_batch(batch.len());
            }
            self.group.answer(batch.into_iter().zip(results));
            Ran::Done
        })
    }
}

/// `synchronous=NORMAL` on the writer connection while it lives, then
/// its setting before. Set inside a transaction, it applies to its commit.
struct LazyCommit<'a> {
    conn: &'a Connection,
    before: Option<i64>,
}

impl<'a> LazyCommit<'a> {
    fn new(conn: &'a Connection) -> Self {
        let before = conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .ok();
        if before.is_some_and(|level: i64| level > 1) {
            let _ = conn.pragma_update(None, "synchronous", 1);
        }
        Self { conn, before }
    }
}

impl Drop for LazyCommit<'_> {
    fn drop(&mut self) {
        if let Some(level) = self.before.filter(|level| *level > 1) {
            let _ = self.conn.pragma_update(None, "synchronous", level);
        }
    }
}

/// Rolls back a transaction left open on the writer connection (a panic
/// between `BEGIN` and `COMMIT`), so that no later write lands in it, is
/// answered `Ok`, and is then lost when the transaction never commits.
fn reset(conn: &Connection) {
    if conn.is_autocommit() {
        return;
    }
    tracing::warn!("the writer connection was left inside a transaction; rolling it back");
    if let Err(error) = conn.execute_batch("ROLLBACK") {
        tracing::error!(%error, "could not roll back the transaction left open on the writer connection");
    }
}

/// Rolls back after a failed statement or commit, if SQLite has not.
fn rollback(conn: &Connection) {
    if conn.is_autocommit() {
        return;
    }
    if let Err(error) = conn.execute_batch("ROLLBACK") {
        tracing::warn!(%error, "rollback after a failed batch failed");
    }
}

/// The answer of a write whose give-up time passed before it ran.
fn timed_out() -> ContextStoreError {
    ContextStoreError::Timeout(
        "the write did not start by its deadline (the database was locked by another \
         connection, or busy with other writes); it was not applied"
            .into(),
    )
}

/// The answer of a write whose leader failed (panicked) before answering.
fn lost() -> ContextStoreError {
    ContextStoreError::StorageError(
        "the write was lost by a failed writer; it may or may not be stored".into(),
    )
}

fn storage(error: &str) -> ContextStoreError {
    ContextStoreError::StorageError(error.to_owned())
}

#[cfg(test)]
mod tests;
