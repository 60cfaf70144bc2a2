//! `contextstore migrate`: bring a database to this build's schema,
//! converting a WorldInterface database (and keeping a copy of its
//! original), and say what was done; with `--back`, write a contextstore
//! database out again in the WorldInterface store's own format.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use contextstore::store::worldinterface::{self, BackReport, MigrationReport};

use super::{DbArgs, Outcome, output};

/// `contextstore migrate`.
#[derive(clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Write the store's outputs and globals into a new file, `--to`, in
    /// the WorldInterface store's own format, for going back to the
    /// original engine. The `--db` file is only read (a store may be using
    /// it); what that format has no place for is listed, with counts.
    #[arg(long, requires = "to")]
    back: bool,
    /// With `--back`: the file to write; it must not exist.
    #[arg(long, value_name = "OUT", requires = "back")]
    to: Option<PathBuf>,
    /// Print the report as JSON instead of lines.
    #[arg(long)]
    json: bool,
}

/// Migrates the file in place (it must exist) and prints what was done;
/// with `--back`, writes it back instead.
pub fn migrate(args: MigrateArgs) -> anyhow::Result<Outcome> {
    let path = &args.db.db;
    if contextstore::store::is_postgres_url(path) {
        if args.back {
            anyhow::bail!(
                "migrate --back reads SQLite files only; a PostgreSQL store cannot be written \
                 back in the WorldInterface format"
            );
        }
        anyhow::bail!(
            "migrate converts SQLite files; a PostgreSQL store migrates itself at connect"
        );
    }
    if let (true, Some(to)) = (args.back, &args.to) {
        let report = worldinterface::write_back(Path::new(path), to)?;
        if args.json {
            output::line(serde_json::to_string_pretty(&report)?)?;
        } else {
            print_back(path, &report)?;
        }
        return Ok(Outcome::Done);
    }
    let report = worldinterface::migrate_file(Path::new(path))?;
    if args.json {
        output::line(serde_json::to_string_pretty(&report)?)?;
    } else {
        print_forward(path, &report)?;
    }
    Ok(Outcome::Done)
}

/// What a migration did, in one line.
fn print_forward(path: &str, report: &MigrationReport) -> anyhow::Result<()> {
    match report.worldinterface {
        Some(converted) => {
            let kept = match &report.backup {
                Some(backup) => format!("; the original is kept at {}", backup.display()),
                None => String::new(),
            };
            output::line(format_args!(
                "{path}: converted a WorldInterface database: {} output(s), {} global(s); \
                 schema version {}{kept}",
                converted.outputs, converted.globals, report.to_version
            ))
        }
        None if report.from_version == report.to_version => output::line(format_args!(
            "{path}: already at schema version {}; nothing to do",
            report.to_version
        )),
        None => output::line(format_args!(
            "{path}: migrated the schema from version {} to {}",
            report.from_version, report.to_version
        )),
    }
}

/// What a write-back wrote, then what it left out, one kind a line.
fn print_back(path: &str, report: &BackReport) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    output::written(writeln!(
        out,
        "{path}: wrote {} in the WorldInterface store's format: {} output(s), {} global(s)",
        report.path.display(),
        report.outputs,
        report.globals
    ))?;
    output::written(writeln!(
        out,
        "left out (the WorldInterface schema has no place for them):"
    ))?;
    for dropped in &report.dropped {
        let unit = if dropped.what == "provenance" {
            "output(s)"
        } else {
            "row(s)"
        };
        output::written(writeln!(
            out,
            "  {}: {} {unit} ({})",
            dropped.what, dropped.count, dropped.about
        ))?;
    }
    if report.too_deep_for_original > 0 {
        output::written(writeln!(
            out,
            "warning: {} value(s) nest deeper than {} levels: they are in the file, but the \
             original store (serde_json::from_slice) cannot read them back",
            report.too_deep_for_original,
            worldinterface::ORIGINAL_READ_DEPTH
        ))?;
    }
    output::written(out.flush())
}
