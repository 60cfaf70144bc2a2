//! Outputs and globals: one attempt of each call, on one connection.
//!
//! Every write is one statement (one round trip, one commit). A write under
//! a [`Fence`] checks the claim in that same statement: the claim row is
//! locked (`FOR SHARE`, or updated) and must carry the fence's token, or
//! the statement writes nothing and the call is refused with
//! [`ContextStoreError::Fenced`]. The row lock is what makes
//! [`release`](crate::coord::Coordinator::release) wait for the writes in
//! flight under the claim it retires. A fenced `put` of the claimed node's
//! own output finishes the claim in the same statement.

use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::errors::is_unique_violation;
use super::pool::Conn;
use super::retry::{Fault, Retry};
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use crate::store::{Fence, Provenance, Stored};

const PUT: &str = "INSERT INTO contextstore_outputs (flow_run_id, node_id, value, component_hash,
        params_hash, upstream_hash, attempt, host, started_at, ended_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// A fenced put of the claimed node's own output: finishes the claim.
const PUT_FINISHING: &str = "WITH fence AS (
        UPDATE contextstore_claims
           SET finished_at = coalesce(finished_at, now()),
               lease_until = CASE WHEN finished_at IS NULL THEN now() ELSE lease_until END
         WHERE flow_run_id = $1 AND node_id = $2 AND token = $11
        RETURNING 1)
     INSERT INTO contextstore_outputs (flow_run_id, node_id, value, component_hash,
        params_hash, upstream_hash, attempt, host, started_at, ended_at)
     SELECT $1::uuid, $2::uuid, $3::text, $4::text, $5::text, $6::text, $7::bigint, $8::text,
            $9::bigint, $10::bigint
       FROM fence";

/// A fenced put of another node's output.
const PUT_FENCED: &str = "WITH fence AS (
        SELECT 1 FROM contextstore_claims
         WHERE flow_run_id = $11 AND node_id = $12 AND token = $13 FOR SHARE)
     INSERT INTO contextstore_outputs (flow_run_id, node_id, value, component_hash,
        params_hash, upstream_hash, attempt, host, started_at, ended_at)
     SELECT $1::uuid, $2::uuid, $3::text, $4::text, $5::text, $6::text, $7::bigint, $8::text,
            $9::bigint, $10::bigint
       FROM fence";

const OUTPUT: &str = "SELECT value, component_hash, params_hash, upstream_hash, attempt, host,
        started_at, ended_at
     FROM contextstore_outputs WHERE flow_run_id = $1 AND node_id = $2";

const GET: &str = "SELECT value FROM contextstore_outputs WHERE flow_run_id = $1 AND node_id = $2";

const GET_MANY: &str = "SELECT node_id, value FROM contextstore_outputs
     WHERE flow_run_id = $1 AND node_id = ANY($2)";

const GET_MANY_WITH_PROVENANCE: &str = "SELECT node_id, value, component_hash, params_hash,
        upstream_hash, attempt, host, started_at, ended_at
     FROM contextstore_outputs WHERE flow_run_id = $1 AND node_id = ANY($2)";

const LIST_KEYS: &str = "SELECT node_id FROM contextstore_outputs WHERE flow_run_id = $1";

const PROVENANCE: &str = "SELECT value, component_hash, params_hash, upstream_hash, attempt, host,
        started_at, ended_at
     FROM contextstore_outputs
     WHERE flow_run_id = $1 AND node_id = $2 AND component_hash IS NOT NULL";

const PUT_GLOBAL: &str = "INSERT INTO contextstore_globals (key, value) VALUES ($1, $2)";

const PUT_GLOBAL_FENCED: &str = "WITH fence AS (
        SELECT 1 FROM contextstore_claims
         WHERE flow_run_id = $3 AND node_id = $4 AND token = $5 FOR SHARE)
     INSERT INTO contextstore_globals (key, value) SELECT $1::bytea, $2::text FROM fence";

