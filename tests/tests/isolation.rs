//! Steps tested on their own: `contextstore run` with upstream outputs as
//! fixtures (`--upstream-value`, `--upstream-file`), a store in memory when
//! no `--db` is given, and `--trace` (the store calls and the step's stderr).

use contextstore_tests::{cli, components, language_component};
use serde_json::{Value, json};

fn stdout_json(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_upstream_given_by_value_runs_the_step_without_a_database() {
    let output = cli(&[
        "run",
        components::SHOUT,
        "--upstream-value",
        r#"greet={"greeting": "Hi, Ada"}"#,
    ]);
    let value = stdout_json(&output);
    assert_eq!(value["shout"], json!("HI, ADA"));
    // The fixture was stored under a fresh node id, passed as upstream `greet`.
    let from = value["from"].as_str().expect("from is a string");
    assert!(uuid_like(from), "{from}");
    assert_eq!(
        stderr(&output),
        "",
        "nothing on stderr without --db or --trace"
    );
}

fn uuid_like(text: &str) -> bool {
    text.len() == 36 && text.chars().filter(|c| *c == '-').count() == 4
}

#[test]
fn an_upstream_given_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.json");
    std::fs::write(&words, "{\"words\": [\"a\", \"b\", \"c\"]}\n").unwrap();
    let count = dir.path().join("count.json");
    std::fs::write(&count, r#"{"length": 5}"#).unwrap();
    let output = cli(&[
        "run",
        &language_component("js-join.wasm"),
        "--upstream-file",
        &format!("words={}", words.display()),
        "--upstream-file",
        &format!("count={}", count.display()),
    ]);
    assert_eq!(
        stdout_json(&output),
        json!({"summary": "3 words, 5 bytes", "words": ["a", "b", "c"], "length": 5})
    );
}

#[test]
fn trace_shows_the_store_calls_and_their_results() {
    let output = cli(&[
        "run",
        &language_component("python-words.wasm"),
        "--upstream-value",
        r#"greet={"greeting":"Hello, Ada!"}"#,
        "--trace",
    ]);
    assert_eq!(stdout_json(&output), json!({"words": ["Hello,", "Ada!"]}));
    let trace = stderr(&output);
    let lines: Vec<&str> = trace.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("store: get(")
                && l.ends_with(r#") -> {"greeting":"Hello, Ada!"}"#)),
        "{trace}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("store: put(")
            && l.ends_with(r#", {"words":["Hello,","Ada!"]}) -> ok"#)),
        "{trace}"
    );
    assert!(lines.iter().all(|l| l.starts_with("store: ")), "{trace}");
}

#[test]
fn trace_shows_refused_calls_and_the_steps_stderr() {
    let sdk_test = language_component("c-sdk-test.wasm");
    let output = cli(&[
        "run",
        &sdk_test,
        "--params",
        r#"{"mode": "pass-store-error"}"#,
        "--trace",
    ]);
    assert_eq!(output.status.code(), Some(2));
    // The grant refuses the call before it reaches the store: it is not in
    // the trace, and the step's error names it.
    let trace = stderr(&output);
    assert!(!trace.contains("store: put-global"), "{trace}");
    let last = trace.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("secret/key"),
        "{trace}"
    );

    let output = cli(&[
        "run",
        &sdk_test,
        "--params",
        r#"{"mode": "stderr"}"#,
        "--trace",
    ]);
    assert_eq!(stdout_json(&output), json!("said"));
    assert!(
        stderr(&output).contains("stderr:\n  hello from the C step\n"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_missing_upstream_is_named() {
    let output = cli(&["run", components::SHOUT]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no upstream named `greet`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_fixtures_are_refused_before_running() {
    for (args, message) in [
        (
            vec!["--upstream-value", "greet={nope"],
            "invalid JSON in --upstream-value greet",
        ),
        (vec!["--upstream-value", "greet"], "expected NAME=JSON"),
        (vec!["--upstream-value", "=1"], "the name is empty"),
        (
            vec!["--upstream-file", "greet=/no/such/file.json"],
            "cannot read --upstream-file /no/such/file.json",
        ),
        (
            vec!["--upstream-value", "greet=1", "--upstream-value", "greet=2"],
            "upstream `greet` is given twice",
        ),
    ] {
        let mut all = vec!["run", components::SHOUT];
        all.extend(args);
        let output = cli(&all);
        assert_eq!(output.status.code(), Some(2), "{all:?}");
        assert!(
            stderr(&output).contains(message),
            "{all:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn with_a_database_the_fixture_and_output_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("context.db");
    let db = db.to_str().unwrap();
    let output = cli(&[
        "run",
        components::SHOUT,
        "--db",
        db,
        "--upstream-value",
        r#"greet={"greeting":"yo"}"#,
    ]);
    let value = stdout_json(&output);
    let err = stderr(&output);
    let run = err
        .lines()
        .find_map(|l| l.strip_prefix("flow run: "))
        .expect("the run id is printed");
    let keys = cli(&["list", "--db", db, run]);
    let listed = String::from_utf8_lossy(&keys.stdout);
    assert_eq!(
        listed.lines().count(),
        2,
        "the fixture and the output: {listed}"
    );
    assert!(listed.contains(value["from"].as_str().unwrap()), "{listed}");
}
