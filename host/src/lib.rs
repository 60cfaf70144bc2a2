//! contextstore
#![warn(missing_docs)]

pub mod error;
pub mod grant;
pub mod id;
pub mod json;
pub mod limits;
pub mod runtime;
pub mod store;

pub use error::ContextStoreError;
pub use grant::Grant;
pub use id::{FlowRunId, NodeId};
pub use limits::Limits;
pub use runtime::{Invocation, Runtime, StepComponent, StepError, StepOutcome, StepStatus};
pub use store::ContextStore;
pub use store::sqlite::{Durability, SqliteContextStore, SqliteOptions};
