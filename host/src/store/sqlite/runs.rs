//! The runs index of an SQLite store ([`RunIndex`]): the `runs` and
//! `run_workers` tables, read with the outputs and the journal in one read
//! transaction; records and removals go through group commit like every
//! other write, so a removal batch shares (and holds) one commit.
//!
//! Times are this process's clock: an SQLite file has one host.

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::ops::WriteOp;
use super::{SqliteContextStore, lock};
use crate::error::ContextStoreError;
use crate::id::FlowRunId;
use crate::json::JsonText;
use crate::runs::{
    Facts, RemovedBatch, RunFacts, RunIndex, RunRecord, Select, WorkerOutcome, WorkerRow,
    WorkerStatus, cancel_key, cancelled_at, journal_entry, journal_range,
};
use crate::store::CallContext;
use crate::store::provenance::unix_millis_now as now_millis;

/// A worker's record, as one write.
#[derive(Debug)]
pub(crate) struct RecordOp {
    run: FlowRunId,
    flow_name: String,
    flow_hash: String,
    graph: JsonText,
    nodes: u32,
    incarnation: uuid::Uuid,
    worker: String,
    lease_ms: i64,
    outcome: Option<WorkerOutcome>,
}

const RECORD_RUN: &str =
    "INSERT INTO runs (flow_run_id, flow_name, flow_hash, graph, nodes, created_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (flow_run_id) DO UPDATE
        SET flow_name = excluded.flow_name, flow_hash = excluded.flow_hash,
            graph = excluded.graph, nodes = excluded.nodes, removing = 0
      WHERE runs.flow_hash IS NOT excluded.flow_hash OR runs.nodes IS NOT excluded.nodes
         OR runs.flow_name IS NOT excluded.flow_name OR runs.removing <> 0";

/// A worker's row: made at its first record; every later one moves
/// `seen_at`, and the first that ends it sets `ended_at` and `outcome`
/// for good.
const RECORD_WORKER: &str = "INSERT INTO run_workers
        (flow_run_id, incarnation, worker, started_at, seen_at, lease_ms, ended_at, outcome)
     VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7)
     ON CONFLICT (flow_run_id, incarnation) DO UPDATE
        SET seen_at = excluded.seen_at, lease_ms = excluded.lease_ms,
            ended_at = coalesce(run_workers.ended_at, excluded.ended_at),
            outcome = coalesce(run_workers.outcome, excluded.outcome)";

impl RecordOp {
    pub(crate) fn execute(&self, conn: &Connection) -> rusqlite::Result<()> {
        let now = now_millis();
        conn.prepare_cached(RECORD_RUN)?.execute(params![
            self.run.as_bytes(),
            self.flow_name,
            self.flow_hash,
            self.graph.as_str(),
            self.nodes,
            now
        ])?;
        let ended_at = self.outcome.map(|_| now);
        conn.prepare_cached(RECORD_WORKER)?.execute(params![
            self.run.as_bytes(),
            self.incarnation.as_bytes(),
            self.worker,
            now,
            self.lease_ms,
            ended_at,
            self.outcome.map(WorkerOutcome::as_str)
        ])?;
        Ok(())
    }
}

/// One removal batch, as one write; its answer is left in `out` by the
/// execution that committed (a batch that is run again overwrites it).
#[derive(Debug)]
pub(crate) struct RemoveOp {
    runs: Vec<FlowRunId>,
    max_rows: usize,
    out: Arc<Mutex<RemovedBatch>>,
}

