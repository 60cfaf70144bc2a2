//! Flows through the library and the `contextstore flow` command: order,
//! parallel fan-out, resume, failure blocking only dependents, status, and
//! clear errors for bad flow files.

use std::path::{Path, PathBuf};

use contextstore::flow::{self, FlowEvent, NodeResult, NodeState, RunOptions};
use contextstore::{FlowRunId, StepStatus};
use contextstore_tests::{cli, components, runtime, temp_store};
use serde_json::json;

/// The diamond greet -> (shout, words) -> join, with `extra` appended.
fn diamond(extra: &str) -> String {
    format!(
        r#"name = "diamond"
[nodes.greet]
component = "{greet}"
params = {{ name = "Ada" }}
[nodes.shout]
component = "{shout}"
upstream = ["greet"]
[nodes.words]
component = "{words}"
upstream = ["greet"]
[nodes.join]
component = "{join}"
upstream = ["shout", "words"]
{extra}"#,
        greet = components::GREET,
        shout = components::SHOUT,
        words = components::WORDS,
        join = components::JOIN,
    )
}

fn write_flow(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("flow.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn quiet(_: &FlowEvent<'_>) {}

#[test]
fn the_diamond_runs_in_order_and_resumes_without_rerunning() {
    let (dir, store) = temp_store();
    let flow = flow::load(&write_flow(dir.path(), &diamond(""))).unwrap();
    let run = FlowRunId::new();
    let options = RunOptions {
        jobs: 2,
        lease: flow::LeaseOptions::default(),
        on_event: &quiet,
    };
    let report = flow::run(runtime(), &store, &flow, run, &options).unwrap();
    assert!(report.is_success(), "{report:?}");
    let join = store
        .get(run, flow::node_id("diamond", "join"))
        .unwrap()
        .unwrap();
    assert_eq!(
        join,
        json!({"title": null, "inputs": {
            "shout": {"shout": "HELLO, ADA!", "from": flow::node_id("diamond", "greet").to_string()},
            "words": {"words": ["Hello,", "Ada!"], "count": 2},
        }})
    );
    let again = flow::run(runtime(), &store, &flow, run, &options).unwrap();
    for (name, result) in &again.results {
        assert!(
            matches!(
                result,
                NodeResult::Done {
                    status: StepStatus::AlreadyDone,
                    ..
                }
            ),
            "{name} ran again: {result:?}"
        );
    }
}

#[test]
fn a_failed_node_blocks_its_dependents_only_and_status_tells() {
    let (dir, store) = temp_store();
    let extra = format!(
        "[nodes.broken]\ncomponent = \"{}\"\nparams = {{ mode = \"fail\" }}\n[nodes.after]\ncomponent = \"{}\"\nupstream = [\"broken\"]\n",
        components::HOSTILE,
        components::JOIN
    );
    let flow = flow::load(&write_flow(dir.path(), &diamond(&extra))).unwrap();
    let run = FlowRunId::new();
    let events = std::sync::Mutex::new(Vec::new());
    let record = |e: &FlowEvent<'_>| {
        if let FlowEvent::Blocked { node, by } = e {
            events
                .lock()
                .unwrap()
                .push((node.name.clone(), by.to_string()));
        }
    };
    let report = flow::run(
        runtime(),
        &store,
        &flow,
        run,
        &RunOptions {
            jobs: 3,
            lease: flow::LeaseOptions::default(),
            on_event: &record,
        },
    )
    .unwrap();
    assert!(!report.is_success());
    let failures: Vec<&str> = report.failures().map(|(name, _)| name).collect();
    assert_eq!(failures, ["broken"]);
    assert_eq!(
        *events.lock().unwrap(),
        [("after".to_string(), "broken".to_string())]
    );
    // The independent diamond still finished.
    assert!(
        store
            .get(run, flow::node_id("diamond", "join"))
            .unwrap()
            .is_some()
    );

    let status = flow::status(store.as_ref(), &flow, run).unwrap();
    let by_name = |n: &str| status.iter().find(|s| s.name == n).unwrap().clone();
    assert_eq!(by_name("join").state, NodeState::Done);
    assert!(by_name("join").output_bytes.unwrap() > 10);
    assert!(matches!(by_name("broken").state, NodeState::Failed(e) if e.contains("asked to fail")));
    assert_eq!(by_name("after").state, NodeState::Pending);
}

#[test]
fn bad_flow_files_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (diamond("").replace("upstream = [\"greet\"]\n[nodes.words]", "upstream = [\"gret\"]\n[nodes.words]"), 7, "unknown upstream `gret`"),
        (diamond("").replace("upstream = [\"shout\", \"words\"]", "upstream = [\"shout\", \"words\"]\n[nodes.greet.limits]\ntimeout = -1"), 0, "timeout"),
        (diamond("").replace(&format!("component = \"{}\"", components::GREET), "component = \"missing.wasm\"\nupstream = [\"join\"]"), 0, ""),
        (diamond("").replace("params = { name = \"Ada\" }", "params = { when = 1979-05-27T07:32:00Z }"), 4, "datetime"),
        (diamond("").replace("[nodes.join]", "[nodes.join]\ncolour = 1"), 0, "unknown field `colour`"),
        ("name = \"x\"\n[nodes.a]\ncomponent = \"a.wasm\"\nupstream = [\"b\"]\n[nodes.b]\ncomponent = \"a.wasm\"\nupstream = [\"a\"]\n".into(), 0, ""),
    ];
    for (i, (text, line, expected)) in cases.iter().enumerate() {
        let err = flow::load(&write_flow(dir.path(), text))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "case {i}: {err}");
        if *line > 0 {
            assert!(
                err.contains(&format!("flow.toml:{line}:")),
                "case {i}: {err}"
            );
        }
    }
    // The component check and the cycle check.
    let missing = flow::load(&write_flow(dir.path(), &cases[2].0))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("flow.toml:3:") && missing.contains("does not exist"),
        "{missing}"
    );
    std::fs::write(dir.path().join("a.wasm"), b"").unwrap();
    let cycle = flow::load(&write_flow(dir.path(), &cases[5].0))
        .unwrap_err()
        .to_string();
    assert!(
        cycle.contains("cycle: a -> b -> a") || cycle.contains("cycle: b -> a -> b"),
        "{cycle}"
    );
}

