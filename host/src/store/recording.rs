//! [`RecordingStore`]: a [`ContextStore`] decorator that records every call
//! made through it, with its result, for tracing what a step did.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use crate::store::{ContextStore, Provenance};

/// Values longer than this are shortened in a [`StoreCall`]'s display.
const SHOWN_VALUE_BYTES: usize = 200;

/// One call made through a [`RecordingStore`], with its result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreCall {
    /// The operation and its arguments.
    pub op: StoreOp,
    /// What it returned: `Ok(None)` for a call without a value (a write, or
    /// a read of nothing), `Ok(Some(text))` for a value, `Err(message)` for
    /// an error.
    pub result: Result<Option<String>, String>,
}

/// A [`ContextStore`] operation and its arguments (values as JSON text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// `put_text(flow_run_id, node_id, value)`.
    Put(FlowRunId, NodeId, String),
    /// `get_text(flow_run_id, node_id)`.
    Get(FlowRunId, NodeId),
    /// `list_keys(flow_run_id)`.
    ListKeys(FlowRunId),
    /// `put_global_text(key, value)`.
    PutGlobal(String, String),
    /// `upsert_global_text(key, value)`.
    UpsertGlobal(String, String),
    /// `get_global_text(key)`.
    GetGlobal(String),
}

/// `text`, cut to [`SHOWN_VALUE_BYTES`] on a character boundary.
fn shorten(text: &str) -> String {
    if text.len() <= SHOWN_VALUE_BYTES {
        return text.to_owned();
    }
    let mut end = SHOWN_VALUE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

impl fmt::Display for StoreOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreOp::Put(run, node, value) => write!(f, "put({run}, {node}, {})", shorten(value)),
            StoreOp::Get(run, node) => write!(f, "get({run}, {node})"),
            StoreOp::ListKeys(run) => write!(f, "list-keys({run})"),
            StoreOp::PutGlobal(key, value) => write!(f, "put-global({key:?}, {})", shorten(value)),
            StoreOp::UpsertGlobal(key, value) => {
                write!(f, "upsert-global({key:?}, {})", shorten(value))
            }
            StoreOp::GetGlobal(key) => write!(f, "get-global({key:?})"),
        }
    }
}

impl fmt::Display for StoreCall {
    /// `get(<run>, <node>) -> {"a":1}`, `put(…) -> ok`, `get(…) -> none`,
    /// `put(…) -> error: output already exists for (…)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reads = matches!(
            self.op,
            StoreOp::Get(..) | StoreOp::GetGlobal(_) | StoreOp::ListKeys(_)
        );
        match &self.result {
            Ok(Some(value)) => write!(f, "{} -> {}", self.op, shorten(value)),
            Ok(None) if reads => write!(f, "{} -> none", self.op),
            Ok(None) => write!(f, "{} -> ok", self.op),
            Err(message) => write!(f, "{} -> error: {message}", self.op),
        }
    }
}

/// Called with every call as it completes.
type Observer = Box<dyn Fn(&StoreCall) + Send + Sync>;

/// Wraps a [`ContextStore`] and records every call made through it, in
/// order, with its result; an optional observer sees each call as it
/// completes (to print a live trace).
///
/// ```
/// use std::sync::Arc;
/// use contextstore::{ContextStore, SqliteContextStore};
/// use contextstore::store::recording::RecordingStore;
///
/// let recording = Arc::new(RecordingStore::new(Arc::new(SqliteContextStore::in_memory()?)));
/// recording.upsert_global("k", &serde_json::json!(1))?;
/// assert_eq!(recording.calls()[0].to_string(), r#"upsert-global("k", 1) -> ok"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RecordingStore {
    inner: Arc<dyn ContextStore>,
    /// The async view of `inner`, which the async calls go through (so that
    /// their deadlines and fences reach the backend).
    #[cfg(feature = "async")]
    inner_async: Arc<dyn super::AsyncContextStore>,
    calls: Mutex<Vec<StoreCall>>,
    observer: Option<Observer>,
}

impl RecordingStore {
    /// Records the calls made to `inner`.
    pub fn new(inner: Arc<dyn ContextStore>) -> Self {
        RecordingStore {
            #[cfg(feature = "async")]
            inner_async: super::to_async(inner.clone()),
            inner,
            calls: Mutex::new(Vec::new()),
            observer: None,
        }
    }

