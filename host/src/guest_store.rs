//! [`GuestStore`]: the store as one invocation's guest sees it.
//!
//! Every store call a guest makes lands here, as untrusted text: ids are
//! parsed, the grant and the limits are checked, JSON is validated, and only
//! then is the store called. Nothing here trusts its input or
//! panics on it; every refusal is a [`GuestStoreError`] the guest can handle.
//! The type knows nothing of wasmtime, so that it can be tested and fuzzed
//! on its own.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::task::JoinHandle;

use crate::error::ContextStoreError;
use crate::grant::Grant;
use crate::id::{FlowRunId, NodeId};
use crate::json::{JsonError, JsonText};
use crate::limits::Limits;
use crate::slots::JobSlots;
use crate::store::{AsyncContextStore, CallContext, Provenance, provenance};

/// Why a guest's store call was refused: the WIT `error` variant, host side.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestStoreError {
    /// The output of this `(flow-run-id, node-id)` is already stored.
    #[error("output already exists")]
    AlreadyExists,
    /// The global key is already written.
    #[error("global already exists")]
    GlobalAlreadyExists,
    /// An id is not a hyphenated UUID.
    #[error("invalid id: {0}")]
    InvalidId(String),
    /// A value is not valid JSON or nests too deep.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The invocation's grant does not allow the call.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// A per-invocation limit was reached.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The storage backend failed.
    #[error("storage error: {0}")]
    Storage(String),
}

impl GuestStoreError {
    /// The WIT name of the variant (`"access-denied"`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "already-exists",
            Self::GlobalAlreadyExists => "global-already-exists",
            Self::InvalidId(_) => "invalid-id",
            Self::InvalidJson(_) => "invalid-json",
            Self::AccessDenied(_) => "access-denied",
            Self::QuotaExceeded(_) => "quota-exceeded",
            Self::Storage(_) => "storage",
        }
    }
}

impl From<ContextStoreError> for GuestStoreError {
    fn from(error: ContextStoreError) -> Self {
        match error {
            ContextStoreError::AlreadyExists { .. } => Self::AlreadyExists,
            ContextStoreError::GlobalAlreadyExists { .. } => Self::GlobalAlreadyExists,
            ContextStoreError::SerializationFailed(m) => Self::InvalidJson(m),
            other => Self::Storage(other.to_string()),
        }
    }
}

/// The result of a guest store call.
pub type GuestResult<T> = Result<T, GuestStoreError>;

/// One invocation's view of the store, with its grant and limits. Every
/// call it makes carries the invocation's [`CallContext`]: its deadline and,
/// on a shared run, the claim it runs under.
pub struct GuestStore {
    store: Arc<dyn AsyncContextStore>,
    cx: CallContext,
    flow_run_id: FlowRunId,
    node_id: NodeId,
    grant: Grant,
    limits: Limits,
    writes: u32,
    /// Read calls made so far, refused ones included.
    reads: u32,
    /// Bytes handed to the guest by its reads so far.
    read_bytes: u64,
    /// The invocation's declared upstreams: the nodes besides its own that
    /// it may read without [`Grant::read_run`].
    upstreams: HashSet<NodeId>,
    lost_race: bool,
    /// Whether a write was refused because the invocation's claim is no
    /// longer current.
    fenced: bool,
    /// Whether a call ended at the invocation's deadline.
    timed_out: bool,
    /// Stored with the invocation's own output, `ended_at` set at the put.
    provenance: Option<Provenance>,
    /// Writes running as tasks of their own, and the invocation's own
    /// output once its `put` succeeded.
    in_flight: InFlight,
    /// Outputs of this run read before the invocation started (its
    /// upstreams): stored outputs never change, so a `get` of one is
    /// answered from here, without a store call.
    known: Arc<HashMap<NodeId, JsonText>>,
    /// The runner's job slots: given back while a write waits for its
    /// commit, taken again after.
    slots: Option<JobSlots>,
}

/// A job slot given back for the time of one write: taken back, without
/// waiting, when dropped ([`JobSlots::reclaim`]).
struct Waiting {
    slots: JobSlots,
}

