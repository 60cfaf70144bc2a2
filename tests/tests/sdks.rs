//! The C step SDK (`guest/c/contextstore_step.h`), through its test step
//! `guest/c/sdk_test.c`: values round-trip, store errors are passed on
//! typed, a missing upstream is a clear error. (The Python and JavaScript
//! SDKs have native unit tests: `guest/python/test.sh`, `guest/js/test.sh`.)

use contextstore::guest_store::GuestStoreError;
use contextstore::json::JsonText;
use contextstore::runtime::GuestFailure;
use contextstore::{
    FlowRunId, Grant, Invocation, Limits, NodeId, StepError, StepOutcome, StepStatus,
};
use contextstore_tests::{language_component, load, runtime, temp_store};
use serde_json::json;

/// Runs the C SDK's test step in `mode`, with upstream `in` holding `input`
/// (when given), under a grant to read and write globals under `sdk/`.
fn run_mode(
    mode: &str,
    input: Option<&str>,
) -> (
    Result<StepOutcome, StepError>,
    std::sync::Arc<dyn contextstore::ContextStore>,
    tempfile::TempDir,
) {
    let (dir, store) = temp_store();
    let run = FlowRunId::new();
    let upstream = NodeId::new();
    if let Some(text) = input {
        store
            .put_text(run, upstream, &JsonText::parse(text, 1024).unwrap())
            .unwrap();
    }
    let invocation = Invocation::new(run, NodeId::new())
        .with_params(json!({ "mode": mode }))
        .with_upstream("in", upstream);
    let grant = Grant {
        global_read: vec!["sdk/".into()],
        global_write: vec!["sdk/".into()],
        ..Grant::default()
    };
    let component = load(&language_component("c-sdk-test.wasm"));
    let result = runtime().run(&component, &store, &invocation, &grant, &Limits::default());
    (result, store, dir)
}

fn failed(result: Result<StepOutcome, StepError>) -> GuestFailure {
    match result {
        Err(StepError::Failed(failure)) => failure,
        other => panic!("expected a step failure, got {other:?}"),
    }
}

#[test]
fn values_round_trip_byte_for_byte() {
    for text in [
        r#"{"greeting": "Hello, Ada!"}"#,
        r#"[1, 2.50, -0.0, 1e400, "\u00e9\"", null]"#,
        "\"\"",
        "0",
        &format!("{}{}", "[".repeat(500), "]".repeat(500)),
    ] {
        let (result, ..) = run_mode("echo", Some(text));
        let outcome = result.unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(outcome.output.as_str(), text);
    }
}

#[test]
fn a_missing_upstream_is_a_clear_error() {
    let (result, ..) = run_mode("missing-upstream", Some("1"));
    assert_eq!(
        failed(result),
        GuestFailure::Failed("missing-upstream: no upstream named `nope`".into())
    );
    let (result, ..) = run_mode("upstream", None);
    match failed(result) {
        GuestFailure::Failed(message) => assert!(
            message.starts_with("missing-upstream: upstream `in` (")
                && message.ends_with(") has no output yet"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn store_errors_are_passed_on_typed() {
    let (result, store, _dir) = run_mode("pass-store-error", None);
    assert!(matches!(
        failed(result),
        GuestFailure::Store(GuestStoreError::AccessDenied(_))
    ),);
    assert_eq!(store.get_global("secret/key").unwrap(), None);

    // The second write of the output fails with already-exists, which the
    // step passes on: its first write stored the output, so the node is
    // done (by this run), with the passed-on error as the warning.
    let (result, ..) = run_mode("twice", None);
    let outcome = result.unwrap();
    assert_eq!(outcome.status, StepStatus::Ran);
    assert_eq!(outcome.output.as_str(), "1");
    assert!(
        matches!(
            &outcome.warning,
            Some(contextstore::StepError::Failed(GuestFailure::Store(
                GuestStoreError::AlreadyExists
            )))
        ),
        "{:?}",
        outcome.warning
    );
}

#[test]
fn store_error_kinds_and_messages_are_mapped() {
    let (result, ..) = run_mode("kinds", None);
    assert_eq!(
        result.unwrap().value().unwrap(),
        json!([
            ["access-denied", true],
            ["invalid-id", true],
            ["invalid-json", true]
        ])
    );
}

#[test]
fn step_errors_reach_the_host() {
    let (result, ..) = run_mode("invalid-params", None);
    assert_eq!(
        failed(result),
        GuestFailure::InvalidParams("bad mode 7".into())
    );
    let (result, ..) = run_mode("no-such-mode", None);
    assert_eq!(
        failed(result),
        GuestFailure::InvalidParams("unknown mode no-such-mode".into())
    );
    let (result, ..) = run_mode("false", None);
    assert_eq!(
        failed(result),
        GuestFailure::Failed("the step returned false without setting an error".into())
    );
    // A failure the step handles, then returning true: ok wins.
    let (result, ..) = run_mode("handled", None);
    assert_eq!(result.unwrap().value().unwrap(), json!("recovered"));
}

#[test]
fn raw_store_calls_work() {
    let (result, store, _dir) = run_mode("globals", Some("{}"));
    assert_eq!(
        result.unwrap().value().unwrap(),
        json!({"global": {"g": [1, 2.5]}, "keys": 1})
    );
    assert_eq!(
        store.get_global("sdk/g").unwrap(),
        Some(json!({"g": [1, 2.5]}))
    );
}
