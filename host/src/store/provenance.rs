//! [`Provenance`]: where a stored output came from.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Who wrote a node's output: what ran, on what inputs, where and when.
/// Stored beside the output by
/// [`put_text_with_provenance`](super::ContextStore::put_text_with_provenance)
/// and read back by [`provenance`](super::ContextStore::provenance).
///
/// A resumed flow compares the hashes with the flow as it is now, so that
/// an output written by another component, or for other params or other
/// upstream nodes, is not taken as done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The BLAKE3 hash of the component's bytes, in hex.
    pub component_hash: String,
    /// The BLAKE3 hash, in hex, of the node's params in a canonical JSON
    /// encoding (object keys sorted, no whitespace).
    pub params_hash: String,
    /// The BLAKE3 hash, in hex, of the node's upstream nodes: their names
    /// and ids, in the order the step is given them.
    pub upstream_hash: String,
    /// Which attempt at the node wrote it (1 for the first).
    pub attempt: u32,
    /// The name of the host the invocation ran on.
    pub host: String,
    /// When the invocation started, in Unix milliseconds.
    pub started_at: i64,
    /// When the output was written, in Unix milliseconds.
    pub ended_at: i64,
}

/// The time now in Unix milliseconds (0 before 1970, saturating far ahead).
pub fn unix_millis_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A stored output with its provenance (`None` for an output stored
/// without it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The output as written.
    pub value: crate::json::JsonText,
    /// Where it came from.
    pub provenance: Option<Provenance>,
}
