//! The `contextstore` command as a process: exit codes and one-line errors
//! for the store subcommands. (`run` is tested with real components in
//! the workspace's `tests/` crate.)

use std::process::{Command, Output};

#[path = "support/process.rs"]
mod process;
use process::wait_at_most;

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
    // A read-only command runs no DDL: a database without the schema is an
    // error that says so (as a missing SQLite file is), and stays empty.
    let fresh = contextstore(&["get", "--db", &db, run, node]);
    assert_eq!(fresh.status.code(), Some(2));
    assert_one_error_line(&fresh, "no contextstore schema");
    let store = contextstore::PostgresContextStore::connect(&db).unwrap();
    assert_eq!(
        contextstore(&["get", "--db", &db, run, node]).status.code(),
        Some(1)
    );
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
    assert_eq!(
        contextstore(&["global", "put", "--db", db, "k", r#"{"a": [1, 2]}"#])
            .status
            .code(),
        Some(0)
    );
    let missing = contextstore(&["global", "get", "--db", db, "other"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());

    let got = contextstore(&["global", "get", "--db", db, "k"]);
    assert_eq!(got.status.code(), Some(0));
    // Exactly as written.
    assert_eq!(String::from_utf8_lossy(&got.stdout), "{\"a\": [1, 2]}\n");

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
        .write_all(b"[true, null]\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let got = contextstore(&["global", "get", "--db", db.to_str().unwrap(), "from-stdin"]);
    // Exactly as written, less the newline around the document.
    assert_eq!(String::from_utf8_lossy(&got.stdout), "[true, null]\n");
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
    // A database with a global only: the run has no outputs.
    assert!(
        contextstore(&["global", "put", "--db", db, "k", "1"])
            .status
            .success()
    );
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

const RUN: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";
const NODE: &str = "00000000-0000-4000-8000-000000000001";

/// The names in `dir`, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn read_only_commands_do_not_create_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("typo.db");
    let db = db.to_str().unwrap();
    for args in [
        vec!["get", "--db", db, RUN, NODE],
        vec!["list", "--db", db, RUN],
        vec!["global", "get", "--db", db, "k"],
    ] {
        let out = contextstore(&args);
        assert_one_error_line(&out, "no such database file");
        assert!(
            names(dir.path()).is_empty(),
            "{args:?} created {:?}",
            names(dir.path())
        );
    }
}

/// Makes `path` immutable (`chattr +i`) until dropped; `None` where the
/// file system or the user cannot.
struct Immutable(Vec<std::path::PathBuf>);

impl Immutable {
    fn set(paths: &[&std::path::Path]) -> Option<Self> {
        let mut done = Immutable(Vec::new());
        for path in paths {
            let ok = Command::new("chattr")
                .arg("+i")
                .arg(path)
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                return None;
            }
            done.0.push(path.to_path_buf());
        }
        Some(done)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(path).output();
        }
    }
}

#[test]
fn read_only_commands_work_on_a_database_that_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("ro.db");
    let db = db_path.to_str().unwrap();
    assert!(
        contextstore(&["global", "put", "--db", db, "k", "[1,2]"])
            .status
            .success()
    );
    let before = names(dir.path());
    assert_eq!(before, ["ro.db"]);
    let mut perms = std::fs::metadata(&db_path).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&db_path, perms).unwrap();
    // Root ignores permission bits; an immutable file in an immutable
    // directory stops root too.
    let _immutable = Immutable::set(&[&db_path, dir.path()]);
    if _immutable.is_none() {
        eprintln!("chattr +i unavailable: checking with mode 0444 only");
    }

    let got = contextstore(&["global", "get", "--db", db, "k"]);
    assert_eq!(got.status.code(), Some(0), "{}", stderr(&got));
    assert_eq!(String::from_utf8_lossy(&got.stdout), "[1,2]\n");
    let listed = contextstore(&["list", "--db", db, RUN]);
    assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));
    assert_eq!(
        contextstore(&["get", "--db", db, RUN, NODE]).status.code(),
        Some(1)
    );
    if _immutable.is_some() {
        // A write cannot succeed, and says so in one line.
        let put = contextstore(&["global", "put", "--db", db, "k2", "1"]);
        assert_eq!(put.status.code(), Some(2), "{}", stderr(&put));
    }
    assert_eq!(names(dir.path()), before, "files were created");
}