    /// Records the calls made to `inner` and shows each to `observer` as it
    /// completes.
    pub fn with_observer(
        inner: Arc<dyn ContextStore>,
        observer: impl Fn(&StoreCall) + Send + Sync + 'static,
    ) -> Self {
        RecordingStore {
            observer: Some(Box::new(observer)),
            ..RecordingStore::new(inner)
        }
    }

    /// The calls made so far, in the order they completed.
    pub fn calls(&self) -> Vec<StoreCall> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record<T>(
        &self,
        op: StoreOp,
        result: Result<T, ContextStoreError>,
        shown: impl FnOnce(&T) -> Option<String>,
    ) -> Result<T, ContextStoreError> {
        let call = StoreCall {
            op,
            result: result.as_ref().map(shown).map_err(ToString::to_string),
        };
        if let Some(observer) = &self.observer {
            observer(&call);
        }
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
        result
    }
}

impl fmt::Debug for RecordingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingStore")
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

fn text(value: &Option<JsonText>) -> Option<String> {
    value.as_ref().map(|t| t.as_str().to_owned())
}

impl ContextStore for RecordingStore {
    fn put_text(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        let op = StoreOp::Put(flow_run_id, node_id, value.as_str().to_owned());
        self.record(op, self.inner.put_text(flow_run_id, node_id, value), |_| {
            None
        })
    }

    fn get_text(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        let op = StoreOp::Get(flow_run_id, node_id);
        self.record(op, self.inner.get_text(flow_run_id, node_id), text)
    }

    fn list_keys(&self, flow_run_id: FlowRunId) -> Result<Vec<NodeId>, ContextStoreError> {
        let op = StoreOp::ListKeys(flow_run_id);
        self.record(op, self.inner.list_keys(flow_run_id), |keys| {
            let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
            Some(format!("[{}]", keys.join(", ")))
        })
    }

    fn put_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError> {
        let op = StoreOp::PutGlobal(key.to_owned(), value.as_str().to_owned());
        self.record(op, self.inner.put_global_text(key, value), |_| None)
    }

    fn upsert_global_text(&self, key: &str, value: &JsonText) -> Result<(), ContextStoreError> {
        let op = StoreOp::UpsertGlobal(key.to_owned(), value.as_str().to_owned());
        self.record(op, self.inner.upsert_global_text(key, value), |_| None)
    }

    fn get_global_text(&self, key: &str) -> Result<Option<JsonText>, ContextStoreError> {
        let op = StoreOp::GetGlobal(key.to_owned());
        self.record(op, self.inner.get_global_text(key), text)
    }

    fn describe(&self) -> Result<crate::store::StoreInfo, ContextStoreError> {
        self.inner.describe()
    }

    fn put_text_with_provenance(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
        provenance: &Provenance,
    ) -> Result<(), ContextStoreError> {
        let op = StoreOp::Put(flow_run_id, node_id, value.as_str().to_owned());
        let result = self
            .inner
            .put_text_with_provenance(flow_run_id, node_id, value, provenance);
        self.record(op, result, |_| None)
    }

