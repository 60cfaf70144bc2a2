//! Steps in Python, JavaScript and C beside Rust: a flow across languages,
//! and the same typed errors from every language for the same bad calls.

use std::time::Duration;

use contextstore::guest_store::GuestStoreError;
use contextstore::runtime::GuestFailure;
use contextstore::{FlowRunId, Grant, Invocation, Limits, NodeId, StepError};
use contextstore_tests::{components, language_component, load, runtime, temp_store};
use serde_json::json;

#[test]
fn a_flow_across_languages() {
    let (_dir, store) = temp_store();
    let run = FlowRunId::new();
    let [greet, words, count, join] = [(); 4].map(|_| NodeId::new());
    let rt = runtime();
    let go = |component: &str, invocation: Invocation| {
        rt.run(
            &rt.load_file(component).unwrap(),
            &store,
            &invocation,
            &Grant::default(),
            &Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{component}: {e}"))
        .value()
        .unwrap()
    };
    let greeting = go(
        components::GREET,
        Invocation::new(run, greet).with_params(json!({"name": "Ada"})),
    );
    assert_eq!(greeting, json!({"greeting": "Hello, Ada!"}));
    let python = go(
        &language_component("python-words.wasm"),
        Invocation::new(run, words).with_upstream("greet", greet),
    );
    assert_eq!(python, json!({"words": ["Hello,", "Ada!"]}));
    let c = go(
        &language_component("c-count.wasm"),
        Invocation::new(run, count).with_upstream("greet", greet),
    );
    assert_eq!(c, json!({"length": 11}));
    let js = go(
        &language_component("js-join.wasm"),
        Invocation::new(run, join)
            .with_upstream("words", words)
            .with_upstream("count", count),
    );
    assert_eq!(
        js,
        json!({"summary": "2 words, 11 bytes", "words": ["Hello,", "Ada!"], "length": 11})
    );
    assert_eq!(store.list_keys(run).unwrap().len(), 4);
}

/// The hostile component of every language, Rust's included.
fn hostiles() -> Vec<(&'static str, String)> {
    vec![
        ("rust", components::HOSTILE.to_owned()),
        ("python", language_component("python-hostile.wasm")),
        ("javascript", language_component("js-hostile.wasm")),
        ("c", language_component("c-hostile.wasm")),
    ]
}

fn run_hostile(
    path: &str,
    params: serde_json::Value,
    limits: &Limits,
) -> (
    Result<contextstore::StepOutcome, StepError>,
    Invocation,
    std::sync::Arc<dyn contextstore::ContextStore>,
    tempfile::TempDir,
) {
    let (dir, store) = temp_store();
    let invocation = Invocation::new(FlowRunId::new(), NodeId::new()).with_params(params);
    let result = runtime().run(&load(path), &store, &invocation, &Grant::default(), limits);
    (result, invocation, store, dir)
}

fn store_error(
    language: &str,
    result: Result<contextstore::StepOutcome, StepError>,
) -> GuestStoreError {
    match result {
        Err(StepError::Failed(GuestFailure::Store(e))) => e,
        other => panic!("{language}: expected the store error passed back, got {other:?}"),
    }
}

#[test]
fn every_language_gets_access_denied_for_an_ungranted_global() {
    for (language, path) in hostiles() {
        let (result, _, store, _dir) = run_hostile(
            &path,
            json!({"mode": "ungranted-global"}),
            &Limits::default(),
        );
        assert_eq!(
            store_error(language, result).kind(),
            "access-denied",
            "{language}"
        );
        assert_eq!(store.get_global("secret/key").unwrap(), None, "{language}");
    }
}

#[test]
fn every_language_gets_access_denied_writing_another_node() {
    for (language, path) in hostiles() {
        let target = NodeId::new();
        let params = json!({"mode": "write-other-node", "target": target.to_string()});
        let (result, invocation, store, _dir) = run_hostile(&path, params, &Limits::default());
        assert_eq!(
            store_error(language, result).kind(),
            "access-denied",
            "{language}"
        );
        assert_eq!(
            store.get(invocation.flow_run_id, target).unwrap(),
            None,
            "{language}"
        );
    }
}

#[test]
fn every_language_gets_invalid_json() {
    for (language, path) in hostiles() {
        let (result, invocation, store, _dir) =
            run_hostile(&path, json!({"mode": "invalid-json"}), &Limits::default());
        assert_eq!(
            store_error(language, result).kind(),
            "invalid-json",
            "{language}"
        );
        assert_eq!(
            store
                .get(invocation.flow_run_id, invocation.node_id)
                .unwrap(),
            None,
            "{language}"
        );
    }
}

#[test]
fn every_language_times_out_in_an_endless_loop() {
    let limits = Limits {
        timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    for (language, path) in hostiles() {
        let (result, ..) = run_hostile(&path, json!({"mode": "loop"}), &limits);
        assert!(
            matches!(result, Err(StepError::Timeout(_))),
            "{language}: {result:?}"
        );
    }
}

#[test]
fn every_language_rejects_an_unknown_mode_as_invalid_params() {
    for (language, path) in hostiles() {
        let (result, ..) = run_hostile(&path, json!({"mode": "no-such-mode"}), &Limits::default());
        assert!(
            matches!(
                result,
                Err(StepError::Failed(GuestFailure::InvalidParams(_)))
            ),
            "{language}: {result:?}"
        );
    }
}
