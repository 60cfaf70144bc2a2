//! Hostile guests: each bad behaviour gets its typed error, and the host
//! and the store stay usable and consistent afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use contextstore::flow::journal;
use contextstore::guest_store::GuestStoreError;
use contextstore::runtime::{GuestFailure, LoadError, LoadOptions, RuntimeConfig};
use contextstore::{
    ContextStore, FlowRunId, Grant, Invocation, Limits, NodeId, Runtime, StepError, StepOutcome,
    StepStatus,
};
use contextstore_tests::{components, load, run_default, runtime, temp_store};
use serde_json::{Value, json};

/// Every mode tested below; `every_mode_has_a_test` checks this against the guest.
const TESTED_MODES: &[&str] = &[
    "loop",
    "memory-hog",
    "trap-after-put",
    "write-other-node",
    "write-other-run",
    "read-other-run",
    "ungranted-global",
    "oversized-value",
    "invalid-json",
    "invalid-id",
    "many-puts",
    "no-output",
    "fail",
    "sandbox",
    "echo",
    "read-upstream",
    "upstream-bytes",
    "sleep",
    "block-forever",
    "huge-key",
    "huge-failure",
    "chatty-stderr",
    "journal-read",
    "journal-write",
    "deep-json",
    "round-trip",
    "count",
    "read-other-node",
    "list-keys",
    "read-loop",
    "many-resources",
];

struct Case {
    _dir: tempfile::TempDir,
    store: Arc<dyn ContextStore>,
    invocation: Invocation,
}

fn case(params: Value) -> Case {
    let (dir, store) = temp_store();
    let invocation = Invocation::new(FlowRunId::new(), NodeId::new()).with_params(params);
    Case {
        _dir: dir,
        store,
        invocation,
    }
}

impl Case {
    /// Runs the case; with a fuel budget, its fuel-metered variant is
    /// compiled first (as an embedder must, outside the deadline).
    fn run(&self, grant: &Grant, limits: &Limits) -> Result<StepOutcome, StepError> {
        let hostile = load(components::HOSTILE);
        if limits.fuel.is_some() {
            runtime()
                .prepare_metered(&hostile)
                .expect("metered variant");
        }
        runtime().run(&hostile, &self.store, &self.invocation, grant, limits)
    }

    fn run_default(&self) -> Result<StepOutcome, StepError> {
        self.run(&Grant::default(), &Limits::default())
    }

    /// The host and the store still work: a new step runs and writes.
    fn assert_still_usable(&self) {
        let node = NodeId::new();
        let invocation = Invocation::new(self.invocation.flow_run_id, node)
            .with_params(json!({"mode": "echo", "value": "after"}));
        let out = run_default(&load(components::HOSTILE), &self.store, &invocation)
            .expect("a well-behaved step still runs");
        assert_eq!(out.value().unwrap(), json!("after"));
    }

    fn own_output(&self) -> Option<Value> {
        self.store
            .get(self.invocation.flow_run_id, self.invocation.node_id)
            .unwrap()
    }
}

/// The store error the guest got and passed back as its step error.
fn store_error(result: Result<StepOutcome, StepError>) -> GuestStoreError {
    match result {
        Err(StepError::Failed(GuestFailure::Store(e))) => e,
        other => panic!("expected a store error passed back by the step, got {other:?}"),
    }
}

#[test]
fn every_mode_has_a_test() {
    let err = case(json!({"mode": "no-such-mode"}))
        .run_default()
        .unwrap_err();
    let StepError::Failed(GuestFailure::InvalidParams(message)) = err else {
        panic!("{err:?}")
    };
    let listed = message
        .split("known modes: ")
        .nth(1)
        .expect("the guest lists its modes");
    let guest_modes: Vec<&str> = listed.split(", ").collect();
    assert_eq!(guest_modes, TESTED_MODES);
}

