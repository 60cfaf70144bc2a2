//! The flow journal: why a node's attempt failed, kept in the store beside
//! the outputs, so that `flow status` can tell failed nodes from pending
//! ones, and a node that stored its output and then failed is shown done
//! with a warning.
//!
//! Entries are globals under [`JOURNAL_PREFIX`]
//! (`contextstore.flow/<run id>/<node id>`), written by the host with
//! `upsert_global`: `{"status": "failed", "error": …, "attempt": n,
//! "failed_at": ms, "series": k, "retry_at": ms, "history": [...]}`: the
//! last failed attempt, when it failed (Unix milliseconds), its number
//! within the current series of retries, when the next attempt is due if
//! one is scheduled (a worker that takes the node over keeps to it), and
//! the last [`HISTORY`] failed attempts (`{"attempt", "error", "at"}`). A node whose output exists is done, whatever the
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
pub const JOURNAL_PREFIX: &str = crate::runs::JOURNAL_PREFIX;

fn key(run: FlowRunId, node: NodeId) -> String {
    format!("{JOURNAL_PREFIX}{run}/{node}")
}

/// Most bytes of an error kept in a journal entry (before `…`).
pub const MAX_ENTRY_BYTES: usize = 8 * 1024;

/// How many failed attempts an entry's history keeps (the latest).
pub const HISTORY: usize = 10;

/// Most bytes of each error kept in the history.
const HISTORY_ERROR_BYTES: usize = 1024;

/// The last failed attempt at a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Why it failed: safe to print, whatever the entry holds.
    pub error: String,
    /// Which attempt it was (1 for entries written before attempts were counted).
    pub attempt: u32,
    /// Its number within the current series of retries (1 for the first
    /// attempt of a series; entries written before retries: `attempt`).
    pub series: u32,
    /// When it failed, in Unix milliseconds (0 if not recorded).
    pub failed_at: i64,
    /// When the next attempt is due (Unix milliseconds), if one is scheduled.
    pub retry_at: Option<i64>,
    /// The latest failed attempts, oldest first: `(attempt, error)`.
    pub history: Vec<(u32, String)>,
}

/// One failed attempt, as [`record_attempt`] writes it.
#[derive(Clone, Debug)]
pub struct AttemptFailed<'a> {
    /// Why it failed.
    pub error: &'a str,
    /// Which attempt it was.
    pub attempt: u32,
    /// Its number within the current series of retries.
    pub series: u32,
    /// When the next attempt is due (Unix milliseconds), if one is.
    pub retry_at: Option<i64>,
}

/// The entry recording `failed`, after the history of `earlier` (the
/// entry before it, if any): one line, control characters neutralised.
fn entry(
    failed: &AttemptFailed<'_>,
    earlier: Option<&Failure>,
) -> Result<JsonText, ContextStoreError> {
    let now = crate::store::provenance::unix_millis_now();
    let mut history: Vec<Value> = earlier
        .map(|f| {
            f.history
                .iter()
                .map(|(attempt, error)| json!({ "attempt": attempt, "error": error }))
                .collect()
        })
        .unwrap_or_default();
    history.push(json!({
        "attempt": failed.attempt,
        "error": for_terminal(failed.error, HISTORY_ERROR_BYTES),
        "at": now,
    }));
    let keep = history.len().saturating_sub(HISTORY);
    history.drain(..keep);
    crate::store::encode(&json!({
        "status": "failed",
        "error": for_terminal(failed.error, MAX_ENTRY_BYTES),
        "attempt": failed.attempt,
        "series": failed.series,
        "failed_at": now,
        "retry_at": failed.retry_at,
        "history": history,
    }))
}

/// The failure an entry records, if it records one.
fn parse(entry: &JsonText) -> Option<Failure> {
    let entry = entry.to_value().ok()?;
    let Some(Value::String(error)) = entry.get("error") else {
        return None;
    };
    let number = |key: &str| {
        entry
            .get(key)
            .and_then(Value::as_u64)
            .and_then(|a| u32::try_from(a).ok())
    };
    let attempt = number("attempt").unwrap_or(1);
    let history = entry
        .get("history")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    let attempt = u32::try_from(item.get("attempt")?.as_u64()?).ok()?;
                    let error = item.get("error")?.as_str()?;
                    Some((attempt, for_terminal(error, HISTORY_ERROR_BYTES)))
                })
                .take(HISTORY)
                .collect()
        })
        .unwrap_or_default();
    Some(Failure {
        error: for_terminal(error, MAX_ENTRY_BYTES),
        attempt,
        series: number("series").unwrap_or(attempt),
        failed_at: entry.get("failed_at").and_then(Value::as_i64).unwrap_or(0),
        retry_at: entry.get("retry_at").and_then(Value::as_i64),
        history,
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
    let failed = AttemptFailed {
        error,
        attempt,
        series: attempt,
        retry_at: None,
    };
    record_attempt(store, cx, run, node, &failed).await
}

/// Records `failed` at `node` in `run` under `cx`, keeping the history of
/// the entry before it (one read and one write, on the failure path only).
pub async fn record_attempt(
    store: &dyn AsyncContextStore,
    cx: &CallContext,
    run: FlowRunId,
    node: NodeId,
    failed: &AttemptFailed<'_>,
) -> Result<(), ContextStoreError> {
    let key = key(run, node);
    let earlier = store.get_global(cx, &key).await?.as_ref().and_then(parse);
    store
        .upsert_global(cx, &key, &entry(failed, earlier.as_ref())?)
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
    let key = key(run, node);
    let earlier = store.get_global_text(&key)?.as_ref().and_then(parse);
    let failed = AttemptFailed {
        error,
        attempt,
        series: attempt,
        retry_at: None,
    };
    store.upsert_global_text(&key, &entry(&failed, earlier.as_ref())?)
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
