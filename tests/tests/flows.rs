//! Flows through the library and the `contextstore flow` command: order,
//! parallel fan-out, resume, failure blocking only dependents, status, and
//! clear errors for bad flow files.

use std::path::{Path, PathBuf};

use contextstore::flow::{self, Change, FlowError, FlowEvent, NodeResult, NodeState, RunOptions};
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
    let greet = &status["nodes"][0];
    assert_eq!(greet["node"], "greet");
    assert_eq!(
        greet["provenance"]["component_hash"],
        contextstore_tests::load(components::GREET).content_hash()
    );
    assert_eq!(greet["provenance"]["attempt"], 1);
    assert!(
        greet["provenance"]["ended_at"].as_i64().is_some(),
        "{greet}"
    );
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

/// Runs `flow` on another thread and waits at most 60 s for it: a run
/// that hangs fails the test instead of hanging it.
fn run_or_hang(
    store: std::sync::Arc<dyn contextstore::ContextStore>,
    flow: flow::Flow,
    jobs: usize,
    on_event: impl Fn(&FlowEvent<'_>) + Sync + Send + 'static,
) -> Result<flow::FlowReport, flow::FlowError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let options = RunOptions {
            jobs,
            lease: flow::LeaseOptions::default(),
            on_event: &on_event,
        };
        let _ = tx.send(flow::run(
            runtime(),
            &store,
            &flow,
            FlowRunId::new(),
            &options,
        ));
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the flow run hung (or panicked)")
}

#[test]
fn a_panicking_event_callback_ends_the_run_with_an_error() {
    let (dir, store) = temp_store();
    let flow = flow::load(&write_flow(dir.path(), &diamond(""))).unwrap();
    for jobs in [1, 2, 4] {
        let result = run_or_hang(store.clone(), flow.clone(), jobs, |e: &FlowEvent<'_>| {
            if let FlowEvent::Finished { node, .. } = e
                && node.name == "shout"
            {
                panic!("progress output failed");
            }
        });
        assert!(
            matches!(&result, Err(flow::FlowError::CallbackPanicked(m)) if m == "progress output failed"),
            "jobs {jobs}: {result:?}"
        );
    }
}

/// A store that panics when the node `panic_on` is written or looked up,
/// as a buggy backend might.
struct PanickingStore {
    inner: std::sync::Arc<dyn contextstore::ContextStore>,
    panic_on: contextstore::NodeId,
}

impl contextstore::ContextStore for PanickingStore {
    fn put_text(
        &self,
        run: FlowRunId,
        node: contextstore::NodeId,
        value: &contextstore::json::JsonText,
    ) -> Result<(), contextstore::ContextStoreError> {
        assert!(node != self.panic_on, "the store broke");
        self.inner.put_text(run, node, value)
    }
    fn get_text(
        &self,
        run: FlowRunId,
        node: contextstore::NodeId,
    ) -> Result<Option<contextstore::json::JsonText>, contextstore::ContextStoreError> {
        assert!(node != self.panic_on, "the store broke");
        self.inner.get_text(run, node)
    }
    fn list_keys(
        &self,
        run: FlowRunId,
    ) -> Result<Vec<contextstore::NodeId>, contextstore::ContextStoreError> {
        self.inner.list_keys(run)
    }
    fn put_global_text(
        &self,
        key: &str,
        value: &contextstore::json::JsonText,
    ) -> Result<(), contextstore::ContextStoreError> {
        self.inner.put_global_text(key, value)
    }
    fn upsert_global_text(
        &self,
        key: &str,
        value: &contextstore::json::JsonText,
    ) -> Result<(), contextstore::ContextStoreError> {
        self.inner.upsert_global_text(key, value)
    }
    fn get_global_text(
        &self,
        key: &str,
    ) -> Result<Option<contextstore::json::JsonText>, contextstore::ContextStoreError> {
        self.inner.get_global_text(key)
    }
}

