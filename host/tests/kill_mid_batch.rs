//! Group commit under SIGKILL: a child process writes from 16 threads at
//! once (so that writes share commits), printing every write the store
//! acknowledged; the test kills it at seeded random moments, reopens the
//! file and checks that every acknowledged write is there with its value,
//! and that nothing else is there but whole values some thread wrote.
//!
//! The child is this test binary itself, re-run with `KILL_MID_BATCH_DB`
//! set. `KILL_MID_BATCH_KILLS` and `KILL_MID_BATCH_SEED` make longer runs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use contextstore::{ContextStore, FlowRunId, NodeId, SqliteContextStore};
use serde_json::{Value, json};

const WRITERS: u32 = 16;

/// The value thread `t` writes as its `i`-th output: big enough to span
/// pages, and derived from its key, so a torn or misplaced value shows.
fn value(t: u32, i: u32) -> Value {
    json!({ "t": t, "i": i, "pad": format!("{t}-{i}-").repeat(200) })
}

fn node(t: u32, i: u32) -> NodeId {
    NodeId::from_uuid(uuid::Uuid::from_u64_pair(u64::from(t), u64::from(i)))
}

/// The child: writes until killed, one line per acknowledged write.
#[test]
fn child_writer() {
    let (Ok(db), Ok(run)) = (
        std::env::var("KILL_MID_BATCH_DB"),
        std::env::var("KILL_MID_BATCH_RUN"),
    ) else {
        return; // not the child
    };
    let run: FlowRunId = run.parse().expect("run id from the parent");
    let store = SqliteContextStore::open(&db).expect("store opens");
    let out = std::sync::Mutex::new(std::io::stdout());
    std::thread::scope(|scope| {
        for t in 0..WRITERS {
            let (store, out) = (&store, &out);
            scope.spawn(move || {
                for i in 0.. {
                    let acked = if i % 5 == 4 {
                        store
                            .upsert_global(&format!("u{t}"), &value(t, i))
                            .map(|()| format!("upsert {t} {i} ."))
                    } else {
                        store
                            .put(run, node(t, i), &value(t, i))
                            .map(|()| format!("put {t} {i} ."))
                    };
                    let line = acked.expect("write succeeds");
                    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            });
        }
    });
}

#[test]
fn every_acknowledged_write_survives_a_kill_mid_batch() {
    let kills: u32 = std::env::var("KILL_MID_BATCH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("KILL_MID_BATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("batches.db");
    let (mut checked, mut upserts_checked, mut stored) = (0usize, 0usize, 0usize);
    for kill in 0..kills {
        let run = FlowRunId::new();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env("KILL_MID_BATCH_DB", &db)
            .env("KILL_MID_BATCH_RUN", run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Let it get going, then kill it while writes are in flight.
        let first = lines.recv_timeout(Duration::from_secs(30));
        assert!(first.is_ok(), "kill {kill}: the child acknowledged nothing");
        std::thread::sleep(Duration::from_millis(rng.u64(5..150)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let acked: Vec<String> = first.into_iter().chain(lines.try_iter()).collect();

        let store = SqliteContextStore::open(&db).unwrap();
        let mut last_upsert: HashMap<u32, u32> = HashMap::new();
        // Only whole lines count (a line cut by the kill ends without " .");
        // the test harness's own lines are not acknowledgements.
        let acks = acked.iter().filter_map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                [kind @ ("put" | "upsert"), t, i, "."] => {
                    Some((*kind, t.parse::<u32>().ok()?, i.parse::<u32>().ok()?))
                }
                _ => None,
            }
        });
        for (kind, t, i) in acks {
            match kind {
                "put" => {
                    assert_eq!(
                        store.get(run, node(t, i)).unwrap(),
                        Some(value(t, i)),
                        "kill {kill}: acknowledged put {t}/{i} lost"
                    );
                    checked += 1;
                }
                _ => {
                    last_upsert.insert(t, i);
                }
            }
        }
        for (t, i) in last_upsert {
            let got = store.get_global(&format!("u{t}")).unwrap();
            let got_i = got.as_ref().and_then(|v| v["i"].as_u64());
            // A later (unacknowledged) upsert may have landed too, never an older one.
            assert!(
                got_i.is_some_and(|g| g >= u64::from(i)),
                "kill {kill}: acknowledged upsert u{t}={i} lost (found {got_i:?})"
            );
            let g = got_i.and_then(|g| u32::try_from(g).ok()).unwrap_or(0);
            assert_eq!(got, Some(value(t, g)), "kill {kill}: u{t} half there");
            upserts_checked += 1;
        }
        // Whatever is stored is whole: each output is its key's own value.
        let keys = store.list_keys(run).unwrap();
        for key in &keys {
            let (t, i) = key.as_uuid().as_u64_pair();
            let (t, i) = (t as u32, i as u32);
            assert_eq!(store.get(run, *key).unwrap(), Some(value(t, i)));
        }
        stored += keys.len();
        drop(store);
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    println!(
        "kill mid-batch: {kills} kills of {WRITERS} concurrent writers, {checked} acknowledged puts and \
         {upserts_checked} upserts checked, {stored} stored outputs whole, lost = 0, integrity ok (seed {seed})"
    );
}
