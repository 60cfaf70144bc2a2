//! Tests of the PostgreSQL backend, against a throwaway server
//! (`tests/support/postgres_cluster.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use super::retry::{Effect, Fault, Retry};
use super::test_cluster as cluster;
use super::{PostgresContextStore, PostgresOptions, schema, values};
use crate::coord::{Claim, Coordinator, WorkerId};
use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::JsonText;
use crate::store::{CallContext, ContextStore, Fence, Provenance};

/// The async interface of a store (not imported: its methods share names
/// with the synchronous ones).
type Async = dyn crate::store::AsyncContextStore;

const LONG: Duration = Duration::from_secs(60);

fn fresh() -> ((), Arc<PostgresContextStore>) {
    let url = cluster::fresh_database();
    ((), Arc::new(PostgresContextStore::connect(&url).unwrap()))
}

mod conformance {
    crate::conformance_tests!(super::fresh());
}

mod runs_index {
    crate::runs_index_tests!(super::fresh());
}

/// Test-only calls: any SQL, through the same call path as the store's own.
impl PostgresContextStore {
    /// Runs `sql` as a read (retried, cancelled at the deadline).
    async fn sql(&self, cx: &CallContext, sql: &'static str) -> Result<(), ContextStoreError> {
        self.call(cx, Effect::Read, "test statement", sql, |c, sql, _| {
            Box::pin(async move { c.client.batch_execute(sql).await.map_err(Fault::from) })
        })
        .await
    }

    /// A setting of the session.
    async fn setting(&self, name: &str) -> Result<String, ContextStoreError> {
        self.call(
            &CallContext::none(),
            Effect::Read,
            "setting",
            name,
            |c, name, _| {
                Box::pin(async move {
                    let row = c
                        .client
                        .query_one("SELECT current_setting($1)", &[&name])
                        .await?;
                    Ok(row.try_get(0)?)
                })
            },
        )
        .await
    }

    /// The server process of the connection a call gets.
    async fn backend_pid(&self) -> Result<i32, ContextStoreError> {
        self.call(&CallContext::none(), Effect::Read, "pid", &(), |c, _, _| {
            Box::pin(async move {
                let row = c.client.query_one("SELECT pg_backend_pid()", &[]).await?;
                Ok(row.try_get(0)?)
            })
        })
        .await
    }