#[test]
fn a_panic_while_a_node_runs_fails_that_node_only() {
    let (dir, inner) = temp_store();
    let flow = flow::load(&write_flow(dir.path(), &diamond(""))).unwrap();
    let store: std::sync::Arc<dyn contextstore::ContextStore> =
        std::sync::Arc::new(PanickingStore {
            inner,
            panic_on: flow::node_id("diamond", "shout"),
        });
    let failed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = failed.clone();
    let report = run_or_hang(store, flow, 2, move |e: &FlowEvent<'_>| {
        if let FlowEvent::Failed { node, .. } = e {
            seen.lock().unwrap().push(node.name.clone());
        }
    })
    .unwrap();
    let result = |name: &str| &report.results.iter().find(|(n, _)| n == name).unwrap().1;
    assert!(
        matches!(result("shout"), NodeResult::Failed(contextstore::StepError::Panicked(m)) if m == "the store broke"),
        "{report:?}"
    );
    assert!(matches!(result("greet"), NodeResult::Done { .. }));
    assert!(matches!(result("words"), NodeResult::Done { .. }));
    assert!(matches!(result("join"), NodeResult::Blocked { by } if by == "shout"));
    assert_eq!(*failed.lock().unwrap(), ["shout"]);
}

#[test]
fn event_callbacks_run_outside_the_schedulers_lock() {
    // `broken` fails while `a` runs; the `Blocked` callback for `broken`'s
    // dependent then waits for `b` (ready only once `a` is recorded) to
    // start. Were the callback called under the scheduler's lock, `a`
    // could not be recorded and `b` would never start.
    let (dir, store) = temp_store();
    let text = format!(
        "name = \"lock\"\n\
         [nodes.broken]\ncomponent = \"{hostile}\"\nparams = {{ mode = \"fail\" }}\n\
         [nodes.after]\ncomponent = \"{greet}\"\nupstream = [\"broken\"]\n\
         [nodes.a]\ncomponent = \"{greet}\"\nparams = {{ name = \"a\" }}\n\
         [nodes.b]\ncomponent = \"{greet}\"\nupstream = [\"a\"]\nparams = {{ name = \"b\" }}\n",
        hostile = components::HOSTILE,
        greet = components::GREET,
    );
    let flow = flow::load(&write_flow(dir.path(), &text)).unwrap();
    let state = std::sync::Arc::new((
        std::sync::Mutex::new((false, false)),
        std::sync::Condvar::new(),
    ));
    let seen = state.clone();
    let waited = std::sync::Arc::new(std::sync::Mutex::new(None));
    let outcome = waited.clone();
    let report = run_or_hang(store, flow, 2, move |e: &FlowEvent<'_>| {
        let (flags, changed) = &*seen;
        let wait_for = |which: fn(&(bool, bool)) -> bool| {
            let guard = flags.lock().unwrap();
            let (guard, timeout) = changed
                .wait_timeout_while(guard, std::time::Duration::from_secs(10), |f| !which(f))
                .unwrap();
            drop(guard);
            !timeout.timed_out()
        };
        match e {
            // `a` finishes only after `broken` failed.
            FlowEvent::Started { node } if node.name == "a" => {
                wait_for(|f| f.0);
            }
            FlowEvent::Failed { node, .. } if node.name == "broken" => {
                flags.lock().unwrap().0 = true;
                changed.notify_all();
            }
            FlowEvent::Started { node } if node.name == "b" => {
                flags.lock().unwrap().1 = true;
                changed.notify_all();
            }
            FlowEvent::Blocked { .. } => {
                *outcome.lock().unwrap() = Some(wait_for(|f| f.1));
            }
            _ => {}
        }
    })
    .unwrap();
    assert_eq!(
        *waited.lock().unwrap(),
        Some(true),
        "`b` did not start while the Blocked callback ran: {report:?}"
    );
}

