//! `contextstore run` as a process, with real components: the tiny flow,
//! made-up run ids, and one-line errors for hostile steps and bad input.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use contextstore_tests::process::wait_at_most;
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
    assert_eq!(
        text(&shout.stdout),
        // Exactly the text the step wrote, in its field order.
        format!("{{\"shout\":\"HELLO, ADA!\",\"from\":\"{GREET}\"}}\n")
    );

    let listed = cli(&["list", "--db", db, RUN]);
    assert_eq!(text(&listed.stdout), format!("{GREET}\n{SHOUT}\n"));
    let got = cli(&["get", "--db", db, RUN, SHOUT]);
    assert_eq!(
        got.stdout, shout.stdout,
        "get prints the stored text exactly"
    );
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

/// The example diamond flow, with the components this build made.
fn diamond_flow(dir: &std::path::Path) -> std::path::PathBuf {
    let flow = dir.join("diamond.toml");
    let text = format!(
        "name = \"diamond\"\n\
         [nodes.greet]\ncomponent = \"{}\"\nparams = {{ name = \"Ada\" }}\n\
         [nodes.shout]\ncomponent = \"{}\"\nupstream = [\"greet\"]\n\
         [nodes.words]\ncomponent = \"{}\"\nupstream = [\"greet\"]\n\
         [nodes.join]\ncomponent = \"{}\"\nupstream = [\"shout\", \"words\"]\n",
        components::GREET,
        components::SHOUT,
        components::WORDS,
        components::JOIN
    );
    std::fs::write(&flow, text).unwrap();
    flow
}

#[test]
fn flow_run_into_a_reader_that_leaves_ends_quietly() {
    use std::io::BufRead;
    // `contextstore flow run diamond.toml --jobs 2 --events 2>&1 | head -1`
    for jobs in ["1", "2"] {
        let dir = tempfile::tempdir().unwrap();
        let flow = diamond_flow(dir.path());
        let db = dir.path().join("pipe.db");
        let (reader, writer) = std::io::pipe().unwrap();
        let mut command = std::process::Command::new(contextstore_tests::cli_binary());
        command
            .args(["flow", "run", flow.to_str().unwrap(), "--db"])
            .arg(&db)
            .args(["--jobs", jobs, "--events", "--cache-dir"])
            // A cache of its own: no warning about a shared one comes first.
            .arg(dir.path().join("cache"))
            .stdout(writer.try_clone().unwrap())
            .stderr(writer);
        let child = command.spawn().unwrap();
        drop(command);
        let mut first = String::new();
        std::io::BufReader::new(reader)
            .read_line(&mut first)
            .unwrap();
        assert!(first.starts_with("flow run: "), "{first:?}");
        let out = wait_at_most(child, std::time::Duration::from_secs(20));
        // A panic anywhere would be exit 101, or 2 from a caught one.
        assert_eq!(out.status.code(), Some(0), "jobs {jobs}");
        // The flow ran to the end: every output is stored.
        let status = cli(&[
            "flow",
            "status",
            flow.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--run-id",
            first.trim().strip_prefix("flow run: ").unwrap(),
        ]);
        assert_eq!(
            text(&status.stdout).matches(" done ").count(),
            4,
            "{}",
            text(&status.stdout)
        );
    }
}

#[test]
fn flow_run_with_a_closed_stderr_runs_to_the_end() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let flow = diamond_flow(dir.path());
    let db = dir.path().join("pipe.db");
    let mut child = std::process::Command::new(contextstore_tests::cli_binary())
        .args(["flow", "run", flow.to_str().unwrap(), "--db"])
        .arg(&db)
        .args(["--jobs", "2", "--events", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let out = wait_at_most(child, std::time::Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0));
    let outputs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outputs.as_object().unwrap().len(), 4, "{outputs}");
}

#[test]
fn flow_status_reads_a_database_that_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let flow = diamond_flow(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("ro.db");
    let run = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    let ran = cli(&[
        "flow",
        "run",
        flow.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--run-id",
        run,
    ]);
    assert!(ran.status.success(), "{}", text(&ran.stderr));
    std::fs::set_permissions(&db, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    // Root ignores permission bits; an immutable file in an immutable
    // directory stops root too.
    let immutable = [&db, &data].iter().all(|path| {
        std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let status = cli(&[
        "flow",
        "status",
        flow.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--run-id",
        run,
    ]);
    let files: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for path in [&db, &data] {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(path)
            .output();
    }
    if !immutable {
        eprintln!("chattr +i unavailable: checked with mode 0444 only");
    }
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert_eq!(
        text(&status.stdout).matches(" done ").count(),
        4,
        "{}",
        text(&status.stdout)
    );
    assert_eq!(files, ["ro.db"], "files were created");

    let missing = cli(&[
        "flow",
        "status",
        flow.to_str().unwrap(),
        "--db",
        dir.path().join("typo.db").to_str().unwrap(),
        "--run-id",
        run,
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(
        text(&missing.stderr).lines().count(),
        1,
        "{}",
        text(&missing.stderr)
    );
    assert!(!dir.path().join("typo.db").exists());
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
    // A refused value is refused before any store is opened: nothing written.
    assert!(
        !std::path::Path::new(db).exists(),
        "a refused value made a database"
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

/// `contextstore run` takes a store URL like every other command: over
/// PostgreSQL the step's output lands in the database and `get` reads it.
#[test]
fn run_takes_a_postgres_url() {
    let db = contextstore_tests::postgres_cluster::fresh_database();
    let greet = run_step(
        components::GREET,
        &db,
        GREET,
        &["--params", r#"{"name":"Ada"}"#],
    );
    assert!(greet.status.success(), "{}", text(&greet.stderr));
    assert_eq!(text(&greet.stdout), "{\"greeting\":\"Hello, Ada!\"}\n");
    let got = cli(&["get", "--db", &db, RUN, GREET]);
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert_eq!(text(&got.stdout), "{\"greeting\":\"Hello, Ada!\"}\n");
}

/// Log lines written to something that is not a terminal carry no colour
/// codes (a warning in a log file reads as plain text).
#[test]
fn log_lines_off_a_terminal_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flow.db");
    // A cache directory that cannot be used is a warning, and the run goes on.
    let out = run_step(
        components::GREET,
        db.to_str().unwrap(),
        GREET,
        &["--cache-dir", "/proc/contextstore-no-cache"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("compiled-code cache unavailable"),
        "a warning was logged: {stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no escape sequences: {stderr:?}"
    );
}

/// `run --read-run` widens the step's reads to the whole run; without it,
/// a node that is not an upstream is refused.
#[test]
fn read_run_widens_reads_to_the_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reads.db");
    let db = db.to_str().unwrap();
    assert!(run_step(components::GREET, db, GREET, &[]).status.success());
    let params = format!(r#"{{"mode":"read-other-node","target":"{GREET}"}}"#);
    let refused = run_step(components::HOSTILE, db, SHOUT, &["--params", &params]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains(&format!("node {GREET} is not an upstream of this step")),
        "{stderr}"
    );
    let wide = run_step(
        components::HOSTILE,
        db,
        SHOUT,
        &["--params", &params, "--read-run"],
    );
    assert!(wide.status.success(), "{}", text(&wide.stderr));
    let out: serde_json::Value = serde_json::from_slice(&wide.stdout).unwrap();
    assert!(out["read"]["greeting"].is_string(), "{out}");
}
