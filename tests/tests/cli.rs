//! `contextstore run` as a process, with real components: the tiny flow,
//! made-up run ids, and one-line errors for hostile steps and bad input.

use std::process::Output;

use contextstore_tests::{cli, components};

/// `contextstore run COMPONENT --db DB --node NODE --flow-run RUN EXTRA…`.
fn run_step(component: &str, db: &str, node: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        component,
        "--db",
        db,
        "--node",
        node,
        "--flow-run",
        RUN,
    ];
    args.extend(extra);
    cli(&args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const RUN: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";
const GREET: &str = "00000000-0000-4000-8000-000000000001";
const SHOUT: &str = "00000000-0000-4000-8000-000000000002";

#[test]
fn the_tiny_flow_runs_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flow.db");
    let db = db.to_str().unwrap();
    let greet = run_step(
        components::GREET,
        db,
        GREET,
        &["--params", r#"{"name":"Ada"}"#],
    );
    assert!(greet.status.success(), "{}", text(&greet.stderr));
    assert_eq!(text(&greet.stdout), "{\"greeting\":\"Hello, Ada!\"}\n");
    assert!(greet.stderr.is_empty(), "a given run id is not printed");

    let upstream = format!("greet={GREET}");
    let shout = run_step(components::SHOUT, db, SHOUT, &["--upstream", &upstream]);
    assert!(shout.status.success(), "{}", text(&shout.stderr));
    assert_eq!(
        text(&shout.stdout),
        format!("{{\"from\":\"{GREET}\",\"shout\":\"HELLO, ADA!\"}}\n")
    );

    let listed = cli(&["list", "--db", db, RUN]);
    assert_eq!(text(&listed.stdout), format!("{GREET}\n{SHOUT}\n"));
    let got = cli(&["get", "--db", db, RUN, SHOUT]);
    assert_eq!(got.stdout, shout.stdout);
}

#[test]
fn a_made_up_run_id_is_printed_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flow.db");
    let out = cli(&[
        "run",
        components::GREET,
        "--db",
        db.to_str().unwrap(),
        "--node",
        GREET,
    ]);
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    let run = stderr
        .trim()
        .strip_prefix("flow run: ")
        .expect("run id line");
    let got = cli(&["get", "--db", db.to_str().unwrap(), run, GREET]);
    assert_eq!(got.stdout, out.stdout);
}

/// Runs the hostile step with `params` and returns its one error line.
fn hostile_error(params: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let mut args = vec!["--params", params];
    args.extend(extra);
    let out = run_step(components::HOSTILE, db.to_str().unwrap(), GREET, &args);
    assert_eq!(out.status.code(), Some(2), "stdout: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

#[test]
fn hostile_steps_are_one_error_line_each() {
    assert!(hostile_error(r#"{"mode":"loop"}"#, &["--timeout", "0.3"]).contains("timed out"));
    assert!(hostile_error(r#"{"mode":"loop"}"#, &["--fuel", "100000"]).contains("out of fuel"));
    assert!(
        hostile_error(r#"{"mode":"memory-hog"}"#, &["--memory", "16777216"])
            .contains("out of memory")
    );
    assert!(hostile_error(r#"{"mode":"ungranted-global"}"#, &[]).contains("access denied"));
    assert!(hostile_error(r#"{"mode":"invalid-json"}"#, &[]).contains("invalid JSON"));
}

#[test]
fn a_second_run_of_a_finished_node_prints_the_stored_output() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("again.db");
    let db = db.to_str().unwrap();
    let first = run_step(
        components::GREET,
        db,
        GREET,
        &["--params", r#"{"name":"A"}"#],
    );
    let second = run_step(
        components::GREET,
        db,
        GREET,
        &["--params", r#"{"name":"B"}"#],
    );
    assert!(second.status.success());
    assert_eq!(first.stdout, second.stdout);
}

#[test]
fn bad_arguments_are_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bad.db");
    let db = db.to_str().unwrap();
    for (args, expected) in [
        (vec!["--params", "{oops"], "invalid JSON in --params"),
        (vec!["--upstream", "no-equals-sign"], "expected NAME=UUID"),
        (vec!["--upstream", "x=not-a-uuid"], "invalid --upstream"),
        (vec!["--timeout=-1"], "invalid --timeout"),
    ] {
        let out = run_step(components::GREET, db, GREET, &args);
        assert_eq!(out.status.code(), Some(2));
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    let not_a_component = run_step("/etc/hostname", db, GREET, &[]);
    assert!(text(&not_a_component.stderr).contains("not a valid WebAssembly component"));
}

#[test]
fn get_meta_shows_where_an_output_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("meta.db");
    let db = db.to_str().unwrap();
    let greet = run_step(
        components::GREET,
        db,
        GREET,
        &["--params", r#"{"name":"Ada"}"#],
    );
    assert!(greet.status.success(), "{}", text(&greet.stderr));
    let meta = cli(&["get", "--db", db, RUN, GREET, "--meta"]);
    assert!(meta.status.success(), "{}", text(&meta.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    assert_eq!(
        meta["value"],
        serde_json::json!({"greeting": "Hello, Ada!"})
    );
    let provenance = &meta["provenance"];
    assert_eq!(
        provenance["component_hash"],
        contextstore_tests::load(components::GREET).content_hash()
    );
    assert_eq!(provenance["attempt"], 1);
    assert!(provenance["host"].as_str().is_some_and(|h| !h.is_empty()));
    let (start, end) = (
        provenance["started_at"].as_i64().unwrap(),
        provenance["ended_at"].as_i64().unwrap(),
    );
    assert!(start > 1_700_000_000_000 && start <= end, "{provenance}");
}

#[test]
fn a_step_that_stored_its_output_then_trapped_is_done_with_a_warning_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    let params = ["--params", r#"{"mode":"trap-after-put"}"#];
    let out = run_step(components::HOSTILE, db.to_str().unwrap(), GREET, &params);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"mode\":\"trap-after-put\"}\n");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("warning: the step stored its output, then failed: step trapped")
            && stderr.contains("trapping after a successful put"),
        "{stderr}"
    );
}