/// A flow of 1,000 nodes: one source, 998 nodes fanning out from it, and
/// one node fanning in from all of them. Loading, checking and running it
/// must not do quadratic work; every node's output is checked.
#[test]
fn a_thousand_node_fan_out_fan_in_flow_runs() {
    const MIDDLE: usize = 998;
    let (dir, store) = temp_store();
    let mut text = format!(
        "name = \"wide\"\n[nodes.source]\ncomponent = \"{}\"\nparams = {{ name = \"source\" }}\n",
        components::GREET
    );
    for i in 0..MIDDLE {
        text += &format!(
            "[nodes.m{i}]\ncomponent = \"{}\"\nparams = {{ name = \"m{i}\" }}\nupstream = [\"source\"]\n",
            components::GREET
        );
    }
    let all: Vec<String> = (0..MIDDLE).map(|i| format!("\"m{i}\"")).collect();
    text += &format!(
        "[nodes.sink]\ncomponent = \"{}\"\nparams = {{ name = \"sink\" }}\nupstream = [{}]\n",
        components::GREET,
        all.join(", ")
    );
    let flow = flow::load(&write_flow(dir.path(), &text)).unwrap();
    assert_eq!(flow.nodes.len(), MIDDLE + 2);
    let sink = flow.nodes.last().unwrap();
    assert_eq!(sink.upstream_index, (1..=MIDDLE).collect::<Vec<_>>());
    // The sink's line is found by position, as for a small file.
    assert_eq!(
        sink.line,
        text.lines().position(|l| l == "[nodes.sink]").unwrap() + 1
    );

    let run = FlowRunId::new();
    let options = RunOptions {
        jobs: 4,
        lease: flow::LeaseOptions::default(),
        on_event: &quiet,
    };
    let report = flow::run(runtime(), &store, &flow, run, &options).unwrap();
    assert!(report.is_success(), "{:?}", report.failures().next());
    assert_eq!(report.results.len(), MIDDLE + 2);
    for node in &flow.nodes {
        let output = store.get(run, node.node_id).unwrap();
        assert_eq!(
            output,
            Some(json!({"greeting": format!("Hello, {}!", node.name)})),
            "node {}",
            node.name
        );
    }
    assert_eq!(store.list_keys(run).unwrap().len(), MIDDLE + 2);
}

fn quietly() -> RunOptions<'static> {
    RunOptions {
        jobs: 2,
        lease: flow::LeaseOptions::default(),
        on_event: &quiet,
    }
}

/// Runs the diamond, then tries to resume the run with `edit` applied to
/// the flow file: the error, if the resume was refused.
fn resume_after(edit: impl Fn(String) -> String) -> Result<(), FlowError> {
    let (dir, store) = temp_store();
    let first = flow::load(&write_flow(dir.path(), &diamond(""))).unwrap();
    let run = FlowRunId::new();
    assert!(
        flow::run(runtime(), &store, &first, run, &quietly())
            .unwrap()
            .is_success()
    );
    let edited = flow::load(&write_flow(dir.path(), &edit(diamond("")))).unwrap();
    flow::run(runtime(), &store, &edited, run, &quietly()).map(|report| {
        assert!(report.is_success(), "{report:?}");
    })
}

fn changed(result: Result<(), FlowError>) -> Vec<(String, Vec<Change>)> {
    match result {
        Err(FlowError::Changed { nodes, .. }) => {
            nodes.into_iter().map(|n| (n.node, n.changes)).collect()
        }
        other => panic!("expected the resume to be refused, got {other:?}"),
    }
}

#[test]
fn resume_after_an_edited_params_value_is_refused_naming_the_node() {
    let result = resume_after(|f| f.replace("name = \"Ada\"", "name = \"Bob\""));
    let err = result
        .as_ref()
        .map_err(ToString::to_string)
        .unwrap_err()
        .clone();
    assert!(err.contains("`greet` (params)"), "{err}");
    assert_eq!(
        changed(result),
        [("greet".to_string(), vec![Change::Params])]
    );
}

