//! `contextstore migrate`: bring a database to this build's schema,
//! converting a WorldInterface database, and say what was done.

use contextstore::store::worldinterface;

use super::{DbArgs, Outcome};

/// `contextstore migrate`.
#[derive(clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    db: DbArgs,
}

/// Migrates the file in place (it must exist) and prints one line.
pub fn migrate(args: MigrateArgs) -> anyhow::Result<Outcome> {
    let report = worldinterface::migrate_file(&args.db.db)?;
    let path = args.db.db.display();
    match report.worldinterface {
        Some(converted) => println!(
            "{path}: converted a WorldInterface database: {} output(s), {} global(s); schema version {}",
            converted.outputs, converted.globals, report.to_version
        ),
        None if report.from_version == report.to_version => println!(
            "{path}: already at schema version {}; nothing to do",
            report.to_version
        ),
        None => println!(
            "{path}: migrated the schema from version {} to {}",
            report.from_version, report.to_version
        ),
    }
    Ok(Outcome::Done)
}
