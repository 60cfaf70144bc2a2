//! `contextstore runs` (the runs index) and `contextstore gc` (removing
//! old runs).

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use contextstore::ContextStore;
use contextstore::runs::{self, GcOptions, RunFilter, RunIndex, RunState, RunSummary};
use contextstore::store::CallContext;
use contextstore::text::for_terminal;

use super::{DbArgs, Outcome, output};

/// How long reading the index may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// `contextstore runs`.
#[derive(clap::Args)]
pub struct RunsArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Only runs in these states (comma-separated: running, stalled, done,
    /// failed, cancelled).
    #[arg(long, value_name = "STATE[,STATE]", value_delimiter = ',')]
    state: Vec<RunState>,
    /// Print JSON (one array) instead of a table.
    #[arg(long)]
    json: bool,
}

/// `contextstore gc`.
#[derive(clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Remove runs idle at least this long: since they ended (or, stalled,
    /// since anything last happened in them). As `0s`, `90m`, `36h`, `30d`.
    #[arg(long, value_name = "DURATION", value_parser = runs::parse_duration)]
    older_than: Duration,
    /// Only runs in these states (comma-separated; default done, failed,
    /// cancelled; `stalled` may be named; `running` never is).
    #[arg(long, value_name = "STATE[,STATE]", value_delimiter = ',')]
    state: Vec<RunState>,
    /// Print what would be removed, and remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Most rows one batch (one transaction) removes (default: the
    /// backend's, 32 on SQLite, 256 on PostgreSQL).
    #[arg(long, value_name = "ROWS")]
    batch_rows: Option<usize>,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
}

/// Runs `f` on the runs index of `store`, on a runtime of its own.
fn with_index<T>(
    store: &dyn ContextStore,
    f: impl AsyncFnOnce(&dyn RunIndex) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let index = store
        .as_async()
        .and_then(|s| s.runs())
        .context("this store keeps no runs index")?;
    let executor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    executor.block_on(f(index))
}

/// `contextstore runs`.
pub fn list(args: RunsArgs) -> anyhow::Result<Outcome> {
    let store = args.db.open_read_only()?;
    let filter = RunFilter {
        states: args.state,
        run: None,
    };
    let runs = with_index(store.as_ref(), async |index| {
        let cx = CallContext::within(READ_TIMEOUT);
        Ok(runs::list(index, &cx, &filter).await?)
    })?;
    if args.json {
        output::line(serde_json::to_string_pretty(&runs)?)?;
        return Ok(Outcome::Done);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    output::written(writeln!(
        out,
        "{:36}  {:20}  {:9}  {:>11}  {:>6}  {:>7}  {:20}  ended",
        "run", "flow", "state", "done/nodes", "failed", "workers", "started"
    ))?;
    for run in &runs {
        output::written(writeln!(out, "{}", row(run).trim_end()))?;
    }
    output::written(out.flush())?;
    Ok(Outcome::Done)
}

/// One run as a line of the table.
fn row(run: &RunSummary) -> String {
    let n = &run.nodes;
    format!(
        "{:36}  {:20}  {:9}  {:>11}  {:>6}  {:>7}  {:20}  {:20}",
        run.run.to_string(),
        for_terminal(&run.flow_name, 64),
        run.state.as_str(),
        format!("{}/{}", n.done, n.total),
        n.failed,
        format!("{}/{}", run.live_workers, run.workers),
        time(Some(run.started_at)),
        time(run.ended_at),
    )
}

/// A Unix-millisecond time as UTC, to the second; `-` for none.
fn time(ms: Option<i64>) -> String {
    match ms.and_then(|ms| u64::try_from(ms).ok()) {
        Some(ms) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        None => "-".into(),
    }
}

/// `contextstore gc`.
pub fn gc(args: GcArgs) -> anyhow::Result<Outcome> {
    let store = args.db.open()?;
    let mut options = GcOptions {
        older_than: args.older_than,
        dry_run: args.dry_run,
        batch_rows: args.batch_rows,
        ..GcOptions::default()
    };
    if !args.state.is_empty() {
        options.states = args.state;
    }
    let started = SystemTime::now();
    let report = with_index(store.as_ref(), async |index| {
        Ok(runs::gc(index, &options).await?)
    })?;
    if args.json {
        output::line(serde_json::to_string_pretty(&report)?)?;
        return Ok(Outcome::Done);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let left: std::collections::HashSet<_> = report.left_live.iter().collect();
    let elsewhere: std::collections::HashSet<_> = report.already_removed.iter().collect();
    for run in &report.chosen {
        let what = if left.contains(&run.run) {
            "left alone (a worker is live on it now)"
        } else if elsewhere.contains(&run.run) {
            "already removed (by another gc)"
        } else {
            verb
        };
        output::written(writeln!(
            out,
            "{what} {} ({}, {}, {} outputs, ended {})",
            run.run,
            for_terminal(&run.flow_name, 64),
            run.state,
            run.nodes.done,
            time(run.ended_at.or(Some(run.last_active_at))),
        ))?;
    }
    let r = &report.removed;
    if report.dry_run {
        output::written(writeln!(
            out,
            "dry run: {} runs would be removed; nothing was",
            report.chosen.len()
        ))?;
    } else {
        output::written(writeln!(
            out,
            "removed {} runs: {} outputs, {} journal entries, {} claims, {} worker records, \
             in {} batches ({:.1}s)",
            r.runs,
            r.outputs,
            r.journal,
            r.claims,
            r.workers,
            report.batches,
            started.elapsed().unwrap_or_default().as_secs_f64(),
        ))?;
    }
    output::written(out.flush())?;
    Ok(Outcome::Done)
}
