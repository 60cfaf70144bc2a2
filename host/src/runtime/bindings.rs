//! Host bindings generated from `wit/` for the `step` world, and the
//! conversions between them and the crate's own types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "step",
    imports: { default: async },
    exports: { default: async },
});

pub use worldinterface::contextstore::store::Error as WitStoreError;
pub use worldinterface::contextstore::types::{
    Invocation as WitInvocation, StepError as WitStepError, Upstream as WitUpstream,
};

use super::step_error::GuestFailure;
use crate::guest_store::GuestStoreError;
use crate::text::{MAX_MESSAGE_BYTES, for_terminal};

impl From<GuestStoreError> for WitStoreError {
    fn from(error: GuestStoreError) -> Self {
        match error {
            GuestStoreError::AlreadyExists => Self::AlreadyExists,
            GuestStoreError::GlobalAlreadyExists => Self::GlobalAlreadyExists,
            GuestStoreError::InvalidId(m) => Self::InvalidId(m),
            GuestStoreError::InvalidJson(m) => Self::InvalidJson(m),
            GuestStoreError::AccessDenied(m) => Self::AccessDenied(m),
            GuestStoreError::QuotaExceeded(m) => Self::QuotaExceeded(m),
            GuestStoreError::Storage(m) => Self::Storage(m),
        }
    }
}

impl From<WitStoreError> for GuestStoreError {
    fn from(error: WitStoreError) -> Self {
        match error {
            WitStoreError::AlreadyExists => Self::AlreadyExists,
            WitStoreError::GlobalAlreadyExists => Self::GlobalAlreadyExists,
            WitStoreError::InvalidId(m) => Self::InvalidId(m),
            WitStoreError::InvalidJson(m) => Self::InvalidJson(m),
            WitStoreError::AccessDenied(m) => Self::AccessDenied(m),
            WitStoreError::QuotaExceeded(m) => Self::QuotaExceeded(m),
            WitStoreError::Storage(m) => Self::Storage(m),
        }
    }
}

/// The guest's own text: one line, at most [`MAX_MESSAGE_BYTES`], control
/// characters and escape sequences neutralised.
fn guest_text(text: &str) -> String {
    for_terminal(text, MAX_MESSAGE_BYTES)
}

/// A step's error as the host keeps it: every text in it is guest text, so
/// each is bounded and neutralised (a store error the guest passes back may
/// be one it made up).
impl From<WitStepError> for GuestFailure {
    fn from(error: WitStepError) -> Self {
        match error {
            WitStepError::InvalidParams(m) => Self::InvalidParams(guest_text(&m)),
            WitStepError::Store(e) => Self::Store(
                match e {
                    WitStoreError::InvalidId(m) => WitStoreError::InvalidId(guest_text(&m)),
                    WitStoreError::InvalidJson(m) => WitStoreError::InvalidJson(guest_text(&m)),
                    WitStoreError::AccessDenied(m) => WitStoreError::AccessDenied(guest_text(&m)),
                    WitStoreError::QuotaExceeded(m) => WitStoreError::QuotaExceeded(guest_text(&m)),
                    WitStoreError::Storage(m) => WitStoreError::Storage(guest_text(&m)),
                    other @ (WitStoreError::AlreadyExists | WitStoreError::GlobalAlreadyExists) => {
                        other
                    }
                }
                .into(),
            ),
            WitStepError::Failed(m) => Self::Failed(guest_text(&m)),
        }
    }
}
