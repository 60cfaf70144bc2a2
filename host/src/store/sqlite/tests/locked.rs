//! Deadlines while another process holds the database locked: a call
//! answered `Timeout` at its deadline was not applied and never is, and no
//! write holds up another past that other's deadline.

use super::calls::{runtime, text};
use super::*;
use crate::store::{AsyncContextStore, CallContext};
use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};

/// Holds the write lock of the database `argv[1]` for `argv[2]` seconds.
const WRITE_LOCK: &str = "import sqlite3,time,sys; \
    c=sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN IMMEDIATE'); \
    print('locked', flush=True); time.sleep(float(sys.argv[2]))";

/// Another process (python3) holding a lock on the database; killed when
/// dropped.
struct OtherProcess(Child);

impl OtherProcess {
    /// Runs `script` on `path` and returns once it holds its lock.
    fn hold(script: &str, path: &Path, seconds: f64) -> Self {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(path)
            .arg(seconds.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("a piped stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        let other = Self(child);
        assert_eq!(line.trim(), "locked", "the other process did not lock");
        other
    }

    /// Waits for the process to end (and so to let its lock go).
    fn exit(mut self) {
        self.0.wait().unwrap();
    }
}

impl Drop for OtherProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_timeout<T: std::fmt::Debug>(result: &Result<T, ContextStoreError>) -> bool {
    matches!(result, Err(ContextStoreError::Timeout(_)))
}

/// `waited` is the wait of a call that gave up at `deadline` from its start.
fn at_about(waited: Duration, deadline: Duration) {
    assert!(
        waited + Duration::from_millis(50) >= deadline,
        "gave up after {waited:?}, before its deadline {deadline:?}"
    );
    assert!(
        waited < deadline + Duration::from_millis(900),
        "gave up after {waited:?}, well past its deadline {deadline:?}"
    );
}

#[test]
fn an_async_write_under_another_process_lock_times_out_at_its_deadline_and_is_never_applied() {
    let (dir, store) = temp_store();
    let other = OtherProcess::hold(WRITE_LOCK, &dir.path().join("ctx.db"), 4.0);
    let rt = runtime();
    let (run, node) = (FlowRunId::new(), NodeId::new());
    let second = Duration::from_secs(1);
    let started = Instant::now();
    let cx = CallContext::within(second);
    let result = rt.block_on(AsyncContextStore::put(
        store.as_ref(),
        &cx,
        run,
        node,
        &text("1"),
        None,
    ));
    at_about(started.elapsed(), second);
    assert!(is_timeout(&result), "{result:?}");
    let cx = CallContext::within(second);
    let global = rt.block_on(AsyncContextStore::put_global(
        store.as_ref(),
        &cx,
        "g",
        &text("1"),
    ));
    assert!(is_timeout(&global), "{global:?}");
    // Reads do not wait behind the other process's write.
    let started = Instant::now();
    let cx = CallContext::within(Duration::from_secs(60));
    let read = rt.block_on(AsyncContextStore::get(store.as_ref(), &cx, run, node));
    assert_eq!(read.unwrap(), None);
    assert!(started.elapsed() < second, "the read waited for the lock");
    other.exit();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        store.get_text(run, node).unwrap(),
        None,
        "applied after its timeout"
    );
    assert_eq!(
        store.get_global_text("g").unwrap(),
        None,
        "applied after its timeout"
    );
    // The store goes on.
    store.put_text(run, node, &text("2")).unwrap();
    assert_eq!(store.get_text(run, node).unwrap(), Some(text("2")));
}

#[test]
fn an_inline_write_under_another_process_lock_times_out_at_its_deadline_and_is_never_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctx.db");
    let second = Duration::from_secs(1);
    let options = SqliteOptions {
        busy_deadline: second,
        ..Default::default()
    };
    let store = SqliteContextStore::open_with(&path, options).unwrap();
    let other = OtherProcess::hold(WRITE_LOCK, &path, 4.0);
    let (run, node) = (FlowRunId::new(), NodeId::new());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let started = Instant::now();
    let cx = CallContext::within(second).blocking(true);
    let result = rt.block_on(AsyncContextStore::put(
        &store,
        &cx,
        run,
        node,
        &text("1"),
        None,
    ));
    at_about(started.elapsed(), second);
    assert!(is_timeout(&result), "{result:?}");
    // The synchronous interface stops at the store's busy deadline, as a timeout.
    let started = Instant::now();
    let result = store.upsert_global_text("u", &text("1"));
    at_about(started.elapsed(), second);
    assert!(is_timeout(&result), "{result:?}");
    other.exit();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        store.get_text(run, node).unwrap(),
        None,
        "applied after its timeout"
    );
    assert_eq!(
        store.get_global_text("u").unwrap(),
        None,
        "applied after its timeout"
    );
}

