//! Typed access to the host's context store.
//!
//! Thin wrappers over the raw WIT `store` import ([`crate::wit::store`]):
//! values are serialized with `serde_json` on the way in and deserialized on
//! the way out, and errors come back as [`Error`].
//!
//! Node outputs are keyed by `(flow_run_id, node_id)` and written once;
//! globals are a separate key space. Every call is checked against the grant
//! the host gave this invocation, so most steps only ever need
//! [`Context::output`](crate::Context::output) and
//! [`Context::upstream`](crate::Context::upstream).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::wit::store as raw;

/// Serializes `value` to JSON text.
fn encode<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(Error::encode)
}

/// Deserializes a stored JSON document, if there is one.
fn decode<T: DeserializeOwned>(json: Option<String>) -> Result<Option<T>, Error> {
    json.map(|text| serde_json::from_str(&text).map_err(Error::encode))
        .transpose()
}

/// Writes the output of `node_id` in `flow_run_id`.
///
/// Write-once: a second write for the same pair fails with
/// [`Error::AlreadyExists`] and the stored value is kept.
pub fn put<T: Serialize + ?Sized>(
    flow_run_id: &str,
    node_id: &str,
    value: &T,
) -> Result<(), Error> {
    put_raw(flow_run_id, node_id, &encode(value)?)
}

/// Like [`put`], for a value that is already JSON text (sent as is; the
/// host rejects invalid JSON with [`Error::InvalidJson`]).
pub fn put_raw(flow_run_id: &str, node_id: &str, json: &str) -> Result<(), Error> {
    Ok(raw::put(flow_run_id, node_id, json)?)
}

/// Reads the output of `node_id` in `flow_run_id`; `Ok(None)` if it is not
/// written yet. A stored value that does not fit `T` is [`Error::Encode`].
pub fn get<T: DeserializeOwned>(flow_run_id: &str, node_id: &str) -> Result<Option<T>, Error> {
    decode(raw::get(flow_run_id, node_id)?)
}

/// Like [`get`], returning the stored JSON text exactly as it was written.
pub fn get_raw(flow_run_id: &str, node_id: &str) -> Result<Option<String>, Error> {
    Ok(raw::get(flow_run_id, node_id)?)
}

/// Lists the node ids that have an output in `flow_run_id`, in no set order.
pub fn list_keys(flow_run_id: &str) -> Result<Vec<String>, Error> {
    Ok(raw::list_keys(flow_run_id)?)
}

/// Writes the global `key`. Write-once: a second write for the same key
/// (also one made by [`upsert_global`]) fails with
/// [`Error::GlobalAlreadyExists`].
pub fn put_global<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), Error> {
    put_global_raw(key, &encode(value)?)
}

/// Like [`put_global`], for a value that is already JSON text.
pub fn put_global_raw(key: &str, json: &str) -> Result<(), Error> {
    Ok(raw::put_global(key, json)?)
}

/// Writes or overwrites the global `key`.
pub fn upsert_global<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), Error> {
    Ok(raw::upsert_global(key, &encode(value)?)?)
}

/// Reads the global `key`; `Ok(None)` if it is not written yet.
pub fn get_global<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    decode(raw::get_global(key)?)
}

/// Like [`get_global`], returning the stored JSON text exactly as it was written.
pub fn get_global_raw(key: &str) -> Result<Option<String>, Error> {
    Ok(raw::get_global(key)?)
}