impl Waiting {
    fn new(slots: &JobSlots) -> Self {
        slots.release();
        Self {
            slots: slots.clone(),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.slots.reclaim();
    }
}

/// The writes of one invocation that run as tasks of their own (when the
/// caller may not block), so that a write whose caller was dropped at the
/// deadline still reaches its end, and the host can wait for it to learn
/// what the store holds.
///
/// It also keeps the invocation's own output once its `put` succeeded, so
/// that the host knows it even when the invocation's future was dropped.
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<Writes>);

#[derive(Debug, Default)]
struct Writes {
    tasks: Mutex<Vec<JoinHandle<()>>>,
    output: Mutex<Option<JsonText>>,
}

impl InFlight {
    fn track(&self, task: JoinHandle<()>) {
        let mut tasks = self.0.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    fn stored(&self, output: JsonText) {
        *self.0.output.lock().unwrap_or_else(PoisonError::into_inner) = Some(output);
    }

    /// The invocation's own output, if its `put` succeeded.
    pub fn output(&self) -> Option<JsonText> {
        self.0
            .output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until every write has ended, or until `until`; `false` if some
    /// write was still running then.
    pub async fn settle(&self, until: Instant) -> bool {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.0.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            if tokio::time::timeout_at(until.into(), task).await.is_err() {
                return false;
            }
        }
        true
    }
}

impl GuestStore {
    /// The store as the invocation of `node_id` in `flow_run_id` may use
    /// it, every call made under `cx`.
    pub fn new(
        store: Arc<dyn AsyncContextStore>,
        cx: CallContext,
        flow_run_id: FlowRunId,
        node_id: NodeId,
        grant: Grant,
        limits: Limits,
    ) -> Self {
        Self {
            store,
            cx,
            flow_run_id,
            node_id,
            grant,
            limits,
            writes: 0,
            reads: 0,
            read_bytes: 0,
            upstreams: HashSet::new(),
            lost_race: false,
            fenced: false,
            timed_out: false,
            provenance: None,
            in_flight: InFlight::default(),
            known: Arc::default(),
            slots: None,
        }
    }

    /// The invocation's declared upstreams: besides its own node, the nodes
    /// it may read (`get`, `list-keys`) when its grant does not widen reads
    /// to the whole run ([`Grant::read_run`]).
    pub fn with_upstreams(mut self, upstreams: impl IntoIterator<Item = NodeId>) -> Self {
        self.upstreams = upstreams.into_iter().collect();
        self
    }

    /// Answers `get`s of these outputs of the invocation's run without a
    /// store call: outputs already stored (an output never changes once
    /// stored, so the answer is the store's).
    pub fn with_known_outputs(mut self, known: Arc<HashMap<NodeId, JsonText>>) -> Self {
        self.known = known;
        self
    }

    /// Gives one of `slots` back while each write waits for its commit,
    /// and takes it back, without waiting, before the guest goes on (see
    /// [`JobSlots`]).
    pub fn sharing_slots(mut self, slots: Option<JobSlots>) -> Self {
        self.slots = slots;
        self
    }

    /// Tracks this store's writes in `in_flight` (shared with the host, which
    /// outlives the invocation's future).
    pub fn tracking(mut self, in_flight: InFlight) -> Self {
        self.in_flight = in_flight;
        self
    }

    /// Runs a write: inline where the caller may block, else as a task of
    /// its own (tracked in [`InFlight`]) whose result is awaited. `f` makes
    /// the write from the store, the call context and the [`InFlight`]
    /// (where the own `put` notes its output as soon as it is stored).
    async fn write<F, Fut>(&mut self, f: F) -> Result<(), ContextStoreError>
    where
        F: FnOnce(Arc<dyn AsyncContextStore>, CallContext, InFlight) -> Fut,
        Fut: Future<Output = Result<(), ContextStoreError>> + Send + 'static,
    {
        let write = f(self.store.clone(), self.cx, self.in_flight.clone());
        let waiting = self.slots.as_ref().map(Waiting::new);
        let result = if self.cx.may_block || tokio::runtime::Handle::try_current().is_err() {
            write.await
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.in_flight.track(tokio::spawn(async move {
                let _ = tx.send(write.await);
            }));
            rx.await.unwrap_or_else(|_| {
                Err(ContextStoreError::StorageError(
                    "the write's task ended without an answer".into(),
                ))
            })
        };
        drop(waiting);
        self.note(result)
    }

