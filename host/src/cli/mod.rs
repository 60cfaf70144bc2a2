//! The command line: argument parsing, dispatch and exit codes.
//!
//! Exit codes: 0 success; 1 `get` or `global get` found nothing; 2 any
//! error, reported as one `error: …` line on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use contextstore::ContextStore;

mod flow;
mod info;
mod inspect;
mod migrate;
mod new;
mod output;
mod run;
mod runs;
mod serve;
mod web;

/// What a subcommand tells `main` to exit with.
pub enum Outcome {
    /// Exit 0.
    Done,
    /// Exit 1: the thing asked for is not there.
    NotFound,
    /// Exit 3: the run was cancelled.
    Cancelled,
}

#[derive(Parser)]
#[command(
    name = "contextstore",
    version,
    about = "A durable, write-once context store for flow engines, with sandboxed WebAssembly steps."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one step component and print its stored output.
    Run(run::RunArgs),
    /// Write a new step project (Rust, Python, JavaScript or C) on the step SDK.
    New(new::NewArgs),
    /// Print the output of a node (exit 1 if there is none).
    Get(inspect::GetArgs),
    /// List the nodes that have an output in a flow run, one per line.
    List(inspect::ListArgs),
    /// Read and write globals.
    #[command(subcommand)]
    Global(inspect::GlobalCommand),
    /// Run flows of steps from a TOML flow file, and show their status.
    #[command(subcommand)]
    Flow(flow::FlowCommand),
    /// Bring a database to this build's schema in place, converting a
    /// WorldInterface database (opening it for writing does the same);
    /// with --back, write it out again in the WorldInterface format.
    Migrate(migrate::MigrateArgs),
    /// Say what a store is: backend, location, durability, journal mode,
    /// schema version, group commit (opens it read-only).
    Info(info::InfoArgs),
    /// List the runs the store holds, with their state and node counts.
    Runs(runs::RunsArgs),
    /// Remove old runs whole (outputs, journal, claims), never a running one.
    Gc(runs::GcArgs),
    /// Serve a live, read-only web view of the store's runs, and /metrics
    /// (no authentication: loopback, or behind your proxy).
    Serve(serve::ServeArgs),
}

/// Where the store lives.
#[derive(clap::Args)]
pub struct DbArgs {
    /// The store: an SQLite database file (created if missing by the commands
    /// that write; the others need it to exist), or a
    /// PostgreSQL database as `postgres://user[:password]@host[:port]/dbname`.
    #[arg(long, value_name = "PATH|URL")]
    db: String,
}

impl DbArgs {
    /// Opens the store for writing: creates the file if missing and
    /// migrates its schema.
    pub fn open(&self) -> anyhow::Result<Arc<dyn ContextStore>> {
        Ok(contextstore::store::open_url(&self.db)?)
    }

    /// Opens an existing store for reading only: nothing is created or
    /// migrated, and a read-only file works.
    pub fn open_read_only(&self) -> anyhow::Result<Arc<dyn ContextStore>> {
        Ok(contextstore::store::open_url_read_only(&self.db)?)
    }
}

/// How the sandbox caches compiled components.
#[derive(clap::Args)]
pub struct RuntimeArgs {
    /// Where compiled components are cached (default: ~/.cache/contextstore/compiled).
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    cache_dir: Option<PathBuf>,
    /// Compile components every time; write no cache.
    #[arg(long)]
    no_cache: bool,
}

impl RuntimeArgs {
    /// Starts the runtime.
    pub fn start(&self) -> anyhow::Result<contextstore::Runtime> {
        let mut config = contextstore::runtime::RuntimeConfig::default();
        if self.no_cache {
            config.cache_dir = None;
        } else if let Some(dir) = &self.cache_dir {
            config.cache_dir = Some(dir.clone());
        }
        Ok(contextstore::Runtime::with_config(config)?)
    }
}

/// Parses the command line, runs it and maps the result to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help, version or a usage error; a closed stream is no reason to panic.
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    init_tracing();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::New(args) => new::new(args),
        Command::Get(args) => inspect::get(args),
        Command::List(args) => inspect::list(args),
        Command::Global(command) => inspect::global(command),
        Command::Flow(command) => flow::flow(command),
        Command::Migrate(args) => migrate::migrate(args),
        Command::Info(args) => info::info(args),
        Command::Runs(args) => runs::list(args),
        Command::Gc(args) => runs::gc(args),
        Command::Serve(args) => serve::serve(args),
    };
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::NotFound) => ExitCode::from(1),
        Ok(Outcome::Cancelled) => ExitCode::from(3),
        // The reader of our output went away (`| head -1`): end quietly.
        Err(error) if error.downcast_ref::<output::Closed>().is_some() => ExitCode::SUCCESS,
        Err(error) => {
            output::note(format_args!("error: {error:#}"));
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr, filtered by `CONTEXTSTORE_LOG` (default: warnings), in
/// colour only when stderr is a terminal: a log file or a pipe gets plain
/// text, with no ANSI escape codes.
fn init_tracing() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONTEXTSTORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr (`2>&1 | head -1`): drop the line. By default the
        // subscriber reports its write errors with `eprintln!`, which panics.
        .log_internal_errors(false)
        .init();
}

/// Parses a JSON argument, naming the argument in the error.
pub fn parse_json(text: &str, what: &str) -> anyhow::Result<serde_json::Value> {
    contextstore::json::parse(text).with_context(|| format!("invalid JSON in {what}"))
}
