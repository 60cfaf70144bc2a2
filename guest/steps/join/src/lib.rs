//! `join`: reads every upstream output and writes them as one object keyed
//! by upstream name, with params `{"title": "..."}` copied in:
//! `{"title": "...", "inputs": {"<name>": <output>, ...}}`.

use contextstore_guest::{Context, Step, StepError, export_step};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The node's parameters.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Params {
    title: Option<String>,
}

struct Join;

impl Step for Join {
    fn run(ctx: Context) -> Result<(), StepError> {
        let Params { title } = ctx.params()?;
        let mut inputs = Map::new();
        for (name, _) in ctx.upstreams() {
            // A missing upstream output fails the step: a join needs all inputs.
            inputs.insert(name.to_owned(), ctx.upstream::<Value>(name)?);
        }
        ctx.output(&json!({ "title": title, "inputs": inputs }))?;
        Ok(())
    }
}

export_step!(Join);