#[test]
fn an_older_schema_is_reported_not_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("old.db");
    let db = db_path.to_str().unwrap();
    assert!(
        contextstore(&["global", "put", "--db", db, "k", "1"])
            .status
            .success()
    );
    let user_version = || {
        let conn = rusqlite::Connection::open(&db_path).unwrap();
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
            .unwrap()
    };
    {
        let conn = rusqlite::Connection::open(&db_path).unwrap();
        conn.pragma_update(None, "user_version", 0).unwrap();
    }
    for args in [
        vec!["global", "get", "--db", db, "k"],
        vec!["list", "--db", db, RUN],
        vec!["get", "--db", db, RUN, NODE],
    ] {
        let out = contextstore(&args);
        assert_one_error_line(&out, "older than this build");
        assert_eq!(user_version(), 0, "{args:?} migrated the database");
    }
}

#[test]
fn opening_waits_for_a_busy_database() {
    // A lock held while another process opens (and migrates) the store:
    // the open waits for it instead of failing.
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("busy.db");
    let conn = rusqlite::Connection::open(&db_path).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; BEGIN IMMEDIATE; CREATE TABLE held(x);")
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_contextstore"))
        .args(["global", "put", "--db", db_path.to_str().unwrap(), "k", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    // Still waiting: the lock is held.
    let mut child = child;
    assert!(
        child.try_wait().unwrap().is_none(),
        "did not wait for the lock"
    );
    conn.execute_batch("ROLLBACK").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let got = contextstore(&["global", "get", "--db", db_path.to_str().unwrap(), "k"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "1\n");
}

#[test]
fn a_closed_stdout_ends_list_quietly() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("many.db");
    {
        let store = contextstore::SqliteContextStore::open_with(
            &db_path,
            contextstore::SqliteOptions {
                durability: contextstore::Durability::Normal,
                ..Default::default()
            },
        )
        .unwrap();
        let run: contextstore::FlowRunId = RUN.parse().unwrap();
        for _ in 0..20_000 {
            contextstore::ContextStore::put(
                &store,
                run,
                contextstore::NodeId::new(),
                &serde_json::json!(0),
            )
            .unwrap();
        }
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_contextstore"))
        .args(["list", "--db", db_path.to_str().unwrap(), RUN])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim().len(), 36, "{first:?}");
    // The reader is gone (`| head -1`).
    let out = wait_at_most(child, std::time::Duration::from_secs(10));
    let text = stderr(&out);
    assert!(
        !text.contains("panicked") && !text.contains("error"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
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
    let backup = dir.path().join("wi.db.worldinterface-backup");
    assert!(
        said.contains(&format!("the original is kept at {}", backup.display())),
        "{said}"
    );
    assert!(backup.exists());
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

/// A WorldInterface file with one output and one global, as the original
/// store makes it.
fn worldinterface_file(path: &std::path::Path) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE outputs (flow_run_id TEXT NOT NULL, node_id TEXT NOT NULL,
                 value BLOB NOT NULL, written_at TEXT NOT NULL,
                 PRIMARY KEY (flow_run_id, node_id)) STRICT;
             CREATE TABLE globals (key TEXT NOT NULL PRIMARY KEY, value BLOB NOT NULL,
                 written_at TEXT NOT NULL) STRICT;
             INSERT INTO outputs VALUES ('67e55044-10b1-426f-9247-bb680e5fe0c8',
                 '67e55044-10b1-426f-9247-bb680e5fe0c9', CAST('{\"a\":1}' AS BLOB),
                 '2024-05-01T12:00:00+00:00');
             INSERT INTO globals VALUES ('k', CAST('[true]' AS BLOB), '2024-05-01T12:00:00+00:00');",
        )
        .unwrap();
}

#[test]
fn migrate_back_writes_the_worldinterface_format_and_lists_what_it_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wi.db");
    worldinterface_file(&path);
    let db = path.to_str().unwrap();
    assert_eq!(
        contextstore(&["migrate", "--db", db]).status.code(),
        Some(0)
    );
    // Written after the conversion.
    let put = contextstore(&["global", "upsert", "--db", db, "k", "{\"after\": 2}"]);
    assert_eq!(put.status.code(), Some(0), "{}", stderr(&put));
    let put = contextstore(&["global", "put", "--db", db, "", "\"empty key\""]);
    assert_eq!(put.status.code(), Some(0), "{}", stderr(&put));

    let out = dir.path().join("back.db");
    let to = out.to_str().unwrap();
    let back = contextstore(&["migrate", "--back", "--db", db, "--to", to]);
    assert_eq!(back.status.code(), Some(0), "{}", stderr(&back));
    let said = String::from_utf8_lossy(&back.stdout);
    assert!(
        said.contains(&format!(
            "{db}: wrote {to} in the WorldInterface store's format: 1 output(s), 2 global(s)"
        )),
        "{said}"
    );
    for line in [
        "  provenance: 0 output(s)",
        "  runs: 0 row(s)",
        "  run_workers: 0 row(s)",
    ] {
        assert!(said.contains(line), "{line:?} not in {said}");
    }
    // The original store's own reads.
    let conn = rusqlite::Connection::open(&out).unwrap();
    let value: Vec<u8> = conn
        .query_row(
            "SELECT value FROM outputs WHERE flow_run_id = ?1 AND node_id = ?2",
            [
                "67e55044-10b1-426f-9247-bb680e5fe0c8",
                "67e55044-10b1-426f-9247-bb680e5fe0c9",
            ],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&value).unwrap(),
        serde_json::json!({"a": 1})
    );
    let global = |key: &str| -> serde_json::Value {
        let value: Vec<u8> = conn
            .query_row("SELECT value FROM globals WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .unwrap();
        serde_json::from_slice(&value).unwrap()
    };
    assert_eq!(global("k"), serde_json::json!({"after": 2}));
    assert_eq!(global(""), serde_json::json!("empty key"));
    let (app, version): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT application_id FROM pragma_application_id), \
                    (SELECT user_version FROM pragma_user_version)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((app, version), (0, 0));
    drop(conn);

    // `--json`: the same report.
    let json_out = dir.path().join("back.json.db");
    let json = contextstore(&[
        "migrate",
        "--back",
        "--json",
        "--db",
        db,
        "--to",
        json_out.to_str().unwrap(),
    ]);
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["outputs"], 1);
    assert_eq!(report["globals"], 2);
    assert_eq!(report["dropped"][0]["what"], "provenance");

    // Refused: an existing file, a WorldInterface file, a non-database,
    // PostgreSQL; `--to` without `--back` and `--back` without `--to`.
    let again = contextstore(&["migrate", "--back", "--db", db, "--to", to]);
    assert_one_error_line(&again, "already exists");
    let backup = dir.path().join("wi.db.worldinterface-backup");
    let fresh = dir.path().join("fresh.db");
    let fresh = fresh.to_str().unwrap();
    let original = contextstore(&[
        "migrate",
        "--back",
        "--db",
        backup.to_str().unwrap(),
        "--to",
        fresh,
    ]);
    assert_one_error_line(&original, "a WorldInterface database already");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"not a database at all. ".repeat(100)).unwrap();
    let junk = contextstore(&[
        "migrate",
        "--back",
        "--db",
        junk.to_str().unwrap(),
        "--to",
        fresh,
    ]);
    assert_one_error_line(&junk, "not a database");
    let postgres = contextstore(&[
        "migrate",
        "--back",
        "--db",
        "postgres://u@127.0.0.1:1/db",
        "--to",
        fresh,
    ]);
    assert_one_error_line(&postgres, "SQLite files only");
    assert!(!std::path::Path::new(fresh).exists());
    for args in [
        &["migrate", "--db", db, "--to", fresh][..],
        &["migrate", "--back", "--db", db][..],
    ] {
        let usage = contextstore(args);
        assert_eq!(usage.status.code(), Some(2), "{args:?}");
        assert!(stderr(&usage).contains("--"), "{}", stderr(&usage));
    }
}