/// Puts the globals `writes` names (key, deadline, delay after the
/// previous one) concurrently, as async calls, while another process holds
/// the write lock for 4 s; then checks that each write with a deadline
/// shorter than that timed out at its deadline and was never applied, and
/// that each other one was.
fn concurrent_writes_under_a_lock(writes: &[(&'static str, Duration, Duration)]) {
    let (dir, store) = temp_store();
    let hold = Duration::from_secs(4);
    let other = OtherProcess::hold(WRITE_LOCK, &dir.path().join("ctx.db"), hold.as_secs_f64());
    let rt = runtime();
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for &(key, deadline, delay) in writes {
            tokio::time::sleep(delay).await;
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let cx = CallContext::within(deadline);
                let result =
                    AsyncContextStore::put_global(store.as_ref(), &cx, key, &text("1")).await;
                (result, started.elapsed())
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    });
    other.exit();
    std::thread::sleep(Duration::from_millis(200));
    for (&(key, deadline, _), (result, waited)) in writes.iter().zip(results) {
        if deadline < hold {
            assert!(is_timeout(&result), "{key}: {result:?}");
            at_about(waited, deadline);
            assert_eq!(
                store.get_global_text(key).unwrap(),
                None,
                "{key} applied after its timeout"
            );
        } else {
            assert!(result.is_ok(), "{key}: {result:?}");
            assert_eq!(store.get_global_text(key).unwrap(), Some(text("1")));
        }
    }
}

const SHORT: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(60);
const NOW: Duration = Duration::ZERO;
const SOON: Duration = Duration::from_millis(100);

#[test]
fn a_long_deadline_leading_the_commit_does_not_hold_a_short_one_past_its_deadline() {
    concurrent_writes_under_a_lock(&[("long", LONG, NOW), ("short", SHORT, SOON)]);
}

#[test]
fn a_short_deadline_leading_the_commit_gives_up_at_its_deadline_and_the_long_one_goes_on() {
    concurrent_writes_under_a_lock(&[("short", SHORT, NOW), ("long", LONG, SOON)]);
}

#[test]
fn a_batch_waiting_for_the_lock_answers_each_write_at_its_own_deadline() {
    // The first leads and gives up; the two behind it go together.
    concurrent_writes_under_a_lock(&[
        ("first", Duration::from_millis(400), NOW),
        ("long", LONG, SOON),
        ("short", SHORT, NOW),
        ("shorter", Duration::from_millis(700), NOW),
    ]);
}

#[test]
fn a_read_of_a_database_locked_to_readers_gives_up_at_its_deadline() {
    // Readers wait only for a file locked exclusively (another process in
    // exclusive locking mode, or recovering the log), which cannot be set
    // up beside a store's open connections: the read's wait is tried on
    // its own here.
    let busy = || {
        Err::<(), _>(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        ))
    };
    let budget = Duration::from_millis(300);
    let started = Instant::now();
    let result = retry_busy(Instant::now() + budget, busy);
    at_about(started.elapsed(), budget);
    assert!(is_timeout(&result), "{result:?}");
    let started = Instant::now();
    let attempts = std::cell::Cell::new(0);
    let result = retry_busy(Instant::now() + Duration::from_secs(60), || {
        attempts.set(attempts.get() + 1);
        if attempts.get() < 3 { busy() } else { Ok(()) }
    });
    assert!(result.is_ok(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}
