//! The runs index of a PostgreSQL store ([`RunIndex`]):
//! `contextstore_runs` and `contextstore_run_workers`, read with the
//! outputs, the journal and the claims in one repeatable-read transaction.
//! Times are Unix milliseconds on the database's clock, which every worker
//! shares, so liveness never depends on a worker's own clock.
//!
//! A removal batch locks the records of its runs (`FOR UPDATE`) before it
//! looks for live workers; a worker's record takes the same row lock. So a
//! worker that starts on a run while it is being removed records itself
//! either before the batch (and the batch leaves the run alone) or after
//! it (and then reads what is left).

use std::collections::{HashMap, HashSet};

use tokio_postgres::Row;
use uuid::Uuid;

use super::PostgresContextStore;
use super::pool::Conn;
use super::retry::{Effect, Fault};
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use crate::runs::{
    CANCEL_PREFIX, Facts, JOURNAL_PREFIX, RemovedBatch, RunFacts, RunIndex, RunRecord, Select,
    WorkerOutcome, WorkerRow, WorkerStatus, cancel_key, cancelled_at, journal_entry, journal_range,
    millis,
};
use crate::store::CallContext;

/// The database's time now, in Unix milliseconds.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// A worker's record: the run's (made if missing, brought up to the
/// worker's flow) and the worker's own, in one statement.
const RECORD: &str =
    "WITH t AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now),
     r AS (
        INSERT INTO contextstore_runs AS r
            (flow_run_id, flow_name, flow_hash, graph, nodes, created_at)
        SELECT $1, $2, $3, $4, $5, t.now FROM t
        ON CONFLICT (flow_run_id) DO UPDATE
           SET flow_name = excluded.flow_name, flow_hash = excluded.flow_hash,
               graph = excluded.graph, nodes = excluded.nodes, removing = false
         WHERE r.flow_hash <> excluded.flow_hash OR r.nodes <> excluded.nodes
            OR r.flow_name <> excluded.flow_name OR r.removing
        RETURNING 1
     )
     INSERT INTO contextstore_run_workers AS w
        (flow_run_id, incarnation, worker, started_at, seen_at, lease_ms, ended_at, outcome)
     SELECT $1, $6, $7, t.now, t.now, $8,
            CASE WHEN $9::text IS NULL THEN NULL ELSE t.now END, $9::text FROM t
     ON CONFLICT (flow_run_id, incarnation) DO UPDATE
        SET seen_at = excluded.seen_at, lease_ms = excluded.lease_ms,
            ended_at = coalesce(w.ended_at, excluded.ended_at),
            outcome = coalesce(w.outcome, excluded.outcome)";

struct Record {
    run: Uuid,
    flow_name: String,
    flow_hash: String,
    graph: String,
    nodes: i32,
    incarnation: Uuid,
    worker: String,
    lease_ms: i64,
    outcome: Option<&'static str>,
}

async fn record_worker(c: &mut Conn, r: &Record) -> Result<(), Fault> {
    let statement = c.prepare(RECORD).await?;
    c.client
        .execute(
            &statement,
            &[
                &r.run,
                &r.flow_name,
                &r.flow_hash,
                &r.graph,
                &r.nodes,
                &r.incarnation,
                &r.worker,
                &r.lease_ms,
                &r.outcome,
            ],
        )
        .await?;
    Ok(())
}

/// The keys from `prefix` (inclusive) to the key after every key that
/// starts with it, for a range scan over `bytea` keys.
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let from = prefix.as_bytes().to_vec();
    let mut to = from.clone();
    if let Some(last) = to.last_mut() {
        *last += 1;
    }
    (from, to)
}

fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn run_facts(row: &Row) -> Result<RunFacts, Fault> {
    let mut facts = RunFacts::recorded(
        FlowRunId::from_uuid(row.try_get(0)?),
        row.try_get(1)?,
        row.try_get(2)?,
        JsonText::from_stored(row.try_get(3)?),
        u32::try_from(row.try_get::<_, i32>(4)?).unwrap_or(0),
        row.try_get(5)?,
    );
    facts.removing = row.try_get(6)?;
    Ok(facts)
}

/// The globals whose keys are from `from` (inclusive) to `to`
/// (exclusive), with keys as text (a key that is not UTF-8 is none of
/// the index's).
async fn globals_between(
    tx: &tokio_postgres::Transaction<'_>,
    from: &[u8],
    to: &[u8],
) -> Result<Vec<(String, String)>, Fault> {
    let rows = tx
        .query(
            "SELECT key, value FROM contextstore_globals WHERE key >= $1 AND key < $2",
            &[&from, &to],
        )
        .await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in rows {
        if let Ok(key) = String::from_utf8(row.try_get(0)?) {
            found.push((key, row.try_get(1)?));
        }
    }
    Ok(found)
}

