//! `hostile`: a test step that does one bad (or odd) thing, chosen by its
//! params `{"mode": "<mode>", ...}`. See [`MODES`] for the list.
//!
//! When the bad store call fails, the step answers `Err(StepError::Store(e))`
//! with that very error, so the host's tests see the typed error; if the bad
//! call is allowed, it answers `Err(StepError::Failed("<mode>: bad call was
//! allowed"))`. An unknown or missing mode is `StepError::InvalidParams`.

use contextstore_guest::{Context, Error, Step, StepError, export_step, store};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Every mode, in the order of the doc list below.
///
/// - `loop`: spins forever (until the host's fuel or epoch deadline).
/// - `memory-hog`: allocates and touches 1 MiB chunks, keeping them all,
///   until the host's memory cap makes allocation fail and the guest aborts.
/// - `trap-after-put`: writes its own output `{"mode":"trap-after-put"}`,
///   then panics (a trap).
/// - `write-other-node`: `put` in its own run under node id `target`.
/// - `write-other-run`: `put` in run `target` under its own node id.
/// - `read-other-run`: `get` from run `target`, its own node id.
/// - `ungranted-global`: `put_global("secret/key", 1)`.
/// - `oversized-value`: writes its own output as a JSON string of `bytes`
///   `x` characters (default 17 MiB; the JSON text is `bytes + 2` long).
/// - `invalid-json`: writes its own output as the text `{not json`.
/// - `invalid-id`: `put` under run id `not-a-uuid`.
/// - `many-puts`: `put_global_raw("hostile/{i}", "1")` for i in 0..100 000,
///   stopping at the first error; writes `{"puts": 100000}` if none fails.
/// - `no-output`: returns `Ok(())` without writing anything.
/// - `fail`: returns `Err(StepError::Failed("asked to fail"))`.
/// - `sandbox`: probes the sandbox and writes `{"read_dir_ok": bool,
///   "read_file_ok": bool, "env_vars": n, "tcp_ok": bool}`.
/// - `echo`: writes params field `value` (any JSON; `null` if absent).
/// - `read-upstream`: writes `{"<upstream name>": <its output>, ...}`.
/// - `upstream-bytes`: reads each upstream's output as text and writes
///   `{"<upstream name>": <its length in bytes>, ...}`.
/// - `sleep`: `std::thread::sleep` for an hour (a WASI clock subscription
///   and a poll).
/// - `block-forever`: subscribes to a monotonic-clock instant that never
///   comes and blocks on that pollable.
/// - `huge-key`: `put_global_raw("hostile/kkk…", "1")` with a key of `bytes`
///   bytes (default 50 MiB).
/// - `huge-failure`: fails with a message of `bytes` bytes (default 8 MiB)
///   that starts with terminal escape sequences and control characters.
/// - `chatty-stderr`: prints `bytes` bytes (default 1 MiB) to stderr in
///   lines, then panics with `chatty-stderr: the panic after the chatter`.
/// - `journal-read`: `get_global` of the host's flow journal key `target`.
/// - `journal-write`: `upsert_global` of the host's flow journal key `target`.
/// - `deep-json`: writes its own output as arrays nested `depth` deep
///   (default 200,000).
/// - `round-trip`: writes params field `text` (a string) as its output's
///   raw JSON text, and as the global `hostile/round-trip`, reads both back
///   as text and fails unless they are byte for byte what it wrote.
/// - `count`: counts to `n` (default 1,000) in a CPU-bound loop, then writes
///   `{"count": n}` (a fixed amount of guest work, for the fuel benchmark).
/// - `read-other-node`: `get` of node `target` in its own run; writes
///   `{"read": <its output>}` if the get is allowed.
/// - `list-keys`: writes `{"keys": [<list-keys of its own run>, sorted]}`.
/// - `read-loop`: raw `get` of node `target` (default: its own node) in its
///   own run, `n` times (default: until one fails), stopping at the first
///   error; writes `{"reads": n}` if none fails.
/// - `many-resources`: asks WASI for its stderr stream `n` times (default:
///   without end), keeping every handle (each one a host resource-table
///   entry); writes `{"resources": n}` if that ends.
pub const MODES: &[&str] = &[
    "loop",
    "memory-hog",
    "trap-after-put",
    "write-other-node",
    "write-other-run",
    "read-other-run",
    "ungranted-global",
    "oversized-value",
    "invalid-json",
    "invalid-id",
    "many-puts",
    "no-output",
    "fail",
    "sandbox",
    "echo",
    "read-upstream",
    "upstream-bytes",
    "sleep",
    "block-forever",
    "huge-key",
    "huge-failure",
    "chatty-stderr",
    "journal-read",
    "journal-write",
    "deep-json",
    "round-trip",
    "count",
    "read-other-node",
    "list-keys",
    "read-loop",
    "many-resources",
];

