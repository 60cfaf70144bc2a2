//! Durations as operators write them: `0s`, `90m`, `36h`, `30d`, `1h 30m`.

use std::time::Duration;

/// Parses a duration such as `0s`, `90m`, `30d` or `1h 30m` (units `ms`,
/// `s`, `m`, `h`, `d`, `w`, and their long names); a clear error otherwise.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?} ({e}); write it as 0s, 90m, 36h or 30d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit_and_bad_ones_are_refused() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "30", "-1d", "3 parsecs", "d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