    fn provenance(
        &self,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError> {
        self.inner.provenance(flow_run_id, node_id)
    }

    #[cfg(feature = "async")]
    fn as_async(&self) -> Option<&dyn super::AsyncContextStore> {
        Some(self)
    }

    #[cfg(feature = "async")]
    fn into_async(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn super::AsyncContextStore>> {
        Some(self)
    }
}

/// The same records, for calls made through the async interface: each
/// goes to the wrapped store's own async calls with its context.
#[cfg(feature = "async")]
#[async_trait::async_trait]
impl super::AsyncContextStore for RecordingStore {
    async fn put(
        &self,
        cx: &super::CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        value: &JsonText,
        provenance: Option<&Provenance>,
    ) -> Result<(), ContextStoreError> {
        let op = StoreOp::Put(flow_run_id, node_id, value.as_str().to_owned());
        let result = self
            .inner_async
            .put(cx, flow_run_id, node_id, value, provenance)
            .await;
        self.record(op, result, |_| None)
    }

    async fn get(
        &self,
        cx: &super::CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        let op = StoreOp::Get(flow_run_id, node_id);
        let result = self.inner_async.get(cx, flow_run_id, node_id).await;
        self.record(op, result, text)
    }

    async fn list_keys(
        &self,
        cx: &super::CallContext,
        flow_run_id: FlowRunId,
    ) -> Result<Vec<NodeId>, ContextStoreError> {
        let op = StoreOp::ListKeys(flow_run_id);
        let result = self.inner_async.list_keys(cx, flow_run_id).await;
        self.record(op, result, |keys| {
            let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
            Some(format!("[{}]", keys.join(", ")))
        })
    }

    async fn put_global(
        &self,
        cx: &super::CallContext,
        key: &str,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        let op = StoreOp::PutGlobal(key.to_owned(), value.as_str().to_owned());
        let result = self.inner_async.put_global(cx, key, value).await;
        self.record(op, result, |_| None)
    }

    async fn upsert_global(
        &self,
        cx: &super::CallContext,
        key: &str,
        value: &JsonText,
    ) -> Result<(), ContextStoreError> {
        let op = StoreOp::UpsertGlobal(key.to_owned(), value.as_str().to_owned());
        let result = self.inner_async.upsert_global(cx, key, value).await;
        self.record(op, result, |_| None)
    }

    async fn get_global(
        &self,
        cx: &super::CallContext,
        key: &str,
    ) -> Result<Option<JsonText>, ContextStoreError> {
        let op = StoreOp::GetGlobal(key.to_owned());
        let result = self.inner_async.get_global(cx, key).await;
        self.record(op, result, text)
    }

    async fn provenance(
        &self,
        cx: &super::CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
    ) -> Result<Option<Provenance>, ContextStoreError> {
        self.inner_async.provenance(cx, flow_run_id, node_id).await
    }

    fn coordinator(&self) -> Option<&dyn crate::coord::Coordinator> {
        self.inner_async.coordinator()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteContextStore;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn recording() -> RecordingStore {
        RecordingStore::new(Arc::new(SqliteContextStore::in_memory().unwrap()))
    }

    #[test]
    fn records_every_call_with_its_result_in_order() {
        let store = recording();
        let (run, node) = (FlowRunId::new(), NodeId::new());
        store.put(run, node, &json!({"a": 1})).unwrap();
        assert!(store.put(run, node, &json!(2)).is_err());
        assert_eq!(store.get(run, node).unwrap(), Some(json!({"a": 1})));
        assert_eq!(store.get(run, NodeId::new()).unwrap(), None);
        store.list_keys(run).unwrap();
        store.upsert_global("k", &json!("v")).unwrap();
        assert!(store.put_global("k", &json!("w")).is_err());
        store.get_global("k").unwrap();

        let calls: Vec<String> = store.calls().iter().map(ToString::to_string).collect();
        assert_eq!(calls.len(), 8);
        assert_eq!(calls[0], format!(r#"put({run}, {node}, {{"a":1}}) -> ok"#));
        assert!(
            calls[1].starts_with(&format!(
                "put({run}, {node}, 2) -> error: output already exists"
            )),
            "{}",
            calls[1]
        );
        assert_eq!(calls[2], format!(r#"get({run}, {node}) -> {{"a":1}}"#));
        assert!(calls[3].ends_with(") -> none"), "{}", calls[3]);
        assert_eq!(calls[4], format!("list-keys({run}) -> [{node}]"));
        assert_eq!(calls[5], r#"upsert-global("k", "v") -> ok"#);
        assert!(
            calls[6].starts_with(r#"put-global("k", "w") -> error: "#),
            "{}",
            calls[6]
        );
        assert_eq!(calls[7], r#"get-global("k") -> "v""#);
    }

    #[test]
    fn the_observer_sees_each_call_and_values_are_shortened() {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let store = RecordingStore::with_observer(
            Arc::new(SqliteContextStore::in_memory().unwrap()),
            move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            },
        );
        let long = "é".repeat(300);
        store.upsert_global("big", &json!(long)).unwrap();
        store.get_global("big").unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        let shown = store.calls()[1].to_string();
        assert!(shown.ends_with("… (602 bytes)"), "{shown}");
        assert!(shown.len() < 300, "{shown}");
    }
}