/// The step's params: `mode` plus the optional fields some modes use.
#[derive(Debug, Deserialize)]
struct Params {
    mode: String,
    /// A flow run id or node id, for the `*-other-*` modes.
    target: Option<String>,
    /// The size for `oversized-value`, `huge-key`, `huge-failure` and `chatty-stderr`.
    bytes: Option<usize>,
    /// The nesting depth for `deep-json`.
    depth: Option<usize>,
    /// The raw JSON text for `round-trip`.
    text: Option<String>,
    /// How far `count` counts; how many calls `read-loop` and
    /// `many-resources` make.
    n: Option<u64>,
    /// The value for `echo`.
    #[serde(default)]
    value: Value,
}

impl Params {
    /// The `target` field, which the `*-other-*` modes need.
    fn target(&self) -> Result<&str, StepError> {
        self.target.as_deref().ok_or_else(|| {
            StepError::InvalidParams(format!("mode `{}` needs a `target` field", self.mode))
        })
    }
}

/// What one mode does.
type Mode = fn(&Context, &Params) -> Result<(), StepError>;

/// The implementation of mode `name`, if it is one of [`MODES`].
fn mode(name: &str) -> Option<Mode> {
    Some(match name {
        "loop" => spin,
        "memory-hog" => memory_hog,
        "trap-after-put" => trap_after_put,
        "write-other-node" => write_other_node,
        "write-other-run" => write_other_run,
        "read-other-run" => read_other_run,
        "ungranted-global" => ungranted_global,
        "oversized-value" => oversized_value,
        "invalid-json" => invalid_json,
        "invalid-id" => invalid_id,
        "many-puts" => many_puts,
        "no-output" => |_, _| Ok(()),
        "fail" => |_, _| Err(StepError::Failed("asked to fail".into())),
        "sandbox" => sandbox,
        "echo" => |ctx, p| Ok(ctx.output(&p.value)?),
        "read-upstream" => read_upstream,
        "upstream-bytes" => upstream_bytes,
        "sleep" => |_, _| {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Err(StepError::Failed("sleep: woke up after an hour".into()))
        },
        "block-forever" => block_forever,
        "huge-key" => huge_key,
        "huge-failure" => huge_failure,
        "chatty-stderr" => chatty_stderr,
        "journal-read" => |_, p| refused(&p.mode, store::get_global_raw(p.target()?)),
        "journal-write" => |_, p| refused(&p.mode, store::upsert_global(p.target()?, &"forged")),
        "deep-json" => deep_json,
        "round-trip" => round_trip,
        "count" => count,
        "read-other-node" => read_other_node,
        "list-keys" => list_keys,
        "read-loop" => read_loop,
        "many-resources" => many_resources,
        _ => return None,
    })
}

/// The answer to a call that the host must refuse: its error, or
/// `Failed` if it was allowed.
fn refused<T>(mode: &str, result: Result<T, Error>) -> Result<(), StepError> {
    match result {
        Err(err) => Err(StepError::Store(err)),
        Ok(_) => Err(StepError::Failed(format!("{mode}: bad call was allowed"))),
    }
}

