//! `contextstore serve` in a real browser: headless Chromium, driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`; `scripts/setup
//! browser` installs them), looks at a store while a flow runs in it, on
//! SQLite and on PostgreSQL:
//!
//! - the runs list shows the run, and its state filter works;
//! - the run page draws the graph (SVG boxes and edges) and the table;
//! - a node's state changes on the page from pending (or running) to done
//!   while the run goes on, without a reload;
//! - a failed node's detail shows its error and its failed attempts;
//! - an output holding `<script>` shows it as text: no element is made of
//!   it and no alert opens;
//! - `/metrics` (the store's) and `flow run --metrics-listen` (the
//!   worker's) answer in the Prometheus text format.
//!
//! A screenshot of the run page is kept in `target/web-artefacts/`
//! (and copied to `docs/run-page.png` when that is missing, or with
//! `CONTEXTSTORE_UPDATE_SCREENSHOT=1`).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use contextstore::FlowRunId;
use contextstore_tests::{FlowProcess, cli_binary, components, postgres_cluster};
use serde_json::{Value, json};

/// One browser test at a time: each starts a browser, a server and a flow,
/// and the machine may have two cores.
static SERIAL: Mutex<()> = Mutex::new(());

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long the slow node sleeps: the page must be open before it ends.
const SLOW_MS: u64 = 9000;

/// The text a step's output holds, which must stay text.
const SCRIPT: &str = "<script>alert(1)</script>";

/// A child process, killed (and reaped) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free port on 127.0.0.1 (for a program that must be told one).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Calls `check` every 100 ms until it returns `Some`, failing the test
/// with `what` after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP client for loopback servers: no proxy, a deadline on every call.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into()
}

/// A GET's status and body.
fn get_text(agent: &ureq::Agent, url: &str) -> Option<(u16, String)> {
    let mut response = agent.get(url).call().ok()?;
    let status = response.status().as_u16();
    Some((status, response.body_mut().read_to_string().ok()?))
}

// ---- WebDriver ------------------------------------------------------------

/// A headless Chromium session through chromedriver. Dropping it ends the
/// session (chromedriver closes the browser) and kills chromedriver.
struct Browser {
    agent: ureq::Agent,
    base: String,
    session: String,
    _driver: Killed,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: install Debian's chromium and chromium-driver \
                 (scripts/setup browser)"
            );
        }
        let port = free_port();
        let driver = Killed(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let agent = agent();
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver ready", Duration::from_secs(30), || {
            let (_, body) = get_text(&agent, &format!("{base}/status"))?;
            let status: Value = serde_json::from_str(&body).ok()?;
            (status["value"]["ready"] == true).then_some(())
        });
        let profile = tempfile::tempdir().expect("a profile directory");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1360,1000",
                    "--no-first-run", "--no-default-browser-check",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let mut response = agent
            .post(&format!("{base}/session"))
            .send_json(&capabilities)
            .expect("chromedriver answers");
        let answer: Value = response.body_mut().read_json().expect("a session");
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned();
        Self {
            agent,
            base,
            session,
            _driver: driver,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut response = result.unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_json()
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    fn goto(&self, url: &str) {
        let answer = self.call("POST", "/url", Some(json!({ "url": url })));
        assert!(answer["value"].is_null(), "navigating to {url}: {answer}");
    }

    /// Runs `script` (a function body) in the page and returns its value.
    fn eval(&self, script: &str) -> Value {
        let answer = self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        );
        if answer["value"]["error"].is_string() {
            panic!("script failed: {answer}\n{script}");
        }
        answer["value"].clone()
    }

    /// Evaluates `script` until it returns something other than `null`.
    fn wait_eval(&self, what: &str, script: &str) -> Value {
        wait_for(what, Duration::from_secs(30), || {
            Some(self.eval(script)).filter(|v| !v.is_null())
        })
    }

    /// Whether an alert is open.
    fn alert_open(&self) -> bool {
        let answer = self.call("GET", "/alert/text", None);
        answer["value"]["error"].is_null()
    }

    fn screenshot(&self, path: &Path) {
        let answer = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(answer["value"].as_str().expect("a screenshot"))
            .expect("base64");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.agent.delete(&url).call();
    }
}

// ---- the programs under test ------------------------------------------------

/// `contextstore serve` on a port of its choosing.
struct Serve {
    _child: Killed,
    addr: SocketAddr,
}

