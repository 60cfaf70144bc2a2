//! Model-based property test of [`SqliteContextStore`] and
//! [`PostgresContextStore`].
//!
//! Random sequences of the six store operations, over a small pool of run
//! ids, node ids and global keys (so that write-once collisions are common),
//! interleaved with `Reopen` (drop the store and open its file again), run
//! against the real store and against a plain in-memory model of the
//! contract. Every result must agree: `Ok` values equal (`list_keys`
//! compared sorted), errors of the same kind naming the same ids or key.
//! After each sequence the whole state is compared once more, before and
//! after a final reopen.
//!
//! Group commit is checked two ways: the same sequence runs against a
//! batched (`group_commit: true`) and an unbatched store side by side,
//! operation by operation; and several threads run their own sequences at
//! once against one batched store, so that their writes share commits.
//! Each thread works in its own run ids and keys, so every result is still
//! deterministic and checked against the thread's model; all threads also
//! race for one contended output (exactly one wins, and its value is
//! stored), and the final state must equal that of the same sequences
//! replayed one after another on an unbatched store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use contextstore::{
    ContextStore, ContextStoreError, Durability, FlowRunId, NodeId, PostgresContextStore,
    SqliteContextStore, SqliteOptions,
};

#[path = "support/postgres_cluster.rs"]
mod postgres_cluster;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value};

const RUNS: [&str; 2] = [
    "00000000-0000-4000-8000-0000000000a1",
    "00000000-0000-4000-8000-0000000000a2",
];
const NODES: [&str; 3] = [
    "00000000-0000-4000-8000-0000000000b1",
    "00000000-0000-4000-8000-0000000000b2",
    "00000000-0000-4000-8000-0000000000b3",
];
const KEYS: [&str; 3] = ["", "a", "a/b"];

fn run(i: usize) -> FlowRunId {
    RUNS[i].parse().unwrap()
}

/// Run `i` of namespace `ns`: namespace 0 is [`RUNS`]; each other one has
/// run ids of its own, so that threads working in different namespaces
/// never touch the same output.
fn run_in(ns: usize, i: usize) -> FlowRunId {
    if ns == 0 {
        return run(i);
    }
    format!("00000000-0000-4000-8000-{ns:04x}000000a{}", i + 1)
        .parse()
        .unwrap()
}

/// Global key `k` of namespace `ns` (namespace 0: [`KEYS`]).
fn key_in(ns: usize, k: usize) -> String {
    if ns == 0 {
        KEYS[k].to_owned()
    } else {
        format!("t{ns}/{}", KEYS[k])
    }
}

fn node(i: usize) -> NodeId {
    NODES[i].parse().unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        run: usize,
        node: usize,
        value: Value,
    },
    Get {
        run: usize,
        node: usize,
    },
    ListKeys {
        run: usize,
    },
    PutGlobal {
        key: usize,
        value: Value,
    },
    UpsertGlobal {
        key: usize,
        value: Value,
    },
    GetGlobal {
        key: usize,
    },
    /// Drop the store and open its file again (a no-op for an in-memory store).
    Reopen,
}

/// What an operation answered, in a form both sides can be compared in.
#[derive(Debug, PartialEq)]
enum Outcome {
    Done,
    Value(Option<Value>),
    /// Sorted.
    Keys(Vec<NodeId>),
    AlreadyExists(FlowRunId, NodeId),
    GlobalAlreadyExists(String),
    /// An error the contract never gives for these operations.
    Unexpected(String),
}

impl Outcome {
    fn of_unit(result: Result<(), ContextStoreError>) -> Self {
        match result {
            Ok(()) => Self::Done,
            Err(e) => Self::of_error(e),
        }
    }

    fn of_value(result: Result<Option<Value>, ContextStoreError>) -> Self {
        match result {
            Ok(v) => Self::Value(v),
            Err(e) => Self::of_error(e),
        }
    }

    fn of_keys(result: Result<Vec<NodeId>, ContextStoreError>) -> Self {
        match result {
            Ok(mut keys) => {
                keys.sort();
                Self::Keys(keys)
            }
            Err(e) => Self::of_error(e),
        }
    }

