//! `/runs/{run}/nodes/{node}/output`: a node's output as indented JSON, in
//! a page of its own (no script), escaped, and capped at [`OUTPUT_CAP`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Html;
use contextstore::NodeId;
use contextstore::store::CallContext;

use super::api::{read_run, run_id};
use super::{AppState, REQUEST_DEADLINE, WebError, escape_html, within};

/// The most bytes of an output the page shows (of the stored text; the
/// indented text may be longer).
pub const OUTPUT_CAP: usize = 256 * 1024;

/// `GET /runs/{run}/nodes/{node}/output`.
pub async fn output_page(
    State(state): State<Arc<AppState>>,
    Path((run, node)): Path<(String, String)>,
) -> Result<Html<String>, WebError> {
    let run = run_id(&run)?;
    let node: NodeId = node
        .parse()
        .map_err(|e: contextstore::id::IdParseError| WebError::BadRequest(e.to_string()))?;
    let (_, summary, nodes) = read_run(&state, run).await?;
    let name = nodes
        .iter()
        .find(|n| n.node_id == node)
        .map(|n| n.name.clone())
        .ok_or_else(|| WebError::NotFound(format!("run {run} has no node {node}")))?;
    let text = within(async {
        Ok(state
            .async_store
            .get(&CallContext::within(REQUEST_DEADLINE), run, node)
            .await?)
    })
    .await?;
    let body = match text {
        None => "<p class=\"note\">This node has no output (yet).</p>".to_owned(),
        Some(text) => {
            let total = text.len();
            let (shown, cut) = cap(text.as_str(), OUTPUT_CAP);
            let note = if cut {
                format!(
                    "<p class=\"note\" id=\"truncated\">Showing the first {} of {total} bytes: \
                     the output is larger than this page shows (<code>contextstore get</code> \
                     prints it whole).</p>",
                    shown.len()
                )
            } else {
                format!("<p class=\"note\">{total} bytes.</p>")
            };
            format!(
                "{note}<pre id=\"output\">{}</pre>",
                escape_html(&indent(shown))
            )
        }
    };
    let title = format!("{name} · {}", summary.flow_name);
    Ok(Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><link rel=\"stylesheet\" href=\"/assets/style.css\"></head>\
         <body><header><a href=\"/\">contextstore</a> › <a href=\"/runs/{run}\">{flow} {run}</a> › \
         <span>{name}</span></header><main><h1>Output of <span id=\"node-name\">{name}</span></h1>\
         {body}</main></body></html>\n",
        title = escape_html(&title),
        flow = escape_html(&summary.flow_name),
        name = escape_html(&name),
    )))
}

/// The first `max` bytes of `text` (cut at a character boundary), and
/// whether it was cut.
pub fn cap(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

/// JSON text indented by two spaces a level, in one pass over the text
/// (no tree is built, so no depth is too deep and a cut text is indented
/// as far as it goes). Whitespace outside strings is dropped; strings are
/// copied as written.
pub fn indent(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + json.len() / 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                let close = if c == '{' { '}' } else { ']' };
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_indented_in_one_pass() {
        assert_eq!(
            indent(r#"{"a":[1,2,{}],"b":{"c":"x, {y}: \"z\""},"d":[ ]}"#),
            "{\n  \"a\": [\n    1,\n    2,\n    {}\n  ],\n  \"b\": {\n    \"c\": \"x, {y}: \\\"z\\\"\"\n  },\n  \"d\": []\n}"
        );
        assert_eq!(indent("\"<script>\""), "\"<script>\"");
        // A text cut in the middle is indented as far as it goes.
        assert_eq!(indent(r#"{"a":[1,"#), "{\n  \"a\": [\n    1,\n    ");
    }

    #[test]
    fn outputs_are_cut_at_a_character_boundary() {
        assert_eq!(cap("héllo", 2), ("h", true));
        assert_eq!(cap("héllo", 3), ("hé", true));
        assert_eq!(cap("hi", 2), ("hi", false));
    }
}
