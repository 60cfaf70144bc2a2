//! [`CallContext`]: what every store call made inside the host carries.
//!
//! A call made for a step invocation, or for the flow runner's bookkeeping,
//! says how long it may take (its deadline) and, on a run that several
//! workers share, which claim it runs under (its [`Fence`]). Both travel as
//! an argument: no thread-local, no ambient state, so that a call handed to
//! another thread or task keeps them.

use std::time::{Duration, Instant};

use crate::id::{FlowRunId, NodeId};

/// The claim a write runs under, on a run shared by several workers: the
/// node and the fencing token its worker won it with. A backend accepts the
/// write only while `token` is the node's current token, checked in the
/// write's own transaction; a write under a stale token is refused with
/// [`ContextStoreError::Fenced`](crate::error::ContextStoreError::Fenced)
/// and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The run.
    pub flow_run_id: FlowRunId,
    /// The claimed node.
    pub node_id: NodeId,
    /// The claim's fencing token: it grows with every claim of the node.
    pub token: i64,
}

/// The context of one store call: its deadline and the claim it runs under.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallContext {
    /// When the caller stops waiting. A call past it fails with
    /// [`ContextStoreError::Timeout`](crate::error::ContextStoreError::Timeout)
    /// and is never applied afterwards. `None`: the backend's own limit.
    pub deadline: Option<Instant>,
    /// The claim a write runs under (`None` outside shared runs).
    pub fence: Option<Fence>,
    /// Whether the caller's thread may block on the call (the blocking entry
    /// point gives its thread to the invocation): a backend may then run
    /// the call inline instead of handing it to another thread.
    pub may_block: bool,
}

impl CallContext {
    /// No deadline but the backend's own, no fence.
    pub fn none() -> Self {
        Self::default()
    }

    /// A call that may take until `deadline`.
    pub fn until(deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
            ..Self::default()
        }
    }

    /// A call that may take `budget` from now.
    pub fn within(budget: Duration) -> Self {
        Self::until(
            Instant::now()
                .checked_add(budget)
                .unwrap_or_else(far_future),
        )
    }

    /// The same call under `fence`.
    pub fn fenced(self, fence: Option<Fence>) -> Self {
        Self { fence, ..self }
    }

    /// The same call, allowed (or not) to block the caller's thread.
    pub fn blocking(self, may_block: bool) -> Self {
        Self { may_block, ..self }
    }

    /// The earlier of the call's deadline and `now + limit`: how long a
    /// backend whose own limit is `limit` may wait.
    pub fn give_up(&self, limit: Duration) -> Instant {
        let own = Instant::now().checked_add(limit).unwrap_or_else(far_future);
        self.deadline.map_or(own, |d| d.min(own))
    }

    /// Time left before the deadline (`None`: no deadline).
    pub fn left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| d <= Instant::now())
    }
}

/// A deadline too far away to add to now: practically never.
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn give_up_is_the_earlier_of_deadline_and_limit() {
        let soon = Instant::now() + Duration::from_millis(50);
        let cx = CallContext::until(soon);
        assert_eq!(cx.give_up(Duration::from_secs(60)), soon);
        assert!(cx.give_up(Duration::ZERO) <= soon);
        assert!(!cx.expired());
        assert!(CallContext::until(Instant::now()).expired());
        assert_eq!(CallContext::none().left(), None);
    }
}
