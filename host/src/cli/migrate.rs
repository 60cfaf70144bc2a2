//! `contextstore migrate`: bring a database to this build's schema,
//! converting a WorldInterface database, and say what was done.

use contextstore::store::worldinterface;

use super::{DbArgs, Outcome, output};

/// `contextstore migrate`.
#[derive(clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    db: DbArgs,
}

/// Migrates the file in place (it must exist) and prints one line.
pub fn migrate(args: MigrateArgs) -> anyhow::Result<Outcome> {
    let path = &args.db.db;
    if contextstore::store::is_postgres_url(path) {
        anyhow::bail!(
            "migrate converts SQLite files; a PostgreSQL store migrates itself at connect"
        );
    }
    let report = worldinterface::migrate_file(std::path::Path::new(path))?;
    match report.worldinterface {
        Some(converted) => output::line(format_args!(
            "{path}: converted a WorldInterface database: {} output(s), {} global(s); schema version {}",
            converted.outputs, converted.globals, report.to_version
        ))?,
        None if report.from_version == report.to_version => output::line(format_args!(
            "{path}: already at schema version {}; nothing to do",
            report.to_version
        ))?,
        None => output::line(format_args!(
            "{path}: migrated the schema from version {} to {}",
            report.from_version, report.to_version
        ))?,
    }
    Ok(Outcome::Done)
}
