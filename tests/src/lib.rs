//! Shared helpers for the integration tests: the paths of the guest
//! components built by `build.rs`, and small fixtures.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use contextstore::{
    ContextStore, Grant, Invocation, Limits, Runtime, SqliteContextStore, StepComponent, StepError,
    StepOutcome,
};

/// Paths of the Rust guest components, built for wasm32-wasip2 by `build.rs`.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

/// Many finished runs in a store (what gc removes).
#[path = "../../host/tests/support/finished_runs.rs"]
pub mod finished_runs;
/// A throwaway PostgreSQL server, one per test binary, and a fresh
/// database per test.
#[path = "../../host/tests/support/postgres_cluster.rs"]
pub mod postgres_cluster;
/// Waiting for a child process without hanging the test.
#[path = "../../host/tests/support/process.rs"]
pub mod process;
/// A TCP proxy that can stall its connections (fault injection).
pub mod proxy;

/// A component built by `guest/build-all.sh` (Python, JavaScript and C
/// steps) into `target/components/`.
pub fn language_component(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/components")
        .join(file);
    assert!(
        path.exists(),
        "{} is missing: build the Python, JavaScript and C steps with guest/build-all.sh (scripts/test does)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// One runtime for the whole test binary, as a host process would have.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new().expect("runtime starts"))
}

/// Loads a component by path (compiled once per runtime).
pub fn load(path: &str) -> StepComponent {
    runtime().load_file(path).expect("component loads")
}

/// Runs `component` on the shared runtime with the default grant and limits.
pub fn run_default(
    component: &StepComponent,
    store: &Arc<dyn ContextStore>,
    invocation: &Invocation,
) -> Result<StepOutcome, StepError> {
    runtime().run(
        component,
        store,
        invocation,
        &Grant::default(),
        &Limits::default(),
    )
}

/// Runs the `contextstore` binary with `args` and waits for it.
pub fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(cli_binary())
        .args(args)
        .output()
        .expect("contextstore runs")
}

/// A fresh SQLite store in a temporary directory, with the directory.
pub fn temp_store() -> (tempfile::TempDir, Arc<dyn ContextStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteContextStore::open(dir.path().join("context.db")).expect("store opens");
    (dir, Arc::new(store))
}

/// The `contextstore` binary of this build (`target/<profile>/contextstore`),
/// built beside the test binaries by `cargo test --workspace`, or the one
/// `CONTEXTSTORE_CLI` names.
pub fn cli_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("CONTEXTSTORE_CLI") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join(format!("contextstore{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds the CLI)",
        bin.display()
    );
    bin
}

/// Writes a layered flow file into `dir` and returns its path: `width`
/// greet nodes, then `layers - 1` layers of join nodes, each joining two
/// nodes of the layer before (`width * layers` nodes in all).
pub fn write_layered_flow(dir: &std::path::Path, width: usize, layers: usize) -> PathBuf {
    let mut text = String::from("name = \"layers\"\n");
    for i in 0..width {
        text += &format!(
            "[nodes.n0_{i}]\ncomponent = \"{}\"\nparams = {{ name = \"node {i}\" }}\n",
            components::GREET
        );
    }
    for layer in 1..layers {
        for i in 0..width {
            let (a, b) = (i, (i + 1) % width);
            text += &format!(
                "[nodes.n{layer}_{i}]\ncomponent = \"{}\"\nupstream = [\"n{p}_{a}\", \"n{p}_{b}\"]\nparams = {{ title = \"{layer}/{i}\" }}\n",
                components::JOIN,
                p = layer - 1
            );
        }
    }
    let path = dir.join("layers.toml");
    std::fs::write(&path, text).expect("flow file written");
    path
}

/// SplitMix64: a small seeded generator, so that a failing seed can be
/// replayed (the crash tests draw their kill moments from it).
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The environment variable `name` as a number, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A flow file of `nodes` independent `slow` nodes that each sleep
/// `sleep_ms`, named `name`, written into `dir`; its path.
pub fn sleepy_flow(dir: &std::path::Path, name: &str, nodes: usize, sleep_ms: u64) -> PathBuf {
    let slow = serde_json::Value::from(components::SLOW);
    let mut text = format!("name = {:?}\n", name);
    for i in 0..nodes {
        text += &format!(
            "[nodes.s{i}]\ncomponent = {slow}\nparams = {{ sleep_ms = {sleep_ms}, nonce = false }}\n"
        );
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write the flow file");
    path
}

/// A `contextstore flow run` in the background, with the JSON lines it
/// prints on stderr (its `--events`; other lines are echoed to this
/// test's stderr). Killed (SIGKILL) and reaped when dropped.
pub struct FlowProcess {
    child: std::process::Child,
    /// The events, in the order printed.
    pub events: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl FlowProcess {
    /// Runs `contextstore flow run` with `args`.
    pub fn start(args: &[&str]) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(cli_binary())
            .args(["flow", "run"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("flow run starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (send, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(event) => {
                        let _ = send.send(event);
                    }
                    Err(_) => eprintln!("flow run: {line}"),
                }
            }
        });
        Self { child, events }
    }

    /// Waits (`within` at most) for the first event that `wanted` accepts.
    pub fn wait_event(
        &self,
        within: std::time::Duration,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let event = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the awaited event did not come within {within:?}"));
            if wanted(&event) {
                return;
            }
        }
    }

    /// Waits (a minute at most) until `count` steps have started.
    pub fn wait_started(&self, count: usize) {
        for _ in 0..count {
            self.wait_event(std::time::Duration::from_secs(60), |e| {
                e["event"] == "started"
            });
        }
    }

    /// Waits (`within` at most) for the process to exit; its exit code.
    /// Panics (after killing it) if it does not.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("flow run's status") {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("flow run did not exit within {within:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for FlowProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
