//! `greet`: params `{"name": "Ada"}` → output `{"greeting": "Hello, Ada!"}`.

use contextstore_guest::{Context, Step, StepError, export_step};
use serde::{Deserialize, Serialize};

/// The node's parameters.
#[derive(Deserialize)]
struct Params {
    /// Who to greet: "world" when the params are `null` or lack `name`.
    #[serde(default = "world")]
    name: String,
}

fn world() -> String {
    "world".into()
}

/// What this node writes.
#[derive(Serialize)]
struct Greeting {
    greeting: String,
}

struct Greet;

impl Step for Greet {
    fn run(ctx: Context) -> Result<(), StepError> {
        // Params of the wrong shape fail the step with `invalid-params`.
        let Params { name } = ctx.params()?;
        let greeting = format!("Hello, {name}!");
        ctx.output(&Greeting { greeting })?;
        Ok(())
    }
}

export_step!(Greet);