    /// Stores `provenance` with the invocation's own output, its
    /// [`ended_at`](Provenance::ended_at) set to the time of the `put`.
    pub fn with_provenance(mut self, provenance: Provenance) -> Self {
        self.provenance = Some(provenance);
        self
    }

    /// How many write calls the guest has made so far.
    pub fn writes(&self) -> u32 {
        self.writes
    }

    /// How many read calls the guest has made so far, refused ones included.
    pub fn reads(&self) -> u32 {
        self.reads
    }

    /// How many bytes the guest's reads have handed it so far.
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes
    }

    /// Whether the invocation may read `node` of its own run: its own node,
    /// a declared upstream, or any node under [`Grant::read_run`].
    pub fn may_read_node(&self, node: NodeId) -> bool {
        self.grant.read_run || node == self.node_id || self.upstreams.contains(&node)
    }

    /// `put`: only the invocation's own output may be written.
    pub async fn put(
        &mut self,
        flow_run_id: &str,
        node_id: &str,
        value: impl Into<String> + AsRef<str>,
    ) -> GuestResult<()> {
        self.count_write()?;
        let (run, node) = (parse_run(flow_run_id)?, parse_node(node_id)?);
        if run != self.flow_run_id {
            return Err(GuestStoreError::AccessDenied(format!(
                "put: flow run {run} is not this invocation's run"
            )));
        }
        if node != self.node_id {
            return Err(GuestStoreError::AccessDenied(format!(
                "put: node {node} is not this invocation's node; a step writes only its own output"
            )));
        }
        let value = self.check_value(value)?;
        let provenance = self.provenance.as_ref().map(|provenance| Provenance {
            ended_at: provenance::unix_millis_now(),
            ..provenance.clone()
        });
        let stored = self
            .write(move |store, cx, in_flight| async move {
                let stored = store.put(&cx, run, node, &value, provenance.as_ref()).await;
                if stored.is_ok() {
                    in_flight.stored(value);
                }
                stored
            })
            .await;
        match stored {
            Ok(()) => Ok(()),
            Err(e) => {
                if matches!(e, ContextStoreError::AlreadyExists { .. }) {
                    self.lost_race = true;
                }
                Err(e.into())
            }
        }
    }

    /// The invocation's own output, if this guest's `put` stored it: what
    /// the host reports without reading it back.
    pub fn own_output(&self) -> Option<JsonText> {
        self.in_flight.output()
    }

    /// Whether a write was refused because the claim the invocation runs
    /// under is no longer current (another worker took the node over).
    pub fn fenced(&self) -> bool {
        self.fenced
    }

    /// Notes a fencing refusal, and passes the result on.
    fn note<T>(&mut self, result: Result<T, ContextStoreError>) -> Result<T, ContextStoreError> {
        match result {
            Err(ContextStoreError::Fenced { .. }) => self.fenced = true,
            Err(ContextStoreError::Timeout(_)) => self.timed_out = true,
            _ => {}
        }
        result
    }

    /// Whether a store call ended at the invocation's deadline (so a
    /// failure the step reports after it is the deadline's).
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// Whether the guest's `put` of its own output found one already stored:
    /// another invocation of the same node (another process resuming the
    /// same run, say) finished first.
    pub fn lost_race(&self) -> bool {
        self.lost_race
    }

    /// `get`: the invocation's own output, or a declared upstream's (any
    /// node of its own run under [`Grant::read_run`]).
    pub async fn get(&mut self, flow_run_id: &str, node_id: &str) -> GuestResult<Option<String>> {
        self.count_read()?;
        let (run, node) = (parse_run(flow_run_id)?, parse_node(node_id)?);
        self.check_own_run(run, "get")?;
        if !self.may_read_node(node) {
            return Err(GuestStoreError::AccessDenied(format!(
                "get: node {node} is not an upstream of this step; \
                 its grant does not widen reads to the whole run"
            )));
        }
        if let Some(known) = self.known.get(&node).map(|t| t.as_str().to_owned()) {
            self.count_read_bytes(known.len())?;
            return Ok(Some(known));
        }
        let read = self.store.get(&self.cx, run, node).await;
        let text = self.note(read)?.map(JsonText::into_string);
        self.count_read_bytes(text.as_ref().map_or(0, String::len))?;
        Ok(text)
    }