impl RemoveOp {
    pub(crate) fn execute(&self, conn: &Connection) -> rusqlite::Result<()> {
        let now = now_millis();
        let mut batch = RemovedBatch::default();
        let mut left = i64::try_from(self.max_rows).unwrap_or(i64::MAX);
        for run in &self.runs {
            if left <= 0 {
                break;
            }
            let id = run.as_bytes();
            let live = conn
                .prepare_cached(
                    "SELECT 1 FROM run_workers WHERE flow_run_id = ?1 AND ended_at IS NULL
                       AND seen_at + lease_ms > ?2 LIMIT 1",
                )?
                .query_row(params![id, now], |_| Ok(()))
                .optional()?
                .is_some();
            if live {
                batch.live.push(*run);
                continue;
            }
            let outputs = conn
                .prepare_cached(
                    "DELETE FROM outputs WHERE rowid IN
                        (SELECT rowid FROM outputs WHERE flow_run_id = ?1 LIMIT ?2)",
                )?
                .execute(params![id, left])?;
            batch.removed.outputs += outputs as u64;
            left -= outputs as i64;
            let (from, to) = journal_range(*run);
            let journal = conn
                .prepare_cached(
                    "DELETE FROM globals WHERE rowid IN
                        (SELECT rowid FROM globals WHERE key >= ?1 AND key < ?2 LIMIT ?3)",
                )?
                .execute(params![from, to, left.max(0)])?;
            batch.removed.journal += journal as u64;
            left -= journal as i64;
            let unfinished = left <= 0
                && conn
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM outputs WHERE flow_run_id = ?1)
                             OR EXISTS (SELECT 1 FROM globals WHERE key >= ?2 AND key < ?3)",
                    )?
                    .query_row(params![id, from, to], |row| row.get::<_, bool>(0))?;
            if unfinished {
                // Out of rows part way through the run: marked, so that
                // listings leave it out and the next gc finishes it.
                conn.prepare_cached("UPDATE runs SET removing = 1 WHERE flow_run_id = ?1")?
                    .execute(params![id])?;
                break;
            }
            // Its outputs and journal are gone: its cancellation mark, worker
            // records and record go with them (a handful of rows, outside
            // the budget, so that a run never stays half removed for them).
            let mark = conn
                .prepare_cached("DELETE FROM globals WHERE key = ?1")?
                .execute(params![cancel_key(*run)])?;
            batch.removed.journal += mark as u64;
            let workers = conn
                .prepare_cached("DELETE FROM run_workers WHERE flow_run_id = ?1")?
                .execute(params![id])?;
            batch.removed.workers += workers as u64;
            let runs = conn
                .prepare_cached("DELETE FROM runs WHERE flow_run_id = ?1")?
                .execute(params![id])?;
            batch.removed.runs += runs as u64;
            left -= (mark + workers + runs) as i64;
            if runs == 0 {
                batch.missing.push(*run);
            } else {
                batch.gone.push(*run);
            }
        }
        *lock(&self.out) = batch;
        Ok(())
    }
}

/// Reads the facts `select` names on `conn`, in one read transaction.
fn read_facts(conn: &Connection, select: Select) -> rusqlite::Result<Facts> {
    let tx = conn.unchecked_transaction()?;
    let now = now_millis();
    let mut runs = Vec::new();
    {
        let mut select_runs = match select {
            Select::All => tx.prepare_cached(
                "SELECT flow_run_id, flow_name, flow_hash, graph, nodes, created_at, removing
                   FROM runs",
            )?,
            Select::One(_) => tx.prepare_cached(
                "SELECT flow_run_id, flow_name, flow_hash, graph, nodes, created_at, removing
                   FROM runs WHERE flow_run_id = ?1",
            )?,
        };
        let one = match select {
            Select::One(run) => Some(run.as_bytes().to_vec()),
            Select::All => None,
        };
        let mut rows = match &one {
            Some(id) => select_runs.query(params![id])?,
            None => select_runs.query([])?,
        };
        while let Some(row) = rows.next()? {
            let id: [u8; 16] = row.get(0)?;
            let run = FlowRunId::from_uuid(uuid::Uuid::from_bytes(id));
            let mut facts = RunFacts::recorded(
                run,
                row.get(1)?,
                row.get(2)?,
                JsonText::from_stored(row.get(3)?),
                row.get(4)?,
                row.get(5)?,
            );
            facts.removing = row.get::<_, i64>(6)? != 0;
            runs.push(facts);
        }
    }
    let mut workers = tx.prepare_cached(
        "SELECT incarnation, worker, started_at, seen_at, lease_ms, ended_at, outcome
           FROM run_workers WHERE flow_run_id = ?1",
    )?;
    let mut outputs =
        tx.prepare_cached("SELECT count(*), max(written_at) FROM outputs WHERE flow_run_id = ?1")?;
    let mut journal =
        tx.prepare_cached("SELECT key, value FROM globals WHERE key >= ?1 AND key < ?2")?;
    let mut has_output =
        tx.prepare_cached("SELECT 1 FROM outputs WHERE flow_run_id = ?1 AND node_id = ?2")?;
    let mut mark = tx.prepare_cached("SELECT value FROM globals WHERE key = ?1")?;
    for facts in &mut runs {
        let id = facts.run.as_bytes();
        let mut rows = workers.query(params![id])?;
        while let Some(row) = rows.next()? {
            let incarnation: [u8; 16] = row.get(0)?;
            let outcome: Option<String> = row.get(6)?;
            facts.workers.push(WorkerRow {
                name: row.get(1)?,
                incarnation: uuid::Uuid::from_bytes(incarnation),
                started_at: row.get(2)?,
                seen_at: row.get(3)?,
                lease_ms: row.get(4)?,
                ended_at: row.get(5)?,
                outcome: outcome.as_deref().and_then(WorkerOutcome::parse),
            });
        }
        let (count, last): (i64, Option<i64>) =
            outputs.query_row(params![id], |row| Ok((row.get(0)?, row.get(1)?)))?;
        facts.outputs = u32::try_from(count).unwrap_or(u32::MAX);
        facts.last_output_at = last;
        let (from, to) = journal_range(facts.run);
        let mut rows = journal.query(params![from, to])?;
        while let Some(row) = rows.next()? {
            let key: String = row.get(0)?;
            let value: String = row.get(1)?;
            let Some((node, attempt, retrying)) = journal_entry(&key[from.len()..], &value) else {
                continue;
            };
            facts.failed_attempts = facts.failed_attempts.saturating_add(attempt);
            let done = has_output
                .query_row(params![id, node.as_bytes()], |_| Ok(()))
                .optional()?
                .is_some();
            match (done, retrying) {
                (true, _) => {}
                (false, true) => facts.retrying_nodes += 1,
                (false, false) => facts.failed_nodes += 1,
            }
        }
        let cancel: Option<String> = mark
            .query_row(params![cancel_key(facts.run)], |row| row.get(0))
            .optional()?;
        facts.cancelled_at = cancel.as_deref().and_then(cancelled_at);
    }
    drop((workers, outputs, journal, has_output, mark));
    tx.commit()?;
    Ok(Facts { now, runs })
}

