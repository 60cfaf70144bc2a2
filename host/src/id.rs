//! Identifiers of flow runs and nodes: UUIDs, shown and parsed as hyphenated text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a text is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: expected a hyphenated UUID ({reason})")]
pub struct IdParseError {
    /// Which kind of id was expected (`"flow run id"`, `"node id"`).
    pub what: &'static str,
    /// The text that failed to parse, cut to 64 characters.
    pub text: String,
    /// What the UUID parser said.
    pub reason: String,
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new random (v4) id.
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }

            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// The id as 16 big-endian bytes: the form the SQLite backend stores.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            /// Parses hyphenated UUID text (`67e55044-10b1-426f-9247-bb680e5fe0c8`).
            /// Other UUID spellings (simple, braced, URN) are refused so that
            /// one id has one text.
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                parse_hyphenated(text, $what).map(Self)
            }
        }
    };
}

fn parse_hyphenated(text: &str, what: &'static str) -> Result<Uuid, IdParseError> {
    let error = |reason: String| IdParseError {
        what,
        text: text.chars().take(64).collect(),
        reason,
    };
    if text.len() != 36 {
        return Err(error(format!("length {} is not 36", text.len())));
    }
    Uuid::try_parse(text).map_err(|e| error(e.to_string()))
}

uuid_id!(
    /// The id of one run of a flow. Every node output belongs to one run.
    FlowRunId,
    "flow run id"
);

uuid_id!(
    /// The id of a node (a step) within a flow; with a [`FlowRunId`] it keys one output.
    NodeId,
    "node id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = NodeId::new();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
    }

    #[test]
    fn parse_accepts_upper_case_and_shows_lower_case() {
        let id: FlowRunId = "67E55044-10B1-426F-9247-BB680E5FE0C8".parse().unwrap();
        assert_eq!(id.to_string(), "67e55044-10b1-426f-9247-bb680e5fe0c8");
    }

    #[test]
    fn parse_refuses_other_spellings_and_garbage() {
        for bad in [
            "",
            "not-a-uuid",
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "67e55044-10b1-426f-9247-bb680e5fe0cz",
            "67e55044-10b1-426f-9247-bb680e5fe0c8 ",
        ] {
            let err = bad.parse::<FlowRunId>().unwrap_err();
            assert_eq!(err.what, "flow run id", "{bad:?}");
        }
    }

    #[test]
    fn serde_is_transparent_text() {
        let id = NodeId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
    }
}