    fn retried(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

fn ids() -> (FlowRunId, NodeId) {
    (FlowRunId::new(), NodeId::new())
}

fn text(json: &str) -> JsonText {
    JsonText::parse(json, crate::json::MAX_DEPTH).unwrap()
}

fn storage_error(result: Result<PostgresContextStore, ContextStoreError>) -> String {
    match result {
        Err(ContextStoreError::StorageError(msg)) => msg,
        Err(other) => panic!("expected a storage error, got {other:?}"),
        Ok(store) => panic!("expected an error, connected: {store:?}"),
    }
}

/// A store on a fresh database, and that database's URL.
struct Fixture {
    url: String,
    store: PostgresContextStore,
}

impl Fixture {
    fn new() -> Self {
        let url = cluster::fresh_database();
        let store = PostgresContextStore::connect(&url).unwrap();
        Self { url, store }
    }

    fn a(&self) -> &Async {
        &self.store
    }

    fn block<T: Send>(
        &self,
        call: impl Future<Output = Result<T, ContextStoreError>> + Send,
    ) -> Result<T, ContextStoreError> {
        self.store.block(call)
    }

    fn claim(&self, run: FlowRunId, node: NodeId, worker: &WorkerId, lease: Duration) -> Claim {
        self.block(
            self.store
                .claim(&CallContext::none(), run, node, worker, lease),
        )
        .unwrap()
    }

    /// Claims a node that must be won; its fence.
    fn won(&self, run: FlowRunId, node: NodeId, worker: &WorkerId, lease: Duration) -> Fence {
        match self.claim(run, node, worker, lease) {
            Claim::Won { fence, .. } => fence,
            other => panic!("{worker} expected to win ({run}, {node}), got {other:?}"),
        }
    }

    fn renew(&self, run: FlowRunId, worker: &WorkerId) -> Vec<NodeId> {
        self.block(self.store.renew(&CallContext::none(), run, worker, LONG))
            .unwrap()
            .held
    }

    fn records(&self, run: FlowRunId) -> Vec<crate::coord::ClaimRecord> {
        self.block(self.store.claims(&CallContext::none(), run))
            .unwrap()
    }

    /// A connection of the test server's admin role to this database.
    fn admin(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }
}

/// Ends every other session in the database at `url` (the store's).
fn kill_sessions(url: &str) {
    cluster::admin_execute(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    );
}

/// How many sessions of the database run `query` now.
fn running(admin: &mut postgres::Client, query: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'active' AND query = $1",
            &[&query],
        )
        .unwrap()
        .get(0)
}

fn assert_fenced<T: std::fmt::Debug>(result: Result<T, ContextStoreError>, fence: &Fence) {
    match result {
        Err(ContextStoreError::Fenced {
            flow_run_id,
            node_id,
            token,
        }) => assert_eq!(
            (flow_run_id, node_id, token),
            (fence.flow_run_id, fence.node_id, fence.token)
        ),
        other => panic!("expected Fenced under {fence:?}, got {other:?}"),
    }
}

#[test]
fn describe_reads_the_schema_and_settings_of_the_database() {
    let url = cluster::fresh_database();
    let store = PostgresContextStore::connect(&url).unwrap();
    let info = store.describe().unwrap();
    assert_eq!(info.backend, crate::store::Backend::Postgres);
    assert_eq!(info.location, store.target());
    assert_eq!(info.schema_version, schema::SCHEMA_VERSION);
    assert_eq!(info.durability, "on");
    assert_eq!(info.journal_mode, None);
    assert!(!info.read_only);
    assert!(info.engine_version.starts_with("PostgreSQL 1"), "{info:?}");
    let read_only = PostgresContextStore::connect_read_only(&url).unwrap();
    assert!(read_only.describe().unwrap().read_only);
}

#[test]
fn values_rest_as_the_exact_text_written() {
    let url = cluster::fresh_database();
    let store = PostgresContextStore::connect(&url).unwrap();
    let text = "{ \"b\" : 1.50,\n \"a\":[ 1e2 ] }";
    let value = JsonText::parse(text, crate::json::MAX_DEPTH).unwrap();
    let (run, node) = ids();
    store.put_text(run, node, &value).unwrap();
    store.put_global_text("k\0with nul", &value).unwrap();
    assert_eq!(store.get_text(run, node).unwrap().unwrap().as_str(), text);
    assert_eq!(
        store
            .get_global_text("k\0with nul")
            .unwrap()
            .unwrap()
            .as_str(),
        text
    );
    assert_eq!(store.get_global_text("k").unwrap(), None);
}

#[test]
fn reconnect_keeps_outputs_and_globals() {
    let url = cluster::fresh_database();
    let (run, node) = ids();
    {
        let store = PostgresContextStore::connect(&url).unwrap();
        store.put(run, node, &json!({"a": 1})).unwrap();
        store.upsert_global("m", &json!(1)).unwrap();
    }
    let store = PostgresContextStore::connect(&url).unwrap();
    assert_eq!(store.get(run, node).unwrap(), Some(json!({"a": 1})));
    assert_eq!(store.get_global("m").unwrap(), Some(json!(1)));
    assert!(matches!(
        store.put(run, node, &json!(2)),
        Err(ContextStoreError::AlreadyExists { .. })
    ));
}

#[test]
fn workers_connecting_at_once_migrate_once() {
    let url = cluster::fresh_database();
    let stores: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| PostgresContextStore::connect(&url)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for store in stores {
        store.unwrap();
    }
}

#[test]
fn refuses_a_database_of_another_application() {
    let url = cluster::fresh_database();
    cluster::admin_execute(
        &url,
        "CREATE TABLE contextstore_meta (key text PRIMARY KEY, value text NOT NULL);
         INSERT INTO contextstore_meta VALUES ('application', 'billing');",
    );
    for result in [
        PostgresContextStore::connect(&url),
        PostgresContextStore::connect_read_only(&url),
    ] {
        let msg = storage_error(result);
        assert!(
            msg.contains("not a contextstore database") && msg.contains("billing"),
            "{msg}"
        );
    }
}

#[test]
fn refuses_a_newer_schema() {
    let url = cluster::fresh_database();
    drop(PostgresContextStore::connect(&url).unwrap());
    cluster::admin_execute(
        &url,
        "UPDATE contextstore_meta SET value = '99' WHERE key = 'schema_version'",
    );
    let msg = storage_error(PostgresContextStore::connect(&url));
    assert!(msg.contains("schema version 99 is newer"), "{msg}");
    let msg = storage_error(PostgresContextStore::connect_read_only(&url));
    assert!(msg.contains("schema version 99 is newer"), "{msg}");
}

#[test]
fn a_refused_connection_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().to_str().unwrap().replace('/', "%2F");
    let url = format!("postgres://postgres@{socket}/nothing");
    let msg = storage_error(PostgresContextStore::connect(&url));
    assert!(msg.contains("error connecting to server"), "{msg}");
    assert!(msg.contains("No such file or directory"), "{msg}");
    assert!(msg.contains(dir.path().to_str().unwrap()), "{msg}");
}