const UPSERT_GLOBAL: &str = "INSERT INTO contextstore_globals (key, value) VALUES ($1, $2)
     ON CONFLICT (key) DO UPDATE SET value = excluded.value, written_at = now()";

const UPSERT_GLOBAL_FENCED: &str = "WITH fence AS (
        SELECT 1 FROM contextstore_claims
         WHERE flow_run_id = $3 AND node_id = $4 AND token = $5 FOR SHARE)
     INSERT INTO contextstore_globals (key, value) SELECT $1::bytea, $2::text FROM fence
     ON CONFLICT (key) DO UPDATE SET value = excluded.value, written_at = now()";

const GET_GLOBAL: &str = "SELECT value FROM contextstore_globals WHERE key = $1";

const GET_GLOBALS: &str = "SELECT key, value FROM contextstore_globals WHERE key = ANY($1)";

/// A node output to write.
pub(super) struct Put<'a> {
    pub(super) flow_run_id: FlowRunId,
    pub(super) node_id: NodeId,
    pub(super) value: &'a JsonText,
    pub(super) provenance: Option<&'a Provenance>,
    pub(super) fence: Option<Fence>,
}

/// A global to write.
pub(super) struct Global<'a> {
    pub(super) key: &'a str,
    pub(super) value: &'a JsonText,
    pub(super) fence: Option<Fence>,
}

/// The refusal of a write under `fence`.
pub(super) fn fenced(fence: &Fence) -> Fault {
    Fault::Store(ContextStoreError::Fenced {
        flow_run_id: fence.flow_run_id,
        node_id: fence.node_id,
        token: fence.token,
    })
}

/// Writes an output once (one attempt).
pub(super) async fn put(c: &mut Conn, a: &Put<'_>, retry: Retry) -> Result<(), Fault> {
    let p = a.provenance;
    let (run, node, value) = (
        a.flow_run_id.as_uuid(),
        a.node_id.as_uuid(),
        a.value.as_str(),
    );
    let component_hash = p.map(|p| p.component_hash.as_str());
    let params_hash = p.map(|p| p.params_hash.as_str());
    let upstream_hash = p.map(|p| p.upstream_hash.as_str());
    let attempt = p.map(|p| i64::from(p.attempt));
    let host = p.map(|p| p.host.as_str());
    let started_at = p.map(|p| p.started_at);
    let ended_at = p.map(|p| p.ended_at);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        run,
        node,
        &value,
        &component_hash,
        &params_hash,
        &upstream_hash,
        &attempt,
        &host,
        &started_at,
        &ended_at,
    ];
    let sql = match &a.fence {
        None => PUT,
        Some(f) if f.flow_run_id == a.flow_run_id && f.node_id == a.node_id => {
            params.push(&f.token);
            PUT_FINISHING
        }
        Some(f) => {
            params.extend([
                f.flow_run_id.as_uuid() as &(dyn ToSql + Sync),
                f.node_id.as_uuid(),
                &f.token,
            ]);
            PUT_FENCED
        }
    };
    let statement = c.prepare(sql).await?;
    let refusal = match (c.client.execute(&statement, &params).await, &a.fence) {
        (Ok(0), Some(fence)) => fenced(fence),
        (Ok(_), _) => return Ok(()),
        (Err(e), _) if is_unique_violation(&e, "contextstore_outputs_pkey") => {
            Fault::Store(ContextStoreError::AlreadyExists {
                flow_run_id: a.flow_run_id,
                node_id: a.node_id,
            })
        }
        (Err(e), _) => return Err(e.into()),
    };
    if retry.uncertain && same_output(c, a).await? {
        tracing::debug!(flow_run_id = %a.flow_run_id, node_id = %a.node_id,
            "an interrupted put had landed");
        return Ok(());
    }
    Err(refusal)
}

