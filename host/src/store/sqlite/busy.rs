//! Waiting on a busy database.
//!
//! SQLite calls [`handler`] while a lock is held elsewhere (another
//! process's write transaction, WAL recovery after a crash). It sleeps in
//! short pauses until the give-up time of the statement in progress on
//! this thread, which the backend sets around every statement it runs
//! ([`wait_until`]) from the call's own deadline and the store's busy
//! deadline. The thread-local is the backend's own: SQLite's busy handler
//! has no other way to learn which call it waits for, and nothing outside
//! this module sets it.

use std::cell::Cell;
use std::thread::LocalKey;
use std::time::{Duration, Instant};

/// The longest single pause while waiting.
pub(crate) const PAUSE: Duration = Duration::from_millis(5);

/// How long a statement run with no give-up time set waits (none of the
/// backend's statements does: this is a guard, not a policy).
const UNSET: Duration = Duration::from_secs(5);

thread_local! {
    static GIVE_UP: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` with `give_up` as this thread's busy give-up time, restoring
/// the one before afterwards.
pub(crate) fn wait_until<T>(give_up: Instant, f: impl FnOnce() -> T) -> T {
    scoped(&GIVE_UP, give_up, f)
}

/// Runs `f` with the thread-local `key` set to `value`, and restores the
/// value it had before afterwards, even if `f` panics.
fn scoped<T>(
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

/// Makes [`handler`] `conn`'s busy handler. Takes `&mut`, as rusqlite 0.41
/// and later do (earlier versions take `&`): one call for the whole range.
pub(crate) fn install(conn: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    conn.busy_handler(Some(handler))
}

/// SQLite's busy handler: `true` to try again, `false` to give up (the
/// statement then fails with `SQLITE_BUSY`).
pub(crate) fn handler(_attempts: i32) -> bool {
    let give_up = GIVE_UP
        .with(Cell::get)
        .unwrap_or_else(|| crate::store::CallContext::none().give_up(UNSET));
    let left = give_up.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    std::thread::sleep(PAUSE.min(left));
    true
}

/// Sleeps a pause, but not past `give_up`: for a retry loop around a
/// statement that failed busy before its give-up time (SQLite does not
/// call the busy handler in every case).
pub(crate) fn pause_until(give_up: Instant) {
    let left = give_up.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        std::thread::sleep(PAUSE.min(left));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_give_up_time_nests_and_is_restored() {
        let soon = Instant::now() + Duration::from_secs(1);
        let later = soon + Duration::from_secs(5);
        assert_eq!(GIVE_UP.with(Cell::get), None);
        wait_until(soon, || {
            assert_eq!(GIVE_UP.with(Cell::get), Some(soon));
            wait_until(later, || assert_eq!(GIVE_UP.with(Cell::get), Some(later)));
            assert_eq!(GIVE_UP.with(Cell::get), Some(soon));
        });
        assert_eq!(GIVE_UP.with(Cell::get), None);
    }

    #[test]
    fn the_handler_gives_up_at_the_give_up_time() {
        let past = Instant::now();
        assert!(!wait_until(past, || handler(0)));
        let later = Instant::now() + Duration::from_secs(60);
        assert!(wait_until(later, || handler(0)));
    }

    #[test]
    fn the_give_up_time_is_restored_after_a_panic() {
        let soon = Instant::now() + Duration::from_secs(1);
        let caught = std::panic::catch_unwind(|| wait_until(soon, || panic!("inside")));
        assert!(caught.is_err());
        assert_eq!(GIVE_UP.with(Cell::get), None);
    }
}
