//! Step `{{name}}`: greets the text of its upstream `input`.
//!
//! Params: `{"greeting": "Hi"}` (optional; "Hello" when omitted)
//! Input:  the output of the upstream named `input`, e.g. `{"text": "Ada"}`
//! Output: `{"message": "Hi, Ada!"}`

use contextstore_guest::{Context, Step, StepError, export_step};
use serde::{Deserialize, Serialize};

/// The node's parameters; `null` (no params) gives the defaults.
#[derive(Deserialize)]
#[serde(default)]
struct Params {
    greeting: String,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            greeting: "Hello".into(),
        }
    }
}

/// What the upstream `input` wrote.
#[derive(Deserialize)]
struct Input {
    text: String,
}

/// What this step writes.
#[derive(Serialize)]
struct Output {
    message: String,
}

struct ThisStep;

impl Step for ThisStep {
    fn run(ctx: Context) -> Result<(), StepError> {
        let params: Params = ctx.params()?; // bad params: invalid-params
        let input: Input = ctx.upstream("input")?; // none: failed("missing-upstream: …")
        let message = format!("{}, {}!", params.greeting, input.text);
        ctx.output(&Output { message })?;
        Ok(())
    }
}

export_step!(ThisStep);
