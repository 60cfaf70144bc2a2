//! The tiny flow of the example steps, as a flow engine would run it.

use contextstore::{FlowRunId, Grant, Invocation, Limits, NodeId, StepError, StepStatus};
use contextstore_tests::{components, load, run_default, runtime, temp_store};
use serde_json::json;

// Every guest component must have a test in this crate: a missing one is a
// compile error here.
macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports)]
        use self::component_tests::$name as _;
    };
}
contextstore_tests::foreach_component!(assert_test_exists);

mod component_tests {
    pub(crate) use super::bench_puts_or_gets_in_a_loop as bench;
    pub(crate) use super::greet_then_shout as greet;
    pub(crate) use super::greet_then_shout as shout;
    pub(crate) use super::hostile_is_tested_in_hostile_rs as hostile;
    pub(crate) use super::slow_is_tested_in_faults_rs as slow;
    pub(crate) use super::words_and_join_are_tested_in_flows_rs as words;
    pub(crate) use super::words_and_join_are_tested_in_flows_rs as join;
}

/// `bench` (the benchmark's step): a trivial put, or N gets of one node.
#[test]
fn bench_puts_or_gets_in_a_loop() {
    let (_dir, store) = temp_store();
    let bench = load(components::BENCH);
    let run = FlowRunId::new();
    let (put_id, get_id, missing) = (NodeId::new(), NodeId::new(), NodeId::new());

    let put = run_default(&bench, &store, &Invocation::new(run, put_id)).unwrap();
    assert_eq!(put.status, StepStatus::Ran);
    assert_eq!(store.get(run, put_id).unwrap(), Some(json!({"ok": true})));

    let stored = store.get_text(run, put_id).unwrap().unwrap();
    let gets = Invocation::new(run, get_id).with_params(json!({"gets": 5, "node": put_id}));
    // The node it gets is no upstream of it: reads need the whole run.
    let refused = run_default(&bench, &store, &gets).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("is not an upstream of this step"),
        "{refused}"
    );
    let read_run = |invocation: &Invocation| {
        runtime().run(
            &bench,
            &store,
            invocation,
            &Grant::default().read_whole_run(),
            &Limits::default(),
        )
    };
    let out = read_run(&gets).unwrap();
    assert_eq!(
        out.value().unwrap(),
        json!({"gets": 5, "found": 5, "bytes": 5 * stored.as_str().len()})
    );

    let none = Invocation::new(run, NodeId::new()).with_params(json!({"gets": 3, "node": missing}));
    let out = read_run(&none).unwrap();
    assert_eq!(
        out.value().unwrap(),
        json!({"gets": 3, "found": 0, "bytes": 0})
    );
}

/// `hostile` has its own test file, `hostile.rs`, with a test per mode.
#[test]
fn hostile_is_tested_in_hostile_rs() {
    assert!(std::path::Path::new(components::HOSTILE).exists());
}

/// `slow` (sleeps, then upserts a global and puts, with a nonce) is the
/// step of the fault-injection tests in `faults.rs`.
#[test]
fn slow_is_tested_in_faults_rs() {
    assert!(std::path::Path::new(components::SLOW).exists());
}

/// `words` and `join` run in the diamond of `flows.rs`.
#[test]
fn words_and_join_are_tested_in_flows_rs() {
    assert!(std::path::Path::new(components::WORDS).exists());
}

#[test]
fn greet_then_shout() {
    let (_dir, store) = temp_store();
    let (greet, shout) = (load(components::GREET), load(components::SHOUT));
    let run = FlowRunId::new();
    let (greet_id, shout_id) = (NodeId::new(), NodeId::new());

    let first = Invocation::new(run, greet_id).with_params(json!({"name": "Ada"}));
    let out = run_default(&greet, &store, &first).unwrap();
    assert_eq!(out.status, StepStatus::Ran);
    assert_eq!(out.value().unwrap(), json!({"greeting": "Hello, Ada!"}));

    let second = Invocation::new(run, shout_id).with_upstream("greet", greet_id);
    let out = run_default(&shout, &store, &second).unwrap();
    assert_eq!(
        out.value().unwrap(),
        json!({"shout": "HELLO, ADA!", "from": greet_id.to_string()})
    );
    assert_eq!(
        store.get(run, shout_id).unwrap(),
        Some(out.value().unwrap())
    );

    let mut keys = store.list_keys(run).unwrap();
    keys.sort();
    let mut expected = vec![greet_id, shout_id];
    expected.sort();
    assert_eq!(keys, expected);
}

