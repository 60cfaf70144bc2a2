//! Node claims: how several worker processes (on one host or many) share
//! the nodes of one flow run.
//!
//! A worker claims a ready node before running it. The claim is a lease:
//! it holds until `lease_until` on the database's clock, and the worker
//! renews it while the node runs. A worker that dies stops renewing; once
//! the lease has expired another worker may claim the node, and the claim's
//! `attempt` counts up. A node whose output is stored is done whoever ran it
//! (outputs are write-once), so a worker that lost its lease and finishes
//! late changes nothing.
//!
//! Backends that serve many hosts (PostgreSQL) implement [`NodeClaims`];
//! [`ContextStore::node_claims`](super::ContextStore::node_claims) is `None`
//! for the others, and the flow runner then runs every node itself.

use std::time::Duration;

use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};

/// What [`NodeClaims::claim`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the node now; this is the `attempt`-th claim of it
    /// (1 for the first, more after leases expired).
    Won {
        /// How many times the node has been claimed, this claim included.
        attempt: u32,
    },
    /// Another worker holds a lease on the node that has not expired.
    Held {
        /// The worker holding it.
        worker: String,
        /// How long until its lease expires, unless renewed.
        lease_left: Duration,
    },
    /// A worker has finished the node (its output is stored).
    Finished {
        /// The worker that finished it.
        worker: String,
    },
}

/// Where one node's claim stands, for `flow status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRecord {
    /// The node.
    pub node_id: NodeId,
    /// The worker that holds or last held the node.
    pub worker: String,
    /// How many times the node was claimed.
    pub attempt: u32,
    /// Whether the worker has finished the node.
    pub finished: bool,
    /// Time left on the lease (zero once expired; zero when finished).
    pub lease_left: Duration,
}

/// Leases on the nodes of flow runs, shared by every worker of a store.
///
/// Claims live apart from outputs and globals: no guest call reaches them.
pub trait NodeClaims: Send + Sync {
    /// Claims `node` of `run` for `worker` for `lease`: wins when nobody
    /// claimed it, or when the last claim's lease has expired without the
    /// node being finished.
    fn claim(
        &self,
        run: FlowRunId,
        node: NodeId,
        worker: &str,
        lease: Duration,
    ) -> Result<Claim, ContextStoreError>;

    /// Extends every unfinished lease `worker` holds in `run` to `lease`
    /// from now; returns how many there were.
    fn renew(
        &self,
        run: FlowRunId,
        worker: &str,
        lease: Duration,
    ) -> Result<u64, ContextStoreError>;

    /// Marks `node` finished by `worker` (after its output is stored).
    /// Nothing happens if another worker has taken the node meanwhile.
    fn finish(&self, run: FlowRunId, node: NodeId, worker: &str) -> Result<(), ContextStoreError>;

    /// Gives up `worker`'s claim on `node` (its step failed), so that
    /// another worker may try it at once.
    fn release(&self, run: FlowRunId, node: NodeId, worker: &str) -> Result<(), ContextStoreError>;

    /// Every claim made in `run`.
    fn claims(&self, run: FlowRunId) -> Result<Vec<ClaimRecord>, ContextStoreError>;
}
