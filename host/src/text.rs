//! Guest text made safe to show: bounded in size, with control characters
//! and escape sequences neutralised.
//!
//! A step controls the text of its failures, its stderr and the names in
//! its wasm backtrace. Before any of it becomes part of an error message,
//! a log line or a journal entry, it goes through [`for_terminal`] (one
//! line) or [`lines_for_terminal`] (several lines): every control character
//! (C0, DEL, C1 — so every ANSI escape sequence loses its introducer) and
//! every Unicode bidirectional override is written as a visible escape such
//! as `\u{1b}`, and the text is cut to a byte budget, marked with `…`.

/// Most bytes of a guest's failure text kept in a message (before `…`).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;

/// `text` for an error message that names it: quoted, with Rust's
/// escapes (so control characters show as escapes), and cut to
/// `max_chars` characters, followed by `…` if anything was cut.
pub fn quoted(text: &str, max_chars: usize) -> String {
    let cut: String = text.chars().take(max_chars).collect();
    if cut.len() < text.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// `text` as one line for a terminal: every control character (newlines
/// included) and bidi override escaped, and at most `max_bytes` bytes of
/// the result kept, followed by `…` if anything was cut.
pub fn for_terminal(text: &str, max_bytes: usize) -> String {
    neutralise(text, max_bytes, false)
}

/// Like [`for_terminal`], but newlines and tabs are kept, so that the text
/// keeps its lines (a backtrace, the end of a stderr stream).
pub fn lines_for_terminal(text: &str, max_bytes: usize) -> String {
    neutralise(text, max_bytes, true)
}

fn neutralise(text: &str, max_bytes: usize, keep_lines: bool) -> String {
    let mut out = String::with_capacity(text.len().min(max_bytes) + 4);
    for c in text.chars() {
        let kept = keep_lines && matches!(c, '\n' | '\t');
        let start = out.len();
        if !kept && is_unsafe(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
        if out.len() > max_bytes {
            // Never cut inside an escape or a character: drop it whole.
            out.truncate(start);
            out.push('…');
            break;
        }
    }
    out
}

/// Whether `c` can change what a terminal shows beyond itself: control
/// characters (C0, DEL, C1) and the bidirectional embeddings, overrides and
/// isolates that reorder the text around them.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_controls_are_made_visible() {
        let hostile = "\u{1b}[2J\u{1b}]0;title\u{7}red\r\nerror: forged\u{9b}31m\u{7f}\u{202e}x";
        let shown = for_terminal(hostile, 1024);
        assert!(!shown.chars().any(is_unsafe), "{shown}");
        assert_eq!(
            shown,
            "\\u{1b}[2J\\u{1b}]0;title\\u{7}red\\u{d}\\u{a}error: forged\\u{9b}31m\\u{7f}\\u{202e}x"
        );
    }

    #[test]
    fn lines_keep_newlines_and_tabs_only() {
        assert_eq!(
            lines_for_terminal("a\n\tb\r\u{1b}c", 100),
            "a\n\tb\\u{d}\\u{1b}c"
        );
    }

    #[test]
    fn long_text_is_cut_on_a_boundary_and_marked() {
        let shown = for_terminal(&"é".repeat(10_000), 101);
        assert!(shown.len() <= 101 + '…'.len_utf8(), "{}", shown.len());
        assert!(shown.ends_with("é…"));
        // An escape is never cut in half.
        let shown = for_terminal(&"\u{1b}".repeat(100), 20);
        assert_eq!(shown, "\\u{1b}\\u{1b}\\u{1b}…");
        assert_eq!(for_terminal("short", 5), "short");
    }

    #[test]
    fn plain_text_is_unchanged() {
        let text = "step failed: naïve 🦀 text, \"quoted\" and \\ back";
        assert_eq!(for_terminal(text, 1024), text);
    }
}