    /// `list-keys`: the nodes of the invocation's own run that have an
    /// output and that it may read (its own and its declared upstreams';
    /// every one under [`Grant::read_run`]).
    pub async fn list_keys(&mut self, flow_run_id: &str) -> GuestResult<Vec<String>> {
        self.count_read()?;
        let run = parse_run(flow_run_id)?;
        self.check_own_run(run, "list-keys")?;
        let read = self.store.list_keys(&self.cx, run).await;
        let keys: Vec<String> = self
            .note(read)?
            .into_iter()
            .filter(|node| self.may_read_node(*node))
            .map(|node| node.to_string())
            .collect();
        self.count_read_bytes(keys.iter().map(String::len).sum())?;
        Ok(keys)
    }

    /// `put-global`: write-once, under a granted write prefix.
    pub async fn put_global(
        &mut self,
        key: &str,
        value: impl Into<String> + AsRef<str>,
    ) -> GuestResult<()> {
        self.count_write()?;
        self.check_global_write(key, "put-global")?;
        let value = self.check_value(value)?;
        let key = key.to_owned();
        Ok(self
            .write(move |store, cx, _| async move { store.put_global(&cx, &key, &value).await })
            .await?)
    }

    /// `upsert-global`: overwrite, under a granted write prefix.
    pub async fn upsert_global(
        &mut self,
        key: &str,
        value: impl Into<String> + AsRef<str>,
    ) -> GuestResult<()> {
        self.count_write()?;
        self.check_global_write(key, "upsert-global")?;
        let value = self.check_value(value)?;
        let key = key.to_owned();
        Ok(self
            .write(move |store, cx, _| async move { store.upsert_global(&cx, &key, &value).await })
            .await?)
    }

    /// `get-global`: under a granted read prefix.
    pub async fn get_global(&mut self, key: &str) -> GuestResult<Option<String>> {
        self.count_read()?;
        self.check_key(key)?;
        if !self.grant.may_read_global(key) {
            return Err(GuestStoreError::AccessDenied(format!(
                "get-global: key {} is not under a granted read prefix",
                shown(key)
            )));
        }
        let read = self.store.get_global(&self.cx, key).await;
        let text = self.note(read)?.map(JsonText::into_string);
        self.count_read_bytes(text.as_ref().map_or(0, String::len))?;
        Ok(text)
    }

    /// Counts one read call, refusing it past [`Limits::max_reads`] (or once
    /// the read bytes are used up).
    fn count_read(&mut self) -> GuestResult<()> {
        if self.reads >= self.limits.max_reads {
            return Err(GuestStoreError::QuotaExceeded(format!(
                "this invocation may make at most {} reads",
                self.limits.max_reads
            )));
        }
        self.reads += 1;
        if self.read_bytes >= self.limits.max_read_bytes {
            return Err(self.read_bytes_exceeded());
        }
        Ok(())
    }

    /// Counts `bytes` handed to the guest by a read, refusing the read (its
    /// text not handed over) if they pass [`Limits::max_read_bytes`].
    fn count_read_bytes(&mut self, bytes: usize) -> GuestResult<()> {
        let total = self
            .read_bytes
            .saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
        // What is refused counts too: a guest cannot retry its way past
        // the limit.
        self.read_bytes = total;
        if total > self.limits.max_read_bytes {
            return Err(self.read_bytes_exceeded());
        }
        Ok(())
    }

    fn read_bytes_exceeded(&self) -> GuestStoreError {
        GuestStoreError::QuotaExceeded(format!(
            "this invocation may read at most {} bytes",
            self.limits.max_read_bytes
        ))
    }

    fn count_write(&mut self) -> GuestResult<()> {
        if self.writes >= self.limits.max_writes {
            return Err(GuestStoreError::QuotaExceeded(format!(
                "this invocation may make at most {} writes",
                self.limits.max_writes
            )));
        }
        self.writes += 1;
        Ok(())
    }

    fn check_own_run(&self, run: FlowRunId, call: &str) -> GuestResult<()> {
        if run == self.flow_run_id {
            Ok(())
        } else {
            Err(GuestStoreError::AccessDenied(format!(
                "{call}: flow run {run} is not this invocation's run"
            )))
        }
    }

