//! Group commit under deadlines, with another connection holding the
//! write lock: the batch is put together by hand here, so that each case
//! (who leads, who is in the batch) is the one meant.

use super::*;
use crate::json::JsonText;
use crate::store::sqlite::{SqliteOptions, open};
use std::path::{Path, PathBuf};
use std::thread;

fn setup() -> (tempfile::TempDir, PathBuf, Arc<GroupCommit>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gc.db");
    let conn = open::writer(&path, &SqliteOptions::default()).unwrap();
    (dir, path, Arc::new(GroupCommit::new(conn, MAX_BATCH)))
}

fn global(key: &str) -> WriteOp {
    WriteOp::PutGlobal {
        key: key.to_owned(),
        value: JsonText::from_stored("1".into()),
    }
}

fn request(key: &str, give_up: Instant) -> Arc<Request> {
    Arc::new(Request {
        op: global(key),
        give_up,
        stage: Mutex::new(Stage::Taken),
    })
}

/// Another connection holding the write lock, released after `hold` by a
/// thread of its own.
fn hold_lock(path: &Path, hold: Duration) -> thread::JoinHandle<()> {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    thread::spawn(move || {
        thread::sleep(hold);
        conn.execute_batch("ROLLBACK").unwrap();
    })
}

fn stored(path: &Path, key: &str) -> bool {
    let conn = Connection::open(path).unwrap();
    conn.query_row("SELECT count(*) FROM globals WHERE key = ?1", [key], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap()
        == 1
}

/// Watches `request` from another thread: how long after now it was answered, and with what.
fn watch(
    group: &Arc<GroupCommit>,
    request: &Arc<Request>,
) -> thread::JoinHandle<(Duration, Result<(), String>)> {
    let (group, request) = (Arc::clone(group), Arc::clone(request));
    let started = Instant::now();
    thread::spawn(move || {
        loop {
            {
                let _queue = lock(&group.queue);
                if let Stage::Done(Some(result)) = &*lock(&request.stage) {
                    let result = result.as_ref().map(|_| ()).map_err(|e| format!("{e:?}"));
                    return (started.elapsed(), result);
                }
            }
            thread::sleep(Duration::from_millis(5));
        }
    })
}

#[test]
fn a_write_whose_deadline_has_passed_is_refused_before_it_is_queued() {
    let (_dir, path, group) = setup();
    let result = group.submit(global("late"), Instant::now());
    assert!(
        matches!(result, Err(ContextStoreError::Timeout(_))),
        "{result:?}"
    );
    assert!(lock(&group.queue).pending.is_empty());
    assert!(!stored(&path, "late"));
}

#[test]
fn a_queued_write_leaves_the_queue_at_its_deadline_and_never_runs() {
    let (_dir, path, group) = setup();
    let holder = hold_lock(&path, Duration::from_millis(1200));
    let leader = {
        let group = Arc::clone(&group);
        thread::spawn(move || {
            group.submit(global("long"), Instant::now() + Duration::from_secs(30))
        })
    };
    // Wait until the leader has its batch and waits for the lock.
    while !lock(&group.queue).leading {
        thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let result = group.submit(global("short"), Instant::now() + Duration::from_millis(300));
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(ContextStoreError::Timeout(_))),
        "{result:?}"
    );
    assert!(waited >= Duration::from_millis(290), "{waited:?}");
    assert!(waited < Duration::from_millis(1000), "{waited:?}");
    assert!(lock(&group.queue).pending.is_empty(), "left in the queue");
    holder.join().unwrap();
    leader.join().unwrap().unwrap();
    assert!(stored(&path, "long"));
    assert!(
        !stored(&path, "short"),
        "a write that timed out in the queue ran"
    );
}

#[test]
fn a_batch_waits_for_the_lock_only_until_each_members_own_deadline() {
    let (_dir, path, group) = setup();
    let holder = hold_lock(&path, Duration::from_millis(1200));
    let long = request("long", Instant::now() + Duration::from_secs(30));
    let short = request("short", Instant::now() + Duration::from_millis(300));
    let (long_answer, short_answer) = (watch(&group, &long), watch(&group, &short));
    {
        let conn = lock(&group.conn);
        Leader {
            group: &group,
            conn: &conn,
            give_up: long.give_up,
        }
        .run(vec![Arc::clone(&long), Arc::clone(&short)]);
    }
    let (when, result) = short_answer.join().unwrap();
    assert!(
        result.is_err_and(|e| e.starts_with("Timeout")),
        "short: {when:?}"
    );
    assert!(
        when >= Duration::from_millis(290),
        "short answered at {when:?}"
    );
    assert!(
        when < Duration::from_millis(1000),
        "short answered at {when:?}"
    );
    let (when, result) = long_answer.join().unwrap();
    assert_eq!(result, Ok(()));
    assert!(
        when >= Duration::from_millis(1100),
        "long answered at {when:?}"
    );
    holder.join().unwrap();
    assert!(stored(&path, "long"));
    assert!(!stored(&path, "short"), "a write answered Timeout ran");
}

