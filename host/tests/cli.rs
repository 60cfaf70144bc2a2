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

#[test]
fn globals_put_get_upsert_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let db = db.to_str().unwrap();
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

#[test]
fn migrate_converts_a_worldinterface_database_and_prints_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wi.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE outputs (flow_run_id TEXT NOT NULL, node_id TEXT NOT NULL, value BLOB NOT NULL,
             written_at TEXT NOT NULL, PRIMARY KEY (flow_run_id, node_id)) STRICT;
         CREATE TABLE globals (key TEXT NOT NULL PRIMARY KEY, value BLOB NOT NULL,
             written_at TEXT NOT NULL) STRICT;
         INSERT INTO outputs VALUES ('67e55044-10b1-426f-9247-bb680e5fe0c8',
             '67e55044-10b1-426f-9247-bb680e5fe0c9', CAST('{\"a\":1}' AS BLOB), '2024-05-01T12:00:00+00:00');
         INSERT INTO globals VALUES ('k', CAST('[true]' AS BLOB), '2024-05-01T12:00:00+00:00');",
    )
    .unwrap();
    drop(conn);
    let db = path.to_str().unwrap();
    let first = contextstore(&["migrate", "--db", db]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(
        said.contains("converted a WorldInterface database: 1 output(s), 1 global(s)"),
        "{said}"
    );
    let second = contextstore(&["migrate", "--db", db]);
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("nothing to do"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    let got = contextstore(&[
        "get",
        "--db",
        db,
        "67e55044-10b1-426f-9247-bb680e5fe0c8",
        "67e55044-10b1-426f-9247-bb680e5fe0c9",
    ]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "{\"a\":1}\n");
    let missing = contextstore(&[
        "migrate",
        "--db",
        dir.path().join("none.db").to_str().unwrap(),
    ]);
    assert_one_error_line(&missing, "no such database file");
}