    fn check_key(&self, key: &str) -> GuestResult<()> {
        if key.len() > self.limits.max_key_bytes {
            return Err(GuestStoreError::QuotaExceeded(format!(
                "global key of {} bytes is longer than the limit of {} bytes",
                key.len(),
                self.limits.max_key_bytes
            )));
        }
        Ok(())
    }

    fn check_global_write(&self, key: &str, call: &str) -> GuestResult<()> {
        self.check_key(key)?;
        if self.grant.may_write_global(key) {
            Ok(())
        } else {
            Err(GuestStoreError::AccessDenied(format!(
                "{call}: key {} is not under a granted write prefix",
                shown(key)
            )))
        }
    }

    /// Checks size, then syntax and depth without building a tree: a
    /// hostile document costs the host no more than its bytes, and the text
    /// is stored exactly as the guest wrote it.
    fn check_value(&self, text: impl Into<String> + AsRef<str>) -> GuestResult<JsonText> {
        let len = text.as_ref().len();
        if len > self.limits.max_value_bytes {
            return Err(GuestStoreError::QuotaExceeded(format!(
                "value of {len} bytes is larger than the limit of {} bytes",
                self.limits.max_value_bytes
            )));
        }
        JsonText::parse(text, self.limits.max_json_depth).map_err(|e| match e {
            JsonError::Syntax(m) => GuestStoreError::InvalidJson(m),
            too_deep @ JsonError::TooDeep { .. } => {
                GuestStoreError::InvalidJson(too_deep.to_string())
            }
        })
    }
}

fn parse_run(text: &str) -> GuestResult<FlowRunId> {
    text.parse()
        .map_err(|e: crate::id::IdParseError| GuestStoreError::InvalidId(e.to_string()))
}

fn parse_node(text: &str) -> GuestResult<NodeId> {
    text.parse()
        .map_err(|e: crate::id::IdParseError| GuestStoreError::InvalidId(e.to_string()))
}

