//! The flow journal: why a node's attempt failed, kept in the store beside
//! the outputs, so that `flow status` can tell failed nodes from pending
//! ones, and a node that stored its output and then failed is shown done
//! with a warning.
//!
//! Entries are globals under [`JOURNAL_PREFIX`]
//! (`contextstore.flow/<run id>/<node id>`), written by the host with
//! `upsert_global`: `{"status": "failed", "error": …, "attempt": n}`, the
//! last failed attempt. A node whose output exists is done, whatever the
//! journal says; the entry is then a warning if the same attempt wrote the
//! output (its provenance names the attempt). Steps never see these keys:
//! the prefix is under [`RESERVED_PREFIX`](crate::grant::RESERVED_PREFIX),
//! which no grant reaches.

use serde_json::{Value, json};

use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use crate::store::{AsyncContextStore, CallContext, ContextStore};
use crate::text::for_terminal;

/// The key prefix of journal entries among the globals.
pub const JOURNAL_PREFIX: &str = "contextstore.flow/";

fn key(run: FlowRunId, node: NodeId) -> String {
    format!("{JOURNAL_PREFIX}{run}/{node}")
}

/// Most bytes of an error kept in a journal entry (before `…`).
pub const MAX_ENTRY_BYTES: usize = 8 * 1024;

/// The last failed attempt at a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Why it failed: safe to print, whatever the entry holds.
    pub error: String,
    /// Which attempt it was (1 for entries written before attempts were counted).
    pub attempt: u32,
}

/// The entry recording that attempt `attempt` failed with `error`: one line
/// of at most [`MAX_ENTRY_BYTES`], control characters neutralised.
fn entry(error: &str, attempt: u32) -> Result<JsonText, ContextStoreError> {
    crate::store::encode(
        &json!({ "status": "failed", "error": for_terminal(error, MAX_ENTRY_BYTES), "attempt": attempt }),
    )
}

/// The failure an entry records, if it records one.
fn parse(entry: &JsonText) -> Option<Failure> {
    let entry = entry.to_value().ok()?;
    let Some(Value::String(error)) = entry.get("error") else {
        return None;
    };
    let attempt = entry
        .get("attempt")
        .and_then(Value::as_u64)
        .and_then(|a| u32::try_from(a).ok())
        .unwrap_or(1);
    Some(Failure {
        error: for_terminal(error, MAX_ENTRY_BYTES),
        attempt,
    })
}

/// Records that attempt `attempt` at `node` failed in `run`, and why, under
/// `cx` (on a shared run, fenced by the node's claim: a worker that lost
/// the node writes nothing).
pub async fn record(
    store: &dyn AsyncContextStore,
    cx: &CallContext,
    run: FlowRunId,
    node: NodeId,
    error: &str,
    attempt: u32,
) -> Result<(), ContextStoreError> {
    store
        .upsert_global(cx, &key(run, node), &entry(error, attempt)?)
        .await
}

/// The last failed attempt at `node` in `run`, if one failed.
pub async fn last_failure(
    store: &dyn AsyncContextStore,
    cx: &CallContext,
    run: FlowRunId,
    node: NodeId,
) -> Result<Option<Failure>, ContextStoreError> {
    Ok(store
        .get_global(cx, &key(run, node))
        .await?
        .as_ref()
        .and_then(parse))
}

/// The last failed attempt at each of `nodes` in `run`, in their order: one
/// read for all of them (the runner reads a run's journal once, at start).
pub async fn last_failures(
    store: &dyn AsyncContextStore,
    cx: &CallContext,
    run: FlowRunId,
    nodes: &[NodeId],
) -> Result<Vec<Option<Failure>>, ContextStoreError> {
    let keys: Vec<String> = nodes.iter().map(|node| key(run, *node)).collect();
    Ok(store
        .get_globals(cx, &keys)
        .await?
        .iter()
        .map(|entry| entry.as_ref().and_then(parse))
        .collect())
}

/// The failure of the attempt that stored `node`'s output, if that attempt
/// failed after its `put`: the node's warning.
pub async fn last_warning(
    store: &dyn AsyncContextStore,
    cx: &CallContext,
    run: FlowRunId,
    node: NodeId,
) -> Result<Option<String>, ContextStoreError> {
    let Some(failure) = last_failure(store, cx, run, node).await? else {
        return Ok(None);
    };
    let wrote = store.provenance(cx, run, node).await?.map(|p| p.attempt);
    Ok((wrote == Some(failure.attempt)).then_some(failure.error))
}

/// Records that attempt `attempt` at `node` failed in `run` (synchronous:
/// for embedders and tools; the runner uses [`record`]).
pub fn record_failure(
    store: &dyn ContextStore,
    run: FlowRunId,
    node: NodeId,
    error: &str,
    attempt: u32,
) -> Result<(), ContextStoreError> {
    store.upsert_global_text(&key(run, node), &entry(error, attempt)?)
}

/// The last failed attempt at `node` in `run`, if one failed (synchronous,
/// for `flow status`).
pub fn failure(
    store: &dyn ContextStore,
    run: FlowRunId,
    node: NodeId,
) -> Result<Option<Failure>, ContextStoreError> {
    Ok(store
        .get_global_text(&key(run, node))?
        .as_ref()
        .and_then(parse))
}

/// The failure of the attempt that stored `node`'s output, if that attempt
/// failed after its `put`: the node's warning. `None` when the output was
/// stored without provenance (nothing ties it to an attempt).
pub fn warning(
    store: &dyn ContextStore,
    run: FlowRunId,
    node: NodeId,
) -> Result<Option<String>, ContextStoreError> {
    let Some(failure) = failure(store, run, node)? else {
        return Ok(None);
    };
    let wrote = store.provenance(run, node)?.map(|p| p.attempt);
    Ok((wrote == Some(failure.attempt)).then_some(failure.error))
}