/// Whether the stored output is exactly `a`'s value and provenance.
async fn same_output(c: &mut Conn, a: &Put<'_>) -> Result<bool, Fault> {
    let statement = c.prepare(OUTPUT).await?;
    let row = c
        .client
        .query_opt(&statement, &[a.flow_run_id.as_uuid(), a.node_id.as_uuid()])
        .await?;
    let Some(row) = row else { return Ok(false) };
    let value: String = row.try_get(0)?;
    Ok(value == a.value.as_str() && provenance_at(&row, 1)?.as_ref() == a.provenance)
}

/// The provenance in `row` from column `first` on (`None` if its first
/// column is NULL).
pub(super) fn provenance_at(
    row: &tokio_postgres::Row,
    first: usize,
) -> Result<Option<Provenance>, tokio_postgres::Error> {
    let Some(component_hash) = row.try_get::<_, Option<String>>(first)? else {
        return Ok(None);
    };
    Ok(Some(Provenance {
        component_hash,
        params_hash: row.try_get(first + 1)?,
        upstream_hash: row.try_get(first + 2)?,
        attempt: u32::try_from(row.try_get::<_, i64>(first + 3)?).unwrap_or(u32::MAX),
        host: row.try_get(first + 4)?,
        started_at: row.try_get(first + 5)?,
        ended_at: row.try_get(first + 6)?,
    }))
}

/// Reads an output.
pub(super) async fn get(
    c: &mut Conn,
    (run, node): &(FlowRunId, NodeId),
) -> Result<Option<JsonText>, Fault> {
    let statement = c.prepare(GET).await?;
    let row = c
        .client
        .query_opt(&statement, &[run.as_uuid(), node.as_uuid()])
        .await?;
    Ok(match row {
        Some(row) => Some(JsonText::from_stored(row.try_get(0)?)),
        None => None,
    })
}

/// Reads the outputs of several nodes of one run in one query, in the
/// order asked.
pub(super) async fn get_many(
    c: &mut Conn,
    (run, nodes): &(FlowRunId, &[NodeId]),
) -> Result<Vec<Option<JsonText>>, Fault> {
    let statement = c.prepare(GET_MANY).await?;
    let ids: Vec<Uuid> = nodes.iter().map(|n| *n.as_uuid()).collect();
    let rows = c.client.query(&statement, &[run.as_uuid(), &ids]).await?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.try_get(0)?;
        found.insert(id, JsonText::from_stored(row.try_get(1)?));
    }
    Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
}

/// Reads the outputs of several nodes of one run with their provenance,
/// in one query, in the order asked.
pub(super) async fn get_many_with_provenance(
    c: &mut Conn,
    (run, nodes): &(FlowRunId, &[NodeId]),
) -> Result<Vec<Option<Stored>>, Fault> {
    let statement = c.prepare(GET_MANY_WITH_PROVENANCE).await?;
    let ids: Vec<Uuid> = nodes.iter().map(|n| *n.as_uuid()).collect();
    let rows = c.client.query(&statement, &[run.as_uuid(), &ids]).await?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.try_get(0)?;
        let value = JsonText::from_stored(row.try_get(1)?);
        found.insert(
            id,
            Stored {
                value,
                provenance: provenance_at(&row, 2)?,
            },
        );
    }
    Ok(ids.iter().map(|id| found.remove(id)).collect())
}

/// Lists a run's nodes with outputs.
pub(super) async fn list_keys(c: &mut Conn, run: &FlowRunId) -> Result<Vec<NodeId>, Fault> {
    let statement = c.prepare(LIST_KEYS).await?;
    let rows = c.client.query(&statement, &[run.as_uuid()]).await?;
    rows.iter()
        .map(|row| Ok(NodeId::from_uuid(row.try_get::<_, Uuid>(0)?)))
        .collect()
}