#[test]
fn resume_after_an_edited_component_is_refused_naming_the_node() {
    // `shout` now points at another component file.
    let result = resume_after(|f| {
        f.replacen(
            &format!("component = \"{}\"", components::SHOUT),
            &format!("component = \"{}\"", components::WORDS),
            1,
        )
    });
    assert_eq!(
        changed(result),
        [("shout".to_string(), vec![Change::Component])]
    );
}

#[test]
fn resume_after_a_rewired_upstream_is_refused_naming_the_node() {
    // `join` takes `greet` where it took `words`.
    let result = resume_after(|f| f.replace("[\"shout\", \"words\"]", "[\"shout\", \"greet\"]"));
    assert_eq!(
        changed(result),
        [("join".to_string(), vec![Change::Upstream])]
    );
}

#[test]
fn resume_of_an_unchanged_flow_goes_on() {
    // Same flow, other spelling of the same params: resumed, nothing rerun.
    resume_after(|f| f.replace("{ name = \"Ada\" }", "{name=\"Ada\"}")).unwrap();
}

/// `words` stores its output, then traps; `join` depends on it.
fn trap_after_put_flow() -> String {
    diamond("").replace(
        &format!(
            "component = \"{}\"\nupstream = [\"greet\"]",
            components::WORDS
        ),
        &format!(
            "component = \"{}\"\nupstream = [\"greet\"]\nparams = {{ mode = \"trap-after-put\" }}",
            components::HOSTILE
        ),
    )
}

#[test]
fn a_step_that_stored_its_output_then_trapped_is_done_with_a_warning() {
    let (dir, store) = temp_store();
    let text = trap_after_put_flow();
    assert!(text.contains("trap-after-put"));
    let flow = flow::load(&write_flow(dir.path(), &text)).unwrap();
    let run = FlowRunId::new();
    let report = flow::run(runtime(), &store, &flow, run, &quietly()).unwrap();
    assert!(report.is_success(), "{report:?}");
    let warnings: Vec<(&str, &str)> = report.warnings().collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].0, "words");
    assert!(warnings[0].1.contains("trapped"), "{warnings:?}");
    // Its dependent ran on its output.
    let join = store
        .get(run, flow::node_id("diamond", "join"))
        .unwrap()
        .unwrap();
    assert_eq!(join["inputs"]["words"], json!({"mode": "trap-after-put"}));

    let status = flow::status(store.as_ref(), &flow, run).unwrap();
    let words = status.iter().find(|s| s.name == "words").unwrap();
    assert!(
        matches!(&words.state, NodeState::DoneWithWarning(w) if w.contains("trapped")),
        "{words:?}"
    );
    let greet = status.iter().find(|s| s.name == "greet").unwrap();
    assert_eq!(greet.state, NodeState::Done);

    // A resume reports the same: done, with the warning, nothing rerun.
    let again = flow::run(runtime(), &store, &flow, run, &quietly()).unwrap();
    assert!(again.is_success());
    let warnings: Vec<&str> = again.warnings().map(|(name, _)| name).collect();
    assert_eq!(warnings, ["words"]);
}

#[test]
fn restart_starts_a_new_run_after_the_flow_changed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let db = db.to_str().unwrap();
    let run = "5b0c2f55-9a57-4a4e-8f3e-2f0f8f6f0b12";
    let flow_file = write_flow(dir.path(), &diamond(""));
    let flow_file = flow_file.to_str().unwrap();
    let first = cli(&["flow", "run", flow_file, "--db", db, "--run-id", run]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    write_flow(dir.path(), &diamond("").replace("Ada", "Bob"));
    let refused = cli(&["flow", "run", flow_file, "--db", db, "--run-id", run]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("`greet` (params)") && stderr.contains("--restart"),
        "{stderr}"
    );
    let restarted = cli(&[
        "flow",
        "run",
        flow_file,
        "--db",
        db,
        "--run-id",
        run,
        "--restart",
    ]);
    assert!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    let stderr = String::from_utf8_lossy(&restarted.stderr);
    assert!(stderr.contains(&format!("(restarting {run})")), "{stderr}");
    let outputs: serde_json::Value = serde_json::from_slice(&restarted.stdout).unwrap();
    assert_eq!(outputs["greet"], json!({"greeting": "Hello, Bob!"}));
}

