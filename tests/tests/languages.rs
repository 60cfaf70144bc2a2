//! Steps in Python, JavaScript and C beside Rust: a flow across languages,
//! and the same typed errors from every language for the same bad calls.

use std::time::{Duration, Instant};

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
    run_hostile_granted(path, params, &Grant::default(), limits)
}

fn run_hostile_granted(
    path: &str,
    params: serde_json::Value,
    grant: &Grant,
    limits: &Limits,
) -> (
    Result<contextstore::StepOutcome, StepError>,
    Invocation,
    std::sync::Arc<dyn contextstore::ContextStore>,
    tempfile::TempDir,
) {
    let (dir, store) = temp_store();
    let invocation = Invocation::new(FlowRunId::new(), NodeId::new()).with_params(params);
    let result = runtime().run(&load(path), &store, &invocation, grant, limits);
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

/// Big integers, -0, a duplicate key and `\u` escapes: every hostile step
/// of another language writes this text in its `round-trip` mode.
const ROUND_TRIP: &str = r#"[123456789012345678901234567890,18446744073709551616,-0,{"a":1,"a":2},"\u00e9\ud83d\ude00"]"#;

#[test]
fn every_language_round_trips_exact_text() {
    // The Rust step also writes and reads back a global: it needs a grant.
    let grant = Grant::default()
        .read_globals("hostile/")
        .write_globals("hostile/");
    for (language, path) in hostiles() {
        let params = json!({"mode": "round-trip", "text": ROUND_TRIP});
        let (result, invocation, store, _dir) =
            run_hostile_granted(&path, params, &grant, &Limits::default());
        let outcome = result.unwrap_or_else(|e| panic!("{language}: {e}"));
        assert_eq!(outcome.output.as_str(), ROUND_TRIP, "{language}");
        let stored = store
            .get_text(invocation.flow_run_id, invocation.node_id)
            .unwrap()
            .expect("stored");
        assert_eq!(
            stored.as_str().as_bytes(),
            ROUND_TRIP.as_bytes(),
            "{language}"
        );
    }
}

#[test]
fn every_language_gets_quota_exceeded_for_a_huge_key() {
    let grant = Grant::default().write_globals("hostile/");
    for (language, path) in hostiles() {
        let params = json!({"mode": "huge-key", "bytes": 1 << 20});
        let (result, ..) = run_hostile_granted(&path, params, &grant, &Limits::default());
        let err = store_error(language, result);
        assert_eq!(err.kind(), "quota-exceeded", "{language}: {err}");
    }
}

/// The hostile steps whose language can wait in WASI: Rust and C. (The
/// Python step is built with WASI stubbed out, where `time.sleep` does
/// not wait; the JavaScript one has no blocking sleep, and its build
/// disables the clocks.)
fn waiting_hostiles() -> Vec<(&'static str, String)> {
    vec![
        ("rust", components::HOSTILE.to_owned()),
        ("c", language_component("c-hostile.wasm")),
    ]
}

#[test]
fn sleeping_and_blocking_time_out_in_every_language_that_can_wait() {
    let limits = Limits {
        timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    for (language, path) in waiting_hostiles() {
        load(&path); // compiled before the clock starts
        for mode in ["sleep", "block-forever"] {
            let started = Instant::now();
            let (result, invocation, store, _dir) =
                run_hostile(&path, json!({"mode": mode}), &limits);
            let elapsed = started.elapsed();
            assert!(
                matches!(result, Err(StepError::Timeout(_))),
                "{language} {mode}: {result:?}"
            );
            assert!(
                elapsed < Duration::from_secs(2),
                "{language} {mode}: {elapsed:?}"
            );
            // The next step on the same runtime and store runs at once.
            let next = Invocation::new(invocation.flow_run_id, NodeId::new())
                .with_params(json!({"mode": "round-trip", "text": "1"}));
            let grant = Grant::default()
                .read_globals("hostile/")
                .write_globals("hostile/");
            let after = runtime().run(&load(&path), &store, &next, &grant, &Limits::default());
            assert!(after.is_ok(), "{language} after {mode}: {after:?}");
        }
    }
}

/// What the stubbed WASI of the Python build (`--stub-wasi`) and the
/// JavaScript build (`--disable all`) really does: the first clock read or
/// stderr write traps at once, so these steps can neither sleep nor print.
#[test]
fn stubbed_wasi_traps_at_once_instead_of_waiting_or_printing() {
    let limits = Limits {
        timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    for (language, file, mode, in_report) in [
        (
            "python",
            "python-hostile.wasm",
            "sleep",
            Some("monotonic_clock_now"),
        ),
        (
            "python",
            "python-hostile.wasm",
            "chatty-stderr",
            Some("stderr"),
        ),
        ("javascript", "js-hostile.wasm", "chatty-stderr", None),
    ] {
        load(&language_component(file)); // compiled before the clock starts
        let started = Instant::now();
        let (result, ..) = run_hostile(&language_component(file), json!({"mode": mode}), &limits);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{language} {mode}"
        );
        let Err(StepError::Trap { report, .. }) = &result else {
            panic!("{language} {mode}: expected a trap, got {result:?}")
        };
        if let Some(function) = in_report {
            assert!(
                report.contains(function),
                "{language} {mode}: {report:.600}"
            );
        }
    }
}

#[test]
fn chatty_stderr_then_a_crash_keeps_the_last_words() {
    let panic = "chatty-stderr: the panic after the chatter";
    for (language, path) in [
        ("rust", components::HOSTILE.to_owned()),
        ("c", language_component("c-hostile.wasm")),
    ] {
        let (result, ..) = run_hostile(&path, json!({"mode": "chatty-stderr"}), &Limits::default());
        let Err(StepError::Trap { stderr, .. }) = &result else {
            panic!("{language}: expected a trap, got {result:?}")
        };
        assert!(stderr.contains(panic), "{language}: {stderr:.300}");
        assert!(
            result.unwrap_err().to_string().contains(panic),
            "{language}"
        );
    }
}
