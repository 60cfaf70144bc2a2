//! `slow`: a step that takes its time, for the fault-injection tests
//! (`tests/tests/faults.rs`). In order:
//!
//! 1. with `read_first`, reads every upstream output (a missing one fails
//!    the step);
//! 2. sleeps `sleep_ms` milliseconds (`std::thread::sleep`, a WASI clock
//!    wait the host can interrupt);
//! 3. with `global`, upserts that global key to `{"nonce": N, "node": ID}`;
//! 4. puts its output `{"tag": T, "nonce": N, "inputs": {"<name>": <output>, ...}}`;
//! 5. sleeps `after_ms` milliseconds more, then, with `global`, upserts the
//!    global `<global>/after` (work a step does after storing its output).
//!
//! With `counter` (a global key) and `fail_first` N, before anything else
//! it counts its invocations in that global (reads it, upserts it plus one)
//! and fails (a guest `failed`) while fewer than N came before it: a flaky
//! step that succeeds on attempt N + 1.
//!
//! `N` is a random nonce (WASI randomness and the clock) drawn once per
//! invocation, the same in the global and the output, so that a test can
//! tell which invocation wrote what. With `"nonce": false` the output has
//! no `nonce` field and is the same in every run (`tag` and `inputs` only);
//! the global, if any, still carries one.
//!
//! ```json
//! {"sleep_ms": 3000, "global": "fault/key", "read_first": false, "nonce": true, "tag": "any JSON", "after_ms": 0}
//! ```

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use contextstore_guest::{Context, Step, StepError, export_step, store};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The node's parameters (all optional).
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    /// How long to sleep before writing, in milliseconds.
    sleep_ms: u64,
    /// A global key to upsert after the sleep.
    global: Option<String>,
    /// Read every upstream output before sleeping, and copy them into the output.
    read_first: bool,
    /// Put the nonce into the output (it always goes into the global).
    nonce: bool,
    /// Copied into the output.
    tag: Value,
    /// How long to sleep after the output is stored, in milliseconds.
    after_ms: u64,
    /// A global key counting this node's invocations (with `fail_first`).
    counter: Option<String>,
    /// Fail while fewer invocations than this came before.
    fail_first: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            sleep_ms: 0,
            global: None,
            read_first: false,
            nonce: true,
            tag: Value::Null,
            after_ms: 0,
            counter: None,
            fail_first: 0,
        }
    }
}

/// 128 random bits as hex: std's `RandomState` seeds its keys from WASI
/// randomness (`wasi:random`); the wall clock is mixed in too.
fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = String::new();
    for part in 0..2u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u8(part);
        out += &format!("{:016x}", h.finish());
    }
    out
}

struct Slow;

impl Step for Slow {
    fn run(ctx: Context) -> Result<(), StepError> {
        let params: Params = ctx.params()?;
        if let Some(key) = &params.counter {
            let before: u64 = store::get_global::<Value>(key)?
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            store::upsert_global(key, &json!(before + 1))?;
            if before < params.fail_first {
                return Err(StepError::Failed(format!(
                    "flaky: invocation {} of the {} that fail",
                    before + 1,
                    params.fail_first
                )));
            }
        }
        let nonce = nonce();
        let mut inputs = Map::new();
        if params.read_first {
            for (name, _) in ctx.upstreams() {
                inputs.insert(name.to_owned(), ctx.upstream::<Value>(name)?);
            }
        }
        if params.sleep_ms > 0 {
            std::thread::sleep(Duration::from_millis(params.sleep_ms));
        }
        if let Some(key) = &params.global {
            store::upsert_global(key, &json!({ "nonce": nonce, "node": ctx.node_id() }))?;
        }
        let mut output = json!({ "tag": params.tag, "inputs": inputs });
        if params.nonce {
            output["nonce"] = json!(nonce);
        }
        ctx.output(&output)?;
        if params.after_ms > 0 {
            std::thread::sleep(Duration::from_millis(params.after_ms));
            if let Some(key) = &params.global {
                store::upsert_global(&format!("{key}/after"), &json!({ "nonce": nonce }))?;
            }
        }
        Ok(())
    }
}

export_step!(Slow);
