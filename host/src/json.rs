//! JSON text in and out of the store.
//!
//! Values travel and rest as text: [`JsonText`] is a document that has been
//! checked (syntax, nesting depth) without building a tree, and is kept
//! byte for byte as written, so that big integers, `-0`, duplicate keys and
//! escapes come back exactly as they went in. Only the trait's
//! `serde_json::Value` API parses, at its edge ([`parse`], [`to_text`]).
//!
//! Every depth is bounded by [`MAX_DEPTH`]: no document that can reach the
//! store, through a guest, the command line, a flow file or the Rust API, is
//! deep enough to overflow the stack when it is parsed, serialized or
//! dropped.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// The deepest nesting of arrays and objects any document may have: the
/// ceiling of every configurable depth limit (such as
/// [`Limits::max_json_depth`](crate::Limits::max_json_depth)).
pub const MAX_DEPTH: usize = 1_024;

/// Why a text is not an acceptable JSON document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The text is not JSON.
    #[error("{0}")]
    Syntax(String),
    /// The document nests deeper than allowed.
    #[error("nesting depth {depth} is deeper than the limit of {limit}")]
    TooDeep {
        /// The depth found (counted up to one past the limit).
        depth: usize,
        /// The limit.
        limit: usize,
    },
}

/// A JSON document as text: valid, no deeper than its checker allowed, and
/// kept exactly as written.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct JsonText(String);

impl JsonText {
    /// Checks `text` (syntax, and nesting no deeper than `max_depth`, itself
    /// capped at [`MAX_DEPTH`]) without building a tree: the cost is a scan
    /// of the bytes, and memory proportional to the depth.
    pub fn parse(text: impl Into<String>, max_depth: usize) -> Result<Self, JsonError> {
        let text = text.into();
        validate(&text, max_depth)?;
        Ok(Self(text))
    }

    /// The compact text of `value`; fails if it nests deeper than [`MAX_DEPTH`].
    pub fn from_value(value: &Value) -> Result<Self, JsonError> {
        within(value_depth(value, MAX_DEPTH), MAX_DEPTH)?;
        serde_json::to_string(value)
            .map(Self)
            .map_err(|e| JsonError::Syntax(e.to_string()))
    }

    /// Wraps text that a store holds: it was checked when it was written and
    /// is not checked again. Backends use this for what they read back.
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty (never true of a valid document).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The text, owned.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Parses the text into a `Value` (see [`parse`]).
    pub fn to_value(&self) -> Result<Value, JsonError> {
        parse(&self.0)
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 200;
        match self.0.char_indices().nth(SHOWN) {
            Some((cut, _)) => write!(f, "JsonText({:?}…, {} bytes)", &self.0[..cut], self.0.len()),
            None => write!(f, "JsonText({:?})", self.0),
        }
    }
}