fn spin(_: &Context, _: &Params) -> Result<(), StepError> {
    let mut n: u64 = 0;
    loop {
        // `black_box` keeps the optimiser from proving the loop pointless.
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn memory_hog(_: &Context, _: &Params) -> Result<(), StepError> {
    const MIB: usize = 1024 * 1024;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // A non-zero fill writes every page, so the memory is really used.
        hoard.push(std::hint::black_box(vec![0xA5; MIB]));
        std::hint::black_box(&hoard);
    }
}

fn trap_after_put(ctx: &Context, _: &Params) -> Result<(), StepError> {
    ctx.output(&json!({ "mode": "trap-after-put" }))?;
    panic!("trap-after-put: trapping after a successful put");
}

fn write_other_node(ctx: &Context, p: &Params) -> Result<(), StepError> {
    let put = store::put(ctx.flow_run_id(), p.target()?, &json!({ "mode": p.mode }));
    refused(&p.mode, put)
}

fn write_other_run(ctx: &Context, p: &Params) -> Result<(), StepError> {
    let put = store::put(p.target()?, ctx.node_id(), &json!({ "mode": p.mode }));
    refused(&p.mode, put)
}

fn read_other_run(ctx: &Context, p: &Params) -> Result<(), StepError> {
    refused(&p.mode, store::get::<Value>(p.target()?, ctx.node_id()))
}

fn ungranted_global(_: &Context, p: &Params) -> Result<(), StepError> {
    refused(&p.mode, store::put_global("secret/key", &1))
}

fn oversized_value(ctx: &Context, p: &Params) -> Result<(), StepError> {
    // The JSON text `"xx…x"`, built at its exact size: serializing a String
    // of that size with serde would need about three times the memory and
    // could hit the host's memory cap before the store's size limit.
    let bytes = p.bytes.unwrap_or(17 * 1024 * 1024);
    let mut json = String::with_capacity(bytes + 2);
    json.push('"');
    json.extend(std::iter::repeat_n('x', bytes));
    json.push('"');
    let put = store::put_raw(ctx.flow_run_id(), ctx.node_id(), &json);
    refused(&p.mode, put)
}

fn invalid_json(ctx: &Context, p: &Params) -> Result<(), StepError> {
    let put = store::put_raw(ctx.flow_run_id(), ctx.node_id(), "{not json");
    refused(&p.mode, put)
}

fn invalid_id(ctx: &Context, p: &Params) -> Result<(), StepError> {
    refused(&p.mode, store::put_raw("not-a-uuid", ctx.node_id(), "1"))
}

fn many_puts(ctx: &Context, _: &Params) -> Result<(), StepError> {
    const PUTS: u32 = 100_000;
    for i in 0..PUTS {
        store::put_global_raw(&format!("hostile/{i}"), "1").map_err(StepError::Store)?;
    }
    Ok(ctx.output(&json!({ "puts": PUTS }))?)
}

fn sandbox(ctx: &Context, _: &Params) -> Result<(), StepError> {
    let probes = json!({
        "read_dir_ok": std::fs::read_dir("/").is_ok(),
        "read_file_ok": std::fs::read("/etc/passwd").is_ok(),
        // `vars_os`, unlike `vars`, cannot panic on a non-UTF-8 variable.
        "env_vars": std::env::vars_os().count(),
        "tcp_ok": std::net::TcpStream::connect("127.0.0.1:80").is_ok(),
    });
    Ok(ctx.output(&probes)?)
}

fn read_upstream(ctx: &Context, _: &Params) -> Result<(), StepError> {
    let mut outputs = Map::new();
    for (name, _) in ctx.upstreams() {
        outputs.insert(name.to_owned(), ctx.upstream::<Value>(name)?);
    }
    Ok(ctx.output(&outputs)?)
}

fn upstream_bytes(ctx: &Context, _: &Params) -> Result<(), StepError> {
    let mut sizes = Map::new();
    for (name, node_id) in ctx.upstreams() {
        let text = store::get_raw(ctx.flow_run_id(), node_id)?;
        sizes.insert(name.to_owned(), json!(text.map_or(0, |t| t.len())));
    }
    Ok(ctx.output(&sizes)?)
}

fn block_forever(_: &Context, _: &Params) -> Result<(), StepError> {
    use wasip2::clocks::monotonic_clock;
    // The last instant there is: this pollable never becomes ready.
    let never = monotonic_clock::subscribe_instant(u64::MAX);
    never.block();
    Err(StepError::Failed(
        "block-forever: the pollable fired".into(),
    ))
}

fn huge_key(_: &Context, p: &Params) -> Result<(), StepError> {
    let bytes = p.bytes.unwrap_or(50 * 1024 * 1024);
    let mut key = String::with_capacity(bytes);
    key.push_str("hostile/");
    key.extend(std::iter::repeat_n('k', bytes.saturating_sub(key.len())));
    refused(&p.mode, store::put_global_raw(&key, "1"))
}

fn huge_failure(_: &Context, p: &Params) -> Result<(), StepError> {
    let bytes = p.bytes.unwrap_or(8 * 1024 * 1024);
    // Clear the screen, set the window title, ring the bell, forge a line.
    let mut message = String::from("\u{1b}[2J\u{1b}]0;pwned\u{7}\r\nerror: forged line\u{9b}31m");
    message.extend(std::iter::repeat_n(
        'x',
        bytes.saturating_sub(message.len()),
    ));
    Err(StepError::Failed(message))
}

fn chatty_stderr(_: &Context, p: &Params) -> Result<(), StepError> {
    let bytes = p.bytes.unwrap_or(1024 * 1024);
    let line = "chatter ".repeat(8); // 64 bytes with the newline
    for _ in 0..bytes / (line.len() + 1) {
        // `eprintln!` panics if the write fails: the ring must never refuse.
        eprintln!("{line}");
    }
    panic!("chatty-stderr: the panic after the chatter");
}

fn deep_json(ctx: &Context, p: &Params) -> Result<(), StepError> {
    let depth = p.depth.unwrap_or(200_000);
    let json = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    refused(
        &p.mode,
        store::put_raw(ctx.flow_run_id(), ctx.node_id(), &json),
    )
}

fn round_trip(ctx: &Context, p: &Params) -> Result<(), StepError> {
    let text = p
        .text
        .as_deref()
        .ok_or_else(|| StepError::InvalidParams("mode `round-trip` needs a `text` field".into()))?;
    store::put_global_raw("hostile/round-trip", text)?;
    let global = store::get_global_raw("hostile/round-trip")?;
    store::put_raw(ctx.flow_run_id(), ctx.node_id(), text)?;
    let output = store::get_raw(ctx.flow_run_id(), ctx.node_id())?;
    for (what, back) in [("global", global), ("output", output)] {
        if back.as_deref() != Some(text) {
            return Err(StepError::Failed(format!(
                "round-trip: the {what} came back as {back:?}, not {text:?}"
            )));
        }
    }
    Ok(())
}

fn count(ctx: &Context, p: &Params) -> Result<(), StepError> {
    let n = p.n.unwrap_or(1_000);
    let mut i: u64 = 0;
    while std::hint::black_box(i) < n {
        i += 1;
    }
    Ok(ctx.output(&json!({ "count": i }))?)
}

fn read_other_node(ctx: &Context, p: &Params) -> Result<(), StepError> {
    let value: Option<Value> = store::get(ctx.flow_run_id(), p.target()?)?;
    Ok(ctx.output(&json!({ "read": value }))?)
}

fn list_keys(ctx: &Context, _: &Params) -> Result<(), StepError> {
    let mut keys = store::list_keys(ctx.flow_run_id())?;
    keys.sort();
    Ok(ctx.output(&json!({ "keys": keys }))?)
}

fn read_loop(ctx: &Context, p: &Params) -> Result<(), StepError> {
    let node = p.target.as_deref().unwrap_or(ctx.node_id());
    let n = p.n.unwrap_or(u64::MAX);
    for _ in 0..n {
        // The raw call: the value is never parsed, only handed over.
        std::hint::black_box(store::get_raw(ctx.flow_run_id(), node)?);
    }
    Ok(ctx.output(&json!({ "reads": n }))?)
}

fn many_resources(ctx: &Context, p: &Params) -> Result<(), StepError> {
    let n = p.n.unwrap_or(u64::MAX);
    for _ in 0..n {
        // Never dropped: the handle (and the host's table entry) stays live.
        std::mem::forget(wasip2::cli::stderr::get_stderr());
    }
    Ok(ctx.output(&json!({ "resources": n }))?)
}

/// The `hostile` step: runs the mode its params ask for.
struct Hostile;

impl Step for Hostile {
    fn run(ctx: Context) -> Result<(), StepError> {
        let params: Params = ctx.params()?;
        let run = mode(&params.mode).ok_or_else(|| {
            StepError::InvalidParams(format!(
                "unknown mode `{}`; known modes: {}",
                params.mode,
                MODES.join(", ")
            ))
        })?;
        run(&ctx, &params)
    }
}

export_step!(Hostile);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_mode_is_implemented() {
        for name in MODES {
            assert!(mode(name).is_some(), "mode `{name}` has no implementation");
        }
        assert!(mode("nope").is_none());
    }
}