#[test]
fn a_leader_hands_back_the_batch_at_its_own_deadline() {
    let (_dir, path, group) = setup();
    let holder = hold_lock(&path, Duration::from_millis(1000));
    let short = request("short", Instant::now() + Duration::from_millis(300));
    let long = request("long", Instant::now() + Duration::from_secs(30));
    let started = Instant::now();
    {
        let conn = lock(&group.conn);
        Leader {
            group: &group,
            conn: &conn,
            give_up: short.give_up,
        }
        .run(vec![Arc::clone(&short), Arc::clone(&long)]);
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(900),
        "the leader waited {waited:?}"
    );
    assert!(matches!(
        &*lock(&short.stage),
        Stage::Done(Some(Err(ContextStoreError::Timeout(_))))
    ));
    assert!(matches!(&*lock(&long.stage), Stage::Queued));
    let queue = lock(&group.queue);
    assert_eq!(queue.pending.len(), 1);
    assert!(Arc::ptr_eq(&queue.pending[0], &long), "not handed back");
    drop(queue);
    holder.join().unwrap();
    assert!(!stored(&path, "short") && !stored(&path, "long"));
}

#[test]
fn writes_queued_behind_a_leader_that_gives_up_are_each_answered_by_their_own_deadline() {
    let (_dir, path, group) = setup();
    let holder = hold_lock(&path, Duration::from_millis(1000));
    // "first" leads and gives up; "short" and "long", queued behind it
    // meanwhile, go together in the next batch, whichever of them leads it.
    let first = {
        let group = Arc::clone(&group);
        thread::spawn(move || {
            group.submit(global("first"), Instant::now() + Duration::from_millis(200))
        })
    };
    while !lock(&group.queue).leading {
        thread::sleep(Duration::from_millis(5));
    }
    let spawn = |key: &'static str, budget: Duration| {
        let group = Arc::clone(&group);
        thread::spawn(move || {
            let started = Instant::now();
            (
                group.submit(global(key), Instant::now() + budget),
                started.elapsed(),
            )
        })
    };
    let short = spawn("short", Duration::from_millis(500));
    let long = spawn("long", Duration::from_secs(30));
    let (result, waited) = short.join().unwrap();
    assert!(
        matches!(result, Err(ContextStoreError::Timeout(_))),
        "{result:?}"
    );
    assert!(
        waited < Duration::from_millis(1000),
        "short waited {waited:?}"
    );
    let (result, _) = long.join().unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(first.join().unwrap().is_err());
    holder.join().unwrap();
    assert!(stored(&path, "long"));
    assert!(!stored(&path, "short") && !stored(&path, "first"));
}

#[test]
fn a_transaction_left_open_is_rolled_back_before_the_next_batch() {
    let (_dir, path, group) = setup();
    lock(&group.conn)
        .execute_batch("BEGIN; INSERT INTO globals VALUES ('ghost', '0', 0);")
        .unwrap();
    group
        .submit(global("real"), Instant::now() + Duration::from_secs(30))
        .unwrap();
    assert!(
        stored(&path, "real"),
        "an acknowledged write is not in the file"
    );
    assert!(!stored(&path, "ghost"));
}

#[test]
fn a_leader_that_panics_mid_batch_answers_its_writes_as_lost_and_the_next_write_commits() {
    let (_dir, path, group) = setup();
    let taken = request("half", Instant::now() + Duration::from_secs(30));
    lock(&group.queue).leading = true;
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _turn = Turn {
            group: &group,
            batch: vec![Arc::clone(&taken)],
        };
        let conn = lock(&group.conn);
        conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO globals VALUES ('half', '1', 0);")
            .unwrap();
        panic!("between BEGIN and COMMIT");
    }));
    assert!(caught.is_err());
    assert!(!lock(&group.queue).leading, "the turn was not given up");
    assert!(
        matches!(
            &*lock(&taken.stage),
            Stage::Done(Some(Err(ContextStoreError::StorageError(msg)))) if msg.contains("lost")
        ),
        "the taken write was not answered"
    );
    group
        .submit(global("next"), Instant::now() + Duration::from_secs(30))
        .unwrap();
    assert!(stored(&path, "next"));
    assert!(
        !stored(&path, "half"),
        "the panicked transaction was committed"
    );
}
