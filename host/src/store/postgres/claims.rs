//! The [`Coordinator`] of a PostgreSQL store: claims on nodes in
//! `contextstore_claims`, with leases on the server's clock and fencing
//! tokens (see [`crate::coord`]).
//!
//! A claim row holds the node's last (or current) holder, by name and
//! incarnation, its lease, how many times the node was claimed (`attempt`)
//! and its fencing token. The token grows by one with every win (the first
//! claim gets 1, a takeover the next) and with every release, which retires
//! it; a write under a fence is checked against it in the write's own
//! statement (see `values`).

use std::time::Duration;

use uuid::Uuid;

use super::PostgresContextStore;
use super::pool::Conn;
use super::retry::{Effect, Fault, Retry};
use crate::coord::{Claim, ClaimRecord, Coordinator, Renewal, Stored, WorkerId};
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use crate::runs::millis;
use crate::store::{CallContext, Fence};

/// Wins a new claim; takes over an unfinished one whose lease expired
/// (attempt and token + 1); or, for the incarnation that holds it, wins it
/// again as it is (a retried claim), with its lease extended.
const CLAIM: &str = "INSERT INTO contextstore_claims AS c
        (flow_run_id, node_id, worker, incarnation, lease_until, attempt, token)
     VALUES ($1, $2, $3, $4, now() + $5::bigint * interval '1 millisecond', 1, 1)
     ON CONFLICT (flow_run_id, node_id) DO UPDATE
        SET worker = excluded.worker,
            incarnation = excluded.incarnation,
            lease_until = excluded.lease_until,
            attempt = CASE WHEN c.lease_until < now() THEN c.attempt + 1 ELSE c.attempt END,
            token = CASE WHEN c.lease_until < now() THEN c.token + 1 ELSE c.token END,
            claimed_at = CASE WHEN c.lease_until < now() THEN now() ELSE c.claimed_at END
      WHERE c.finished_at IS NULL
        AND (c.lease_until < now() OR c.incarnation = excluded.incarnation)
     RETURNING attempt, token";

/// [`CLAIM`] for many nodes in one statement: new claims are inserted;
/// claims whose lease expired, or that this incarnation holds, are taken,
/// skipping rows another transaction has locked (a worker claiming them at
/// this moment) instead of waiting for it. Returns the nodes won.
const CLAIM_MANY: &str = "WITH wanted AS (
        SELECT DISTINCT unnest($2::uuid[]) AS node_id
     ), fresh AS (
        INSERT INTO contextstore_claims AS c
            (flow_run_id, node_id, worker, incarnation, lease_until, attempt, token)
        SELECT $1, node_id, $3, $4, now() + $5::bigint * interval '1 millisecond', 1, 1
          FROM wanted
        ON CONFLICT (flow_run_id, node_id) DO NOTHING
        RETURNING node_id, attempt, token
     ), free AS (
        SELECT c.node_id FROM contextstore_claims c
         WHERE c.flow_run_id = $1 AND c.node_id = ANY($2::uuid[])
           AND c.finished_at IS NULL
           AND (c.lease_until < now() OR c.incarnation = $4)
         FOR UPDATE SKIP LOCKED
     ), taken AS (
        UPDATE contextstore_claims c
           SET worker = $3,
               incarnation = $4,
               lease_until = now() + $5::bigint * interval '1 millisecond',
               attempt = CASE WHEN c.lease_until < now() THEN c.attempt + 1 ELSE c.attempt END,
               token = CASE WHEN c.lease_until < now() THEN c.token + 1 ELSE c.token END,
               claimed_at = CASE WHEN c.lease_until < now() THEN now() ELSE c.claimed_at END
          FROM free
         WHERE c.flow_run_id = $1 AND c.node_id = free.node_id
        RETURNING c.node_id, c.attempt, c.token
     )
     SELECT node_id, attempt, token FROM fresh
     UNION ALL
     SELECT node_id, attempt, token FROM taken";

/// Who holds each of several nodes that could not be claimed, with the
/// output (and provenance) of those finished.
const HOLDERS: &str = "SELECT c.node_id, c.worker, c.finished_at IS NOT NULL,
        ceil(greatest(0, extract(epoch FROM c.lease_until - now()) * 1000))::bigint,
        o.value, o.component_hash, o.params_hash, o.upstream_hash, o.attempt, o.host,
        o.started_at, o.ended_at
     FROM contextstore_claims c
     LEFT JOIN contextstore_outputs o
       ON c.finished_at IS NOT NULL AND o.flow_run_id = c.flow_run_id AND o.node_id = c.node_id
     WHERE c.flow_run_id = $1 AND c.node_id = ANY($2)";

/// Who holds a node that could not be claimed.
const HOLDER: &str = "SELECT worker, finished_at IS NOT NULL,
        ceil(greatest(0, extract(epoch FROM lease_until - now()) * 1000))::bigint
     FROM contextstore_claims WHERE flow_run_id = $1 AND node_id = $2";

