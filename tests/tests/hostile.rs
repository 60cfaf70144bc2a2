//! Hostile guests: each bad behaviour gets its typed error, and the host
//! and the store stay usable and consistent afterwards.

use std::sync::Arc;
use std::time::Duration;

use contextstore::guest_store::GuestStoreError;
use contextstore::runtime::{GuestFailure, LoadError};
use contextstore::{
    ContextStore, FlowRunId, Grant, Invocation, Limits, NodeId, StepError, StepOutcome, StepStatus,
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
    fn run(&self, grant: &Grant, limits: &Limits) -> Result<StepOutcome, StepError> {
        runtime().run(
            &load(components::HOSTILE),
            &self.store,
            &self.invocation,
            grant,
            limits,
        )
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
