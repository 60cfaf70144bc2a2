//! `shout`: reads the output of upstream `greet` (`{"greeting": "Hello, Ada!"}`)
//! and writes `{"shout": "HELLO, ADA!", "from": "<greet's node id>"}`.

use contextstore_guest::{Context, Step, StepError, export_step};
use serde::{Deserialize, Serialize};

/// What the upstream `greet` node wrote.
#[derive(Deserialize)]
struct Greeting {
    greeting: String,
}

/// What this node writes.
#[derive(Serialize)]
struct Shout<'a> {
    shout: String,
    /// The node id of the `greet` node the text came from.
    from: &'a str,
}

struct ShoutStep;

impl Step for ShoutStep {
    fn run(ctx: Context) -> Result<(), StepError> {
        // The step fails if no upstream is named `greet` or it has no output yet.
        let Greeting { greeting } = ctx.upstream("greet")?;
        let from = ctx.upstream_id("greet").unwrap_or_default();
        let shout = greeting.to_uppercase();
        ctx.output(&Shout { shout, from })?;
        Ok(())
    }
}

export_step!(ShoutStep);
