//! `get`, `list` and `global`: read and write a store by hand or from scripts.

use std::io::{Read, Write};

use anyhow::Context as _;
use contextstore::{FlowRunId, NodeId};

use contextstore::json::{self, JsonText};

use super::{DbArgs, Outcome, output};

/// `contextstore get`.
#[derive(clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The flow run id (hyphenated UUID).
    flow_run: FlowRunId,
    /// The node id (hyphenated UUID).
    node: NodeId,
    /// Print `{"value": …, "provenance": …}`: the output with where it came
    /// from (`null` for an output stored without provenance).
    #[arg(long)]
    meta: bool,
}

/// `contextstore list`.
#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The flow run id (hyphenated UUID).
    flow_run: FlowRunId,
}

/// `contextstore global …`.
#[derive(clap::Subcommand)]
pub enum GlobalCommand {
    /// Print a global value (exit 1 if there is none).
    Get {
        #[command(flatten)]
        db: DbArgs,
        /// The key.
        key: String,
    },
    /// Write a global once; fails if the key exists.
    Put {
        #[command(flatten)]
        db: DbArgs,
        /// The key.
        key: String,
        /// The value as JSON (read from stdin when omitted).
        json: Option<String>,
    },
    /// Write or overwrite a global.
    Upsert {
        #[command(flatten)]
        db: DbArgs,
        /// The key.
        key: String,
        /// The value as JSON (read from stdin when omitted).
        json: Option<String>,
    },
}

/// Prints a node's output.
pub fn get(args: GetArgs) -> anyhow::Result<Outcome> {
    let store = args.db.open_read_only()?;
    // The stored text as written, byte for byte.
    match store.get_text(args.flow_run, args.node)? {
        Some(text) if args.meta => {
            /// An output with where it came from.
            #[derive(serde::Serialize)]
            struct Meta<'a> {
                value: &'a JsonText,
                provenance: Option<contextstore::store::provenance::Provenance>,
            }
            let provenance = store.provenance(args.flow_run, args.node)?;
            let meta = Meta {
                value: &text,
                provenance,
            };
            output::line(serde_json::to_string(&meta)?).map(|()| Outcome::Done)
        }
        Some(text) => output::line(text).map(|()| Outcome::Done),
        None => {
            output::note(format_args!(
                "no output for ({}, {})",
                args.flow_run, args.node
            ));
            Ok(Outcome::NotFound)
        }
    }
}

/// Lists a run's nodes, one id per line, sorted.
pub fn list(args: ListArgs) -> anyhow::Result<Outcome> {
    let store = args.db.open_read_only()?;
    let mut nodes = store.list_keys(args.flow_run)?;
    nodes.sort();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for node in nodes {
        output::written(writeln!(out, "{node}"))?;
    }
    output::written(out.flush())?;
    Ok(Outcome::Done)
}

/// Runs a `global` subcommand.
pub fn global(command: GlobalCommand) -> anyhow::Result<Outcome> {
    match command {
        GlobalCommand::Get { db, key } => match db.open_read_only()?.get_global_text(&key)? {
            Some(text) => output::line(text).map(|()| Outcome::Done),
            None => {
                output::note(format_args!("no global {key:?}"));
                Ok(Outcome::NotFound)
            }
        },
        GlobalCommand::Put { db, key, json } => {
            let value = value_argument(json)?;
            db.open()?.put_global_text(&key, &value)?;
            Ok(Outcome::Done)
        }
        GlobalCommand::Upsert { db, key, json } => {
            let value = value_argument(json)?;
            db.open()?.upsert_global_text(&key, &value)?;
            Ok(Outcome::Done)
        }
    }
}

/// The JSON argument, or stdin when it is omitted, checked and kept exactly
/// as written.
fn value_argument(json: Option<String>) -> anyhow::Result<JsonText> {
    let text = match json {
        Some(text) => text,
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the value from stdin")?;
            text
        }
    };
    // Whitespace around the document (the newline `echo` adds) is not part
    // of it; the document itself is kept exactly as written.
    let trimmed = text.trim();
    let text = if trimmed.len() == text.len() {
        text
    } else {
        trimmed.to_owned()
    };
    JsonText::parse(text, json::MAX_DEPTH).context("invalid JSON in the value")
}
