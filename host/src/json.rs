//! JSON text in and out of the store: exact round trips, any nesting depth
//! without overflowing the stack, and a depth check for untrusted text.

use serde::Deserialize;
use serde_json::Value;

/// Parses JSON text into a value, at any nesting depth.
///
/// serde_json stops at 128 levels by default; values deeper than that are
/// valid and must round-trip, so the limit is lifted and the stack grown on
/// the heap as needed (`serde_stacker`) instead of overflowing.
pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let value = Value::deserialize(serde_stacker::Deserializer::new(&mut de))?;
    de.end()?;
    Ok(value)
}

/// Turns a value into compact JSON text.
pub fn to_text(value: &Value) -> Result<String, serde_json::Error> {
    serde_json::to_string(value)
}

/// The deepest nesting of arrays and objects in `text`, counted without
/// parsing (strings are skipped, escapes honoured). Used to refuse
/// untrusted documents that would be costly to build and drop.
pub fn nesting_depth(text: &str) -> usize {
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
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_deeper_than_serde_json_default() {
        let text = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
        let value = parse(&text).unwrap();
        assert_eq!(to_text(&value).unwrap(), text);
        // dropping a deep value recursively is fine at this depth
    }

    #[test]
    fn rejects_trailing_garbage_and_empty_text() {
        assert!(parse("{} x").is_err());
        assert!(parse("").is_err());
        assert!(parse("{not json").is_err());
    }

    #[test]
    fn floats_round_trip_exactly() {
        for f in [0.1, 1e-300, 1.7976931348623157e308, -0.0, 123456.789e-7] {
            let v = json!(f);
            assert_eq!(parse(&to_text(&v).unwrap()).unwrap(), v);
        }
    }

    #[test]
    fn depth_counts_containers_not_brackets_in_strings() {
        assert_eq!(nesting_depth("1"), 0);
        assert_eq!(nesting_depth("[[1],{\"a\":[2]}]"), 3);
        assert_eq!(nesting_depth(r#"{"a":"[[[[\"]]]"}"#), 1);
        assert_eq!(nesting_depth(r#"["\\", [1]]"#), 2);
    }
}
