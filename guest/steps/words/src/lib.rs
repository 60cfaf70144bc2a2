//! `words`: reads upstream `greet` (`{"greeting": "Hello, Ada!"}`) and
//! writes its words and their count: `{"words": ["Hello,", "Ada!"], "count": 2}`.

use contextstore_guest::{Context, Step, StepError, export_step};
use serde::{Deserialize, Serialize};

/// What the upstream `greet` node wrote.
#[derive(Deserialize)]
struct Greeting {
    greeting: String,
}

/// What this node writes.
#[derive(Serialize)]
struct Words<'a> {
    words: Vec<&'a str>,
    count: usize,
}

struct WordsStep;

impl Step for WordsStep {
    fn run(ctx: Context) -> Result<(), StepError> {
        let Greeting { greeting } = ctx.upstream("greet")?;
        let words: Vec<&str> = greeting.split_whitespace().collect();
        let count = words.len();
        ctx.output(&Words { words, count })?;
        Ok(())
    }
}

export_step!(WordsStep);
