//! What a successful invocation gives back.

use super::StepError;
use crate::json::JsonText;

/// Whether an invocation ran the step or found its output already stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepStatus {
    /// The step ran and wrote its output.
    Ran,
    /// The output was already in the store; the step was not run again.
    AlreadyDone,
}

/// The result of a successful invocation.
#[derive(Debug)]
pub struct StepOutcome {
    /// The node's stored output, as the exact text stored.
    pub output: JsonText,
    /// Whether the step ran now.
    pub status: StepStatus,
    /// The end of what the step wrote to stderr (the last 16 KiB); empty
    /// when it wrote nothing or did not run.
    pub stderr: String,
    /// How the step failed after it stored its output (it trapped, returned
    /// an error or ran out of time after its `put`). The output stands and
    /// the node is done; the failure is reported beside it.
    pub warning: Option<StepError>,
}

impl StepOutcome {
    /// The output parsed into a `serde_json::Value`.
    pub fn value(&self) -> Result<serde_json::Value, crate::json::JsonError> {
        self.output.to_value()
    }
}
