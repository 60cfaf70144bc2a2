//! `get`, `list` and `global`: read and write a store by hand or from scripts.

use std::io::Read;

use anyhow::Context as _;
use contextstore::{FlowRunId, NodeId};

use super::{DbArgs, Outcome, parse_json, print_json};

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
    let store = args.db.open()?;
    match store.get(args.flow_run, args.node)? {
        Some(value) if args.meta => {
            let provenance = store.provenance(args.flow_run, args.node)?;
            let meta = serde_json::json!({ "value": value, "provenance": provenance });
            print_json(&meta).map(|()| Outcome::Done)
        }
        Some(value) => print_json(&value).map(|()| Outcome::Done),
        None => {
            eprintln!("no output for ({}, {})", args.flow_run, args.node);
            Ok(Outcome::NotFound)
        }
    }
}

/// Lists a run's nodes, one id per line, sorted.
pub fn list(args: ListArgs) -> anyhow::Result<Outcome> {
    let store = args.db.open()?;
    let mut nodes = store.list_keys(args.flow_run)?;
    nodes.sort();
    for node in nodes {
        println!("{node}");
    }
    Ok(Outcome::Done)
}

/// Runs a `global` subcommand.
pub fn global(command: GlobalCommand) -> anyhow::Result<Outcome> {
    match command {
        GlobalCommand::Get { db, key } => match db.open()?.get_global(&key)? {
            Some(value) => print_json(&value).map(|()| Outcome::Done),
            None => {
                eprintln!("no global {key:?}");
                Ok(Outcome::NotFound)
            }
        },
        GlobalCommand::Put { db, key, json } => {
            let value = value_argument(json)?;
            db.open()?.put_global(&key, &value)?;
            Ok(Outcome::Done)
        }
        GlobalCommand::Upsert { db, key, json } => {
            let value = value_argument(json)?;
            db.open()?.upsert_global(&key, &value)?;
            Ok(Outcome::Done)
        }
    }
}

/// The JSON argument, or stdin when it is omitted.
fn value_argument(json: Option<String>) -> anyhow::Result<serde_json::Value> {
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
    parse_json(&text, "the value")
}
