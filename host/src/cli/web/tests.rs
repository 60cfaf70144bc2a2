//! The router on a real SQLite store holding a run recorded by hand (its
//! graph, an output that holds markup, a failed node), over real HTTP on
//! a loopback port.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contextstore::coord::WorkerId;
use contextstore::json::JsonText;
use contextstore::runs::{RunRecord, WorkerStatus};
use contextstore::store::{CallContext, Provenance};
use contextstore::{ContextStore, FlowRunId, NodeId, SqliteContextStore};
use serde_json::{Value, json};

use super::{AppState, allowed_hosts, router};

struct Fixture {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    run: FlowRunId,
    shout: NodeId,
    _runtime: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.db");
    let run = FlowRunId::new();
    let (greet, shout, join) = (NodeId::new(), NodeId::new(), NodeId::new());
    {
        let store = SqliteContextStore::open(&path).unwrap();
        let graph = JsonText::from_stored(
            json!({"nodes": [
                {"name": "greet", "node_id": greet, "component": "greet.wasm", "upstream": []},
                {"name": "<b>shout</b>", "node_id": shout, "component": "shout.wasm", "upstream": ["greet"]},
                {"name": "join", "node_id": join, "component": "join.wasm", "upstream": ["greet", "<b>shout</b>"]},
            ]})
            .to_string(),
        );
        let worker = WorkerId::new("tester");
        let record = RunRecord {
            run,
            flow_name: "web",
            flow_hash: "hash",
            graph: &graph,
            nodes: 3,
            worker: &worker,
            lease: Duration::from_secs(60),
        };
        let executor = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let index = store.as_async().and_then(|s| s.runs()).unwrap();
        executor
            .block_on(index.record(
                &CallContext::within(Duration::from_secs(10)),
                &record,
                WorkerStatus::Running,
            ))
            .unwrap();
        let provenance = Provenance {
            component_hash: "c0ffee".repeat(8),
            params_hash: "p".into(),
            upstream_hash: "u".into(),
            attempt: 2,
            host: "host-<i>1</i>".into(),
            started_at: 1_000,
            ended_at: 1_250,
        };
        let value = JsonText::from_stored(json!({"text": "<script>alert(1)</script>"}).to_string());
        store
            .put_text_with_provenance(run, shout, &value, &provenance)
            .unwrap();
        contextstore::flow::journal::record_failure(
            &store,
            run,
            join,
            "boom: <img src=x onerror=alert(2)>",
            1,
        )
        .unwrap();
    }
    let store: Arc<dyn ContextStore> = Arc::new(
        SqliteContextStore::open_read_only(&path, contextstore::SqliteOptions::default()).unwrap(),
    );
    let async_store = Arc::clone(&store).into_async().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(AppState::new(
        store,
        async_store,
        10,
        Some(allowed_hosts(addr, &[])),
    ));
    runtime.spawn(async move { axum::serve(listener, router(state)).await });
    Fixture {
        _dir: dir,
        addr,
        run,
        shout,
        _runtime: runtime,
    }
}

/// One GET over HTTP/1.1 with `Host: host`: the status and the body.
fn get_as(addr: SocketAddr, host: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    get_as(addr, &addr.to_string(), path)
}

/// A chunked body's text (hyper chunks bodies of unknown length).
fn dechunk(head: &str, body: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&tail[..size]);
        rest = &tail[size + 2..];
    }
    out
}

fn json_of(addr: SocketAddr, path: &str) -> Value {
    let (status, head, body) = get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&dechunk(&head, &body)).unwrap()
}

#[test]
fn the_api_lists_runs_and_a_runs_nodes() {
    let f = fixture();
    let runs = json_of(f.addr, "/api/runs");
    assert_eq!(runs["runs"][0]["flow_run_id"], json!(f.run));
    assert_eq!(runs["runs"][0]["state"], "running");
    assert_eq!(runs["runs"][0]["nodes"]["done"], 1);
    let none = json_of(f.addr, "/api/runs?state=done,cancelled");
    assert_eq!(none["runs"], json!([]));
    let (status, _, body) = get(f.addr, "/api/runs?state=finished");
    assert_eq!(status, 400, "{body}");

    let run = json_of(f.addr, &format!("/api/runs/{}", f.run));
    let nodes = run["nodes"].as_array().unwrap();
    let states: Vec<&str> = nodes.iter().map(|n| n["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "done", "failed"]);
    assert_eq!(nodes[1]["duration_ms"], 250);
    assert_eq!(nodes[1]["attempts"], 2);
    assert_eq!(nodes[1]["worker"], "host-<i>1</i>");
    assert_eq!(nodes[2]["error"], "boom: <img src=x onerror=alert(2)>");
    assert_eq!(nodes[2]["upstream"], json!(["greet", "<b>shout</b>"]));

    let (status, _, _) = get(f.addr, &format!("/api/runs/{}", FlowRunId::new()));
    assert_eq!(status, 404);
    let (status, _, _) = get(f.addr, "/api/runs/not-a-uuid");
    assert_eq!(status, 400);
}

#[test]
fn an_output_is_shown_escaped_and_pages_forbid_inline_script() {
    let f = fixture();
    let (status, head, body) = get(f.addr, &format!("/runs/{}/nodes/{}/output", f.run, f.shout));
    let body = dechunk(&head, &body);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("<script>"), "{body}");
    assert!(!body.contains("<b>"), "{body}");
    assert!(
        body.contains("&quot;text&quot;: &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;"),
        "{body}"
    );
    assert!(body.contains("&lt;b&gt;shout&lt;/b&gt;"), "{body}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(head.contains("x-content-type-options: nosniff"));

    let (status, _, page) = get(f.addr, &format!("/runs/{}", f.run));
    assert_eq!(status, 200);
    assert!(page.contains("/assets/app.js"));
    let (status, _, _) = get(f.addr, "/assets/app.js");
    assert_eq!(status, 200);
    let (status, _, _) = get(f.addr, "/nothing/here");
    assert_eq!(status, 404);
}

#[test]
fn another_host_is_refused() {
    let f = fixture();
    let (status, _, body) = get_as(f.addr, "evil.example:80", "/api/runs");
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = get_as(f.addr, &format!("localhost:{}", f.addr.port()), "/api/runs");
    assert_eq!(status, 200);
}

#[test]
fn metrics_come_from_what_the_store_holds() {
    let f = fixture();
    let started = Instant::now();
    let (status, head, body) = get(f.addr, "/metrics");
    let text = dechunk(&head, &body);
    assert_eq!(status, 200, "{text}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for line in [
        "contextstore_runs{state=\"running\"} 1",
        "contextstore_runs{state=\"done\"} 0",
        "contextstore_nodes{state=\"done\"} 1",
        "contextstore_nodes{state=\"failed\"} 1",
        "contextstore_failed_attempts 1",
        "contextstore_claims_taken_over 0",
        "contextstore_step_duration_seconds_count{component=\"shout.wasm\"} 1",
        "contextstore_step_duration_seconds_sum{component=\"shout.wasm\"} 0.25",
        "contextstore_step_attempts_bucket{le=\"2\"} 1",
        "contextstore_step_attempts_bucket{le=\"1\"} 0",
        "contextstore_metrics_sampled_runs 1",
        "contextstore_metrics_sampled_steps 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
    // The second scrape reads nothing new and says the same.
    let (_, head, body) = get(f.addr, "/metrics");
    assert!(dechunk(&head, &body).contains("contextstore_metrics_sampled_steps 1"));
    assert!(started.elapsed() < Duration::from_secs(10));
}