#[test]
fn flow_run_and_status_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let flow_file = write_flow(dir.path(), &diamond(""));
    let db = dir.path().join("flow.db");
    let run = "5b0c2f55-9a57-4a4e-8f3e-2f0f8f6f0b11";
    let out = cli(&[
        "flow",
        "run",
        flow_file.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--run-id",
        run,
        "--events",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outputs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outputs["greet"], json!({"greeting": "Hello, Ada!"}));
    assert_eq!(outputs["words"]["count"], json!(2));
    let events = String::from_utf8_lossy(&out.stderr);
    let done = events
        .lines()
        .filter(|l| l.contains(r#""event":"done""#))
        .count();
    assert_eq!(done, 4, "{events}");

    let status = cli(&[
        "flow",
        "status",
        flow_file.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--run-id",
        run,
        "--json",
    ]);
    assert!(status.status.success());
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let states: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["status"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["done"; 4]);
}

#[test]
fn a_failing_flow_exits_2_with_one_line_naming_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "name = \"f\"\n[nodes.bad]\ncomponent = \"{}\"\nparams = {{ mode = \"no-output\" }}\n",
        components::HOSTILE
    );
    let flow_file = write_flow(dir.path(), &text);
    let db = dir.path().join("f.db");
    let out = cli(&[
        "flow",
        "run",
        flow_file.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error: node `bad` failed: step returned ok but wrote no output"),
        "{stderr}"
    );
}
