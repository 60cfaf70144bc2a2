//! Call deadlines: a store call made on behalf of a step invocation must
//! not wait past that invocation's deadline.
//!
//! The runtime sets the deadline around each store call a guest makes
//! ([`with_deadline`]); a backend that can wait (a busy SQLite file, a
//! connection pool) asks [`current`] how long it may, and gives up with a
//! storage error when the time is past. Outside such a call there is no
//! deadline and backends use their own timeouts.

use std::cell::Cell;
use std::thread::LocalKey;
use std::time::Instant;

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` with `deadline` as the current call deadline on this thread
/// (the earlier of it and any deadline already set).
pub fn with_deadline<T>(deadline: Instant, f: impl FnOnce() -> T) -> T {
    let inner = current().map_or(deadline, |outer| outer.min(deadline));
    scoped(&DEADLINE, inner, f)
}

/// Runs `f` with the thread-local `key` set to `value`, and restores the
/// value it had before afterwards, even if `f` panics.
pub(crate) fn scoped<T>(
    key: &'static LocalKey<Cell<Option<Instant>>>,
    value: Instant,
    f: impl FnOnce() -> T,
) -> T {
    struct Restore(&'static LocalKey<Cell<Option<Instant>>>, Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|cell| cell.set(self.1));
        }
    }
    let _restore = Restore(key, key.with(|cell| cell.replace(Some(value))));
    f()
}

/// The current call deadline on this thread, if any.
pub fn current() -> Option<Instant> {
    DEADLINE.with(Cell::get)
}

/// The earlier of `limit` and the current call deadline.
pub fn cap(limit: Instant) -> Instant {
    current().map_or(limit, |d| d.min(limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadlines_nest_to_the_earliest_and_restore() {
        assert_eq!(current(), None);
        let soon = Instant::now() + Duration::from_secs(1);
        let later = soon + Duration::from_secs(5);
        with_deadline(soon, || {
            assert_eq!(current(), Some(soon));
            with_deadline(later, || assert_eq!(current(), Some(soon)));
            assert_eq!(cap(later), soon);
        });
        assert_eq!(current(), None);
        assert_eq!(cap(later), later);
    }
}
