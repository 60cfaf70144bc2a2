//! [`StepError`]: why an invocation as a whole did not finish with an output.

use std::time::Duration;

use crate::error::ContextStoreError;
use crate::guest_store::GuestStoreError;
use crate::text;

/// Why a step invocation failed. In every case the host and the store stay
/// usable, and a write the guest committed before failing stays committed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The guest ran past [`Limits::timeout`](crate::Limits::timeout) and was interrupted.
    #[error("step timed out after {0:?}")]
    Timeout(Duration),
    /// The invocation was stopped from outside (its claim was lost, or its
    /// lease ran out), or a write was refused because its claim is no
    /// longer current. Nothing it wrote afterwards is stored.
    #[error("step stopped: {0}")]
    Stopped(String),
    /// The guest needed more linear memory than [`Limits::memory_bytes`](crate::Limits::memory_bytes).
    #[error("step ran out of memory (limit {limit_bytes} bytes)")]
    OutOfMemory {
        /// The memory limit that was reached.
        limit_bytes: usize,
    },
    /// The guest held more live resources (WASI streams, pollables,
    /// component handles) than [`Limits::max_resources`](crate::Limits::max_resources):
    /// the call that would have made one more trapped.
    #[error("step held too many resources (limit {limit} live handles)")]
    TooManyResources {
        /// The resource limit that was reached.
        limit: usize,
    },
    /// The guest used up its [`Limits::fuel`](crate::Limits::fuel).
    #[error("step ran out of fuel (budget {0})")]
    OutOfFuel(u64),
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access…).
    #[error("step trapped: {message}{}", stderr_suffix(stderr))]
    Trap {
        /// The trap itself, in one line (`wasm trap: wasm `unreachable` instruction executed`).
        message: String,
        /// wasmtime's full report, with the wasm backtrace.
        report: String,
        /// The end of what the guest wrote to stderr (a panic message, say).
        stderr: String,
    },
    /// The step returned an error of its own.
    #[error("step failed: {0}")]
    Failed(GuestFailure),
    /// The step returned `ok` without its output in the store.
    #[error("step returned ok but wrote no output")]
    NoOutput,
    /// The component could not be instantiated (for example its start
    /// function trapped, or it asked for more than the limits allow).
    #[error("step could not be instantiated: {0}")]
    Instantiate(String),
    /// The invocation has a fuel budget, but the component's fuel-metered
    /// variant was not compiled: load it with
    /// [`LoadOptions::fuel`](super::LoadOptions::fuel) or call
    /// [`Runtime::prepare_metered`](super::Runtime::prepare_metered) first.
    /// The runtime never compiles inside an invocation's deadline; the
    /// invocation failed before anything ran.
    #[error(
        "component {component} was not compiled for fuel metering: load it with \
         LoadOptions {{ fuel: true }} (or call Runtime::prepare_metered) to run it with a fuel budget"
    )]
    NotMetered {
        /// The component's name.
        component: String,
    },
    /// The invocation's parameters could not be passed to the step.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// The store failed while the host checked the step's output.
    #[error(transparent)]
    Store(#[from] ContextStoreError),
    /// The host panicked while running the step (a bug in the host or in
    /// a store backend); the panic was caught and only this step failed.
    #[error("the host panicked while running the step: {0}")]
    Panicked(String),
}

/// The error a step returned from `run`: the WIT `step-error`, host side.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestFailure {
    /// The step's parameters were not what it needs.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// A store call failed and the step passed the error on.
    #[error("{0}")]
    Store(GuestStoreError),
    /// Any other failure.
    #[error("{0}")]
    Failed(String),
}

/// The end of the guest's stderr folded into one line, for a one-line
/// error message: the last lines are the ones that explain a failure (a
/// panic message comes last), so an earlier part that does not fit is
/// dropped and marked with `…`. Control characters are neutralised.
fn stderr_suffix(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let folded = lines.join(" / ");
    let mut start = folded.len().saturating_sub(STDERR_IN_MESSAGE);
    while !folded.is_char_boundary(start) {
        start += 1;
    }
    let more = if start > 0 { "…" } else { "" };
    let tail = text::for_terminal(&folded[start..], 4 * STDERR_IN_MESSAGE);
    format!(" (guest stderr: {more}{tail})")
}

/// Most bytes of guest stderr shown in a [`StepError::Trap`] message.
const STDERR_IN_MESSAGE: usize = 400;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_message_is_one_line_with_folded_stderr() {
        let trap = StepError::Trap {
            message: "wasm trap: unreachable".into(),
            report: "long\nreport".into(),
            stderr: "panicked at x.rs:1:1:\nboom\n\n".into(),
        };
        assert_eq!(
            trap.to_string(),
            "step trapped: wasm trap: unreachable (guest stderr: panicked at x.rs:1:1: / boom)"
        );
        let long = StepError::Trap {
            message: "t".into(),
            report: String::new(),
            stderr: format!("{}\npanicked: the reason\n", "x".repeat(1000)),
        };
        let shown = long.to_string();
        assert!(shown.contains("(guest stderr: …x"), "{shown}");
        assert!(shown.ends_with(" / panicked: the reason)"), "{shown}");
        assert!(shown.len() < 500, "{shown}");
        let escapes = StepError::Trap {
            message: "t".into(),
            report: String::new(),
            stderr: "\u{1b}[31mred\u{7}x".into(),
        };
        assert_eq!(
            escapes.to_string(),
            "step trapped: t (guest stderr: \\u{1b}[31mred\\u{7}x)"
        );
    }
}
