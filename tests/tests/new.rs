//! `contextstore new`: for every language, the project it writes builds with
//! the printed build command, runs with the printed `contextstore run`
//! command, and passes its own `test.sh`.
//!
//! The Python, JavaScript and C projects use the toolchains that
//! `guest/build-all.sh` installs in this repository (scripts/test runs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use contextstore_tests::{cli, cli_binary};
use serde_json::json;

/// This repository.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository")
}

/// Runs a printed command line with bash, with the CLI first on `PATH` and
/// none of the host build's settings (the test runs under cargo).
fn shell(line: &str, dir: &Path) -> Output {
    let bin_dir = cli_binary().parent().expect("bin dir").to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin_dir];
    paths.extend(std::env::split_paths(&path));
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .env("PATH", std::env::join_paths(paths).expect("PATH"))
        .env("CONTEXTSTORE", cli_binary());
    for var in [
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CONTEXTSTORE_REPO",
    ] {
        command.env_remove(var);
    }
    command.output().expect("bash runs")
}

fn check(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The line of `new`'s output that starts with `label`, without it.
fn printed<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"))
        .trim()
}

fn new_project_works(lang: &str) {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join(format!("hello-{lang}"));
    let repo = repo();
    let output = cli(&[
        "new",
        &format!("hello-{lang}"),
        "--lang",
        lang,
        "--dir",
        dir.to_str().expect("UTF-8 path"),
        "--repo",
        repo.to_str().expect("UTF-8 path"),
    ]);
    check(&output, "contextstore new");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(dir.join("README.md").is_file() && dir.join("test.sh").is_file());

    let build = printed(&stdout, "Build:");
    check(&shell(build, temp.path()), build);

    let run = printed(&stdout, "Run:");
    assert!(run.starts_with("contextstore run "), "{run}");
    let ran = shell(run, temp.path());
    check(&ran, run);
    let value: serde_json::Value = serde_json::from_slice(&ran.stdout).expect("output is JSON");
    assert_eq!(value, json!({"message": "Hi, Ada!"}), "{lang}");
    let trace = String::from_utf8_lossy(&ran.stderr);
    assert!(
        trace.contains(r#"-> {"text":"Ada"}"#)
            && trace.contains(r#"{"message":"Hi, Ada!"}) -> ok"#),
        "{lang}: the trace shows the read of the fixture and the write: {trace}"
    );

    let test = printed(&stdout, "Test:");
    let tested = shell(test, temp.path());
    check(&tested, test);
    assert!(
        String::from_utf8_lossy(&tested.stdout).contains(&format!("ok: hello-{lang}")),
        "{}",
        String::from_utf8_lossy(&tested.stdout)
    );
}

#[test]
fn a_new_rust_step_builds_and_runs() {
    new_project_works("rust");
}

#[test]
fn a_new_python_step_builds_and_runs() {
    new_project_works("python");
}

#[test]
fn a_new_javascript_step_builds_and_runs() {
    new_project_works("js");
}

#[test]
fn a_new_c_step_builds_and_runs() {
    new_project_works("c");
}

#[test]
fn new_refuses_bad_names_and_non_empty_directories() {
    let temp = tempfile::tempdir().expect("temp dir");
    let output = cli(&[
        "new",
        "Bad Name",
        "--lang",
        "c",
        "--dir",
        temp.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid step name"));

    std::fs::write(temp.path().join("keep.txt"), "mine").unwrap();
    let output = cli(&[
        "new",
        "ok",
        "--lang",
        "c",
        "--dir",
        temp.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("exists and is not empty"));
    assert_eq!(
        std::fs::read_to_string(temp.path().join("keep.txt")).unwrap(),
        "mine"
    );
}