/// Extends the unexpired, unfinished leases of one incarnation. An expired
/// lease is not revived: its token may have been retired by `release`.
const RENEW: &str = "UPDATE contextstore_claims
        SET lease_until = now() + $3::bigint * interval '1 millisecond'
      WHERE flow_run_id = $1 AND incarnation = $2 AND finished_at IS NULL
        AND lease_until >= now()
     RETURNING node_id";

const FINISH: &str = "UPDATE contextstore_claims SET finished_at = now(), lease_until = now()
      WHERE flow_run_id = $1 AND node_id = $2 AND token = $3 AND finished_at IS NULL";

/// Retires the token and frees the node at once. It waits for the row
/// locks of the fenced writes in flight under the token.
const RELEASE: &str = "UPDATE contextstore_claims
        SET token = token + 1, lease_until = now() - interval '1 millisecond'
      WHERE flow_run_id = $1 AND node_id = $2 AND token = $3 AND finished_at IS NULL";

const CLAIMS: &str = "SELECT node_id, worker, incarnation, attempt, token, finished_at IS NOT NULL,
        ceil(greatest(0, extract(epoch FROM lease_until - now()) * 1000))::bigint
     FROM contextstore_claims WHERE flow_run_id = $1";

/// How many times one attempt tries to claim a node that it finds neither
/// held nor finished (its lease ran out between two statements).
const CLAIM_ROUNDS: usize = 3;

/// Milliseconds from SQL as a duration (zero if negative).
fn duration(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// An attempt count from SQL.
fn count(attempt: i32) -> u32 {
    u32::try_from(attempt).unwrap_or(0)
}

struct ClaimArgs<'a> {
    run: FlowRunId,
    node: NodeId,
    worker: &'a WorkerId,
    lease: i64,
}

async fn claim(c: &mut Conn, a: &ClaimArgs<'_>) -> Result<Claim, Fault> {
    let (run, node) = (a.run.as_uuid(), a.node.as_uuid());
    for _ in 0..CLAIM_ROUNDS {
        let statement = c.prepare(CLAIM).await?;
        let won = c
            .client
            .query_opt(
                &statement,
                &[run, node, &a.worker.name, &a.worker.incarnation, &a.lease],
            )
            .await?;
        if let Some(row) = won {
            return Ok(Claim::Won {
                attempt: count(row.try_get(0)?),
                fence: Fence {
                    flow_run_id: a.run,
                    node_id: a.node,
                    token: row.try_get(1)?,
                },
            });
        }
        let statement = c.prepare(HOLDER).await?;
        let Some(row) = c.client.query_opt(&statement, &[run, node]).await? else {
            continue;
        };
        let worker: String = row.try_get(0)?;
        if row.try_get::<_, bool>(1)? {
            return Ok(Claim::Finished {
                worker,
                stored: None,
            });
        }
        let left: i64 = row.try_get(2)?;
        if left > 0 {
            return Ok(Claim::Held {
                same_name: worker == a.worker.name,
                worker,
                lease_left: duration(left),
            });
        }
    }
    Err(Fault::Store(ContextStoreError::StorageError(format!(
        "the claim on ({}, {}) kept changing while it was being claimed",
        a.run, a.node
    ))))
}

struct ClaimManyArgs<'a> {
    run: FlowRunId,
    nodes: &'a [NodeId],
    worker: &'a WorkerId,
    lease: i64,
}

async fn claim_many(c: &mut Conn, a: &ClaimManyArgs<'_>) -> Result<Vec<Claim>, Fault> {
    let run = a.run.as_uuid();
    let ids: Vec<Uuid> = a.nodes.iter().map(|n| *n.as_uuid()).collect();
    let statement = c.prepare(CLAIM_MANY).await?;
    let rows = c
        .client
        .query(
            &statement,
            &[run, &ids, &a.worker.name, &a.worker.incarnation, &a.lease],
        )
        .await?;
    let mut answers = std::collections::HashMap::with_capacity(ids.len());
    for row in rows {
        let node = NodeId::from_uuid(row.try_get(0)?);
        let won = Claim::Won {
            attempt: count(row.try_get(1)?),
            fence: Fence {
                flow_run_id: a.run,
                node_id: node,
                token: row.try_get(2)?,
            },
        };
        answers.insert(node, won);
    }
    let rest: Vec<Uuid> = ids
        .iter()
        .filter(|id| !answers.contains_key(&NodeId::from_uuid(**id)))
        .copied()
        .collect();
    if !rest.is_empty() {
        let statement = c.prepare(HOLDERS).await?;
        for row in c.client.query(&statement, &[run, &rest]).await? {
            let node = NodeId::from_uuid(row.try_get(0)?);
            let worker: String = row.try_get(1)?;
            let answer = if row.try_get::<_, bool>(2)? {
                let stored = match row.try_get::<_, Option<String>>(4)? {
                    Some(value) => Some(Box::new(Stored {
                        value: JsonText::from_stored(value),
                        provenance: super::values::provenance_at(&row, 5)?,
                    })),
                    None => None,
                };
                Claim::Finished { worker, stored }
            } else {
                Claim::Held {
                    same_name: worker == a.worker.name,
                    worker,
                    lease_left: duration(row.try_get(3)?),
                }
            };
            answers.insert(node, answer);
        }
    }
    Ok(a.nodes
        .iter()
        .map(|node| {
            answers.remove(node).unwrap_or_else(|| Claim::Held {
                // Being claimed by another transaction right now (its row
                // is not visible yet, or was locked): look again.
                worker: "another worker".into(),
                same_name: false,
                lease_left: Duration::ZERO,
            })
        })
        .collect())
}

