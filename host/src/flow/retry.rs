//! Retry policies: how many attempts a node gets, how long to wait between
//! them, and which failures are worth another attempt.
//!
//! A node whose step fails with a failure its policy retries, with
//! attempts left, is tried again after a backoff that grows exponentially
//! (`backoff`, times `multiplier` for each attempt after the first, capped at
//! `max_backoff`), with jitter (a random share of up to half of it taken
//! off) so that nodes that failed together do not retry together. Each
//! failed attempt is journaled with its error, its time, and when the next
//! attempt is due; on a shared run the worker keeps the node's claim while
//! it waits, and a worker that takes the node over (the first one crashed
//! mid-backoff) reads the journal and keeps to the same schedule.
//!
//! Never retried, whatever the policy: invalid params (the same params fail
//! the same way, whether the host or the step found them invalid), a store
//! refusal the step passed on (a grant, a quota: it comes back), a step stopped because its claim was lost (not a failure:
//! the node is looked at again anyway), a panic in the host, a component
//! that cannot be instantiated, and a refused resume (the flow changed).

use std::time::Duration;

use crate::guest_store::GuestStoreError;
use crate::runtime::{GuestFailure, StepError};

/// Which failures a [`RetryPolicy`] tries again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryOn {
    /// A trap, running out of memory, fuel or resources, or returning
    /// without an output.
    pub traps: bool,
    /// The step's deadline.
    pub timeouts: bool,
    /// A store error that may pass (the database restarting, a locked file).
    pub store: bool,
    /// The step's own `failed`.
    pub failed: bool,
}

impl RetryOn {
    /// Every kind that can be retried.
    pub const ALL: Self = Self {
        traps: true,
        timeouts: true,
        store: true,
        failed: true,
    };

    /// Whether `error` is of a kind this retries.
    pub fn covers(&self, error: &StepError) -> bool {
        match error {
            StepError::Trap { .. }
            | StepError::OutOfMemory { .. }
            | StepError::OutOfFuel(_)
            | StepError::TooManyResources { .. }
            | StepError::NoOutput => self.traps,
            StepError::Timeout(_) => self.timeouts,
            StepError::Store(e) => self.store && e.is_transient(),
            StepError::Failed(GuestFailure::Failed(_)) => self.failed,
            // A store error the step passed on: the backend failing may
            // pass; a refusal (a grant, a quota, write-once) comes back.
            StepError::Failed(GuestFailure::Store(GuestStoreError::Storage(_))) => self.store,
            StepError::Failed(GuestFailure::Store(_) | GuestFailure::InvalidParams(_)) => false,
            StepError::InvalidParams(_)
            | StepError::Stopped(_)
            | StepError::Panicked(_)
            | StepError::NotMetered { .. }
            | StepError::Instantiate(_) => false,
        }
    }
}

/// How a node is retried (see the [module docs](self)). The default is one
/// attempt: no retries.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Most attempts in all (at least 1; 1 means no retries).
    pub max_attempts: u32,
    /// The wait before the second attempt.
    pub backoff: Duration,
    /// How much longer each next wait is (at least 1).
    pub multiplier: f64,
    /// The longest wait.
    pub max_backoff: Duration,
    /// Whether a random share of up to half of each wait is taken off.
    pub jitter: bool,
    /// Which failures are retried.
    pub on: RetryOn,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff: Duration::from_secs(1),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(60),
            jitter: true,
            on: RetryOn::ALL,
        }
    }
}

impl RetryPolicy {
    /// Whether attempt `attempt` of a series (1 for the first) that failed
    /// with `error` is followed by another.
    pub fn retries(&self, attempt: u32, error: &StepError) -> bool {
        attempt < self.max_attempts && self.on.covers(error)
    }

    /// The wait after failed attempt `attempt` (1 for the first) of a
    /// series, before jitter: `backoff × multiplier^(attempt − 1)`, capped.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.max(1.0).powi(exponent);
        let wait = self.backoff.as_secs_f64() * factor;
        if !wait.is_finite() || wait >= self.max_backoff.as_secs_f64() {
            return self.max_backoff;
        }
        Duration::from_secs_f64(wait.max(0.0))
    }

    /// [`delay`](Self::delay) with jitter: up to half taken off, by
    /// `random`, a number in `[0, 1)`.
    pub fn wait(&self, attempt: u32, random: f64) -> Duration {
        let delay = self.delay(attempt);
        if !self.jitter {
            return delay;
        }
        delay.mul_f64(1.0 - 0.5 * random.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ContextStoreError;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_millis(500),
            jitter: false,
            on: RetryOn::ALL,
        };
        let waits: Vec<u128> = (1..=5).map(|a| policy.delay(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_millis(500));
    }

    #[test]
    fn jitter_takes_up_to_half_off() {
        let policy = RetryPolicy {
            backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        assert_eq!(policy.wait(1, 0.0), Duration::from_millis(1000));
        assert_eq!(policy.wait(1, 0.5), Duration::from_millis(750));
        let least = policy.wait(1, 0.999_999);
        assert!(least >= Duration::from_millis(500) && least < Duration::from_millis(501));
    }

    #[test]
    fn only_passing_failures_are_retried_and_only_while_attempts_are_left() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let failed = StepError::Failed(GuestFailure::Failed("flaky".into()));
        assert!(policy.retries(1, &failed));
        assert!(policy.retries(2, &failed));
        assert!(!policy.retries(3, &failed));
        assert!(policy.retries(1, &StepError::Timeout(Duration::from_secs(1))));
        assert!(policy.retries(
            1,
            &StepError::Store(ContextStoreError::StorageError("restarting".into()))
        ));
        assert!(!policy.retries(
            1,
            &StepError::Store(ContextStoreError::SerializationFailed("bad".into()))
        ));
        assert!(!policy.retries(1, &StepError::InvalidParams("no".into())));
        let guest_params = StepError::Failed(GuestFailure::InvalidParams("no".into()));
        assert!(!policy.retries(1, &guest_params));
        let denied = GuestFailure::Store(GuestStoreError::AccessDenied("no".into()));
        assert!(!policy.retries(1, &StepError::Failed(denied)));
        assert!(!policy.retries(1, &StepError::Stopped("lost".into())));
        assert!(!policy.retries(1, &StepError::Panicked("bug".into())));
        let only_timeouts = RetryPolicy {
            max_attempts: 3,
            on: RetryOn {
                traps: false,
                timeouts: true,
                store: false,
                failed: false,
            },
            ..RetryPolicy::default()
        };
        assert!(!only_timeouts.retries(1, &failed));
        assert!(
            RetryPolicy::default().max_attempts == 1 && !RetryPolicy::default().retries(1, &failed)
        );
    }
}