/// Reads an output's provenance.
pub(super) async fn provenance(
    c: &mut Conn,
    (run, node): &(FlowRunId, NodeId),
) -> Result<Option<Provenance>, Fault> {
    let statement = c.prepare(PROVENANCE).await?;
    let row = c
        .client
        .query_opt(&statement, &[run.as_uuid(), node.as_uuid()])
        .await?;
    Ok(match row {
        Some(row) => provenance_at(&row, 1)?,
        None => None,
    })
}

/// Writes a global once (one attempt).
pub(super) async fn put_global(c: &mut Conn, a: &Global<'_>, retry: Retry) -> Result<(), Fault> {
    let refusal = match write_global(c, a, PUT_GLOBAL, PUT_GLOBAL_FENCED).await {
        Ok(0) => match &a.fence {
            Some(fence) => fenced(fence),
            None => return Ok(()),
        },
        Ok(_) => return Ok(()),
        Err(e) if is_unique_violation(&e, "contextstore_globals_pkey") => {
            Fault::Store(ContextStoreError::GlobalAlreadyExists {
                key: a.key.to_owned(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    if retry.uncertain && same_global(c, a).await? {
        tracing::debug!(key = a.key, "an interrupted put_global had landed");
        return Ok(());
    }
    Err(refusal)
}

/// Writes or overwrites a global (one attempt).
pub(super) async fn upsert_global(c: &mut Conn, a: &Global<'_>, retry: Retry) -> Result<(), Fault> {
    match (
        write_global(c, a, UPSERT_GLOBAL, UPSERT_GLOBAL_FENCED).await?,
        &a.fence,
    ) {
        (0, Some(fence)) => {
            // Refused now; if an interrupted attempt had landed before the
            // claim moved on, the value is there.
            if retry.uncertain && same_global(c, a).await? {
                return Ok(());
            }
            Err(fenced(fence))
        }
        _ => Ok(()),
    }
}

/// Runs a global's write, fenced or not: the rows it wrote.
async fn write_global(
    c: &mut Conn,
    a: &Global<'_>,
    plain: &'static str,
    fenced: &'static str,
) -> Result<u64, tokio_postgres::Error> {
    let (key, value) = (a.key.as_bytes(), a.value.as_str());
    match &a.fence {
        None => {
            let statement = c.prepare(plain).await?;
            c.client.execute(&statement, &[&key, &value]).await
        }
        Some(f) => {
            let statement = c.prepare(fenced).await?;
            let params: [&(dyn ToSql + Sync); 5] = [
                &key,
                &value,
                f.flow_run_id.as_uuid(),
                f.node_id.as_uuid(),
                &f.token,
            ];
            c.client.execute(&statement, &params).await
        }
    }
}

/// Whether the global holds exactly `a`'s value.
async fn same_global(c: &mut Conn, a: &Global<'_>) -> Result<bool, Fault> {
    Ok(get_global(c, a.key)
        .await?
        .is_some_and(|stored| stored == *a.value))
}

/// Reads several globals in one query, in the order asked.
pub(super) async fn get_globals(
    c: &mut Conn,
    keys: &[String],
) -> Result<Vec<Option<JsonText>>, Fault> {
    let statement = c.prepare(GET_GLOBALS).await?;
    let wanted: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let rows = c.client.query(&statement, &[&wanted]).await?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let key: Vec<u8> = row.try_get(0)?;
        found.insert(key, JsonText::from_stored(row.try_get(1)?));
    }
    Ok(wanted.iter().map(|k| found.get(*k).cloned()).collect())
}

/// Reads a global.
pub(super) async fn get_global(c: &mut Conn, key: &str) -> Result<Option<JsonText>, Fault> {
    let statement = c.prepare(GET_GLOBAL).await?;
    let row = c.client.query_opt(&statement, &[&key.as_bytes()]).await?;
    Ok(match row {
        Some(row) => Some(JsonText::from_stored(row.try_get(0)?)),
        None => None,
    })
}