    fn of_error(error: ContextStoreError) -> Self {
        match error {
            ContextStoreError::AlreadyExists {
                flow_run_id,
                node_id,
            } => Self::AlreadyExists(flow_run_id, node_id),
            ContextStoreError::GlobalAlreadyExists { key } => Self::GlobalAlreadyExists(key),
            other => Self::Unexpected(other.to_string()),
        }
    }
}

/// The contract, in memory.
#[derive(Default)]
struct Model {
    outputs: HashMap<(FlowRunId, NodeId), Value>,
    globals: HashMap<String, Value>,
}

impl Model {
    fn apply(&mut self, op: &Op) -> Outcome {
        self.apply_in(op, 0)
    }

    /// `op` with its runs and keys taken from namespace `ns`.
    fn apply_in(&mut self, op: &Op, ns: usize) -> Outcome {
        let run = |r: usize| run_in(ns, r);
        match op {
            Op::Put {
                run: r,
                node: n,
                value,
            } => {
                let (r, n) = (run(*r), node(*n));
                if let std::collections::hash_map::Entry::Vacant(e) = self.outputs.entry((r, n)) {
                    e.insert(value.clone());
                    Outcome::Done
                } else {
                    Outcome::AlreadyExists(r, n)
                }
            }
            Op::Get { run: r, node: n } => {
                Outcome::Value(self.outputs.get(&(run(*r), node(*n))).cloned())
            }
            Op::ListKeys { run: r } => {
                let r = run(*r);
                let mut keys: Vec<NodeId> = self
                    .outputs
                    .keys()
                    .filter(|(run, _)| *run == r)
                    .map(|(_, node)| *node)
                    .collect();
                keys.sort();
                Outcome::Keys(keys)
            }
            Op::PutGlobal { key, value } => match self.globals.entry(key_in(ns, *key)) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    Outcome::GlobalAlreadyExists(e.key().clone())
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(value.clone());
                    Outcome::Done
                }
            },
            Op::UpsertGlobal { key, value } => {
                self.globals.insert(key_in(ns, *key), value.clone());
                Outcome::Done
            }
            Op::GetGlobal { key } => Outcome::Value(self.globals.get(&key_in(ns, *key)).cloned()),
            Op::Reopen => Outcome::Done,
        }
    }
}

/// How the store under test is made and remade.
#[derive(Clone, Copy, Debug)]
enum Backend {
    File {
        durability: Durability,
        group_commit: bool,
    },
    Memory,
    /// A PostgreSQL database (emptied before each sequence); `Reopen`
    /// connects again.
    Postgres,
}

impl Backend {
    /// A file store with `durability` and group commit on (the default).
    fn file(durability: Durability) -> Self {
        Self::File {
            durability,
            group_commit: true,
        }
    }
}