/// `info` says what a store is, and changes nothing: no file is made for a
/// missing path, and an existing one keeps its bytes.
#[test]
fn info_describes_a_store_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let path = db.to_str().unwrap();
    let missing = contextstore(&["info", "--db", path]);
    assert_one_error_line(&missing, "no such database file");
    assert!(!db.exists(), "info made a file");
    drop(contextstore::SqliteContextStore::open(&db).unwrap());
    let before = std::fs::read(&db).unwrap();
    let shown = contextstore(&["info", "--db", path]);
    assert!(shown.status.success(), "stderr: {}", stderr(&shown));
    let text = String::from_utf8(shown.stdout).unwrap();
    for line in [
        "backend: sqlite",
        &format!("location: {path}"),
        "read only: true",
        "durability: none (read only)",
        "journal mode: wal",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
    }
    let json = contextstore(&["info", "--db", path, "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(info["backend"], "sqlite");
    assert_eq!(info["journal_mode"], "wal");
    assert!(info["schema_version"].as_i64().unwrap() >= 1, "{info}");
    assert_eq!(std::fs::read(&db).unwrap(), before, "info changed the file");
}

#[test]
fn info_describes_a_postgres_store() {
    let db = postgres_cluster::fresh_database();
    drop(contextstore::PostgresContextStore::connect(&db).unwrap());
    let json = contextstore(&["info", "--db", &db, "--json"]);
    assert!(json.status.success(), "stderr: {}", stderr(&json));
    let info: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(info["backend"], "postgres");
    assert_eq!(info["durability"], "on");
    assert_eq!(info["journal_mode"], serde_json::Value::Null);
}