#[test]
fn trap_after_put_from_the_command_line_exits_0_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let flow_file = write_flow(dir.path(), &trap_after_put_flow());
    let db = dir.path().join("w.db");
    let (flow_file, db) = (flow_file.to_str().unwrap(), db.to_str().unwrap());
    let run = "5b0c2f55-9a57-4a4e-8f3e-2f0f8f6f0b13";
    let out = cli(&["flow", "run", flow_file, "--db", db, "--run-id", run]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: node `words` stored its output, then failed: step trapped"),
        "{stderr}"
    );
    let status = cli(&[
        "flow", "status", flow_file, "--db", db, "--run-id", run, "--json",
    ]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let words = &status["nodes"][2];
    assert_eq!(words["node"], "words");
    assert_eq!(words["status"], "done");
    assert!(
        words["warning"].as_str().unwrap().contains("trapped"),
        "{words}"
    );
}

/// A flow's `grant.read_run` widens a node's reads to the whole run (the
/// flow's default, overridden per node), and a node's fuel budget runs
/// the fuel-metered variant, compiled when the flow is loaded.
#[test]
fn flow_files_grant_whole_run_reads_and_fuel() {
    let (dir, store) = temp_store();
    let greet = flow::node_id("diamond", "greet");
    let extra = format!(
        r#"[grant]
read_run = true
[nodes.peek]
component = "{hostile}"
upstream = ["shout"]
params = {{ mode = "read-other-node", target = "{greet}" }}
grant = {{ read_run = false }}
[nodes.peek_wide]
component = "{hostile}"
upstream = ["shout"]
params = {{ mode = "read-other-node", target = "{greet}" }}
[nodes.counted]
component = "{hostile}"
params = {{ mode = "count", n = 1000 }}
limits = {{ fuel = 100000000, max_reads = 5, max_read_bytes = 1000, max_resources = 50 }}
[nodes.starved]
component = "{hostile}"
params = {{ mode = "count", n = 100000000 }}
limits = {{ fuel = 100000 }}
"#,
        hostile = components::HOSTILE,
    );
    let flow = flow::load(&write_flow(dir.path(), &diamond(&extra))).unwrap();
    let peek = &flow.nodes[flow.index_of("peek").unwrap()];
    assert!(!peek.grant.read_run);
    assert!(
        flow.nodes[flow.index_of("peek_wide").unwrap()]
            .grant
            .read_run
    );
    let counted = &flow.nodes[flow.index_of("counted").unwrap()].limits;
    assert_eq!(
        (
            counted.max_reads,
            counted.max_read_bytes,
            counted.max_resources
        ),
        (5, 1000, 50)
    );
    let run = FlowRunId::new();
    let options = RunOptions {
        jobs: 2,
        lease: flow::LeaseOptions::default(),
        on_event: &quiet,
    };
    let report = flow::run(runtime(), &store, &flow, run, &options).unwrap();
    let result = |name: &str| {
        &report
            .results
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} has a result"))
            .1
    };
    match result("peek") {
        NodeResult::Failed(error) => assert!(
            error
                .to_string()
                .contains(&format!("node {greet} is not an upstream of this step")),
            "{error}"
        ),
        other => panic!("peek read outside its upstreams: {other:?}"),
    }
    assert!(matches!(result("peek_wide"), NodeResult::Done { .. }));
    assert_eq!(
        store
            .get(run, flow::node_id("diamond", "peek_wide"))
            .unwrap(),
        Some(json!({"read": {"greeting": "Hello, Ada!"}}))
    );
    assert!(
        matches!(result("counted"), NodeResult::Done { .. }),
        "{:?}",
        result("counted")
    );
    assert!(
        matches!(
            result("starved"),
            NodeResult::Failed(contextstore::StepError::OutOfFuel(100_000))
        ),
        "{:?}",
        result("starved")
    );
}
