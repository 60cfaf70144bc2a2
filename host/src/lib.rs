//! contextstore
#![warn(missing_docs)]

pub mod error;
#[cfg(feature = "runtime")]
pub mod flow;
pub mod grant;
pub mod guest_store;
pub mod id;
pub mod json;
pub mod limits;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod store;

pub use error::ContextStoreError;
pub use grant::Grant;
pub use id::{FlowRunId, NodeId};
pub use limits::Limits;
#[cfg(feature = "runtime")]
pub use runtime::{Invocation, Runtime, StepComponent, StepError, StepOutcome, StepStatus};
pub use store::ContextStore;
pub use store::sqlite::{Durability, SqliteContextStore, SqliteOptions};