async fn renew(
    c: &mut Conn,
    (run, incarnation, lease): &(FlowRunId, Uuid, i64),
) -> Result<Renewal, Fault> {
    let statement = c.prepare(RENEW).await?;
    let rows = c
        .client
        .query(&statement, &[run.as_uuid(), incarnation, lease])
        .await?;
    let held = rows
        .iter()
        .map(|row| Ok(NodeId::from_uuid(row.try_get::<_, Uuid>(0)?)))
        .collect::<Result<_, Fault>>()?;
    Ok(Renewal { held })
}

async fn update_claim(c: &mut Conn, sql: &'static str, fence: &Fence) -> Result<(), Fault> {
    let statement = c.prepare(sql).await?;
    c.client
        .execute(
            &statement,
            &[
                fence.flow_run_id.as_uuid(),
                fence.node_id.as_uuid(),
                &fence.token,
            ],
        )
        .await?;
    Ok(())
}

async fn claims(c: &mut Conn, run: &FlowRunId) -> Result<Vec<ClaimRecord>, Fault> {
    let statement = c.prepare(CLAIMS).await?;
    let rows = c.client.query(&statement, &[run.as_uuid()]).await?;
    rows.iter()
        .map(|row| {
            let finished: bool = row.try_get(5)?;
            Ok(ClaimRecord {
                node_id: NodeId::from_uuid(row.try_get(0)?),
                worker: row.try_get(1)?,
                incarnation: row.try_get::<_, Option<Uuid>>(2)?.unwrap_or_default(),
                attempt: count(row.try_get(3)?),
                token: row.try_get(4)?,
                finished,
                lease_left: if finished {
                    Duration::ZERO
                } else {
                    duration(row.try_get(6)?)
                },
            })
        })
        .collect()
}

/// Claims in `contextstore_claims` (see this module's docs). Every
/// call is retried across transient faults: each is idempotent (a claim
/// retried by the incarnation that won it is won again with the same
/// token; renewing, finishing and releasing twice change nothing more).
#[async_trait::async_trait]
impl Coordinator for PostgresContextStore {
    async fn claim(
        &self,
        cx: &CallContext,
        run: FlowRunId,
        node: NodeId,
        worker: &WorkerId,
        lease: Duration,
    ) -> Result<Claim, ContextStoreError> {
        let args = ClaimArgs {
            run,
            node,
            worker,
            lease: millis(lease),
        };
        self.call(cx, Effect::Write, "claim", &args, |c, a, _: Retry| {
            Box::pin(claim(c, a))
        })
        .await
    }

    async fn claim_many(
        &self,
        cx: &CallContext,
        run: FlowRunId,
        nodes: &[NodeId],
        worker: &WorkerId,
        lease: Duration,
    ) -> Result<Vec<Claim>, ContextStoreError> {
        let args = ClaimManyArgs {
            run,
            nodes,
            worker,
            lease: millis(lease),
        };
        self.call(cx, Effect::Write, "claim_many", &args, |c, a, _: Retry| {
            Box::pin(claim_many(c, a))
        })
        .await
    }

    async fn renew(
        &self,
        cx: &CallContext,
        run: FlowRunId,
        worker: &WorkerId,
        lease: Duration,
    ) -> Result<Renewal, ContextStoreError> {
        let args = (run, worker.incarnation, millis(lease));
        self.call(cx, Effect::Write, "renew", &args, |c, a, _| {
            Box::pin(renew(c, a))
        })
        .await
    }

    async fn finish(&self, cx: &CallContext, fence: &Fence) -> Result<(), ContextStoreError> {
        self.call(cx, Effect::Write, "finish", fence, |c, f, _| {
            Box::pin(update_claim(c, FINISH, f))
        })
        .await
    }

    async fn release(&self, cx: &CallContext, fence: &Fence) -> Result<(), ContextStoreError> {
        self.call(cx, Effect::Write, "release", fence, |c, f, _| {
            Box::pin(update_claim(c, RELEASE, f))
        })
        .await
    }

    async fn claims(
        &self,
        cx: &CallContext,
        run: FlowRunId,
    ) -> Result<Vec<ClaimRecord>, ContextStoreError> {
        self.call(cx, Effect::Read, "claims", &run, |c, r, _| {
            Box::pin(claims(c, r))
        })
        .await
    }
}