#[test]
fn a_wrong_password_is_a_clear_error_that_hides_it() {
    let url = cluster::fresh_database();
    cluster::admin_execute(
        &url,
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cs_alice') THEN
             CREATE ROLE cs_alice LOGIN PASSWORD 'right';
           END IF;
         END $$;",
    );
    let wrong = cluster::with_user(&url, "cs_alice", "wrong-secret");
    let msg = storage_error(PostgresContextStore::connect(&wrong));
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(msg.contains("cs_alice"), "{msg}");
    assert!(!msg.contains("wrong-secret"), "{msg}");
}

#[test]
fn an_invalid_url_is_a_clear_error() {
    let msg = storage_error(PostgresContextStore::connect("postgres://a@b:notaport/x"));
    assert!(msg.contains("invalid PostgreSQL URL"), "{msg}");
}

#[test]
fn a_passed_deadline_stops_the_call() {
    let f = Fixture::new();
    let past = CallContext::until(Instant::now());
    let result = f.block(f.a().get_global(&past, "k"));
    assert!(
        matches!(&result, Err(ContextStoreError::Timeout(m)) if m.contains("deadline")),
        "{result:?}"
    );
    let started = Instant::now();
    let result = f.block(f.store.sql(
        &CallContext::within(Duration::from_millis(200)),
        "SELECT pg_sleep(5)",
    ));
    let took = started.elapsed();
    assert!(
        matches!(&result, Err(ContextStoreError::Timeout(_))),
        "{result:?}"
    );
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(1_000),
        "{took:?}"
    );
    // The statement was cancelled on the server, not left to run.
    let mut admin = f.admin();
    let gone = Instant::now() + Duration::from_secs(3);
    while running(&mut admin, "SELECT pg_sleep(5)") > 0 {
        assert!(
            Instant::now() < gone,
            "pg_sleep(5) still runs on the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The pool still works, without a leftover limit.
    assert_eq!(f.store.get_global("k").unwrap(), None);
    f.block(f.store.sql(
        &CallContext::within(Duration::from_secs(5)),
        "SELECT pg_sleep(0.3)",
    ))
    .unwrap();
}

#[test]
fn every_connection_gets_its_settings_when_it_connects() {
    let url = format!("{}?options=-c%20work_mem%3D8MB", cluster::fresh_database());
    let options = PostgresOptions {
        statement_timeout: Some(Duration::from_millis(1234)),
        ..PostgresOptions::default()
    };
    let store = PostgresContextStore::connect_with(&url, options).unwrap();
    assert_eq!(
        store.block(store.setting("statement_timeout")).unwrap(),
        "1234ms"
    );
    assert_eq!(store.block(store.setting("work_mem")).unwrap(), "8MB");
    assert_eq!(
        store.block(store.setting("application_name")).unwrap(),
        "contextstore"
    );
    assert_eq!(
        store
            .block(store.setting("default_transaction_read_only"))
            .unwrap(),
        "off"
    );
}

#[test]
fn connections_get_keepalives_timeouts_and_keep_url_options() {
    let mut config: tokio_postgres::Config =
        "postgres://u@db.example/x?options=-c%20work_mem%3D8MB"
            .parse()
            .unwrap();
    super::configure(&mut config, &PostgresOptions::default(), true);
    assert!(config.get_keepalives());
    assert_eq!(config.get_keepalives_idle(), Duration::from_secs(5));
    assert_eq!(
        config.get_keepalives_interval(),
        Some(Duration::from_secs(2))
    );
    assert_eq!(config.get_keepalives_retries(), Some(3));
    assert_eq!(
        config.get_tcp_user_timeout(),
        Some(&Duration::from_secs(10))
    );
    assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(10)));
    assert_eq!(
        config.get_options(),
        Some("-c work_mem=8MB -c statement_timeout=60000 -c default_transaction_read_only=on")
    );
}

