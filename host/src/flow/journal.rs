//! The flow journal: why a node failed, kept in the store beside the
//! outputs, so that `flow status` can tell failed nodes from pending ones.
//!
//! Failures are globals under [`JOURNAL_PREFIX`]
//! (`contextstore.flow/<run id>/<node id>`), written by the host with
//! `upsert_global`. A node whose output exists is done, whatever the journal
//! says. Steps never see these keys: the prefix is under
//! [`RESERVED_PREFIX`](crate::grant::RESERVED_PREFIX), which no grant reaches.

use serde_json::{Value, json};

use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::store::ContextStore;
use crate::text::for_terminal;

/// The key prefix of journal entries among the globals.
pub const JOURNAL_PREFIX: &str = "contextstore.flow/";

fn key(run: FlowRunId, node: NodeId) -> String {
    format!("{JOURNAL_PREFIX}{run}/{node}")
}

/// Most bytes of an error kept in a journal entry (before `…`).
pub const MAX_ENTRY_BYTES: usize = 8 * 1024;

/// Records that `node` failed in `run`, and why. The error (which may
/// quote the step) is kept as one line of at most [`MAX_ENTRY_BYTES`], with
/// control characters and escape sequences neutralised.
pub fn record_failure(
    store: &dyn ContextStore,
    run: FlowRunId,
    node: NodeId,
    error: &str,
) -> Result<(), ContextStoreError> {
    store.upsert_global(
        &key(run, node),
        &json!({ "status": "failed", "error": for_terminal(error, MAX_ENTRY_BYTES) }),
    )
}

/// Why `node` last failed in `run`, if it did: safe to print, whatever the
/// entry holds.
pub fn failure(
    store: &dyn ContextStore,
    run: FlowRunId,
    node: NodeId,
) -> Result<Option<String>, ContextStoreError> {
    Ok(store
        .get_global(&key(run, node))?
        .and_then(|entry| match entry.get("error") {
            Some(Value::String(error)) => Some(for_terminal(error, MAX_ENTRY_BYTES)),
            _ => None,
        }))
}
