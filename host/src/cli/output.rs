//! Writing to stdout and stderr without panicking: a reader that goes away
//! (`contextstore list … | head -1`) ends the command quietly.

use std::fmt::Display;
use std::io::{self, Write};

use anyhow::Context as _;

/// The reader of stdout went away: the command ends quietly, with exit 0.
#[derive(Debug, thiserror::Error)]
#[error("output closed by its reader")]
pub struct Closed;

/// A write's result, with a broken pipe turned into [`Closed`].
pub fn written(result: io::Result<()>) -> anyhow::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(Closed.into()),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

/// Writes `text` and a newline to stdout.
pub fn line(text: impl Display) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    written(writeln!(out, "{text}").and_then(|()| out.flush()))
}

/// Writes `text` and a newline to stderr, in one write so that lines from
/// several threads stay whole. Returns whether it was written; a closed
/// or failing stderr is not an error (there is nowhere to report it).
pub fn note(text: impl Display) -> bool {
    let line = format!("{text}\n");
    io::stderr().lock().write_all(line.as_bytes()).is_ok()
}