impl Serve {
    fn start(db: &str) -> Self {
        let mut child = Command::new(cli_binary())
            .args(["serve", "--db", db, "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let stderr = child.stderr.take().unwrap();
        let child = Killed(child);
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("serve: {line}");
                let _ = send.send(line);
            }
        });
        let start = Instant::now();
        let addr = loop {
            let left = Duration::from_secs(30).saturating_sub(start.elapsed());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("serve on {db} says where it listens within 30 s"));
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split('/').next().unwrap();
                break addr.parse().expect("an address");
            }
        };
        Self {
            _child: child,
            addr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// The flow: `greet` (whose output holds [`SCRIPT`]) feeds `slow`, which
/// sleeps, and `after`, which waits for both; `broken` fails both its
/// attempts.
fn write_flow(dir: &Path) -> PathBuf {
    let (greet, slow) = (
        Value::from(components::GREET),
        Value::from(components::SLOW),
    );
    let text = format!(
        "name = \"web\"\n\
         [grant]\nglobal_read = [\"web/\"]\nglobal_write = [\"web/\"]\n\
         [nodes.greet]\ncomponent = {greet}\nparams = {{ name = {script} }}\n\
         [nodes.slow]\ncomponent = {slow}\nupstream = [\"greet\"]\nlimits = {{ timeout = 120 }}\n\
         params = {{ sleep_ms = {SLOW_MS}, nonce = false, read_first = true, tag = {script} }}\n\
         [nodes.after]\ncomponent = {slow}\nupstream = [\"greet\", \"slow\"]\nparams = {{ nonce = false, tag = \"end\" }}\n\
         [nodes.broken]\ncomponent = {slow}\n\
         retry = {{ attempts = 2, backoff = 0.3, jitter = false }}\n\
         params = {{ counter = \"web/count\", fail_first = 100, nonce = false }}\n",
        script = Value::from(SCRIPT),
    );
    let path = dir.join("web.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A `flow run` in the background, with its events.
struct FlowRun(FlowProcess);

impl FlowRun {
    fn start(flow: &Path, db: &str, run: FlowRunId, metrics: SocketAddr, cache: &Path) -> Self {
        let (run, metrics) = (run.to_string(), metrics.to_string());
        Self(FlowProcess::start(&[
            flow.to_str().unwrap(),
            "--db",
            db,
            "--run-id",
            &run,
            "--events",
            "--jobs",
            "2",
            "--lease",
            "5",
            "--metrics-listen",
            &metrics,
            "--cache-dir",
            cache.to_str().unwrap(),
        ]))
    }

    /// Waits (two minutes at most) for `event` of `node`.
    fn wait_event(&self, event: &str, node: &str) {
        self.0.wait_event(Duration::from_secs(120), |got| {
            got["event"] == event && got["node"] == node
        });
    }

    /// Waits (two minutes at most) for the run to end; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        self.0.wait_exit(Duration::from_secs(120))
    }
}

// ---- Prometheus text -----------------------------------------------------------

/// The samples of a Prometheus text: `name{labels}` and value, every line
/// checked to be a comment or a sample.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            assert!(
                matches!(words.first(), Some(&"HELP") | Some(&"TYPE")),
                "bad comment line {line:?}"
            );
            if words[0] == "TYPE" {
                assert!(
                    matches!(
                        words.get(2),
                        Some(&"counter" | &"gauge" | &"histogram" | &"summary" | &"untyped")
                    ),
                    "bad type line {line:?}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        samples.push((series.to_owned(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

// ---- the scenario ------------------------------------------------------------

/// The `textContent` of `selector`, or `null` when it is not there.
fn text_of(selector: &str) -> String {
    format!(
        "const e = document.querySelector({}); return e ? e.textContent : null;",
        Value::from(selector)
    )
}

fn scenario(db: &str, backend: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let flow = write_flow(dir.path());
    let run = FlowRunId::new();
    let http = agent();
    // The browser first: it takes the longest to start.
    let browser = Browser::start();
    // The store made first, so that the server is up before the run starts.
    drop(contextstore::store::open_url(db).expect("the store is made"));
    let serve = Serve::start(db);
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut flow_run = FlowRun::start(&flow, db, run, metrics_addr, &dir.path().join("cache"));
    flow_run.wait_event("started", "slow");

    // The worker's own metrics, while `slow` runs (the `started` event
    // comes just before its invocation begins: wait for it in flight).
    let worker = wait_for(
        "the worker's /metrics with an invocation in flight",
        Duration::from_secs(30),
        || {
            let (status, text) = get_text(&http, &format!("http://{metrics_addr}/metrics"))?;
            let in_flight = sample(
                &parse_prometheus(&text),
                "contextstore_invocations_in_flight",
            );
            (status == 200 && in_flight >= Some(1.0)).then_some(text)
        },
    );
    let samples = parse_prometheus(&worker);
    let commits = format!("contextstore_store_commit_seconds_count{{backend=\"{backend}\"}}");
    assert!(
        sample(&samples, &commits) >= Some(1.0),
        "{backend}: {worker}"
    );
    if backend == "sqlite" {
        assert!(
            sample(&samples, "contextstore_store_group_commit_writes_count") >= Some(1.0),
            "{worker}"
        );
    }

    // The run page while `slow` runs: the graph, and slow not done.
    let run_url = serve.url(&format!("/runs/{run}"));
    browser.goto(&run_url);
    browser.wait_eval(
        "the graph drawn",
        "return document.querySelectorAll('#graph-svg g.node').length === 4 ? true : null;",
    );
    let edges = browser.eval("return document.querySelectorAll('#graph-svg path.edge').length;");
    assert_eq!(
        edges,
        json!(3),
        "{backend}: greet → slow → after, greet → after"
    );
    let slow_state = "#graph-svg g.node[data-node=\"slow\"] .node-state";
    let first = browser.wait_eval(
        "slow's state shown",
        &format!(
            "const e = document.querySelector({}); return e && e.textContent !== '…' ? e.textContent : null;",
            Value::from(slow_state)
        ),
    );
    assert!(
        first == "pending" || first == "running",
        "{backend}: slow is {first} on the page before it ended"
    );
    browser.eval("window.__notReloaded = true; return null;");
    // The same page, without a reload, until slow is done.
    let mut seen = vec![first.as_str().unwrap_or("").to_owned()];
    wait_for(
        "slow shown done without a reload",
        Duration::from_secs(90),
        || {
            let now = browser.eval(&text_of(slow_state));
            let now = now.as_str().unwrap_or("").to_owned();
            if seen.last() != Some(&now) {
                seen.push(now.clone());
            }
            (now == "done").then_some(())
        },
    );
    assert_eq!(
        browser.eval("return window.__notReloaded === true;"),
        json!(true),
        "{backend}: the page was reloaded"
    );
    let row_state = browser.eval(&text_of("#nodes tr[data-node=\"slow\"] td.state"));
    assert_eq!(row_state, "done", "{backend}");
    eprintln!("web {backend}: slow on the page went {seen:?} without a reload");
    if backend == "postgres" {
        assert!(
            seen.iter().any(|s| s == "running"),
            "{backend}: a claimed node shows running: {seen:?}"
        );
    }

    // The run ends failed (broken); the page shows the failed node's detail.
    let code = flow_run.wait_exit();
    assert_eq!(code, Some(2), "{backend}: a failed node fails the run");
    browser.wait_eval(
        "the run shown failed",
        "return document.getElementById('run-state').textContent === 'failed' ? true : null;",
    );
    browser.wait_eval(
        "the failed node's detail",
        "const d = document.getElementById('detail'); \
         return !d.hidden && document.getElementById('detail-name').textContent === 'broken' \
         && document.querySelectorAll('#detail-failures li').length === 2 ? true : null;",
    );
    let error = browser.eval(&text_of("#detail-fields dd[data-field=\"error\"]"));
    assert!(
        error
            .as_str()
            .is_some_and(|e| e.contains("flaky: invocation 2 of the 100 that fail")),
        "{backend}: {error}"
    );
    assert_eq!(
        browser.eval(&text_of("#nodes tr[data-node=\"broken\"] td.state")),
        "failed"
    );
    assert_eq!(
        browser.eval(&text_of(
            "#graph-svg g.node[data-node=\"after\"] .node-state"
        )),
        "done"
    );
    let shot = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/web-artefacts")
        .join(format!("run-page-{backend}.png"));
    browser.screenshot(&shot);
    eprintln!("web {backend}: screenshot {}", shot.display());
    if backend == "sqlite" {
        let kept = shot.with_file_name("run-page.png");
        std::fs::copy(&shot, &kept).unwrap();
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/run-page.png");
        if !docs.exists() || std::env::var_os("CONTEXTSTORE_UPDATE_SCREENSHOT").is_some() {
            std::fs::create_dir_all(docs.parent().unwrap()).unwrap();
            std::fs::copy(&shot, &docs).unwrap();
        }
    }

    // The runs list, and its filter.
    browser.goto(&serve.url("/"));
    let row = format!("#runs tr[data-run=\"{run}\"]");
    browser.wait_eval(
        "the run listed",
        &format!(
            "return document.querySelector({}) ? true : null;",
            Value::from(row.as_str())
        ),
    );
    assert_eq!(browser.eval(&text_of(&format!("{row} td.state"))), "failed");
    assert_eq!(
        browser.eval(&text_of(&format!("{row} td:nth-child(2)"))),
        "web"
    );
    assert_eq!(
        browser.eval(&text_of(&format!("{row} td:nth-child(4)"))),
        "3 / 4"
    );
    browser.screenshot(&shot.with_file_name(format!("runs-page-{backend}.png")));
    browser.goto(&serve.url("/?state=done"));
    browser.wait_eval(
        "the filtered list",
        "return document.getElementById('status').textContent.startsWith('live') ? true : null;",
    );
    assert_eq!(
        browser.eval(&format!(
            "return document.querySelectorAll({}).length;",
            Value::from(row.as_str())
        )),
        json!(0),
        "{backend}: a failed run is not listed under done"
    );

    // Outputs holding markup show it as text.
    for node in ["greet", "slow"] {
        let id = contextstore::flow::node_id("web", node);
        browser.goto(&serve.url(&format!("/runs/{run}/nodes/{id}/output")));
        let shown = browser.wait_eval("the output shown", &text_of("#output"));
        assert!(
            shown.as_str().is_some_and(|s| s.contains(SCRIPT)),
            "{backend}: {node}'s output: {shown}"
        );
        assert_eq!(
            browser.eval("return document.querySelectorAll('script').length;"),
            json!(0),
            "{backend}: {node}'s output made a script element"
        );
        assert!(!browser.alert_open(), "{backend}: an alert opened");
        browser.screenshot(&shot.with_file_name(format!("output-{node}-{backend}.png")));
    }
    // And on the run page (node names and errors are text too).
    browser.goto(&run_url);
    browser.wait_eval(
        "the run page again",
        "return document.querySelectorAll('#nodes tbody tr').length === 4 ? true : null;",
    );
    assert!(!browser.alert_open(), "{backend}: an alert opened");

    // The store's /metrics.
    let (status, text) = get_text(&http, &serve.url("/metrics")).expect("/metrics answers");
    assert_eq!(status, 200, "{text}");
    let samples = parse_prometheus(&text);
    for (series, want) in [
        ("contextstore_runs{state=\"failed\"}", 1.0),
        ("contextstore_runs{state=\"running\"}", 0.0),
        ("contextstore_nodes{state=\"done\"}", 3.0),
        ("contextstore_nodes{state=\"failed\"}", 1.0),
        ("contextstore_failed_attempts", 2.0),
        (
            "contextstore_step_duration_seconds_count{component=\"slow.wasm\"}",
            2.0,
        ),
        (
            "contextstore_step_duration_seconds_count{component=\"greet.wasm\"}",
            1.0,
        ),
        ("contextstore_metrics_sampled_steps", 3.0),
    ] {
        assert_eq!(
            sample(&samples, series),
            Some(want),
            "{backend}: {series} in\n{text}"
        );
    }
    let slow_sum = sample(
        &samples,
        "contextstore_step_duration_seconds_sum{component=\"slow.wasm\"}",
    )
    .unwrap();
    assert!(slow_sum >= SLOW_MS as f64 / 1e3, "{backend}: {slow_sum}");
    for name in [
        "contextstore_claims_taken_over",
        "contextstore_workers_live",
    ] {
        assert!(
            sample(&samples, name).is_some(),
            "{backend}: {name} in\n{text}"
        );
    }
    assert!(
        samples
            .iter()
            .any(|(s, _)| s.starts_with("contextstore_step_attempts_bucket")),
        "{text}"
    );
}

#[test]
fn the_web_view_follows_a_run_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("web.db");
    scenario(db.to_str().unwrap(), "sqlite");
}

#[test]
fn the_web_view_follows_a_run_on_postgres() {
    scenario(&postgres_cluster::fresh_database(), "postgres");
}