async fn facts(c: &mut Conn, select: &Select) -> Result<Facts, Fault> {
    let tx = c
        .client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let now: i64 = tx
        .query_one(&format!("SELECT {NOW_MS}"), &[])
        .await?
        .try_get(0)?;
    let rows = match select {
        Select::All => {
            tx.query(
                "SELECT flow_run_id, flow_name, flow_hash, graph, nodes, created_at, removing
                   FROM contextstore_runs",
                &[],
            )
            .await?
        }
        Select::One(run) => {
            tx.query(
                "SELECT flow_run_id, flow_name, flow_hash, graph, nodes, created_at, removing
                   FROM contextstore_runs WHERE flow_run_id = $1",
                &[run.as_uuid()],
            )
            .await?
        }
    };
    let mut runs = Vec::with_capacity(rows.len());
    for row in &rows {
        runs.push(run_facts(row)?);
    }
    let ids: Vec<Uuid> = runs.iter().map(|r| *r.run.as_uuid()).collect();
    let at: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for row in tx
        .query(
            "SELECT flow_run_id, incarnation, worker, started_at, seen_at, lease_ms, ended_at, outcome
               FROM contextstore_run_workers WHERE flow_run_id = ANY($1)",
            &[&ids],
        )
        .await?
    {
        let Some(&i) = at.get(&row.try_get::<_, Uuid>(0)?) else {
            continue;
        };
        let outcome: Option<String> = row.try_get(7)?;
        runs[i].workers.push(WorkerRow {
            incarnation: row.try_get(1)?,
            name: row.try_get(2)?,
            started_at: row.try_get(3)?,
            seen_at: row.try_get(4)?,
            lease_ms: row.try_get(5)?,
            ended_at: row.try_get(6)?,
            outcome: outcome.as_deref().and_then(WorkerOutcome::parse),
        });
    }
    for row in tx
        .query(
            "SELECT flow_run_id, count(*),
                    (extract(epoch FROM max(written_at)) * 1000)::bigint
               FROM contextstore_outputs WHERE flow_run_id = ANY($1) GROUP BY flow_run_id",
            &[&ids],
        )
        .await?
    {
        let Some(&i) = at.get(&row.try_get::<_, Uuid>(0)?) else {
            continue;
        };
        runs[i].outputs = count(row.try_get(1)?);
        runs[i].last_output_at = row.try_get(2)?;
    }
    for row in tx
        .query(
            "SELECT flow_run_id,
                    count(*) FILTER (WHERE finished_at IS NULL AND lease_until > now()),
                    count(*) FILTER (WHERE attempt > 1)
               FROM contextstore_claims WHERE flow_run_id = ANY($1) GROUP BY flow_run_id",
            &[&ids],
        )
        .await?
    {
        let Some(&i) = at.get(&row.try_get::<_, Uuid>(0)?) else {
            continue;
        };
        runs[i].live_claims = count(row.try_get(1)?);
        runs[i].taken_over = count(row.try_get(2)?);
    }
    // The journal: of one run, or every entry; then which of their nodes
    // have an output.
    let (from, to) = match select {
        Select::One(run) => {
            let (from, to) = journal_range(*run);
            (from.into_bytes(), to.into_bytes())
        }
        Select::All => prefix_range(JOURNAL_PREFIX),
    };
    let mut entries: Vec<(usize, NodeId, u32, bool)> = Vec::new();
    for (key, value) in globals_between(&tx, &from, &to).await? {
        let Some(tail) = key.strip_prefix(JOURNAL_PREFIX) else {
            continue;
        };
        let Some((run, node)) = tail.split_once('/') else {
            continue;
        };
        let Some(&i) = run.parse::<Uuid>().ok().and_then(|run| at.get(&run)) else {
            continue;
        };
        if let Some((node, attempt, retrying)) = journal_entry(node, &value) {
            entries.push((i, node, attempt, retrying));
        }
    }
    if !entries.is_empty() {
        let entry_runs: Vec<Uuid> = entries.iter().map(|e| ids[e.0]).collect();
        let entry_nodes: Vec<Uuid> = entries.iter().map(|e| *e.1.as_uuid()).collect();
        let mut done = HashSet::new();
        for row in tx
            .query(
                "SELECT o.flow_run_id, o.node_id FROM contextstore_outputs o
                   JOIN unnest($1::uuid[], $2::uuid[]) AS e(flow_run_id, node_id)
                     ON o.flow_run_id = e.flow_run_id AND o.node_id = e.node_id",
                &[&entry_runs, &entry_nodes],
            )
            .await?
        {
            done.insert((row.try_get::<_, Uuid>(0)?, row.try_get::<_, Uuid>(1)?));
        }
        for (i, node, attempt, retrying) in entries {
            let facts = &mut runs[i];
            facts.failed_attempts = facts.failed_attempts.saturating_add(attempt);
            match (done.contains(&(ids[i], *node.as_uuid())), retrying) {
                (true, _) => {}
                (false, true) => facts.retrying_nodes += 1,
                (false, false) => facts.failed_nodes += 1,
            }
        }
    }
    let (from, to) = match select {
        Select::One(run) => {
            let key = cancel_key(*run).into_bytes();
            let mut to = key.clone();
            to.push(0);
            (key, to)
        }
        Select::All => prefix_range(CANCEL_PREFIX),
    };
    for (key, value) in globals_between(&tx, &from, &to).await? {
        let Some(&i) = key
            .strip_prefix(CANCEL_PREFIX)
            .and_then(|run| run.parse::<Uuid>().ok())
            .and_then(|run| at.get(&run))
        else {
            continue;
        };
        runs[i].cancelled_at = cancelled_at(&value);
    }
    tx.commit().await?;
    Ok(Facts { now, runs })
}

