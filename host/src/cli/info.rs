//! `contextstore info`: what a store is (backend, location, durability,
//! journal mode, schema version, group commit), read from the store.

use super::{DbArgs, Outcome, output};

/// `contextstore info`.
#[derive(clap::Args)]
pub struct InfoArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Print the description as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Opens the store for reading only (nothing is created, migrated or
/// written) and prints what it is.
pub fn info(args: InfoArgs) -> anyhow::Result<Outcome> {
    let store = args.db.open_read_only()?;
    let info = store.describe()?;
    if args.json {
        output::line(serde_json::to_string_pretty(&info)?)?;
    } else {
        output::line(&info)?;
    }
    Ok(Outcome::Done)
}