/// A key for an error message: quoted, and cut to 64 characters.
fn shown(key: &str) -> String {
    crate::text::quoted(key, 64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ContextStore;
    use crate::store::sqlite::SqliteContextStore;

    fn guest(
        grant: Grant,
        limits: Limits,
    ) -> (GuestStore, Arc<dyn ContextStore>, FlowRunId, NodeId) {
        let store: Arc<dyn ContextStore> = Arc::new(SqliteContextStore::in_memory().unwrap());
        let (run, node) = (FlowRunId::new(), NodeId::new());
        let view = crate::store::to_async(store.clone());
        (
            GuestStore::new(view, CallContext::none(), run, node, grant, limits),
            store,
            run,
            node,
        )
    }

    /// Drives one guest call to its end.
    fn wait<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn own_output_round_trips_as_text() {
        let (mut g, _, run, node) = guest(Grant::default(), Limits::default());
        let (r, n) = (run.to_string(), node.to_string());
        wait(g.put(&r, &n, r#"{"a": [1, 2.5, "x"]}"#)).unwrap();
        assert_eq!(
            wait(g.get(&r, &n)).unwrap().as_deref(),
            Some(r#"{"a": [1, 2.5, "x"]}"#),
            "the text comes back exactly as written"
        );
        assert_eq!(
            wait(g.put(&r, &n, "2")),
            Err(GuestStoreError::AlreadyExists)
        );
        assert_eq!(wait(g.list_keys(&r)).unwrap(), vec![n]);
    }

    #[test]
    fn writes_outside_the_own_node_are_denied_and_write_nothing() {
        let (mut g, store, run, node) = guest(Grant::default(), Limits::default());
        let other_node = NodeId::new();
        let other_run = FlowRunId::new();
        let err = wait(g.put(&run.to_string(), &other_node.to_string(), "1")).unwrap_err();
        assert_eq!(err.kind(), "access-denied");
        let err = wait(g.put(&other_run.to_string(), &node.to_string(), "1")).unwrap_err();
        assert_eq!(err.kind(), "access-denied");
        assert_eq!(store.get(run, other_node).unwrap(), None);
        assert_eq!(store.get(other_run, node).unwrap(), None);
    }

    #[test]
    fn reads_of_other_runs_are_denied() {
        let (mut g, store, _, node) = guest(Grant::default(), Limits::default());
        let other_run = FlowRunId::new();
        store
            .put(other_run, node, &serde_json::json!("secret"))
            .unwrap();
        assert_eq!(
            wait(g.get(&other_run.to_string(), &node.to_string()))
                .unwrap_err()
                .kind(),
            "access-denied"
        );
        assert_eq!(
            wait(g.list_keys(&other_run.to_string()))
                .unwrap_err()
                .kind(),
            "access-denied"
        );
    }

    #[test]
    fn globals_need_a_granted_prefix() {
        let grant = Grant::default()
            .read_globals("shared/")
            .write_globals("mine/");
        let (mut g, store, ..) = guest(grant, Limits::default());
        assert_eq!(
            wait(g.put_global("secret/key", "1")).unwrap_err().kind(),
            "access-denied"
        );
        assert_eq!(
            wait(g.upsert_global("shared/x", "1")).unwrap_err().kind(),
            "access-denied"
        );
        assert_eq!(
            wait(g.get_global("mine/x")).unwrap_err().kind(),
            "access-denied"
        );
        wait(g.put_global("mine/x", "1")).unwrap();
        assert_eq!(
            wait(g.put_global("mine/x", "2")),
            Err(GuestStoreError::GlobalAlreadyExists)
        );
        wait(g.upsert_global("mine/x", "3")).unwrap();
        store.put_global("shared/x", &serde_json::json!(7)).unwrap();
        assert_eq!(
            wait(g.get_global("shared/x")).unwrap().as_deref(),
            Some("7")
        );
        assert_eq!(store.get_global("secret/key").unwrap(), None);
        assert_eq!(
            store.get_global("mine/x").unwrap(),
            Some(serde_json::json!(3))
        );
    }

    #[test]
    fn bad_ids_and_bad_json_are_typed_errors() {
        let (mut g, _, run, node) = guest(Grant::default(), Limits::default());
        assert_eq!(
            wait(g.put("nope", &node.to_string(), "1"))
                .unwrap_err()
                .kind(),
            "invalid-id"
        );
        assert_eq!(
            wait(g.get(&run.to_string(), "")).unwrap_err().kind(),
            "invalid-id"
        );
        assert_eq!(wait(g.list_keys("\u{0}")).unwrap_err().kind(), "invalid-id");
        let err = wait(g.put(&run.to_string(), &node.to_string(), "{not json")).unwrap_err();
        assert_eq!(err.kind(), "invalid-json");
        assert_eq!(
            wait(g.put(&run.to_string(), &node.to_string(), ""))
                .unwrap_err()
                .kind(),
            "invalid-json"
        );
    }

    #[test]
    fn limits_refuse_big_deep_and_too_many_writes() {
        let limits = Limits {
            max_value_bytes: 10,
            max_writes: 3,
            max_json_depth: 2,
            ..Limits::default()
        };
        let (mut g, store, run, node) = guest(Grant::default().write_globals(""), limits);
        let (r, n) = (run.to_string(), node.to_string());
        assert_eq!(
            wait(g.put(&r, &n, "\"0123456789\"")).unwrap_err().kind(),
            "quota-exceeded"
        );
        assert_eq!(
            wait(g.put(&r, &n, "[[[1]]]")).unwrap_err().kind(),
            "invalid-json"
        );
        wait(g.put(&r, &n, "[[1]]")).unwrap();
        assert_eq!(
            wait(g.put_global("k", "1")).unwrap_err().kind(),
            "quota-exceeded"
        );
        assert_eq!(g.writes(), 3);
        assert_eq!(
            store.get(run, node).unwrap(),
            Some(serde_json::json!([[1]]))
        );
        assert_eq!(store.get_global("k").unwrap(), None);
    }

    #[test]
    fn reads_reach_only_the_own_node_and_upstreams_unless_widened() {
        let store: Arc<dyn ContextStore> = Arc::new(SqliteContextStore::in_memory().unwrap());
        let (run, me, up, other) = (
            FlowRunId::new(),
            NodeId::new(),
            NodeId::new(),
            NodeId::new(),
        );
        store.put(run, up, &serde_json::json!("up")).unwrap();
        store.put(run, other, &serde_json::json!("other")).unwrap();
        let view = |grant: Grant| {
            GuestStore::new(
                crate::store::to_async(store.clone()),
                CallContext::none(),
                run,
                me,
                grant,
                Limits::default(),
            )
            .with_upstreams([up])
        };
        let r = run.to_string();
        let mut g = view(Grant::default());
        assert_eq!(
            wait(g.get(&r, &up.to_string())).unwrap().as_deref(),
            Some("\"up\"")
        );
        let err = wait(g.get(&r, &other.to_string())).unwrap_err();
        assert_eq!(err.kind(), "access-denied");
        assert!(
            err.to_string().contains(&format!(
                "node {other} is not an upstream of this step; its grant does not widen reads to the whole run"
            )),
            "{err}"
        );
        assert_eq!(wait(g.get(&r, &me.to_string())).unwrap(), None);
        assert_eq!(wait(g.list_keys(&r)).unwrap(), vec![up.to_string()]);
        wait(g.put(&r, &me.to_string(), "1")).unwrap();
        let mut listed = wait(g.list_keys(&r)).unwrap();
        listed.sort();
        let mut expected = vec![up.to_string(), me.to_string()];
        expected.sort();
        assert_eq!(listed, expected);
        assert_eq!(g.reads(), 5, "the refused get counts too");

        let mut wide = view(Grant::default().read_whole_run());
        assert_eq!(
            wait(wide.get(&r, &other.to_string())).unwrap().as_deref(),
            Some("\"other\"")
        );
        assert_eq!(wait(wide.list_keys(&r)).unwrap().len(), 3);
        assert_eq!(
            wait(wide.get(&FlowRunId::new().to_string(), &other.to_string()))
                .unwrap_err()
                .kind(),
            "access-denied",
            "the widening stops at the run"
        );
    }

    #[test]
    fn known_outputs_of_other_nodes_are_not_handed_out() {
        let (g, _, run, _) = guest(Grant::default(), Limits::default());
        let other = NodeId::new();
        let known = HashMap::from([(other, JsonText::from_stored("7".into()))]);
        let mut g = g.with_known_outputs(Arc::new(known));
        assert_eq!(
            wait(g.get(&run.to_string(), &other.to_string()))
                .unwrap_err()
                .kind(),
            "access-denied"
        );
    }

    #[test]
    fn reads_are_counted_refused_ones_included() {
        let limits = Limits {
            max_reads: 3,
            ..Limits::default()
        };
        let (mut g, _, run, node) = guest(Grant::default().read_globals("g/"), limits);
        let (r, n) = (run.to_string(), node.to_string());
        assert_eq!(
            wait(g.get(&r, &NodeId::new().to_string()))
                .unwrap_err()
                .kind(),
            "access-denied"
        );
        assert_eq!(
            wait(g.get_global("secret")).unwrap_err().kind(),
            "access-denied"
        );
        assert_eq!(wait(g.list_keys(&r)).unwrap(), Vec::<String>::new());
        for refused in [
            wait(g.get(&r, &n)).map(|_| ()),
            wait(g.get_global("g/x")).map(|_| ()),
            wait(g.list_keys(&r)).map(|_| ()),
            wait(g.get("not an id", &n)).map(|_| ()),
        ] {
            let err = refused.unwrap_err();
            assert_eq!(err.kind(), "quota-exceeded", "{err}");
            assert!(err.to_string().contains("at most 3 reads"), "{err}");
        }
    }

    #[test]
    fn read_bytes_are_bounded() {
        let limits = Limits {
            max_read_bytes: 10,
            ..Limits::default()
        };
        let (mut g, store, run, node) = guest(Grant::default().read_globals(""), limits);
        store
            .put_global("small", &serde_json::json!("abc"))
            .unwrap();
        store
            .put_global("big", &serde_json::json!("0123456789"))
            .unwrap();
        let (r, n) = (run.to_string(), node.to_string());
        assert_eq!(
            wait(g.get_global("small")).unwrap().as_deref(),
            Some("\"abc\"")
        );
        assert_eq!(g.read_bytes(), 5);
        let err = wait(g.get_global("big")).unwrap_err();
        assert_eq!(err.kind(), "quota-exceeded");
        assert!(err.to_string().contains("at most 10 bytes"), "{err}");
        assert_eq!(
            wait(g.get_global("small")).unwrap_err().kind(),
            "quota-exceeded",
            "the budget is used up once a read was refused for it"
        );
        assert_eq!(wait(g.get(&r, &n)).unwrap_err().kind(), "quota-exceeded");
    }
}