struct Remove<'a> {
    runs: &'a [FlowRunId],
    max_rows: usize,
}

async fn remove(c: &mut Conn, a: &Remove<'_>) -> Result<RemovedBatch, Fault> {
    let ids: Vec<Uuid> = a.runs.iter().map(|r| *r.as_uuid()).collect();
    let tx = c.client.transaction().await?;
    // The records first, locked: a worker recording itself waits for this
    // batch, and one that recorded itself first is seen live below.
    tx.query(
        "SELECT flow_run_id FROM contextstore_runs WHERE flow_run_id = ANY($1)
          ORDER BY flow_run_id FOR UPDATE",
        &[&ids],
    )
    .await?;
    let mut live = HashSet::new();
    for row in tx
        .query(
            &format!(
                "SELECT flow_run_id FROM contextstore_run_workers
                  WHERE flow_run_id = ANY($1) AND ended_at IS NULL AND seen_at + lease_ms > {NOW_MS}
                 UNION
                 SELECT flow_run_id FROM contextstore_claims
                  WHERE flow_run_id = ANY($1) AND finished_at IS NULL AND lease_until > now()"
            ),
            &[&ids],
        )
        .await?
    {
        live.insert(row.try_get::<_, Uuid>(0)?);
    }
    let mut batch = RemovedBatch::default();
    let (live_runs, dead): (Vec<FlowRunId>, Vec<FlowRunId>) =
        a.runs.iter().partition(|run| live.contains(run.as_uuid()));
    batch.live = live_runs;
    if dead.is_empty() {
        tx.commit().await?;
        return Ok(batch);
    }
    let dead_ids: Vec<Uuid> = dead.iter().map(|r| *r.as_uuid()).collect();
    let ranges: Vec<(Vec<u8>, Vec<u8>)> = dead
        .iter()
        .map(|run| {
            let (from, to) = journal_range(*run);
            (from.into_bytes(), to.into_bytes())
        })
        .collect();
    let froms: Vec<&[u8]> = ranges.iter().map(|r| r.0.as_slice()).collect();
    let tos: Vec<&[u8]> = ranges.iter().map(|r| r.1.as_slice()).collect();
    // The rows of the runs, at most `max_rows` in all, a few statements
    // for the whole batch.
    let mut left = i64::try_from(a.max_rows).unwrap_or(i64::MAX);
    let outputs = tx
        .execute(
            "DELETE FROM contextstore_outputs WHERE (flow_run_id, node_id) IN
                (SELECT flow_run_id, node_id FROM contextstore_outputs
                  WHERE flow_run_id = ANY($1) LIMIT $2)",
            &[&dead_ids, &left],
        )
        .await?;
    left -= outputs as i64;
    let journal = tx
        .execute(
            "DELETE FROM contextstore_globals WHERE key IN
                (SELECT g.key FROM unnest($1::bytea[], $2::bytea[]) AS r(f, t)
                   JOIN contextstore_globals g ON g.key >= r.f AND g.key < r.t
                  LIMIT $3)",
            &[&froms, &tos, &left.max(0)],
        )
        .await?;
    left -= journal as i64;
    let claims = tx
        .execute(
            "DELETE FROM contextstore_claims WHERE (flow_run_id, node_id) IN
                (SELECT flow_run_id, node_id FROM contextstore_claims
                  WHERE flow_run_id = ANY($1) LIMIT $2)",
            &[&dead_ids, &left.max(0)],
        )
        .await?;
    batch.removed.outputs = outputs;
    batch.removed.journal = journal;
    batch.removed.claims = claims;
    // The runs with nothing left go whole: their cancellation marks,
    // worker records and records (a handful of rows each, outside the
    // budget). The others are marked, so that listings leave them out and
    // the next batch (or gc) finishes them.
    let mut finished = HashSet::new();
    for row in tx
        .query(
            "SELECT r.id FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS r(id, f, t)
              WHERE NOT EXISTS (SELECT 1 FROM contextstore_outputs o WHERE o.flow_run_id = r.id)
                AND NOT EXISTS (SELECT 1 FROM contextstore_claims c WHERE c.flow_run_id = r.id)
                AND NOT EXISTS (SELECT 1 FROM contextstore_globals g
                                 WHERE g.key >= r.f AND g.key < r.t)",
            &[&dead_ids, &froms, &tos],
        )
        .await?
    {
        finished.insert(row.try_get::<_, Uuid>(0)?);
    }
    let (gone, unfinished): (Vec<FlowRunId>, Vec<FlowRunId>) = dead
        .iter()
        .partition(|run| finished.contains(run.as_uuid()));
    let gone_ids: Vec<Uuid> = gone.iter().map(|r| *r.as_uuid()).collect();
    let marks: Vec<Vec<u8>> = gone.iter().map(|r| cancel_key(*r).into_bytes()).collect();
    let unfinished_ids: Vec<Uuid> = unfinished.iter().map(|r| *r.as_uuid()).collect();
    if !unfinished_ids.is_empty() {
        tx.execute(
            "UPDATE contextstore_runs SET removing = true
              WHERE flow_run_id = ANY($1) AND NOT removing",
            &[&unfinished_ids],
        )
        .await?;
    }
    if !gone_ids.is_empty() {
        batch.removed.journal += tx
            .execute(
                "DELETE FROM contextstore_globals WHERE key = ANY($1)",
                &[&marks],
            )
            .await?;
        batch.removed.workers = tx
            .execute(
                "DELETE FROM contextstore_run_workers WHERE flow_run_id = ANY($1)",
                &[&gone_ids],
            )
            .await?;
        let mut deleted = HashSet::new();
        for row in tx
            .query(
                "DELETE FROM contextstore_runs WHERE flow_run_id = ANY($1) RETURNING flow_run_id",
                &[&gone_ids],
            )
            .await?
        {
            deleted.insert(row.try_get::<_, Uuid>(0)?);
        }
        batch.removed.runs = deleted.len() as u64;
        let (removed, missing) = gone
            .into_iter()
            .partition(|run| deleted.contains(run.as_uuid()));
        batch.gone = removed;
        batch.missing = missing;
    }
    tx.commit().await?;
    Ok(batch)
}

