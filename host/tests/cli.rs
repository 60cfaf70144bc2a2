//! The `contextstore` command as a process: exit codes and one-line errors
//! for the store subcommands. (`run` is tested with real components in
//! the workspace's `tests/` crate.)

use std::process::{Command, Output};

fn contextstore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_contextstore"))
        .args(args)
        .output()
        .expect("runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// An error is exactly one `error: …` line: no panic, no backtrace.
fn assert_one_error_line(output: &Output, expected: &str) {
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(output));
    let text = stderr(output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {text}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(expected),
        "stderr: {text}"
    );
}

#[path = "support/postgres_cluster.rs"]
mod postgres_cluster;

#[test]
fn globals_put_get_upsert_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    globals_round(db.to_str().unwrap());
}

/// The same commands with `--db postgres://…`.
#[test]
fn globals_put_get_upsert_and_exit_codes_on_postgres() {
    globals_round(&postgres_cluster::fresh_database());
}

#[test]
fn outputs_get_and_list_on_postgres() {
    let db = postgres_cluster::fresh_database();
    let run = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    let node = "00000000-0000-4000-8000-000000000001";
    assert_eq!(
        contextstore(&["get", "--db", &db, run, node]).status.code(),
        Some(1)
    );
    let store = contextstore::PostgresContextStore::connect(&db).unwrap();
    contextstore::ContextStore::put(
        &store,
        run.parse().unwrap(),
        node.parse().unwrap(),
        &serde_json::json!({"x": [1, 2]}),
    )
    .unwrap();
    let got = contextstore(&["get", "--db", &db, run, node]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "{\"x\":[1,2]}\n");
    let listed = contextstore(&["list", "--db", &db, run]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout), format!("{node}\n"));
}

#[test]
fn an_unreachable_postgres_is_one_error_line_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().to_str().unwrap().replace('/', "%2F");
    let url = format!("postgres://ada:hunter2@{socket}/flows");
    let out = contextstore(&["global", "get", "--db", &url, "k"]);
    assert_one_error_line(&out, "postgres://ada@");
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
}

fn globals_round(db: &str) {
    let missing = contextstore(&["global", "get", "--db", db, "k"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());

    assert_eq!(
        contextstore(&["global", "put", "--db", db, "k", r#"{"a": [1, 2]}"#])
            .status
            .code(),
        Some(0)
    );
    let got = contextstore(&["global", "get", "--db", db, "k"]);
    assert_eq!(got.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&got.stdout), "{\"a\":[1,2]}\n");

    let again = contextstore(&["global", "put", "--db", db, "k", "2"]);
    assert_one_error_line(&again, "global \"k\" already exists");

    assert_eq!(
        contextstore(&["global", "upsert", "--db", db, "k", "3"])
            .status
            .code(),
        Some(0)
    );
    let got = contextstore(&["global", "get", "--db", db, "k"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "3\n");
}

#[test]
fn global_put_reads_stdin_when_the_value_is_omitted() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_contextstore"))
        .args(["global", "put", "--db", db.to_str().unwrap(), "from-stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"[true, null]")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let got = contextstore(&["global", "get", "--db", db.to_str().unwrap(), "from-stdin"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "[true,null]\n");
}

#[test]
fn invalid_json_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let out = contextstore(&[
        "global",
        "put",
        "--db",
        db.to_str().unwrap(),
        "k",
        "{not json",
    ]);
    assert_one_error_line(&out, "invalid JSON");
}

#[test]
fn get_and_list_of_an_empty_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let db = db.to_str().unwrap();
    let run = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    let node = "00000000-0000-4000-8000-000000000001";
    let got = contextstore(&["get", "--db", db, run, node]);
    assert_eq!(got.status.code(), Some(1));
    let listed = contextstore(&["list", "--db", db, run]);
    assert_eq!(listed.status.code(), Some(0));
    assert!(listed.stdout.is_empty());
}

#[test]
fn invalid_ids_are_usage_errors() {
    let out = contextstore(&["get", "--db", "/tmp/never-created.db", "nope", "also-nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid flow run id"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn a_file_that_is_not_a_database_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("junk.db");
    std::fs::write(
        &db,
        b"this is not a database, just text that is long enough".repeat(100),
    )
    .unwrap();
    let out = contextstore(&["global", "get", "--db", db.to_str().unwrap(), "k"]);
    assert_one_error_line(&out, "junk.db");
}
