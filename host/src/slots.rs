//! [`JobSlots`]: how many invocations compute at once (the flow runner's
//! `--jobs`), counted so that an invocation waiting for the disk or the
//! network does not count.
//!
//! An invocation holds a slot while its code runs. Around a write (which
//! waits for a commit) it gives the slot back, so that another invocation
//! starts meanwhile and its write joins the same commit (group commit in
//! SQLite, the WAL flush in PostgreSQL) instead of waiting for its own.
//! Reads are short and keep the slot.
//!
//! An invocation coming back from its write takes its slot back at once,
//! without waiting ([`reclaim`](JobSlots::reclaim)), even when that makes
//! more slots taken than the limit for a moment: a step is never held up
//! halfway (past its deadline, or behind a long step that holds the only
//! slot); no new invocation starts until the count is below the limit
//! again. Taking a slot to start waits at most until the caller's
//! deadline, and past it takes one over the limit too.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

/// A counted set of slots shared by the invocations of one flow run. See
/// the [module docs](self).
#[derive(Clone, Debug)]
pub struct JobSlots(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Slots free; below zero while callers past their deadline hold more
    /// than the limit.
    free: Mutex<isize>,
    freed: Condvar,
}

impl JobSlots {
    /// `limit` slots (at least 1).
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(Inner {
            free: Mutex::new(isize::try_from(limit.max(1)).unwrap_or(isize::MAX)),
            freed: Condvar::new(),
        }))
    }

    /// Takes a slot, waiting for one until `until` (`None`: as long as it
    /// takes); past `until` takes one over the limit.
    pub fn acquire(&self, until: Option<Instant>) {
        let mut free = self.0.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free <= 0 {
            let now = Instant::now();
            let wait = match until {
                Some(until) if until <= now => break,
                Some(until) => until - now,
                // Every wait has a deadline: look again each second.
                None => std::time::Duration::from_secs(1),
            };
            free = self
                .0
                .freed
                .wait_timeout(free, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *free -= 1;
    }

    /// Takes a slot back without waiting (an invocation coming back from a
    /// write), over the limit if none is free.
    pub fn reclaim(&self) {
        let mut free = self.0.free.lock().unwrap_or_else(PoisonError::into_inner);
        *free -= 1;
    }

    /// Gives a slot back.
    pub fn release(&self) {
        let mut free = self.0.free.lock().unwrap_or_else(PoisonError::into_inner);
        *free += 1;
        drop(free);
        self.0.freed.notify_one();
    }

    /// Takes a slot (as [`acquire`](Self::acquire)) held until the guard is
    /// dropped.
    pub fn hold(&self, until: Option<Instant>) -> SlotGuard {
        self.acquire(until);
        SlotGuard(self.clone())
    }
}

/// A slot held until dropped ([`JobSlots::hold`]).
#[derive(Debug)]
pub struct SlotGuard(JobSlots);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn never_more_holders_than_slots_until_a_deadline() {
        let slots = JobSlots::new(2);
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let _slot = slots.hold(None);
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn past_its_deadline_a_caller_goes_over_the_limit() {
        let slots = JobSlots::new(1);
        let _held = slots.hold(None);
        let started = Instant::now();
        let _over = slots.hold(Some(started + Duration::from_millis(50)));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[test]
    fn a_slot_is_reclaimed_at_once_and_starts_wait_below_the_limit() {
        let slots = JobSlots::new(1);
        slots.acquire(None);
        // Given back for a write; another invocation starts meanwhile.
        slots.release();
        let _other = slots.hold(None);
        // Coming back from the write: at once, over the limit.
        let started = Instant::now();
        slots.reclaim();
        assert!(started.elapsed() < Duration::from_secs(1));
        // No new start while over the limit: a start waits to its deadline.
        let waited = Instant::now();
        slots.acquire(Some(waited + Duration::from_millis(50)));
        assert!(waited.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn a_released_slot_wakes_a_waiter() {
        let slots = JobSlots::new(1);
        slots.acquire(None);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let started = Instant::now();
                slots.acquire(Some(started + Duration::from_secs(10)));
                started.elapsed()
            });
            std::thread::sleep(Duration::from_millis(30));
            slots.release();
            let waited = waiter.join().expect("waiter");
            assert!(waited < Duration::from_secs(5), "{waited:?}");
        });
    }
}
