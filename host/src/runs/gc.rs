//! Removing old runs whole: outputs, provenance, journal, claims and the
//! index's records, in bounded batches, never a run a worker is live on.

use std::collections::HashSet;
use std::time::Duration;

use super::{Removed, RunFilter, RunIndex, RunState, RunSummary, Select};
use crate::error::ContextStoreError;
use crate::id::FlowRunId;
use crate::store::CallContext;

/// What [`gc`] removes, and how.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Only runs idle at least this long (since they ended, or for a
    /// stalled run since anything last happened in it).
    pub older_than: Duration,
    /// Only runs in these states (default: done, failed, cancelled).
    /// `running` is refused: a running run is never removed.
    pub states: Vec<RunState>,
    /// Say what would be removed, and remove nothing.
    pub dry_run: bool,
    /// Most rows one batch removes: one transaction, so the most a batch
    /// holds the writer up. `None` (the default): the backend's
    /// [`RunIndex::batch_rows`].
    pub batch_rows: Option<usize>,
    /// How long each batch may take (its deadline; default 30 s).
    pub batch_timeout: Duration,
    /// After each batch, gc waits this many times as long as the batch
    /// took before the next (default 1: gc holds the writer at most half
    /// the time, so the writes of running flows keep their latency).
    pub pace: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            older_than: Duration::from_secs(30 * 86_400),
            states: vec![RunState::Done, RunState::Failed, RunState::Cancelled],
            dry_run: false,
            batch_rows: None,
            batch_timeout: Duration::from_secs(30),
            pace: 1.0,
        }
    }
}

/// What [`gc`] did (or, dry, would do).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// The runs chosen, as they were listed before removal began.
    pub chosen: Vec<RunSummary>,
    /// Of those, the runs removed whole.
    pub removed_runs: Vec<FlowRunId>,
    /// Of those, the runs left alone because a worker became live on them.
    pub left_live: Vec<FlowRunId>,
    /// Of those, the runs another gc removed meanwhile.
    pub already_removed: Vec<FlowRunId>,
    /// The rows removed, by kind.
    pub removed: Removed,
    /// How many batches (transactions) it took.
    pub batches: u64,
    /// Whether nothing was removed because it was a dry run.
    pub dry_run: bool,
}

/// Why [`gc`] refused to start.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The options ask for something gc never does.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] ContextStoreError),
}

/// Removes the runs `options` names from `index`, batch by batch (see
/// [`RunIndex::remove`]); a run that became live meanwhile is left whole.
pub async fn gc(index: &dyn RunIndex, options: &GcOptions) -> Result<GcReport, GcError> {
    if options.states.contains(&RunState::Running) {
        return Err(GcError::Invalid(
            "gc never removes a running run (choose among done, failed, cancelled, stalled)".into(),
        ));
    }
    let batch_rows = options.batch_rows.unwrap_or_else(|| index.batch_rows());
    if batch_rows == 0 {
        return Err(GcError::Invalid(
            "a batch must remove at least one row".into(),
        ));
    }
    let cx = CallContext::within(options.batch_timeout);
    let facts = index.facts(&cx, Select::All).await?;
    let older_than = super::millis(options.older_than);
    let filter = RunFilter {
        states: options.states.clone(),
        run: None,
    };
    let chosen: Vec<RunSummary> = facts
        .summaries(&filter)
        .into_iter()
        .filter(|r| r.state != RunState::Running && r.live_workers == 0)
        .filter(|r| facts.now.saturating_sub(r.last_active_at) >= older_than)
        .collect();
    let mut report = GcReport {
        dry_run: options.dry_run,
        ..GcReport::default()
    };
    // Runs an earlier gc began removing are finished off, whatever the filter.
    let mut pending: Vec<FlowRunId> = chosen.iter().map(|r| r.run).collect();
    pending.extend(facts.runs.iter().filter(|r| r.removing).map(|r| r.run));
    report.chosen = chosen;
    if options.dry_run {
        return Ok(report);
    }
    // A batch names no more runs than it may remove rows: a run takes at
    // least its record.
    let runs_per_batch = batch_rows.clamp(1, 512);
    while !pending.is_empty() {
        let cx = CallContext::within(options.batch_timeout);
        let take = pending.len().min(runs_per_batch);
        let began = std::time::Instant::now();
        let batch = index.remove(&cx, &pending[..take], batch_rows).await?;
        let took = began.elapsed();
        report.batches += 1;
        report.removed.add(&batch.removed);
        let settled: HashSet<FlowRunId> = batch
            .gone
            .iter()
            .chain(&batch.live)
            .chain(&batch.missing)
            .copied()
            .collect();
        if settled.is_empty() && batch.removed.rows() == 0 {
            return Err(GcError::Store(ContextStoreError::StorageError(
                "a removal batch removed nothing and finished no run".into(),
            )));
        }
        report.removed_runs.extend(&batch.gone);
        report.already_removed.extend(&batch.missing);
        report.left_live.extend(&batch.live);
        pending.retain(|run| !settled.contains(run));
        if !pending.is_empty() && options.pace > 0.0 {
            let pause = took
                .mul_f64(options.pace.min(100.0))
                .min(Duration::from_secs(1));
            tokio::time::sleep(pause).await;
        }
    }
    Ok(report)
}