/// The runs index in the tables above. Each call is retried across
/// transient faults: a record is idempotent, a read changes nothing, and a
/// removal batch run again removes what is left.
#[async_trait::async_trait]
impl RunIndex for PostgresContextStore {
    async fn record(
        &self,
        cx: &CallContext,
        record: &RunRecord<'_>,
        status: WorkerStatus,
    ) -> Result<(), ContextStoreError> {
        let args = Record {
            run: *record.run.as_uuid(),
            flow_name: record.flow_name.to_owned(),
            flow_hash: record.flow_hash.to_owned(),
            graph: record.graph.as_str().to_owned(),
            nodes: i32::try_from(record.nodes).unwrap_or(i32::MAX),
            incarnation: record.worker.incarnation,
            worker: record.worker.name.clone(),
            lease_ms: millis(record.lease),
            outcome: status.outcome().map(WorkerOutcome::as_str),
        };
        self.call(cx, Effect::Write, "record run", &args, |c, a, _| {
            Box::pin(record_worker(c, a))
        })
        .await
    }

    async fn facts(&self, cx: &CallContext, select: Select) -> Result<Facts, ContextStoreError> {
        self.call(cx, Effect::Read, "read runs", &select, |c, s, _| {
            Box::pin(facts(c, s))
        })
        .await
    }

    async fn remove(
        &self,
        cx: &CallContext,
        runs: &[FlowRunId],
        max_rows: usize,
    ) -> Result<RemovedBatch, ContextStoreError> {
        let args = Remove { runs, max_rows };
        self.call(cx, Effect::Write, "remove runs", &args, |c, a, _| {
            Box::pin(remove(c, a))
        })
        .await
    }

    /// A batch locks only the rows of the runs it removes: the writes of
    /// running flows never wait for it, so it may be larger.
    fn batch_rows(&self) -> usize {
        256
    }
}
