//! Coordination of workers that share a flow run: claims on nodes, leases,
//! fencing tokens and worker identity. It is its own interface beside the
//! store ([`Coordinator`]), offered by backends that many hosts share
//! (PostgreSQL); an SQLite file, used by one process, has none, and the flow
//! runner then runs every node itself.
//!
//! # Claims, leases and fencing
//!
//! A worker claims a ready node before running it. The claim is a lease: it
//! holds until `lease_until` on the database's clock, and the worker renews
//! it while the node runs. A worker that dies stops renewing; once the lease
//! has expired another worker may claim the node. Every claim of a node
//! gets a fencing token one greater than the last ([`Fence`]), and every
//! write the invocation makes (its output, its globals, the journal) carries
//! it: the backend accepts the write only while that token is current,
//! checked in the write's own transaction. A worker paused past its lease
//! (a GC pause, a stopped VM) that wakes after another worker took the node
//! over is refused ([`ContextStoreError::Fenced`]) and changes nothing.
//!
//! What fencing does not cover: reads. An invocation that lost its claim may
//! still read outputs and globals until the runner stops it (it does at the
//! first failed renewal or when the lease runs out on the worker's own
//! clock), and what it read may be newer than what its successor read.
//!
//! # Worker identity
//!
//! A worker is a [`WorkerId`]: the name an operator gives it (shown by
//! `flow status`) and an incarnation, unique per process start. Claims
//! belong to the incarnation: a worker restarted under the same name never
//! renews or waits on its predecessor's claims as its own; it takes them
//! over when their leases expire, like any other worker.

use std::time::Duration;

use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
pub use crate::store::Stored;
pub use crate::store::call::{CallContext, Fence};

/// One worker process: the name it was given and its incarnation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkerId {
    /// The operator's name for the worker (default `host:pid`).
    pub name: String,
    /// Unique per process start: tells a restarted worker from its
    /// predecessor, and two live processes given the same name apart.
    pub incarnation: uuid::Uuid,
}

impl WorkerId {
    /// A new incarnation of the worker called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            incarnation: uuid::Uuid::new_v4(),
        }
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = self.incarnation.simple().to_string();
        write!(f, "{} ({})", self.name, &short[..8])
    }
}

/// What [`Coordinator::claim`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the node now.
    Won {
        /// How many times the node has been claimed, this claim included
        /// (1 for the first, more after leases expired or claims were given up).
        attempt: u32,
        /// The claim's fence, for every write made under it.
        fence: Fence,
    },
    /// Another worker (or another incarnation of this worker's name) holds
    /// a lease on the node that has not expired.
    Held {
        /// The name of the worker holding it.
        worker: String,
        /// Whether the holder has this worker's name (a predecessor of a
        /// restarted worker, or a second live process given the same name).
        same_name: bool,
        /// How long until its lease expires, unless renewed.
        lease_left: Duration,
    },
    /// A worker has finished the node (its output is stored).
    Finished {
        /// The worker that finished it.
        worker: String,
        /// The node's output with its provenance, when the claim call read
        /// it with its answer ([`claim_many`](Coordinator::claim_many) over
        /// PostgreSQL does: one round trip tells a worker what another
        /// finished); `None` otherwise.
        stored: Option<Box<Stored>>,
    },
}

/// Where one node's claim stands, for `flow status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRecord {
    /// The node.
    pub node_id: NodeId,
    /// The worker that holds or last held the node.
    pub worker: String,
    /// The incarnation of that worker.
    pub incarnation: uuid::Uuid,
    /// How many times the node was claimed.
    pub attempt: u32,
    /// The current fencing token.
    pub token: i64,
    /// Whether the worker has finished the node.
    pub finished: bool,
    /// Time left on the lease (zero once expired; zero when finished).
    pub lease_left: Duration,
}

/// What a renewal found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Renewal {
    /// The unfinished claims the worker still holds, now extended.
    pub held: Vec<NodeId>,
}

/// Leases on the nodes of flow runs, shared by every worker of a store.
/// Claims live apart from outputs and globals: no guest call reaches them.
/// Every call carries its [`CallContext`] (its deadline).
#[async_trait::async_trait]
pub trait Coordinator: Send + Sync {
    /// Claims `node` of `run` for `worker` for `lease`: wins when nobody
    /// claimed it, when the last claim's lease has expired without the node
    /// being finished, or when it was given up; each win gets a new,
    /// greater fencing token. A claim that `worker` (this incarnation)
    /// already holds is won again with the same token, so a retried call
    /// whose first answer was lost is harmless.
    async fn claim(
        &self,
        cx: &CallContext,
        run: FlowRunId,
        node: NodeId,
        worker: &WorkerId,
        lease: Duration,
    ) -> Result<Claim, ContextStoreError>;

    /// Claims several nodes of `run` at once, as [`claim`](Self::claim)
    /// each, in one round trip where the backend can; answers in the order
    /// asked. A node another worker is claiming at the same moment is
    /// skipped rather than waited for: it comes back as
    /// [`Claim::Held`] with no lease left, to be looked at again.
    async fn claim_many(
        &self,
        cx: &CallContext,
        run: FlowRunId,
        nodes: &[NodeId],
        worker: &WorkerId,
        lease: Duration,
    ) -> Result<Vec<Claim>, ContextStoreError> {
        let mut claims = Vec::with_capacity(nodes.len());
        for node in nodes {
            claims.push(self.claim(cx, run, *node, worker, lease).await?);
        }
        Ok(claims)
    }

    /// Extends every unfinished lease this incarnation of `worker` holds in
    /// `run` to `lease` from now, and says which those are.
    async fn renew(
        &self,
        cx: &CallContext,
        run: FlowRunId,
        worker: &WorkerId,
        lease: Duration,
    ) -> Result<Renewal, ContextStoreError>;

    /// Marks the claim `fence` finished (after its output is stored).
    /// Nothing happens if the claim is no longer current.
    async fn finish(&self, cx: &CallContext, fence: &Fence) -> Result<(), ContextStoreError>;

    /// Gives up the claim `fence` (its step failed, or it was stopped), so
    /// that another worker may take the node at once. The token is retired:
    /// a write still carrying it is refused. Returns once every write
    /// under the claim has either committed or been refused.
    async fn release(&self, cx: &CallContext, fence: &Fence) -> Result<(), ContextStoreError>;

    /// Every claim made in `run`.
    async fn claims(
        &self,
        cx: &CallContext,
        run: FlowRunId,
    ) -> Result<Vec<ClaimRecord>, ContextStoreError>;
}
