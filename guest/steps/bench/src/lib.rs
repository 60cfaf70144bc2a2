//! `bench`: the step the host's benchmark runs.
//!
//! - params `null` (or without `gets`): one small put, output `{"ok": true}`;
//! - params `{"gets": N, "node": "<node id>"}`: `N` raw `get` calls of that
//!   node in the invocation's flow run, then output
//!   `{"gets": N, "found": <calls that found a value>, "bytes": <total text length>}`
//!   (a node that is not an upstream needs a grant that widens reads to
//!   the whole run);
//! - params `{"upstream": true}`: one raw `get` of each upstream output (a
//!   node of a flow that uses what came before), then output
//!   `{"read": <upstreams found>, "bytes": <their total text length>}`.
//!
//! The gets go through the raw WIT import and never parse the value, so
//! that the time per call is the cost of crossing the boundary.

use contextstore_guest::{Context, Error, Step, StepError, export_step, wit};
use serde::{Deserialize, Serialize};

/// The node's parameters.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Params {
    /// How many gets to make; 0 for the trivial put.
    gets: u32,
    /// The node whose output to get (in this flow run).
    node: Option<String>,
    /// Read every upstream output once before the put.
    upstream: bool,
}

/// What reading the upstreams writes.
#[derive(Serialize)]
struct Read {
    read: u32,
    bytes: u64,
}

/// What the get loop writes.
#[derive(Serialize)]
struct Gets {
    gets: u32,
    found: u32,
    bytes: u64,
}

/// What the trivial put writes.
#[derive(Serialize)]
struct Done {
    ok: bool,
}

struct Bench;

impl Step for Bench {
    fn run(ctx: Context) -> Result<(), StepError> {
        let Params {
            gets,
            node,
            upstream,
        } = ctx.params()?;
        if upstream {
            let (mut read, mut bytes) = (0, 0u64);
            for (_, id) in ctx.upstreams() {
                let value = wit::store::get(ctx.flow_run_id(), id).map_err(Error::from)?;
                if let Some(text) = value {
                    read += 1;
                    bytes += text.len() as u64;
                }
            }
            ctx.output(&Read { read, bytes })?;
            return Ok(());
        }
        let Some(node) = node else {
            ctx.output(&Done { ok: true })?;
            return Ok(());
        };
        let (mut found, mut bytes) = (0, 0u64);
        for _ in 0..gets {
            let value = wit::store::get(ctx.flow_run_id(), &node).map_err(Error::from)?;
            if let Some(text) = value {
                found += 1;
                bytes += text.len() as u64;
            }
        }
        ctx.output(&Gets { gets, found, bytes })?;
        Ok(())
    }
}

export_step!(Bench);