#[test]
fn loop_times_out() {
    let case = case(json!({"mode": "loop"}));
    let limits = Limits {
        timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let err = case.run(&Grant::default(), &limits).unwrap_err();
    assert!(
        matches!(err, StepError::Timeout(t) if t == Duration::from_millis(500)),
        "{err:?}"
    );
    assert_eq!(case.own_output(), None);
    case.assert_still_usable();
}

#[test]
fn loop_runs_out_of_fuel() {
    let case = case(json!({"mode": "loop"}));
    let limits = Limits {
        fuel: Some(5_000_000),
        ..Limits::default()
    };
    let err = case.run(&Grant::default(), &limits).unwrap_err();
    assert!(matches!(err, StepError::OutOfFuel(5_000_000)), "{err:?}");
    case.assert_still_usable();
}

#[test]
fn memory_hog_runs_out_of_memory() {
    let case = case(json!({"mode": "memory-hog"}));
    let limits = Limits {
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    let err = case.run(&Grant::default(), &limits).unwrap_err();
    assert!(
        matches!(err, StepError::OutOfMemory { limit_bytes } if limit_bytes == 32 << 20),
        "{err:?}"
    );
    case.assert_still_usable();
}

#[test]
fn trap_after_put_keeps_the_output_and_a_retry_returns_it() {
    let case = case(json!({"mode": "trap-after-put"}));
    // The output is stored, so the node is done; the trap is its warning.
    let done = case.run_default().unwrap();
    assert_eq!(done.status, StepStatus::Ran);
    assert_eq!(done.value().unwrap(), json!({"mode": "trap-after-put"}));
    let Some(StepError::Trap { stderr, .. }) = &done.warning else {
        panic!("expected a trap as the warning, got {:?}", done.warning)
    };
    assert!(
        stderr.contains("trapping after a successful put"),
        "stderr: {stderr}"
    );
    assert_eq!(case.own_output(), Some(json!({"mode": "trap-after-put"})));
    let retry = case.run_default().unwrap();
    assert_eq!(retry.status, StepStatus::AlreadyDone);
    assert_eq!(retry.value().unwrap(), json!({"mode": "trap-after-put"}));
    case.assert_still_usable();
}

#[test]
fn write_other_node_is_denied() {
    let target = NodeId::new();
    let case = case(json!({"mode": "write-other-node", "target": target.to_string()}));
    let err = store_error(case.run_default());
    assert_eq!(err.kind(), "access-denied", "{err}");
    assert_eq!(
        case.store.get(case.invocation.flow_run_id, target).unwrap(),
        None
    );
    case.assert_still_usable();
}

#[test]
fn write_other_run_is_denied() {
    let target = FlowRunId::new();
    let case = case(json!({"mode": "write-other-run", "target": target.to_string()}));
    let err = store_error(case.run_default());
    assert_eq!(err.kind(), "access-denied", "{err}");
    assert!(case.store.list_keys(target).unwrap().is_empty());
    case.assert_still_usable();
}

#[test]
fn read_other_run_is_denied() {
    let target = FlowRunId::new();
    let case = case(json!({"mode": "read-other-run", "target": target.to_string()}));
    case.store
        .put(target, case.invocation.node_id, &json!("secret"))
        .unwrap();
    let err = store_error(case.run_default());
    assert_eq!(err.kind(), "access-denied", "{err}");
}

#[test]
fn ungranted_global_is_denied() {
    let case = case(json!({"mode": "ungranted-global"}));
    // A grant for another prefix does not cover `secret/`.
    let grant = Grant::default().write_globals("public/").read_globals("");
    let err = store_error(case.run(&grant, &Limits::default()));
    assert_eq!(err.kind(), "access-denied", "{err}");
    assert_eq!(case.store.get_global("secret/key").unwrap(), None);
    case.assert_still_usable();
}

#[test]
fn granted_global_is_written() {
    let case = case(json!({"mode": "ungranted-global"}));
    let grant = Grant::default().write_globals("secret/");
    let err = case.run(&grant, &Limits::default()).unwrap_err();
    // The guest reports that its bad call was allowed: the grant worked.
    assert!(err.to_string().contains("bad call was allowed"), "{err}");
    assert_eq!(case.store.get_global("secret/key").unwrap(), Some(json!(1)));
}

#[test]
fn oversized_value_is_refused() {
    let case = case(json!({"mode": "oversized-value"}));
    let err = store_error(case.run_default());
    assert_eq!(err.kind(), "quota-exceeded", "{err}");
    assert_eq!(case.own_output(), None);
    case.assert_still_usable();
}

#[test]
fn oversized_value_limit_is_configurable() {
    let case = case(json!({"mode": "oversized-value", "bytes": 2000}));
    let limits = Limits {
        max_value_bytes: 1000,
        ..Limits::default()
    };
    assert_eq!(
        store_error(case.run(&Grant::default(), &limits)).kind(),
        "quota-exceeded"
    );
}

#[test]
fn invalid_json_is_refused() {
    let case = case(json!({"mode": "invalid-json"}));
    let err = store_error(case.run_default());
    assert_eq!(err.kind(), "invalid-json", "{err}");
    assert_eq!(case.own_output(), None);
    case.assert_still_usable();
}

#[test]
fn invalid_id_is_refused() {
    let case = case(json!({"mode": "invalid-id"}));
    let err = store_error(case.run_default());
    assert_eq!(err.kind(), "invalid-id", "{err}");
    assert!(err.to_string().contains("not-a-uuid"), "{err}");
    case.assert_still_usable();
}

#[test]
fn many_puts_hit_the_write_quota() {
    let case = case(json!({"mode": "many-puts"}));
    let grant = Grant::default().write_globals("hostile/");
    let err = store_error(case.run(&grant, &Limits::default()));
    assert_eq!(err.kind(), "quota-exceeded", "{err}");
    // Exactly the first `max_writes` writes landed.
    let max = Limits::default().max_writes;
    assert_eq!(
        case.store
            .get_global(&format!("hostile/{}", max - 1))
            .unwrap(),
        Some(json!(1))
    );
    assert_eq!(
        case.store.get_global(&format!("hostile/{max}")).unwrap(),
        None
    );
    case.assert_still_usable();
}

#[test]
fn no_output_is_an_error() {
    let case = case(json!({"mode": "no-output"}));
    assert!(matches!(case.run_default(), Err(StepError::NoOutput)));
}

#[test]
fn fail_is_the_steps_own_error() {
    let case = case(json!({"mode": "fail"}));
    let err = case.run_default().unwrap_err();
    assert!(
        matches!(&err, StepError::Failed(GuestFailure::Failed(m)) if m == "asked to fail"),
        "{err:?}"
    );
}

#[test]
fn sandbox_has_no_files_env_or_network() {
    let case = case(json!({"mode": "sandbox"}));
    let out = case.run_default().unwrap();
    assert_eq!(
        out.value().unwrap(),
        json!({"read_dir_ok": false, "read_file_ok": false, "env_vars": 0, "tcp_ok": false})
    );
}

#[test]
fn echo_writes_any_value() {
    let value = json!({"deep": [[[["x"]]]], "n": 1.5, "s": "\u{0}🦀"});
    let case = case(json!({"mode": "echo", "value": value}));
    assert_eq!(case.run_default().unwrap().value().unwrap(), value);
}

#[test]
fn read_upstream_reads_outputs_of_its_run() {
    let case = case(json!({"mode": "read-upstream"}));
    let (a, b) = (NodeId::new(), NodeId::new());
    let run = case.invocation.flow_run_id;
    case.store.put(run, a, &json!({"from": "a"})).unwrap();
    case.store.put(run, b, &json!([1, 2])).unwrap();
    let mut invocation = case.invocation.clone();
    invocation.upstream = vec![("first".into(), a), ("second".into(), b)];
    let out = run_default(&load(components::HOSTILE), &case.store, &invocation).unwrap();
    assert_eq!(
        out.value().unwrap(),
        json!({"first": {"from": "a"}, "second": [1, 2]})
    );
}

#[test]
fn broken_components_are_load_errors() {
    let rt = runtime();
    let garbage = rt
        .load_bytes("garbage", b"definitely not wasm")
        .unwrap_err();
    assert!(matches!(garbage, LoadError::Invalid { .. }), "{garbage:?}");
    let core_module = rt.load_bytes("core", b"\0asm\x01\0\0\0").unwrap_err();
    assert!(
        matches!(core_module, LoadError::Invalid { .. }),
        "{core_module:?}"
    );
    // A valid component that exports nothing: it does not fit the step world.
    let empty_component = rt.load_bytes("empty", b"\0asm\x0d\0\x01\0").unwrap_err();
    assert!(
        matches!(empty_component, LoadError::WrongWorld { .. }),
        "{empty_component:?}"
    );
    let missing = rt.load_file("/no/such/component.wasm").unwrap_err();
    assert!(matches!(missing, LoadError::Read { .. }), "{missing:?}");
}

#[test]
fn upstream_bytes_reads_upstream_text() {
    let case = case(json!({"mode": "upstream-bytes"}));
    let up = NodeId::new();
    let run = case.invocation.flow_run_id;
    case.store.put(run, up, &json!("four")).unwrap();
    let mut invocation = case.invocation.clone();
    invocation.upstream = vec![("up".into(), up)];
    let out = run_default(&load(components::HOSTILE), &case.store, &invocation).unwrap();
    assert_eq!(out.value().unwrap(), json!({"up": 6}));
}

/// Runs a step that waits in WASI under a 1 s timeout: it is a `Timeout`
/// well within 2 s, and the same runtime and store run the next step.
fn assert_wait_times_out(mode: &str) {
    let case = case(json!({"mode": mode}));
    let limits = Limits {
        timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    // Compiled before the clock starts: the deadline is the invocation's.
    let component = load(components::HOSTILE);
    let started = Instant::now();
    let result = runtime().run(
        &component,
        &case.store,
        &case.invocation,
        &Grant::default(),
        &limits,
    );
    let elapsed = started.elapsed();
    let err = result.unwrap_err();
    assert!(
        matches!(err, StepError::Timeout(t) if t == Duration::from_secs(1)),
        "{mode}: {err:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "{mode}: took {elapsed:?}");
    assert_eq!(case.own_output(), None);
    let started = Instant::now();
    case.assert_still_usable();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn sleep_an_hour_times_out() {
    assert_wait_times_out("sleep");
}

#[test]
fn block_forever_times_out() {
    assert_wait_times_out("block-forever");
}

#[test]
fn huge_key_is_refused_and_not_stored() {
    let bytes = 50 << 20;
    let case = case(json!({"mode": "huge-key", "bytes": bytes}));
    let grant = Grant::default().write_globals("hostile/");
    let err = store_error(case.run(&grant, &Limits::default()));
    assert_eq!(err.kind(), "quota-exceeded", "{err}");
    assert!(err.to_string().len() < 200, "the key is not echoed: {err}");
    let key = format!("hostile/{}", "k".repeat(bytes - "hostile/".len()));
    assert_eq!(case.store.get_global_text(&key).unwrap(), None);
    case.assert_still_usable();
}

#[test]
fn huge_key_limit_is_configurable() {
    let case = case(json!({"mode": "huge-key", "bytes": 100}));
    let grant = Grant::default().write_globals("hostile/");
    let at_limit = Limits {
        max_key_bytes: 100,
        ..Limits::default()
    };
    // A key of exactly the limit is written: the guest reports it allowed.
    let err = case.run(&grant, &at_limit).unwrap_err();
    assert!(err.to_string().contains("bad call was allowed"), "{err}");
    let below = Limits {
        max_key_bytes: 99,
        ..Limits::default()
    };
    let case = self::case(json!({"mode": "huge-key", "bytes": 100}));
    assert_eq!(
        store_error(case.run(&grant, &below)).kind(),
        "quota-exceeded"
    );
}

#[test]
fn huge_failure_text_is_capped_and_neutralised() {
    let case = case(json!({"mode": "huge-failure"}));
    let err = case.run_default().unwrap_err();
    let StepError::Failed(GuestFailure::Failed(message)) = &err else {
        panic!("expected the step's own failure, got {err:?}")
    };
    assert!(
        message.len() <= 4 * 1024 + 3,
        "{} bytes kept",
        message.len()
    );
    assert!(message.ends_with('…'));
    assert!(
        message.starts_with(r"\u{1b}[2J\u{1b}]0;pwned\u{7}\u{d}\u{a}error: forged line\u{9b}31m"),
        "{message:.100}"
    );
    let shown = err.to_string();
    assert!(!shown.chars().any(char::is_control), "{shown:.100}");
    case.assert_still_usable();
}

#[test]
fn chatty_stderr_keeps_the_panic_message() {
    let case = case(json!({"mode": "chatty-stderr"}));
    let err = case.run_default().unwrap_err();
    let StepError::Trap { stderr, .. } = &err else {
        panic!("expected a trap, got {err:?}")
    };
    let panic = "chatty-stderr: the panic after the chatter";
    assert!(stderr.contains(panic), "stderr ends: {}", tail(stderr));
    assert!(stderr.len() <= 16 * 1024, "{} bytes kept", stderr.len());
    assert!(
        stderr.contains("chatter chatter"),
        "the chatter is kept too"
    );
    assert!(
        !stderr.contains("failed printing to stderr"),
        "eprintln! failed: {}",
        tail(stderr)
    );
    assert!(err.to_string().contains(panic), "{err}");
    case.assert_still_usable();
}

fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(300);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A journal entry for another node of the case's run, and its key.
fn journal_entry(case: &Case) -> (NodeId, String) {
    let other = NodeId::new();
    let run = case.invocation.flow_run_id;
    journal::record_failure(&*case.store, run, other, "the real failure", 1).unwrap();
    (other, format!("{}{run}/{other}", journal::JOURNAL_PREFIX))
}

/// A grant that names every global key.
fn grant_everything() -> Grant {
    Grant::default().read_globals("").write_globals("")
}

#[test]
fn journal_read_is_denied_whatever_the_grant() {
    let case = case(json!({"mode": "journal-read"}));
    let (_, key) = journal_entry(&case);
    let invocation = Invocation::new(case.invocation.flow_run_id, NodeId::new())
        .with_params(json!({"mode": "journal-read", "target": key}));
    let result = runtime().run(
        &load(components::HOSTILE),
        &case.store,
        &invocation,
        &grant_everything(),
        &Limits::default(),
    );
    let err = store_error(result);
    assert_eq!(err.kind(), "access-denied", "{err}");
    assert!(!err.to_string().contains("the real failure"), "{err}");
}

#[test]
fn journal_write_is_denied_whatever_the_grant() {
    let case = case(json!({"mode": "journal-write"}));
    let (other, key) = journal_entry(&case);
    let run = case.invocation.flow_run_id;
    let before = case.store.get_global_text(&key).unwrap();
    // Forging an existing entry, and planting a new one.
    let fresh = format!("{}{run}/{}", journal::JOURNAL_PREFIX, NodeId::new());
    for target in [&key, &fresh] {
        let invocation = Invocation::new(run, NodeId::new())
            .with_params(json!({"mode": "journal-write", "target": target}));
        let result = runtime().run(
            &load(components::HOSTILE),
            &case.store,
            &invocation,
            &grant_everything(),
            &Limits::default(),
        );
        let err = store_error(result);
        assert_eq!(err.kind(), "access-denied", "{err}");
    }
    assert_eq!(case.store.get_global_text(&key).unwrap(), before);
    assert_eq!(
        journal::failure(&*case.store, run, other)
            .unwrap()
            .map(|f| f.error),
        Some("the real failure".to_owned())
    );
    assert_eq!(case.store.get_global_text(&fresh).unwrap(), None);
}

#[test]
fn deep_json_is_refused() {
    let case = case(json!({"mode": "deep-json"}));
    let err = store_error(case.run_default());
    assert_eq!(err.kind(), "invalid-json", "{err}");
    assert!(err.to_string().contains("depth"), "{err}");
    assert_eq!(case.own_output(), None);
    case.assert_still_usable();
}

#[test]
fn values_round_trip_byte_for_byte() {
    let grant = Grant::default()
        .read_globals("hostile/")
        .write_globals("hostile/");
    for text in [
        "123456789012345678901234567890",
        "18446744073709551616",
        "-0",
        r#"{"a":1,"a":2}"#,
        r#""\u00e9\ud83d\ude00""#,
        r#" [ 1.50 , 1E400, {"b" : null} ] "#,
    ] {
        let case = case(json!({"mode": "round-trip", "text": text}));
        let out = case
            .run(&grant, &Limits::default())
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(out.output.as_str(), text);
        let run = case.invocation.flow_run_id;
        let stored = case
            .store
            .get_text(run, case.invocation.node_id)
            .unwrap()
            .unwrap();
        assert_eq!(stored.as_str().as_bytes(), text.as_bytes());
        let global = case
            .store
            .get_global_text("hostile/round-trip")
            .unwrap()
            .unwrap();
        assert_eq!(global.as_str().as_bytes(), text.as_bytes());
    }
}

/// What the hand-written component of [`component`] holds besides its
/// main module: `copies` instances of a module with `tables` tables of
/// `elements` elements each and `memories` empty memories.
#[derive(Clone, Copy)]
struct Extra {
    copies: usize,
    tables: usize,
    elements: u64,
    memories: usize,
}

impl Extra {
    fn tables(copies: usize, tables: usize, elements: u64) -> Self {
        Self {
            copies,
            tables,
            elements,
            memories: 0,
        }
    }
}

/// A component of the `step` world, written by hand: its `run` returns `ok`
/// without writing anything, and it instantiates `extra` besides.
/// (One core module may define at most 100 tables, so many tables take
/// many instances.)
fn component(extra: Extra) -> Vec<u8> {
    let Extra {
        copies,
        tables,
        elements,
        memories,
    } = extra;
    let defs =
        format!("(table {elements} funcref)").repeat(tables) + &"(memory 0)".repeat(memories);
    let instances = "(core instance (instantiate $extra))\n".repeat(copies);
    let text = format!(
        r#"(component
  (core module $extra {defs})
  {instances}
  (core module $m
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
    ;; The result area at address 0 holds zeros: `ok`.
    (func (export "run") (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32) (i32.const 0)))
  (core instance $i (instantiate $m))
  (type $upstream' (record (field "name" string) (field "node-id" string)))
  (export $upstream "upstream" (type $upstream'))
  (type $invocation' (record (field "flow-run-id" string) (field "node-id" string)
    (field "params" string) (field "upstream" (list $upstream))))
  (export $invocation "invocation" (type $invocation'))
  (type $error' (variant (case "already-exists") (case "global-already-exists")
    (case "invalid-id" string) (case "invalid-json" string) (case "access-denied" string)
    (case "quota-exceeded" string) (case "storage" string)))
  (export $error "error" (type $error'))
  (type $step-error' (variant (case "invalid-params" string) (case "store" $error)
    (case "failed" string)))
  (export $step-error "step-error" (type $step-error'))
  (func $run (param "invocation" $invocation) (result (result (error $step-error)))
    (canon lift (core func $i "run") (memory (core memory $i "memory"))
      (realloc (core func $i "realloc"))))
  (export "run" (func $run)))"#
    );
    wat::parse_str(text).expect("the test component is valid WAT")
}

/// Runs the hand-written component with `extra` under `limits`.
fn run_extra(extra: Extra, limits: &Limits) -> Result<StepOutcome, StepError> {
    let component = runtime()
        .load_bytes("hand-written", &component(extra))
        .expect("the component fits the step world");
    let (_dir, store) = temp_store();
    let invocation = Invocation::new(FlowRunId::new(), NodeId::new());
    runtime().run(&component, &store, &invocation, &Grant::default(), limits)
}

/// Whether the invocation got as far as running: the component writes no
/// output, so a run that was not refused ends in `NoOutput`.
fn ran(result: &Result<StepOutcome, StepError>) -> bool {
    matches!(result, Err(StepError::NoOutput))
}

fn refused_at_instantiation(result: &Result<StepOutcome, StepError>) -> bool {
    matches!(result, Err(StepError::Instantiate(_)))
}

#[test]
fn many_tables_are_refused_at_instantiation() {
    let defaults = Limits::default();
    // The same component with few tables runs: the refusal is the limit's.
    let few = run_extra(Extra::tables(1, 2, 10), &defaults);
    assert!(ran(&few), "{few:?}");
    // 10,000 tables (wasmtime's own default cap) in 100 instances.
    let many = run_extra(Extra::tables(100, 100, 0), &defaults);
    assert!(refused_at_instantiation(&many), "{many:?}");
    // Exactly at the limit is fine; one more is not.
    let limits = Limits {
        max_tables: 20,
        ..Limits::default()
    };
    let at_limit = run_extra(Extra::tables(2, 10, 0), &limits);
    assert!(ran(&at_limit), "{at_limit:?}");
    let over = run_extra(Extra::tables(3, 7, 0), &limits);
    assert!(refused_at_instantiation(&over), "{over:?}");
}

#[test]
fn table_elements_are_capped_in_all_tables_together() {
    let limits = Limits {
        max_table_elements: 1_000,
        ..Limits::default()
    };
    // 10 tables of 100 elements fit; 10 of 101 do not, though each table
    // alone would.
    let fits = run_extra(Extra::tables(1, 10, 100), &limits);
    assert!(ran(&fits), "{fits:?}");
    let over = run_extra(Extra::tables(1, 10, 101), &limits);
    assert!(refused_at_instantiation(&over), "{over:?}");
    // The default cap refuses one table of 2,000,000 elements.
    let huge = run_extra(Extra::tables(1, 1, 2_000_000), &Limits::default());
    assert!(refused_at_instantiation(&huge), "{huge:?}");
}

#[test]
fn many_instances_are_refused_at_instantiation() {
    let limits = Limits {
        max_instances: 10,
        ..Limits::default()
    };
    let few = run_extra(Extra::tables(5, 0, 0), &limits);
    assert!(ran(&few), "{few:?}");
    let many = run_extra(Extra::tables(10, 0, 0), &limits);
    assert!(refused_at_instantiation(&many), "{many:?}");
    let defaults = run_extra(Extra::tables(500, 0, 0), &Limits::default());
    assert!(refused_at_instantiation(&defaults), "{defaults:?}");
}

#[test]
fn many_memories_are_refused_at_instantiation() {
    let memories = |copies| Extra {
        memories: 1,
        ..Extra::tables(copies, 0, 0)
    };
    let limits = Limits {
        max_memories: 10,
        ..Limits::default()
    };
    // The main module has one memory of its own.
    let fits = run_extra(memories(9), &limits);
    assert!(ran(&fits), "{fits:?}");
    let over = run_extra(memories(10), &limits);
    assert!(refused_at_instantiation(&over), "{over:?}");
    let defaults = run_extra(memories(100), &Limits::default());
    assert!(refused_at_instantiation(&defaults), "{defaults:?}");
}

#[test]
fn count_counts_to_n() {
    let case = case(json!({"mode": "count", "n": 12345}));
    assert_eq!(
        case.run_default().unwrap().value().unwrap(),
        json!({"count": 12345})
    );
    // Metered, the same work costs fuel: a small budget runs out.
    let case = self::case(json!({"mode": "count", "n": 10_000_000}));
    let limits = Limits {
        fuel: Some(100_000),
        ..Limits::default()
    };
    assert!(matches!(
        case.run(&Grant::default(), &limits),
        Err(StepError::OutOfFuel(100_000))
    ));
}

#[test]
fn a_deep_value_through_the_rust_api_is_an_error() {
    // Built and dropped on a big stack: dropping a `Value` this deep recurses
    // in serde_json's own code. The store's code must not be what overflows.
    std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(|| {
            let mut deep = json!(1);
            for _ in 0..200_000 {
                deep = Value::Array(vec![deep]);
            }
            let (_dir, store) = temp_store();
            let (run, node) = (FlowRunId::new(), NodeId::new());
            for result in [
                store.put(run, node, &deep),
                store.put_global("deep", &deep),
                store.upsert_global("deep", &deep),
            ] {
                let err = result.unwrap_err();
                assert!(err.to_string().contains("depth"), "{err}");
            }
            assert_eq!(store.get_text(run, node).unwrap(), None);
            assert_eq!(store.get_global_text("deep").unwrap(), None);
            // As a step's params: refused before the step runs.
            let invocation = Invocation::new(run, node).with_params(deep);
            let err = run_default(&load(components::HOSTILE), &store, &invocation).unwrap_err();
            assert!(matches!(err, StepError::InvalidParams(_)), "{err:?}");
        })
        .expect("thread starts")
        .join()
        .expect("no overflow, no panic");
}

#[test]
fn read_other_node_needs_the_whole_run() {
    let target = NodeId::new();
    let case = case(json!({"mode": "read-other-node", "target": target.to_string()}));
    let run = case.invocation.flow_run_id;
    case.store.put(run, target, &json!("not yours")).unwrap();
    let err = store_error(case.run_default());
    assert_eq!(err.kind(), "access-denied", "{err}");
    assert!(
        err.to_string().contains(&format!(
            "node {target} is not an upstream of this step; its grant does not widen reads to the whole run"
        )),
        "{err}"
    );
    assert_eq!(case.own_output(), None);

    // As an upstream it may be read; so may any node with the widening.
    let mut upstream = case.invocation.clone();
    upstream.upstream = vec![("t".into(), target)];
    let out = run_default(&load(components::HOSTILE), &case.store, &upstream).unwrap();
    assert_eq!(out.value().unwrap(), json!({"read": "not yours"}));
    let wide = self::case(json!({"mode": "read-other-node", "target": target.to_string()}));
    wide.store
        .put(wide.invocation.flow_run_id, target, &json!(1))
        .unwrap();
    let out = wide
        .run(&Grant::default().read_whole_run(), &Limits::default())
        .unwrap();
    assert_eq!(out.value().unwrap(), json!({"read": 1}));
}

#[test]
fn list_keys_lists_only_readable_nodes() {
    let case = case(json!({"mode": "list-keys"}));
    let run = case.invocation.flow_run_id;
    let (up, other, missing) = (NodeId::new(), NodeId::new(), NodeId::new());
    case.store.put(run, up, &json!("up")).unwrap();
    case.store.put(run, other, &json!("other")).unwrap();
    let mut invocation = case.invocation.clone();
    invocation.upstream = vec![("up".into(), up), ("missing".into(), missing)];
    let out = run_default(&load(components::HOSTILE), &case.store, &invocation).unwrap();
    assert_eq!(
        out.value().unwrap(),
        json!({"keys": [up.to_string()]}),
        "its own upstream with an output, not the other node, not one without"
    );

    let wide = self::case(json!({"mode": "list-keys"}));
    let run = wide.invocation.flow_run_id;
    wide.store.put(run, up, &json!("up")).unwrap();
    wide.store.put(run, other, &json!("other")).unwrap();
    let out = wide
        .run(&Grant::default().read_whole_run(), &Limits::default())
        .unwrap();
    let mut keys = vec![up.to_string(), other.to_string()];
    keys.sort();
    assert_eq!(out.value().unwrap(), json!({ "keys": keys }));
}

#[test]
fn read_loop_is_refused_after_max_reads() {
    // Without the limit, the loop would run to its deadline.
    let case = case(json!({"mode": "read-loop"}));
    let started = Instant::now();
    let err = store_error(case.run_default());
    assert_eq!(err.kind(), "quota-exceeded", "{err}");
    assert!(err.to_string().contains("at most 10000 reads"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(case.own_output(), None);

    // Exactly the limit is allowed (the put comes after the 10 gets).
    let within = self::case(json!({"mode": "read-loop", "n": 10}));
    let limits = Limits {
        max_reads: 10,
        ..Limits::default()
    };
    let out = within.run(&Grant::default(), &limits).unwrap();
    assert_eq!(out.value().unwrap(), json!({"reads": 10}));
    case.assert_still_usable();
}

#[test]
fn read_loop_is_refused_after_max_read_bytes() {
    // A 1 MiB upstream read again and again: 256 reads fit in 256 MiB.
    let case = case(json!({"mode": "read-loop"}));
    let run = case.invocation.flow_run_id;
    let up = NodeId::new();
    let big = "x".repeat((1 << 20) - 2);
    case.store.put(run, up, &json!(big)).unwrap();
    let mut invocation = case
        .invocation
        .clone()
        .with_params(json!({"mode": "read-loop", "n": 1000, "target": up.to_string()}));
    invocation.upstream = vec![("up".into(), up)];
    let err = store_error(run_default(
        &load(components::HOSTILE),
        &case.store,
        &invocation,
    ));
    assert_eq!(err.kind(), "quota-exceeded", "{err}");
    assert!(
        err.to_string()
            .contains(&format!("at most {} bytes", 256 << 20)),
        "{err}"
    );
    // Fewer reads fit.
    let invocation =
        invocation.with_params(json!({"mode": "read-loop", "n": 256, "target": up.to_string()}));
    let out = run_default(&load(components::HOSTILE), &case.store, &invocation).unwrap();
    assert_eq!(out.value().unwrap(), json!({"reads": 256}));
}

#[test]
fn many_resources_stop_at_max_resources() {
    let case = case(json!({"mode": "many-resources"}));
    let started = Instant::now();
    let err = case.run_default().unwrap_err();
    assert!(
        matches!(err, StepError::TooManyResources { limit: 10_000 }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("too many resources"), "{err}");
    assert_eq!(case.own_output(), None);

    // Under a lower limit, fewer: 1,000 handles are fine by default (and
    // by wasmtime's own limits), not under a limit of 100.
    let few = self::case(json!({"mode": "many-resources", "n": 1000}));
    assert_eq!(
        few.run_default().unwrap().value().unwrap(),
        json!({"resources": 1000})
    );
    let few = self::case(json!({"mode": "many-resources", "n": 1000}));
    let limits = Limits {
        max_resources: 100,
        ..Limits::default()
    };
    let err = few.run(&Grant::default(), &limits).unwrap_err();
    assert!(
        matches!(err, StepError::TooManyResources { limit: 100 }),
        "{err:?}"
    );
    case.assert_still_usable();
}

#[test]
fn a_too_large_component_file_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    // Sparse: 64 GiB by its metadata, no blocks on disk. Read whole, it
    // would not fit this machine's memory.
    let path = dir.path().join("huge.wasm");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let started = Instant::now();
    let err = runtime().load_file(&path).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::TooLarge {
                bytes,
                limit,
                ..
            } if bytes == 64 << 30 && limit == 64 << 20
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("huge.wasm is too large"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // The same limit for bytes, and a lower one from the configuration.
    let small = Runtime::with_config(RuntimeConfig {
        max_component_bytes: 1000,
        ..RuntimeConfig::without_cache()
    })
    .unwrap();
    let hostile = std::fs::read(components::HOSTILE).unwrap();
    let err = small.load_bytes("hostile", &hostile).unwrap_err();
    assert!(
        matches!(err, LoadError::TooLarge { limit: 1000, .. }),
        "{err:?}"
    );
    let err = small.load_file(components::HOSTILE).unwrap_err();
    assert!(
        matches!(err, LoadError::TooLarge { limit: 1000, .. }),
        "{err:?}"
    );
    assert_eq!(small.compilations(), 0);
}

#[test]
fn a_fuel_budget_needs_the_metered_variant_compiled_at_load() {
    // A runtime of its own: the shared one may have compiled it already.
    let rt = Runtime::new().unwrap();
    let (_dir, store) = temp_store();
    let hostile = rt.load_file(components::HOSTILE).unwrap();
    let compiled = rt.compilations();
    assert!(!rt.is_metered(&hostile));
    let limits = Limits {
        fuel: Some(5_000_000),
        ..Limits::default()
    };
    let invocation =
        Invocation::new(FlowRunId::new(), NodeId::new()).with_params(json!({"mode": "loop"}));
    let started = Instant::now();
    let err = rt
        .run(&hostile, &store, &invocation, &Grant::default(), &limits)
        .unwrap_err();
    assert!(
        matches!(&err, StepError::NotMetered { component } if component == "hostile.wasm"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("LoadOptions { fuel: true }"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        rt.compilations(),
        compiled,
        "nothing compiled inside the invocation"
    );
    // A node whose output is stored is done, whatever its engine: a resumed
    // run skips it rather than failing for the missing variant.
    let done = Invocation::new(FlowRunId::new(), NodeId::new());
    store
        .put(done.flow_run_id, done.node_id, &json!("stored"))
        .unwrap();
    let outcome = rt
        .run(&hostile, &store, &done, &Grant::default(), &limits)
        .unwrap();
    assert_eq!(outcome.status, StepStatus::AlreadyDone);
    assert_eq!(rt.compilations(), compiled);

    let metered = rt
        .load_file_with(components::HOSTILE, LoadOptions { fuel: true })
        .unwrap();
    assert!(rt.is_metered(&metered) && rt.is_metered(&hostile));
    assert_eq!(rt.compilations(), compiled + 1);
    let err = rt
        .run(&hostile, &store, &invocation, &Grant::default(), &limits)
        .unwrap_err();
    assert!(matches!(err, StepError::OutOfFuel(5_000_000)), "{err:?}");
    assert_eq!(rt.compilations(), compiled + 1);
}