#[test]
fn a_finished_step_is_not_run_again() {
    let (_dir, store) = temp_store();
    let greet = load(components::GREET);
    let invocation =
        Invocation::new(FlowRunId::new(), NodeId::new()).with_params(json!({"name": "Ada"}));
    let first = run_default(&greet, &store, &invocation).unwrap();
    // Other params on retry: had the step run again, the output would differ.
    let retry = invocation.clone().with_params(json!({"name": "Bob"}));
    let second = run_default(&greet, &store, &retry).unwrap();
    assert_eq!(first.status, StepStatus::Ran);
    assert_eq!(second.status, StepStatus::AlreadyDone);
    assert_eq!(second.value().unwrap(), json!({"greeting": "Hello, Ada!"}));
}

#[test]
fn greet_defaults_its_name_when_params_are_null() {
    let (_dir, store) = temp_store();
    let invocation = Invocation::new(FlowRunId::new(), NodeId::new());
    let out = run_default(&load(components::GREET), &store, &invocation).unwrap();
    assert_eq!(out.value().unwrap(), json!({"greeting": "Hello, world!"}));
}

#[test]
fn shout_without_its_upstream_fails_and_writes_nothing() {
    let (_dir, store) = temp_store();
    let invocation =
        Invocation::new(FlowRunId::new(), NodeId::new()).with_upstream("greet", NodeId::new());
    let err = run_default(&load(components::SHOUT), &store, &invocation).unwrap_err();
    assert!(matches!(err, StepError::Failed(_)), "{err:?}");
    assert!(err.to_string().contains("greet"), "{err}");
    assert_eq!(
        store
            .get(invocation.flow_run_id, invocation.node_id)
            .unwrap(),
        None
    );
}

#[test]
fn loading_the_same_component_twice_compiles_once() {
    let bytes = std::fs::read(components::GREET).unwrap();
    let runtime =
        contextstore::Runtime::with_config(contextstore::runtime::RuntimeConfig::without_cache())
            .unwrap();
    assert_eq!(runtime.compilations(), 0);
    runtime.load_bytes("greet-a", &bytes).unwrap();
    let after_first = runtime.compilations();
    assert!(after_first >= 1, "the first load compiles");
    runtime.load_bytes("greet-b", &bytes).unwrap();
    assert_eq!(
        runtime.compilations(),
        after_first,
        "second load compiled again"
    );
}

#[test]
fn every_output_records_where_it_came_from() {
    let (_dir, store) = temp_store();
    let greet = load(components::GREET);
    let upstream = NodeId::new();
    let invocation = Invocation::new(FlowRunId::new(), NodeId::new())
        .with_params(json!({"name": "Ada"}))
        .with_upstream("unused", upstream)
        .with_attempt(2);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    run_default(&greet, &store, &invocation).unwrap();
    let provenance = store
        .provenance(invocation.flow_run_id, invocation.node_id)
        .unwrap()
        .expect("provenance stored with the output");
    assert_eq!(provenance.component_hash, greet.content_hash());
    assert_eq!(provenance.params_hash, invocation.params_hash());
    assert_eq!(provenance.upstream_hash, invocation.upstream_hash());
    assert_eq!(provenance.attempt, 2);
    assert!(!provenance.host.is_empty());
    assert!(before <= provenance.started_at, "{provenance:?}");
    assert!(
        provenance.started_at <= provenance.ended_at,
        "{provenance:?}"
    );
}
