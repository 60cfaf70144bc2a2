//! `contextstore run` as a process, with real components: the tiny flow,
//! made-up run ids, and one-line errors for hostile steps and bad input.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use contextstore_tests::{cli, cli_binary, components};

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
    // The output is printed as the step wrote it (its field order kept).
    let printed: serde_json::Value = serde_json::from_slice(&shout.stdout).unwrap();
    assert_eq!(
        printed,
        serde_json::json!({"from": GREET, "shout": "HELLO, ADA!"})
    );

    let listed = cli(&["list", "--db", db, RUN]);
    assert_eq!(text(&listed.stdout), format!("{GREET}\n{SHOUT}\n"));
    let got = cli(&["get", "--db", db, RUN, SHOUT]);
    let got: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(got, printed);
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
    assert!(
        hostile_error(r#"{"mode":"trap-after-put"}"#, &[])
            .contains("trapping after a successful put")
    );
    let huge = hostile_error(r#"{"mode":"huge-failure"}"#, &[]);
    assert!(huge.len() < 5 * 1024, "{} bytes", huge.len());
    assert!(huge.contains(r"\u{1b}[2J"), "{huge:.200}");
    assert!(
        !huge.trim_end().chars().any(char::is_control),
        "{huge:.200}"
    );
    let chatty = hostile_error(r#"{"mode":"chatty-stderr"}"#, &[]);
    assert!(
        chatty.contains("chatty-stderr: the panic after the chatter"),
        "{chatty}"
    );
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

/// Arrays nested `depth` deep around `1`.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Deep enough to overflow any stack if it were parsed recursively, and
/// short enough for one command-line argument (Linux caps one at 128 KiB).
const DEEP_ARGUMENT: usize = 60_000;

/// Runs the CLI with `stdin` as its standard input.
fn cli_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(cli_binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("contextstore runs");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin)
        .expect("stdin written");
    child.wait_with_output().expect("contextstore ends")
}

/// Exit 2 with one `error:` line that contains `expected`.
fn assert_one_error_line(out: &Output, expected: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:.300}");
    assert!(stderr.starts_with("error: "), "{stderr:.300}");
    assert!(stderr.contains(expected), "{stderr:.300}");
}

#[test]
fn deep_json_is_a_clear_error_at_every_entry_point() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("deep.db");
    let db = db.to_str().unwrap();
    let deep = nested(DEEP_ARGUMENT);
    let put = cli(&["global", "put", "--db", db, "k", &deep]);
    assert_one_error_line(&put, "nesting depth");
    let upsert = cli(&["global", "upsert", "--db", db, "k", &deep]);
    assert_one_error_line(&upsert, "nesting depth");
    let from_stdin = cli_with_stdin(
        &["global", "put", "--db", db, "k"],
        nested(200_000).as_bytes(),
    );
    assert_one_error_line(&from_stdin, "nesting depth");
    assert_eq!(
        cli(&["global", "get", "--db", db, "k"]).status.code(),
        Some(1)
    );

    let params = run_step(components::GREET, db, GREET, &["--params", &deep]);
    assert_one_error_line(&params, "invalid JSON in --params");
    assert!(params.stdout.is_empty());
}

/// Writes a flow file of the greet step with `extra` TOML appended to its
/// node, and runs it.
fn run_flow(dir: &std::path::Path, node_extra: &str) -> (Output, String) {
    let flow = dir.join("deep.toml");
    let text = format!(
        "name = \"deep\"\n\n[nodes.greet]\ncomponent = {:?}\n{node_extra}\n",
        components::GREET
    );
    std::fs::write(&flow, text).unwrap();
    let db = dir.join("flow.db");
    let out = cli(&[
        "flow",
        "run",
        flow.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    (out, flow.display().to_string())
}

#[test]
fn deep_flow_file_params_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for depth in [2_000, 200_000] {
        let (out, flow) = run_flow(dir.path(), &format!("params = {{ a = {} }}", nested(depth)));
        assert_one_error_line(&out, &flow);
    }
    // Nesting the parser accepts still runs.
    let (ok, _) = run_flow(
        dir.path(),
        &format!("params = {{ name = \"Ada\", a = {} }}", nested(20)),
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
}

#[test]
fn a_max_json_depth_above_the_ceiling_is_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (out, flow) = run_flow(dir.path(), "[nodes.greet.limits]\nmax_json_depth = 5000");
    assert_one_error_line(&out, &format!("{flow}:6"));
    assert!(text(&out.stderr).contains("max_json_depth 5000 is above the ceiling of 1024"));
    let (ok, _) = run_flow(dir.path(), "[nodes.greet.limits]\nmax_json_depth = 1024");
    assert!(ok.status.success(), "{}", text(&ok.stderr));
}