impl fmt::Display for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Serializes as the JSON document itself, exactly as written (for
/// example as one member of a larger document).
impl serde::Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.0.clone()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl AsRef<str> for JsonText {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Checks that `text` is one JSON document nesting at most `max_depth`
/// (capped at [`MAX_DEPTH`]) deep, without building it: a depth scan, then
/// serde_json's skipping parser, which keeps its own stack on the heap.
pub fn validate(text: &str, max_depth: usize) -> Result<(), JsonError> {
    let limit = max_depth.min(MAX_DEPTH);
    within(nesting_depth(text, limit), limit)?;
    let mut de = serde_json::Deserializer::from_str(text);
    // The depth scan above already bounds the nesting.
    de.disable_recursion_limit();
    <&RawValue>::deserialize(&mut de).map_err(|e| JsonError::Syntax(e.to_string()))?;
    de.end().map_err(|e| JsonError::Syntax(e.to_string()))
}

/// `Ok` if `depth` is within `limit`.
fn within(depth: usize, limit: usize) -> Result<(), JsonError> {
    if depth > limit {
        return Err(JsonError::TooDeep { depth, limit });
    }
    Ok(())
}

/// Parses JSON text into a value. Refuses documents deeper than
/// [`MAX_DEPTH`] before building anything, and parses on a heap-grown stack
/// (`serde_stacker`), so no text can overflow the stack.
pub fn parse(text: &str) -> Result<Value, JsonError> {
    within(nesting_depth(text, MAX_DEPTH), MAX_DEPTH)?;
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let value = Value::deserialize(serde_stacker::Deserializer::new(&mut de))
        .map_err(|e| JsonError::Syntax(e.to_string()))?;
    de.end().map_err(|e| JsonError::Syntax(e.to_string()))?;
    Ok(value)
}

/// Turns a value into compact JSON text; fails if it nests deeper than
/// [`MAX_DEPTH`].
pub fn to_text(value: &Value) -> Result<String, JsonError> {
    JsonText::from_value(value).map(JsonText::into_string)
}

/// The deepest nesting of arrays and objects in `text`, counted without
/// parsing (strings are skipped, escapes honoured). The scan stops once the
/// depth passes `stop_above`, so it returns at most `stop_above + 1`.
pub fn nesting_depth(text: &str, stop_above: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in text.bytes() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > deepest {
                    deepest = depth;
                    if deepest > stop_above {
                        return deepest;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The nesting depth of a value, walked without recursion; stops counting
/// once it passes `stop_above`.
pub fn value_depth(value: &Value, stop_above: usize) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        let depth = depth + 1;
        deepest = deepest.max(depth);
        if deepest > stop_above {
            return deepest;
        }
        stack.extend(children.map(|child| (child, depth)));
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_up_to_the_ceiling_and_refuses_deeper() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let value = parse(&nested(MAX_DEPTH)).unwrap();
        assert_eq!(to_text(&value).unwrap(), nested(MAX_DEPTH));
        assert!(matches!(
            parse(&nested(MAX_DEPTH + 1)),
            Err(JsonError::TooDeep { .. })
        ));
        // Far deeper than any stack: refused by the scan, nothing built.
        assert!(matches!(
            parse(&nested(1_000_000)),
            Err(JsonError::TooDeep { .. })
        ));
        assert!(JsonText::parse(nested(1_000_000), usize::MAX).is_err());
    }

    #[test]
    fn a_deep_value_is_refused_not_serialized() {
        let deep = (0..MAX_DEPTH + 1).fold(json!(1), |inner, _| json!([inner]));
        assert!(matches!(to_text(&deep), Err(JsonError::TooDeep { .. })));
        let ok = (0..MAX_DEPTH).fold(json!(1), |inner, _| json!({ "a": inner }));
        assert!(to_text(&ok).is_ok());
    }

    #[test]
    fn rejects_trailing_garbage_and_empty_text() {
        for bad in ["{} x", "", "{not json", "[1,]", "\"\u{1}\"", "01", "[1 2]"] {
            assert!(parse(bad).is_err(), "{bad:?}");
            assert!(validate(bad, MAX_DEPTH).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn text_is_kept_exactly_as_written() {
        for text in [
            "123456789012345678901234567890",
            "18446744073709551616",
            "-0",
            r#"{"a":1,"a":2}"#,
            r#""\u00e9\ud83d\ude00\n""#,
            " [ 1 , 2.50 ] ",
            "1E400",
        ] {
            let checked = JsonText::parse(text, MAX_DEPTH).unwrap();
            assert_eq!(checked.as_str(), text);
        }
    }

    #[test]
    fn serializes_as_the_raw_document() {
        let text = JsonText::parse("{\"n\":123456789012345678901234567890}", MAX_DEPTH).unwrap();
        let mut outer = std::collections::BTreeMap::new();
        outer.insert("a", &text);
        assert_eq!(
            serde_json::to_string(&outer).unwrap(),
            "{\"a\":{\"n\":123456789012345678901234567890}}"
        );
    }

    #[test]
    fn floats_round_trip_exactly_through_values() {
        for f in [0.1, 1e-300, 1.7976931348623157e308, -0.0, 123456.789e-7] {
            let v = json!(f);
            assert_eq!(parse(&to_text(&v).unwrap()).unwrap(), v);
        }
    }

    #[test]
    fn depth_counts_containers_not_brackets_in_strings() {
        assert_eq!(nesting_depth("1", 10), 0);
        assert_eq!(nesting_depth("[[1],{\"a\":[2]}]", 10), 3);
        assert_eq!(nesting_depth(r#"{"a":"[[[[\"]]]"}"#, 10), 1);
        assert_eq!(nesting_depth(r#"["\\", [1]]"#, 10), 2);
        assert_eq!(nesting_depth("[[[[[[", 2), 3, "stops past the limit");
        assert_eq!(value_depth(&json!([[1], {"a": [2]}]), 10), 3);
        assert_eq!(value_depth(&json!(1), 10), 0);
    }

    #[test]
    fn validate_honours_a_lower_limit_and_caps_a_higher_one() {
        assert!(validate("[[1]]", 2).is_ok());
        assert_eq!(
            validate("[[[1]]]", 2),
            Err(JsonError::TooDeep { depth: 3, limit: 2 })
        );
        let over = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(matches!(
            validate(&over, usize::MAX),
            Err(JsonError::TooDeep {
                limit: MAX_DEPTH,
                ..
            })
        ));
    }
}