/// Opens a file store at `path`.
fn open_file(path: &Path, durability: Durability, group_commit: bool) -> SqliteContextStore {
    SqliteContextStore::open_with(
        path,
        SqliteOptions {
            durability,
            group_commit,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// Applies `op` (not `Reopen`) to `store`, with its runs and keys taken
/// from namespace `ns`.
fn apply_to(store: &dyn ContextStore, op: &Op, ns: usize) -> Outcome {
    let run = |r: usize| run_in(ns, r);
    let key = |k: usize| key_in(ns, k);
    match op {
        Op::Put {
            run: r,
            node: n,
            value,
        } => Outcome::of_unit(store.put(run(*r), node(*n), value)),
        Op::Get { run: r, node: n } => Outcome::of_value(store.get(run(*r), node(*n))),
        Op::ListKeys { run: r } => Outcome::of_keys(store.list_keys(run(*r))),
        Op::PutGlobal { key: k, value } => Outcome::of_unit(store.put_global(&key(*k), value)),
        Op::UpsertGlobal { key: k, value } => {
            Outcome::of_unit(store.upsert_global(&key(*k), value))
        }
        Op::GetGlobal { key: k } => Outcome::of_value(store.get_global(&key(*k))),
        Op::Reopen => Outcome::Unexpected("Reopen cannot be applied to a shared store".into()),
    }
}

struct Subject {
    backend: Backend,
    path: PathBuf,
    store: Option<Box<dyn ContextStore>>,
}

/// The database of this test's PostgreSQL sequences (one per test thread:
/// the sequences of one test run one after another), emptied before each.
fn postgres_url() -> String {
    thread_local! {
        static URL: String = postgres_cluster::fresh_database();
    }
    URL.with(Clone::clone)
}

impl Subject {
    fn new(backend: Backend, dir: &Path) -> Self {
        let mut subject = Self {
            backend,
            path: dir.join("model.db"),
            store: None,
        };
        subject.store = Some(subject.open());
        subject
    }

    fn open(&self) -> Box<dyn ContextStore> {
        match self.backend {
            Backend::File {
                durability,
                group_commit,
            } => Box::new(open_file(&self.path, durability, group_commit)),
            Backend::Memory => Box::new(SqliteContextStore::in_memory().unwrap()),
            Backend::Postgres => Box::new(
                PostgresContextStore::connect(&postgres_url())
                    .unwrap_or_else(|e| panic!("connecting to PostgreSQL: {e}")),
            ),
        }
    }

    fn reopen(&mut self) {
        if let Backend::File { .. } | Backend::Postgres = self.backend {
            // Close every connection before the file is opened again.
            drop(self.store.take());
            self.store = Some(self.open());
        }
    }

    fn store(&self) -> &dyn ContextStore {
        self.store.as_deref().expect("store is open")
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Reopen => {
                self.reopen();
                Outcome::Done
            }
            other => apply_to(self.store(), other, 0),
        }
    }
}

/// Every read of the pool, on both sides, must agree.
fn check_whole_state(model: &mut Model, subject: &mut Subject) -> Result<(), TestCaseError> {
    let mut reads = Vec::new();
    for r in 0..RUNS.len() {
        reads.push(Op::ListKeys { run: r });
        for n in 0..NODES.len() {
            reads.push(Op::Get { run: r, node: n });
        }
    }
    for key in 0..KEYS.len() {
        reads.push(Op::GetGlobal { key });
    }
    for op in &reads {
        let expected = model.apply(op);
        let actual = subject.apply(op);
        prop_assert_eq!(actual, expected, "final check {:?}", op);
    }
    Ok(())
}

fn run_sequence(backend: Backend, ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    if let Backend::Postgres = backend {
        postgres_cluster::admin_execute(
            &postgres_url(),
            "DROP TABLE IF EXISTS contextstore_outputs, contextstore_globals,
                 contextstore_claims, contextstore_runs, contextstore_run_workers,
                 contextstore_meta",
        );
    }
    let mut subject = Subject::new(backend, dir.path());
    for (step, op) in ops.iter().enumerate() {
        let expected = model.apply(op);
        let actual = subject.apply(op);
        prop_assert_eq!(actual, expected, "step {} of {:?}: {:?}", step, backend, op);
    }
    check_whole_state(&mut model, &mut subject)?;
    subject.reopen();
    check_whole_state(&mut model, &mut subject)?;
    Ok(())
}

/// Small JSON values: a few scalars (including floats that are easy to get
/// wrong) and shallow arrays and objects of them.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..=3).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(i64::MIN)),
        prop::sample::select(vec![0.5, -0.0, 0.1, 1e300, -1.5e-7, 123456.789])
            .prop_map(Value::from),
        prop::sample::select(vec!["", "x", "é", "\u{0}", "\"quoted\"", "🦀"]).prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(vec!["", "k", "z"]), inner), 0..3)
                .prop_map(|entries| {
                    Value::Object(
                        entries
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect::<Map<String, Value>>(),
                    )
                }),
        ]
    })
}

