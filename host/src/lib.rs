//! A durable, write-once context store for flow engines, and the sandbox
//! that runs flow steps as WebAssembly components against it.
//!
//! - [`ContextStore`]: the contract. Node outputs keyed by
//!   `(FlowRunId, NodeId)` and written once; globals beside them.
//! - [`SqliteContextStore`]: the embedded SQLite backend (WAL, durable
//!   commits, readers that never wait behind the writer).
//! - `PostgresContextStore` (feature `postgres`): the same contract in a
//!   PostgreSQL database that workers on many hosts share, with node leases
//!   so that they split one flow run. [`store::open_url`] opens either from
//!   a store URL.
//! - [`Runtime`]: compiles step components once (with an on-disk cache) and
//!   runs each invocation in a fresh wasmtime instance under a [`Grant`]
//!   (deny by default) and [`Limits`] (time, memory, fuel, value size,
//!   writes). Every store call a guest makes goes through
//!   [`guest_store::GuestStore`].
//! - [`flow`]: flow files, a parallel, resumable runner, and run status.
//! - [`store::AsyncContextStore`]: the store as the runtime and the runner
//!   use it, every call carrying its [`store::CallContext`] (deadline, and
//!   on a shared run the claim's fence); [`coord`]: claims, leases, fencing
//!   tokens and worker identity for runs that several workers share.
//!
//! # Embedding
//!
// Compiled (not run) where the sandbox is built; without it, shown only.
#![cfg_attr(feature = "runtime", doc = "```no_run")]
#![cfg_attr(not(feature = "runtime"), doc = "```ignore")]
//! use std::sync::Arc;
//! use contextstore::{ContextStore, FlowRunId, Grant, Invocation, Limits, NodeId, Runtime, SqliteContextStore};
//! use serde_json::json;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn ContextStore> = Arc::new(SqliteContextStore::open("flows.db")?);
//! let runtime = Runtime::new()?;
//! let greet = runtime.load_file("greet.wasm")?;
//!
//! let run = FlowRunId::new();
//! let invocation = Invocation::new(run, NodeId::new()).with_params(json!({"name": "Ada"}));
//! let outcome = runtime.run(&greet, &store, &invocation, &Grant::default(), &Limits::default())?;
//! assert_eq!(outcome.value()?, json!({"greeting": "Hello, Ada!"}));
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `runtime` (default): the wasmtime sandbox ([`Runtime`]).
//! - `flow` (default): flow files and the flow runner ([`flow`]).
//! - `cli` (default): the `contextstore` command-line tool.
//! - `metrics` (part of `cli`): process metrics ([`metrics`]) in the
//!   Prometheus text format.
//! - `conformance`: the test suite every backend must pass.
//!
//! With `default-features = false` the crate is the store alone
//! ([`ContextStore`], [`SqliteContextStore`], [`AtomicWriter`]): it then
//! depends only on rusqlite, serde, serde_json, serde_stacker, thiserror,
//! time, tracing and uuid.
#![warn(missing_docs)]

#[cfg(feature = "async")]
pub mod coord;
pub mod error;
#[cfg(feature = "flow")]
pub mod flow;
pub mod grant;
#[cfg(feature = "async")]
pub mod guest_store;
pub mod id;
pub mod json;
pub mod limits;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(any(feature = "flow", feature = "postgres"))]
mod random;
#[cfg(feature = "async")]
pub mod runs;
#[cfg(feature = "runtime")]
pub mod runtime;
#[cfg(feature = "async")]
pub mod slots;
pub mod store;
pub mod text;

pub use error::ContextStoreError;
pub use grant::Grant;
pub use id::{FlowRunId, NodeId};
pub use limits::Limits;
#[cfg(feature = "runtime")]
pub use runtime::{Invocation, Runtime, StepComponent, StepError, StepOutcome, StepStatus};
pub use store::ContextStore;
pub use store::atomic::{AtomicWriteError, AtomicWriter};
#[cfg(feature = "postgres")]
pub use store::postgres::{PostgresContextStore, PostgresOptions};
pub use store::sqlite::{Durability, SqliteContextStore, SqliteOptions};
