//! The errors a step sees ([`Error`]) and the errors it answers with ([`StepError`]).

use crate::wit;

/// Why a store call (or the guest-side encoding around it) failed.
///
/// The first seven variants mirror the WIT `store.error` variant one to one;
/// [`Error::Encode`] and [`Error::MissingUpstream`] only arise on the guest
/// side and never cross the component boundary as such.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An output for this `(flow-run-id, node-id)` is already stored; the
    /// stored value is kept. For a retried step this means "done".
    #[error("already-exists: an output for this flow run and node is already stored")]
    AlreadyExists,
    /// `put-global` found the key already written; the stored value is kept.
    #[error("global-already-exists: this global key is already written")]
    GlobalAlreadyExists,
    /// An id is not a hyphenated UUID; the text says which and why.
    #[error("invalid-id: {0}")]
    InvalidId(String),
    /// A value is not valid JSON, or nests deeper than the host allows.
    #[error("invalid-json: {0}")]
    InvalidJson(String),
    /// The grant of this invocation does not allow the call.
    #[error("access-denied: {0}")]
    AccessDenied(String),
    /// A per-invocation limit was reached (value size, number of writes).
    #[error("quota-exceeded: {0}")]
    QuotaExceeded(String),
    /// The storage backend failed; the text says how.
    #[error("storage: {0}")]
    Storage(String),
    /// serde failed to serialize or deserialize a value on the guest side
    /// (for example a stored document does not have the shape asked for).
    #[error("encode: {0}")]
    Encode(String),
    /// There is no upstream of that name, or it has no output yet.
    #[error("missing-upstream: {0}")]
    MissingUpstream(String),
}

impl Error {
    /// The kebab-case name of the variant, as spelled in the WIT `error`
    /// variant (`"already-exists"`, `"access-denied"`, …), or `"encode"` /
    /// `"missing-upstream"` for the two guest-only variants.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::AlreadyExists => "already-exists",
            Error::GlobalAlreadyExists => "global-already-exists",
            Error::InvalidId(_) => "invalid-id",
            Error::InvalidJson(_) => "invalid-json",
            Error::AccessDenied(_) => "access-denied",
            Error::QuotaExceeded(_) => "quota-exceeded",
            Error::Storage(_) => "storage",
            Error::Encode(_) => "encode",
            Error::MissingUpstream(_) => "missing-upstream",
        }
    }

    /// The WIT form of this error; `None` for the guest-only variants.
    fn to_wit(&self) -> Option<wit::store::Error> {
        use wit::store::Error as W;
        Some(match self {
            Error::AlreadyExists => W::AlreadyExists,
            Error::GlobalAlreadyExists => W::GlobalAlreadyExists,
            Error::InvalidId(m) => W::InvalidId(m.clone()),
            Error::InvalidJson(m) => W::InvalidJson(m.clone()),
            Error::AccessDenied(m) => W::AccessDenied(m.clone()),
            Error::QuotaExceeded(m) => W::QuotaExceeded(m.clone()),
            Error::Storage(m) => W::Storage(m.clone()),
            Error::Encode(_) | Error::MissingUpstream(_) => return None,
        })
    }

    /// Wraps a guest-side serde failure.
    pub(crate) fn encode(err: serde_json::Error) -> Self {
        Error::Encode(err.to_string())
    }
}

impl From<wit::store::Error> for Error {
    fn from(err: wit::store::Error) -> Self {
        use wit::store::Error as W;
        match err {
            W::AlreadyExists => Error::AlreadyExists,
            W::GlobalAlreadyExists => Error::GlobalAlreadyExists,
            W::InvalidId(m) => Error::InvalidId(m),
            W::InvalidJson(m) => Error::InvalidJson(m),
            W::AccessDenied(m) => Error::AccessDenied(m),
            W::QuotaExceeded(m) => Error::QuotaExceeded(m),
            W::Storage(m) => Error::Storage(m),
        }
    }
}

/// Why a step failed: what [`Step::run`](crate::Step::run) returns on error.
///
/// `?` on a [`Error`] converts it: store errors become [`StepError::Store`],
/// the guest-only [`Error::Encode`] and [`Error::MissingUpstream`] become
/// [`StepError::Failed`] with the error's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The step's parameters were not what it needs.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// A store call failed and the step could not go on.
    #[error("store call failed: {0}")]
    Store(Error),
    /// Any other failure, described for a person.
    #[error("{0}")]
    Failed(String),
}

impl From<Error> for StepError {
    fn from(err: Error) -> Self {
        match err {
            Error::Encode(_) | Error::MissingUpstream(_) => StepError::Failed(err.to_string()),
            store => StepError::Store(store),
        }
    }
}

impl From<StepError> for wit::types::StepError {
    /// The WIT `step-error`. A [`StepError::Store`] holding a guest-only
    /// error (which has no WIT form) is answered as `failed` with its message.
    fn from(err: StepError) -> Self {
        use wit::types::StepError as W;
        match err {
            StepError::InvalidParams(m) => W::InvalidParams(m),
            StepError::Store(e) => match e.to_wit() {
                Some(w) => W::Store(w),
                None => W::Failed(e.to_string()),
            },
            StepError::Failed(m) => W::Failed(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_the_wit_names() {
        let all = [
            (Error::AlreadyExists, "already-exists"),
            (Error::GlobalAlreadyExists, "global-already-exists"),
            (Error::InvalidId("x".into()), "invalid-id"),
            (Error::InvalidJson("x".into()), "invalid-json"),
            (Error::AccessDenied("x".into()), "access-denied"),
            (Error::QuotaExceeded("x".into()), "quota-exceeded"),
            (Error::Storage("x".into()), "storage"),
            (Error::Encode("x".into()), "encode"),
            (Error::MissingUpstream("x".into()), "missing-upstream"),
        ];
        for (err, kind) in all {
            assert_eq!(err.kind(), kind);
            assert!(err.to_string().starts_with(kind), "{err}");
        }
    }

    #[test]
    fn store_errors_round_trip_through_wit() {
        let err = Error::AccessDenied("no".into());
        let back = Error::from(err.to_wit().unwrap());
        assert_eq!(back, err);
    }

    #[test]
    fn step_error_from_error() {
        assert_eq!(
            StepError::from(Error::QuotaExceeded("big".into())),
            StepError::Store(Error::QuotaExceeded("big".into()))
        );
        assert_eq!(
            StepError::from(Error::MissingUpstream("greet".into())),
            StepError::Failed("missing-upstream: greet".into())
        );
    }

    #[test]
    fn step_error_into_wit() {
        let w = wit::types::StepError::from(StepError::Store(Error::AlreadyExists));
        assert!(matches!(
            w,
            wit::types::StepError::Store(wit::store::Error::AlreadyExists)
        ));
        let w = wit::types::StepError::from(StepError::Store(Error::Encode("bad".into())));
        assert!(matches!(w, wit::types::StepError::Failed(m) if m == "encode: bad"));
        let w = wit::types::StepError::from(StepError::InvalidParams("p".into()));
        assert!(matches!(w, wit::types::StepError::InvalidParams(m) if m == "p"));
    }
}