fn op() -> impl Strategy<Value = Op> {
    let run = 0..RUNS.len();
    let node = 0..NODES.len();
    let key = 0..KEYS.len();
    prop_oneof![
        4 => (run.clone(), node.clone(), value()).prop_map(|(run, node, value)| Op::Put { run, node, value }),
        3 => (run.clone(), node).prop_map(|(run, node)| Op::Get { run, node }),
        2 => run.prop_map(|run| Op::ListKeys { run }),
        3 => (key.clone(), value()).prop_map(|(key, value)| Op::PutGlobal { key, value }),
        3 => (key.clone(), value()).prop_map(|(key, value)| Op::UpsertGlobal { key, value }),
        3 => key.prop_map(|key| Op::GetGlobal { key }),
        1 => Just(Op::Reopen),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..60)
}

/// Sequences for `THREADS` threads sharing one store (no `Reopen`).
fn thread_ops() -> impl Strategy<Value = Vec<Vec<Op>>> {
    let op = op().prop_filter("a shared store is not reopened", |op| {
        !matches!(op, Op::Reopen)
    });
    prop::collection::vec(prop::collection::vec(op, 1..30), THREADS)
}

const THREADS: usize = 4;

/// The same sequence against a batched and an unbatched store and the
/// model, operation by operation; then the whole state of each.
fn batched_and_unbatched_agree(durability: Durability, ops: &[Op]) -> Result<(), TestCaseError> {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut model = Model::default();
    let mut batched = Subject::new(
        Backend::File {
            durability,
            group_commit: true,
        },
        dir_a.path(),
    );
    let mut unbatched = Subject::new(
        Backend::File {
            durability,
            group_commit: false,
        },
        dir_b.path(),
    );
    for (step, op) in ops.iter().enumerate() {
        let expected = model.apply(op);
        let with = batched.apply(op);
        let without = unbatched.apply(op);
        prop_assert_eq!(&with, &without, "step {}: {:?}", step, op);
        prop_assert_eq!(with, expected, "step {}: {:?}", step, op);
    }
    check_whole_state(&mut model, &mut batched)?;
    check_whole_state(&mut model, &mut unbatched)?;
    Ok(())
}

/// Every output and global of namespaces `0..=threads`, as one comparable list.
fn snapshot(store: &SqliteContextStore, threads: usize) -> Vec<Outcome> {
    let mut reads = Vec::new();
    for ns in 0..=threads {
        for r in 0..RUNS.len() {
            reads.push(apply_to(store, &Op::ListKeys { run: r }, ns));
            for n in 0..NODES.len() {
                reads.push(apply_to(store, &Op::Get { run: r, node: n }, ns));
            }
        }
        for key in 0..KEYS.len() {
            reads.push(apply_to(store, &Op::GetGlobal { key }, ns));
        }
    }
    reads
}

