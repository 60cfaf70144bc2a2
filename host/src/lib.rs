//! contextstore
#![warn(missing_docs)]

pub mod error;
pub mod id;
pub mod json;
pub mod store;

pub use error::ContextStoreError;
pub use id::{FlowRunId, NodeId};
pub use store::ContextStore;
pub use store::sqlite::{Durability, SqliteContextStore, SqliteOptions};