#[test]
fn calls_work_from_inside_another_runtime_and_outlive_it() {
    let url = cluster::fresh_database();
    let one = PostgresOptions {
        pool_size: 1,
        ..PostgresOptions::default()
    };
    let store = PostgresContextStore::connect_with(&url, one).unwrap();
    let a: &Async = &store;
    let (run, node) = ids();
    let caller = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pid = caller.block_on(async {
        a.put(&CallContext::within(LONG), run, node, &text("1"), None)
            .await
            .unwrap();
        // The synchronous interface, from inside a task, too.
        assert_eq!(store.get(run, node).unwrap(), Some(json!(1)));
        store.backend_pid().await.unwrap()
    });
    drop(caller);
    // The connection made for that runtime's calls lives on the store's.
    assert_eq!(store.block(store.backend_pid()).unwrap(), pid);
    assert_eq!(store.get(run, node).unwrap(), Some(json!(1)));
    assert_eq!(store.retried(), 0);
    // A deadline is kept on any caller's runtime.
    let caller = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let stopped = caller.block_on(store.sql(
        &CallContext::within(Duration::from_millis(100)),
        "SELECT pg_sleep(2)",
    ));
    assert!(
        matches!(&stopped, Err(ContextStoreError::Timeout(_))),
        "{stopped:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_killed_connection_is_survived_by_the_next_call() {
    let f = Fixture::new();
    let (run, node) = ids();
    f.store.put(run, node, &json!(1)).unwrap();
    f.store.upsert_global("g", &json!(1)).unwrap();
    // Idle connections killed by the server.
    kill_sessions(&f.url);
    assert_eq!(f.store.get(run, node).unwrap(), Some(json!(1)));
    f.store.upsert_global("g", &json!(2)).unwrap();
    assert_eq!(f.store.get_global("g").unwrap(), Some(json!(2)));
    // A connection killed in the middle of a statement: the call is tried
    // again on a new connection.
    let before = f.store.retried();
    let mut admin = f.admin();
    std::thread::scope(|s| {
        let sleeper = s.spawn(|| {
            f.block(f.store.sql(
                &CallContext::within(Duration::from_secs(20)),
                "SELECT pg_sleep(0.5)",
            ))
        });
        let give_up = Instant::now() + Duration::from_secs(10);
        while running(&mut admin, "SELECT pg_sleep(0.5)") == 0 {
            assert!(Instant::now() < give_up, "the statement never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        kill_sessions(&f.url);
        sleeper.join().unwrap().unwrap();
    });
    assert!(
        f.store.retried() > before,
        "the killed call was not retried"
    );
    f.store.put(run, NodeId::new(), &json!(3)).unwrap();
}

#[test]
fn an_interrupted_write_that_landed_answers_ok_when_retried() {
    let f = Fixture::new();
    let (run, node) = ids();
    let value = text("{\"n\": 1.50}");
    let provenance = Provenance {
        component_hash: "c".repeat(64),
        params_hash: "p".repeat(64),
        upstream_hash: "u".repeat(64),
        attempt: 1,
        host: "h".into(),
        started_at: 1,
        ended_at: 2,
    };
    f.store
        .put_text_with_provenance(run, node, &value, &provenance)
        .unwrap();
    f.store.put_global_text("g", &value).unwrap();
    let other_value = text("2");
    let other_provenance = Provenance {
        attempt: 2,
        ..provenance.clone()
    };
    let doubt = Retry { uncertain: true };
    f.block(async {
        let mut conn = f.store.pool.get().await.unwrap();
        let put = |value, provenance| values::Put {
            flow_run_id: run,
            node_id: node,
            value,
            provenance,
            fence: None,
        };
        // Its own row: it landed.
        values::put(&mut conn, &put(&value, Some(&provenance)), doubt)
            .await
            .unwrap();
        // Without a doubt, or another value or provenance: write-once.
        for (put, retry) in [
            (put(&value, Some(&provenance)), Retry::default()),
            (put(&other_value, Some(&provenance)), doubt),
            (put(&value, Some(&other_provenance)), doubt),
            (put(&value, None), doubt),
        ] {
            assert!(matches!(
                values::put(&mut conn, &put, retry).await,
                Err(Fault::Store(ContextStoreError::AlreadyExists { .. }))
            ));
        }
        let global = |value| values::Global {
            key: "g",
            value,
            fence: None,
        };
        values::put_global(&mut conn, &global(&value), doubt)
            .await
            .unwrap();
        for (global, retry) in [
            (global(&value), Retry::default()),
            (global(&other_value), doubt),
        ] {
            assert!(matches!(
                values::put_global(&mut conn, &global, retry).await,
                Err(Fault::Store(ContextStoreError::GlobalAlreadyExists { .. }))
            ));
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(f.store.get_text(run, node).unwrap(), Some(value.clone()));
    assert_eq!(f.store.provenance(run, node).unwrap(), Some(provenance));
    assert_eq!(f.store.get_global_text("g").unwrap(), Some(value));
}

#[test]
fn claims_lease_expire_and_finish() {
    let f = Fixture::new();
    let (run, node) = ids();
    let (a, b, c) = (WorkerId::new("a"), WorkerId::new("b"), WorkerId::new("c"));
    let a_node = match f.claim(run, node, &a, LONG) {
        Claim::Won { attempt: 1, fence } => fence,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        f.claim(run, node, &b, LONG),
        Claim::Held { worker, same_name: false, lease_left }
            if worker == "a" && lease_left > Duration::from_secs(50)
    ));
    // A short lease that is not renewed expires, and b takes over.
    let other = NodeId::new();
    let a_other = f.won(run, other, &a, Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(120));
    let b_other = match f.claim(run, other, &b, LONG) {
        Claim::Won { attempt: 2, fence } => fence,
        other => panic!("{other:?}"),
    };
    // a renews only what it still holds; finishing is only for the holder.
    assert_eq!(f.renew(run, &a), vec![node]);
    f.block(f.store.finish(&CallContext::none(), &a_other))
        .unwrap();
    f.block(f.store.finish(&CallContext::none(), &a_node))
        .unwrap();
    assert_eq!(
        f.claim(run, node, &b, LONG),
        Claim::Finished {
            worker: "a".into(),
            stored: None
        }
    );
    let mut records = f.records(run);
    records.sort_by_key(|r| r.attempt);
    assert_eq!(records.len(), 2);
    assert!(records[0].finished && records[0].worker == "a");
    assert_eq!(records[0].incarnation, a.incarnation);
    assert!(!records[1].finished && records[1].worker == "b");
    assert_eq!(records[1].token, b_other.token);
    // A released claim is free at once.
    f.block(f.store.release(&CallContext::none(), &b_other))
        .unwrap();
    assert!(matches!(
        f.claim(run, other, &c, LONG),
        Claim::Won { attempt: 3, .. }
    ));
}

#[test]
fn stale_tokens_are_fenced_and_change_nothing() {
    let f = Fixture::new();
    let (run, node) = ids();
    let (a, b) = (WorkerId::new("a"), WorkerId::new("b"));
    let stale = f.won(run, node, &a, Duration::from_millis(50));
    assert_eq!(stale.token, 1);
    std::thread::sleep(Duration::from_millis(120));
    let current = f.won(run, node, &b, LONG);
    assert_eq!(
        current.token,
        stale.token + 1,
        "a takeover increments the token"
    );
    f.store.upsert_global("existing", &json!(0)).unwrap();

    let under_stale = CallContext::none().fenced(Some(stale));
    let other = NodeId::new();
    let value = text("\"stale\"");
    assert_fenced(
        f.block(f.a().put(&under_stale, run, node, &value, None)),
        &stale,
    );
    assert_fenced(
        f.block(f.a().put(&under_stale, run, other, &value, None)),
        &stale,
    );
    assert_fenced(
        f.block(f.a().put_global(&under_stale, "pg", &value)),
        &stale,
    );
    assert_fenced(
        f.block(f.a().upsert_global(&under_stale, "ug", &value)),
        &stale,
    );
    assert_fenced(
        f.block(f.a().upsert_global(&under_stale, "existing", &value)),
        &stale,
    );
    assert_eq!(f.store.get(run, node).unwrap(), None);
    assert_eq!(f.store.get(run, other).unwrap(), None);
    assert_eq!(f.store.get_global("pg").unwrap(), None);
    assert_eq!(f.store.get_global("ug").unwrap(), None);
    assert_eq!(f.store.get_global("existing").unwrap(), Some(json!(0)));
    let records = f.records(run);
    assert!(!records[0].finished && records[0].token == current.token);

    // The current holder's writes pass; its own output finishes its claim.
    let under_current = CallContext::none().fenced(Some(current));
    f.block(f.a().upsert_global(&under_current, "ug", &text("1")))
        .unwrap();
    f.block(f.a().put_global(&under_current, "pg", &text("2")))
        .unwrap();
    f.block(f.a().put(&under_current, run, other, &text("3"), None))
        .unwrap();
    assert!(
        !f.records(run)[0].finished,
        "another node's output finishes nothing"
    );
    f.block(f.a().put(&under_current, run, node, &text("4"), None))
        .unwrap();
    let records = f.records(run);
    assert!(
        records[0].finished && records[0].worker == "b",
        "{records:?}"
    );
    assert_eq!(f.store.get_global("ug").unwrap(), Some(json!(1)));
    assert_eq!(f.store.get_global("pg").unwrap(), Some(json!(2)));
    assert_eq!(f.store.get(run, other).unwrap(), Some(json!(3)));
    assert_eq!(f.store.get(run, node).unwrap(), Some(json!(4)));
    // Still refused, not AlreadyExists: the stale claim writes nothing.
    assert_fenced(
        f.block(f.a().put(&under_stale, run, node, &value, None)),
        &stale,
    );
    // Finishing is idempotent, and a finished node is not claimed again.
    f.block(f.store.finish(&CallContext::none(), &current))
        .unwrap();
    f.block(f.store.finish(&CallContext::none(), &current))
        .unwrap();
    assert_eq!(
        f.claim(run, node, &a, LONG),
        Claim::Finished {
            worker: "b".into(),
            stored: None
        }
    );
    // A write under no claim behaves as ever.
    f.store.upsert_global("ug", &json!(5)).unwrap();
    assert_eq!(f.store.get_global("ug").unwrap(), Some(json!(5)));
}

#[test]
fn release_retires_the_token_after_the_writes_in_flight() {
    let f = Fixture::new();
    let (run, node) = ids();
    let (a, b) = (WorkerId::new("a"), WorkerId::new("b"));
    let held = f.won(run, node, &a, LONG);
    let under_held = CallContext::none().fenced(Some(held));
    f.block(f.a().upsert_global(&under_held, "g", &text("1")))
        .unwrap();
    // A fenced write in flight holds the claim row's lock; an admin
    // transaction holding the same lock stands in for it.
    let mut admin = f.admin();
    let mut in_flight = admin.transaction().unwrap();
    let locked = in_flight
        .query(
            "SELECT 1 FROM contextstore_claims
             WHERE flow_run_id = $1 AND node_id = $2 AND token = $3 FOR SHARE",
            &[run.as_uuid(), node.as_uuid(), &held.token],
        )
        .unwrap();
    assert_eq!(locked.len(), 1);
    std::thread::scope(|s| {
        let release = s.spawn(|| f.block(f.store.release(&CallContext::none(), &held)));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !release.is_finished(),
            "release did not wait for the write in flight"
        );
        in_flight.commit().unwrap();
        release.join().unwrap().unwrap();
    });
    assert_fenced(
        f.block(f.a().upsert_global(&under_held, "g", &text("2"))),
        &held,
    );
    assert_eq!(f.store.get_global("g").unwrap(), Some(json!(1)));
    // The node is free at once, under a newer token.
    let taken = match f.claim(run, node, &b, LONG) {
        Claim::Won { attempt: 2, fence } => fence,
        other => panic!("{other:?}"),
    };
    assert!(taken.token > held.token + 1, "{taken:?} after {held:?}");
    // Releasing a retired token again changes nothing.
    f.block(f.store.release(&CallContext::none(), &held))
        .unwrap();
    assert_eq!(f.records(run)[0].token, taken.token);
    assert!(matches!(
        f.claim(run, node, &a, LONG),
        Claim::Held { worker, .. } if worker == "b"
    ));
}

#[test]
fn a_new_incarnation_of_a_name_does_not_inherit_its_claims() {
    let f = Fixture::new();
    let (run, node) = ids();
    let (before, after) = (WorkerId::new("w"), WorkerId::new("w"));
    let first = f.won(run, node, &before, Duration::from_millis(1_000));
    assert!(matches!(
        f.claim(run, node, &after, LONG),
        Claim::Held { worker, same_name: true, lease_left }
            if worker == "w" && lease_left <= Duration::from_millis(1_000)
    ));
    assert!(matches!(
        f.claim(run, node, &WorkerId::new("x"), LONG),
        Claim::Held {
            same_name: false,
            ..
        }
    ));
    assert_eq!(
        f.renew(run, &after),
        vec![],
        "renewed another incarnation's claim"
    );
    std::thread::sleep(Duration::from_millis(1_100));
    let second = match f.claim(run, node, &after, LONG) {
        Claim::Won { attempt: 2, fence } => fence,
        other => panic!("{other:?}"),
    };
    assert!(second.token > first.token);
    assert_eq!(
        f.renew(run, &before),
        vec![],
        "the old incarnation renewed a claim"
    );
    assert_eq!(f.renew(run, &after), vec![node]);
    let records = f.records(run);
    assert_eq!(records[0].incarnation, after.incarnation);
    assert_eq!(records[0].token, second.token);
}

#[test]
fn a_retried_claim_is_won_with_the_same_token() {
    let f = Fixture::new();
    let (run, node) = ids();
    let w = WorkerId::new("w");
    let first = f.claim(run, node, &w, LONG);
    let Claim::Won { attempt: 1, fence } = first.clone() else {
        panic!("{first:?}")
    };
    assert_eq!(f.claim(run, node, &w, LONG), first);
    let records = f.records(run);
    assert_eq!((records[0].attempt, records[0].token), (1, fence.token));
    // Once given up, the same incarnation's claim is a new win.
    f.block(f.store.release(&CallContext::none(), &fence))
        .unwrap();
    assert_eq!(f.renew(run, &w), vec![], "renewed a released claim");
    match f.claim(run, node, &w, LONG) {
        Claim::Won {
            attempt: 2,
            fence: again,
        } => assert!(again.token > fence.token + 1),
        other => panic!("{other:?}"),
    }
}

/// How many contextstore tables the database at `url` has.
fn contextstore_tables(url: &str) -> i64 {
    postgres::Client::connect(url, postgres::NoTls)
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'contextstore%'",
            &[],
        )
        .unwrap()
        .get(0)
}

#[test]
fn read_only_connect_to_a_fresh_database_runs_no_ddl() {
    let url = cluster::fresh_database();
    let msg = storage_error(PostgresContextStore::connect_read_only(&url));
    assert!(
        msg.starts_with("no contextstore schema in postgres://"),
        "{msg}"
    );
    assert!(msg.contains("contextstore migrate"), "{msg}");
    assert_eq!(contextstore_tables(&url), 0);
    drop(PostgresContextStore::connect(&url).unwrap());
    assert_eq!(contextstore_tables(&url), 6);
}

#[test]
fn a_read_only_store_reads_and_refuses_writes() {
    let f = Fixture::new();
    let (run, node) = ids();
    f.store.put(run, node, &json!(1)).unwrap();
    f.store.upsert_global("g", &json!(2)).unwrap();
    let held = f.won(run, node, &WorkerId::new("w"), LONG);
    let ro = PostgresContextStore::connect_read_only(&f.url).unwrap();
    assert!(ro.is_read_only());
    assert_eq!(ro.get(run, node).unwrap(), Some(json!(1)));
    assert_eq!(ro.list_keys(run).unwrap(), vec![node]);
    assert_eq!(ro.get_global("g").unwrap(), Some(json!(2)));
    assert_eq!(
        ro.block(ro.claims(&CallContext::none(), run))
            .unwrap()
            .len(),
        1
    );
    let refusals = [
        ro.put(run, NodeId::new(), &json!(3)),
        ro.put_global("h", &json!(3)),
        ro.upsert_global("g", &json!(3)),
        ro.block(ro.claim(
            &CallContext::none(),
            run,
            NodeId::new(),
            &WorkerId::new("v"),
            LONG,
        ))
        .map(drop),
        ro.block(ro.release(&CallContext::none(), &held)),
    ];
    for refused in refusals {
        assert!(
            matches!(&refused, Err(ContextStoreError::StorageError(m)) if m.contains("read-only")),
            "{refused:?}"
        );
    }
    assert_eq!(f.store.get_global("g").unwrap(), Some(json!(2)));
    // Its sessions are read-only on the server too.
    let ddl = ro.block(ro.sql(&CallContext::none(), "CREATE TABLE contextstore_x (a int)"));
    assert!(
        matches!(&ddl, Err(ContextStoreError::StorageError(m)) if m.contains("read-only transaction")),
        "{ddl:?}"
    );
}

#[test]
fn read_only_connect_requires_this_schema_version() {
    let url = cluster::fresh_database();
    drop(PostgresContextStore::connect(&url).unwrap());
    cluster::admin_execute(
        &url,
        "UPDATE contextstore_meta SET value = '2' WHERE key = 'schema_version'",
    );
    let msg = storage_error(PostgresContextStore::connect_read_only(&url));
    assert!(
        msg.contains("is version 2") && msg.contains("contextstore migrate"),
        "{msg}"
    );
}

#[test]
fn migration_3_gives_existing_claims_their_tokens() {
    let url = cluster::fresh_database();
    let (run, node) = ids();
    cluster::admin_execute(
        &url,
        &format!(
            "CREATE TABLE contextstore_meta (key text PRIMARY KEY, value text NOT NULL);
             INSERT INTO contextstore_meta VALUES ('application', 'contextstore'), ('schema_version', '2');
             {}
             {}
             INSERT INTO contextstore_claims (flow_run_id, node_id, worker, lease_until, attempt)
             VALUES ('{run}', '{node}', 'old', now() - interval '1 second', 2);",
            schema::MIGRATIONS[0],
            schema::MIGRATIONS[1],
        ),
    );
    let f = Fixture {
        store: PostgresContextStore::connect(&url).unwrap(),
        url,
    };
    let records = f.records(run);
    assert_eq!(
        (
            records[0].worker.as_str(),
            records[0].attempt,
            records[0].token,
            records[0].incarnation
        ),
        ("old", 2, 2, uuid::Uuid::nil())
    );
    assert!(matches!(
        f.claim(run, node, &WorkerId::new("new"), LONG),
        Claim::Won { attempt: 3, fence } if fence.token == 3
    ));
}
