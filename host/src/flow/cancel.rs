//! Cancelling a run: a mark in the store that every worker of the run
//! watches. A worker that sees it stops its running steps at once (as a
//! deadline does: nothing they write afterwards is stored), starts no new
//! node, and ends the run with [`FlowError::Cancelled`](super::FlowError::Cancelled)
//! (`contextstore flow run` exits with code 3). A cancelled run is not run
//! again unless the mark is lifted first ([`resume_cancelled`],
//! `flow run --resume-cancelled`).
//!
//! The mark is a global under [`CANCEL_PREFIX`] (`contextstore.cancel/<run
//! id>`): `{"cancelled": true, "at": ms}`, or `{"cancelled": false,
//! "resumed_at": ms}` once lifted. Steps never see it: the prefix is under
//! [`RESERVED_PREFIX`](crate::grant::RESERVED_PREFIX).

use serde_json::json;

use crate::error::ContextStoreError;
use crate::id::FlowRunId;
use crate::json::JsonText;
use crate::store::{AsyncContextStore, CallContext, ContextStore, provenance};

/// The key prefix of cancellation marks among the globals.
pub const CANCEL_PREFIX: &str = crate::runs::CANCEL_PREFIX;

/// How often a running worker looks for the mark.
pub(super) const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

use crate::runs::cancel_key as key;

/// When a mark says the run was cancelled (Unix milliseconds), if it does.
fn cancelled_at(mark: Option<&JsonText>) -> Option<i64> {
    crate::runs::cancelled_at(mark?.as_str())
}

/// Marks `run` cancelled: its workers stop their steps and end. Cancelling
/// a run twice, or a run that has ended, changes nothing more.
pub fn cancel(store: &dyn ContextStore, run: FlowRunId) -> Result<(), ContextStoreError> {
    if is_cancelled(store, run)?.is_some() {
        return Ok(());
    }
    let mark =
        crate::store::encode(&json!({ "cancelled": true, "at": provenance::unix_millis_now() }))?;
    store.upsert_global_text(&key(run), &mark)
}

/// When `run` was cancelled (Unix milliseconds), if it is.
pub fn is_cancelled(
    store: &dyn ContextStore,
    run: FlowRunId,
) -> Result<Option<i64>, ContextStoreError> {
    Ok(cancelled_at(store.get_global_text(&key(run))?.as_ref()))
}

/// Lifts the cancellation of `run`, so that it can be run (resumed) again;
/// says whether it was cancelled.
pub fn resume_cancelled(
    store: &dyn ContextStore,
    run: FlowRunId,
) -> Result<bool, ContextStoreError> {
    if is_cancelled(store, run)?.is_none() {
        return Ok(false);
    }
    let mark = crate::store::encode(
        &json!({ "cancelled": false, "resumed_at": provenance::unix_millis_now() }),
    )?;
    store.upsert_global_text(&key(run), &mark)?;
    Ok(true)
}

/// Whether `run` is cancelled, through the async interface (the runner's
/// watch).
pub(super) async fn cancelled(
    store: &dyn AsyncContextStore,
    cx: &CallContext,
    run: FlowRunId,
) -> Result<bool, ContextStoreError> {
    Ok(cancelled_at(store.get_global(cx, &key(run)).await?.as_ref()).is_some())
}