impl SqliteContextStore {
    /// Copies the write-ahead log back into the database file (a passive
    /// checkpoint) from a connection of gc's own, after each removal
    /// batch, on a blocking thread. A passive checkpoint never takes the
    /// write lock, so flows keep writing meanwhile; and the pages a removal
    /// frees are copied back here, during gc's pause, rather than by the
    /// automatic checkpoint that a flow's commit would otherwise run once
    /// the log grew long (measured: that checkpoint was most of what gc
    /// added to a flow's p99 write latency). Best effort: a failure is
    /// logged, and the automatic checkpoint still runs.
    async fn copy_back_log(&self) {
        let Some(path) = self.readers.as_ref().map(|r| r.path.clone()) else {
            return;
        };
        let checkpointer = Arc::clone(&self.checkpointer);
        let work = move || {
            let mut conn = lock(&checkpointer);
            if conn.is_none() {
                let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
                *conn = Connection::open_with_flags(&path, flags).ok();
            }
            let Some(conn) = conn.as_ref() else {
                return;
            };
            if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::debug!(%error, "gc's checkpoint did not run");
            }
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = tokio::task::spawn_blocking(work).await;
        } else {
            work();
        }
    }
}

#[async_trait::async_trait]
impl RunIndex for SqliteContextStore {
    async fn record(
        &self,
        cx: &CallContext,
        record: &RunRecord<'_>,
        status: WorkerStatus,
    ) -> Result<(), ContextStoreError> {
        let op = RecordOp {
            run: record.run,
            flow_name: record.flow_name.to_owned(),
            flow_hash: record.flow_hash.to_owned(),
            graph: record.graph.clone(),
            nodes: record.nodes,
            incarnation: record.worker.incarnation,
            worker: record.worker.name.clone(),
            lease_ms: crate::runs::millis(record.lease),
            outcome: status.outcome(),
        };
        self.write_under(cx, WriteOp::Record(Box::new(op))).await
    }

    async fn facts(&self, cx: &CallContext, select: Select) -> Result<Facts, ContextStoreError> {
        if cx.expired() {
            return Err(ContextStoreError::Timeout(
                "the call's deadline passed before the read started".into(),
            ));
        }
        let give_up = cx.give_up(self.options.busy_deadline);
        self.read(give_up, |conn| read_facts(conn, select))
    }

    async fn remove(
        &self,
        cx: &CallContext,
        runs: &[FlowRunId],
        max_rows: usize,
    ) -> Result<RemovedBatch, ContextStoreError> {
        let out = Arc::new(Mutex::new(RemovedBatch::default()));
        let op = RemoveOp {
            runs: runs.to_vec(),
            max_rows,
            out: Arc::clone(&out),
        };
        self.write_under(cx, WriteOp::Remove(Box::new(op))).await?;
        let batch = std::mem::take(&mut *lock(&out));
        self.copy_back_log().await;
        Ok(batch)
    }

    /// A batch shares the one writer with every flow's writes: small.
    fn batch_rows(&self) -> usize {
        32
    }
}