/// `sequences[t]` run by thread `t` in namespace `t + 1`, all at once
/// against one batched store; each thread also races for one contended
/// output in namespace 0.
fn concurrent_threads_agree(sequences: &[Vec<Op>]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let shared = open_file(&dir.path().join("batched.db"), Durability::Full, true);
    let start = std::sync::Barrier::new(sequences.len());
    let contended = Op::Get { run: 0, node: 0 };
    let results: Vec<(Vec<(Outcome, Outcome)>, Outcome)> = std::thread::scope(|scope| {
        let handles: Vec<_> = sequences
            .iter()
            .enumerate()
            .map(|(t, ops)| {
                let (shared, start) = (&shared, &start);
                scope.spawn(move || {
                    let ns = t + 1;
                    let mut model = Model::default();
                    start.wait();
                    let race = Op::Put {
                        run: 0,
                        node: 0,
                        value: Value::from(t),
                    };
                    let raced = apply_to(shared, &race, 0);
                    let compared = ops
                        .iter()
                        .map(|op| (apply_to(shared, op, ns), model.apply_in(op, ns)))
                        .collect();
                    (compared, raced)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut winners = Vec::new();
    for (t, (compared, raced)) in results.into_iter().enumerate() {
        for (step, (actual, expected)) in compared.into_iter().enumerate() {
            prop_assert_eq!(actual, expected, "thread {} step {}", t, step);
        }
        match raced {
            Outcome::Done => winners.push(t),
            Outcome::AlreadyExists(..) => {}
            other => prop_assert!(false, "thread {} raced and got {:?}", t, other),
        }
    }
    prop_assert_eq!(winners.len(), 1, "exactly one racer wins");
    let stored = apply_to(&shared, &contended, 0);
    prop_assert_eq!(stored, Outcome::Value(Some(Value::from(winners[0]))));

    // The same sequences one after another on an unbatched store, with the
    // same winner, end in the same state.
    let serial = open_file(&dir.path().join("unbatched.db"), Durability::Full, false);
    let race = Op::Put {
        run: 0,
        node: 0,
        value: Value::from(winners[0]),
    };
    prop_assert_eq!(apply_to(&serial, &race, 0), Outcome::Done);
    for (t, ops) in sequences.iter().enumerate() {
        for op in ops {
            apply_to(&serial, op, t + 1);
        }
    }
    prop_assert_eq!(
        snapshot(&shared, sequences.len()),
        snapshot(&serial, sequences.len())
    );
    Ok(())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Shrinking a failure needs few iterations here; keep a failing run short.
        max_shrink_iters: 2_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// The default, fully durable file store agrees with the model.
    #[test]
    fn sqlite_file_full_durability_matches_model(ops in ops()) {
        run_sequence(Backend::file(Durability::Full), &ops)?;
    }

    /// `Durability::Normal` changes when commits reach the disk, never what they mean.
    #[test]
    fn sqlite_file_normal_durability_matches_model(ops in ops()) {
        run_sequence(Backend::file(Durability::Normal), &ops)?;
    }

    /// The in-memory store (reads through the writer connection) agrees too;
    /// `Reopen` is a no-op for it.
    #[test]
    fn sqlite_in_memory_matches_model(ops in ops()) {
        run_sequence(Backend::Memory, &ops)?;
    }

    /// Group commit changes when writes reach the disk, never their
    /// results: batched and unbatched stores agree op by op.
    #[test]
    fn batched_and_unbatched_stores_agree_op_by_op(ops in ops()) {
        batched_and_unbatched_agree(Durability::Full, &ops)?;
    }
}

proptest! {
    #![proptest_config(config(32))]

    /// Threads whose writes share commits each see exactly what their own
    /// model says, and together end where an unbatched store does.
    #[test]
    fn concurrent_batched_writers_match_their_models(sequences in thread_ops()) {
        concurrent_threads_agree(&sequences)?;
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// The PostgreSQL store agrees with the model too; every sequence
    /// starts from an empty database (its schema made anew at connect).
    #[test]
    fn postgres_matches_model(ops in ops()) {
        run_sequence(Backend::Postgres, &ops)?;
    }
}

/// A fixed sequence through every collision the contract names, so that the
/// interesting paths run even if the random sequences happen to miss them.
#[test]
fn fixed_sequence_with_every_collision() {
    use serde_json::json;
    let ops = vec![
        Op::Put {
            run: 0,
            node: 0,
            value: json!({"a": [1, 2.5]}),
        },
        Op::Put {
            run: 0,
            node: 0,
            value: json!("second"),
        },
        Op::Put {
            run: 1,
            node: 0,
            value: json!(null),
        },
        Op::ListKeys { run: 0 },
        Op::Reopen,
        Op::Put {
            run: 0,
            node: 0,
            value: json!("after reopen"),
        },
        Op::Get { run: 0, node: 0 },
        Op::UpsertGlobal {
            key: 0,
            value: json!(1),
        },
        Op::PutGlobal {
            key: 0,
            value: json!(2),
        },
        Op::PutGlobal {
            key: 1,
            value: json!(3),
        },
        Op::PutGlobal {
            key: 1,
            value: json!(4),
        },
        Op::UpsertGlobal {
            key: 1,
            value: json!(5),
        },
        Op::Reopen,
        Op::GetGlobal { key: 0 },
        Op::GetGlobal { key: 1 },
        Op::GetGlobal { key: 2 },
        Op::PutGlobal {
            key: 0,
            value: json!(6),
        },
    ];
    for backend in [
        Backend::file(Durability::Full),
        Backend::file(Durability::Normal),
        Backend::Memory,
        Backend::Postgres,
    ] {
        run_sequence(backend, &ops).unwrap();
    }
}
