//! A run's state and counts, computed from its [`RunFacts`] when read.

use super::{
    Facts, NodeCounts, RunFacts, RunFilter, RunIndex, RunState, RunSummary, Select, WorkerOutcome,
};
use crate::error::ContextStoreError;
use crate::store::CallContext;

impl RunFacts {
    /// Whether a worker is live on the run at `now` (see [`RunState::Running`]).
    pub fn is_live(&self, now: i64) -> bool {
        if self.live_claims > 0 || self.workers.iter().any(|w| w.is_live(now)) {
            return true;
        }
        // An output written within the lease of a worker that has not ended.
        let lease = self
            .workers
            .iter()
            .filter(|w| w.ended_at.is_none())
            .map(|w| w.lease_ms)
            .max();
        matches!((self.last_output_at, lease), (Some(at), Some(lease)) if at.saturating_add(lease) > now)
    }

    /// Where the run stands at `now`.
    pub fn state(&self, now: i64) -> RunState {
        if self.nodes > 0 && self.outputs >= self.nodes {
            return RunState::Done;
        }
        if self.cancelled_at.is_some() {
            return RunState::Cancelled;
        }
        if self.is_live(now) {
            return RunState::Running;
        }
        let last_ended = self
            .workers
            .iter()
            .filter(|w| w.ended_at.is_some())
            .max_by_key(|w| w.ended_at);
        let ended_failed = last_ended.is_some_and(|w| w.outcome == Some(WorkerOutcome::Failed));
        // A worker that ended after another started (and did not end)
        // speaks for the run only if no worker is still unaccounted for.
        let died = self.workers.iter().any(|w| {
            w.ended_at.is_none()
                && last_ended.is_none_or(|e| w.started_at > e.ended_at.unwrap_or(0))
        });
        if !died && (ended_failed || self.failed_nodes > 0) {
            return RunState::Failed;
        }
        RunState::Stalled
    }

    /// When anything last happened in the run.
    pub fn last_active_at(&self) -> i64 {
        self.workers
            .iter()
            .flat_map(|w| [Some(w.seen_at), w.ended_at])
            .flatten()
            .chain(self.last_output_at)
            .chain(self.cancelled_at)
            .fold(self.created_at, i64::max)
    }

    /// The run as a listing shows it, at `now`.
    pub fn summary(&self, now: i64) -> RunSummary {
        let state = self.state(now);
        let last_active_at = self.last_active_at();
        let ended_at = state.is_finished().then_some(last_active_at);
        let done = self.outputs.min(self.nodes);
        let failed = self.failed_nodes;
        let retrying = self.retrying_nodes;
        let running = if state == RunState::Running {
            self.live_claims
        } else {
            0
        };
        let pending = self
            .nodes
            .saturating_sub(done)
            .saturating_sub(failed)
            .saturating_sub(retrying)
            .saturating_sub(running);
        RunSummary {
            run: self.run,
            flow_name: self.flow_name.clone(),
            flow_hash: self.flow_hash.clone(),
            state,
            started_at: self.created_at,
            ended_at,
            last_active_at,
            workers: u32::try_from(self.workers.len()).unwrap_or(u32::MAX),
            live_workers: u32::try_from(self.workers.iter().filter(|w| w.is_live(now)).count())
                .unwrap_or(u32::MAX),
            nodes: NodeCounts {
                total: self.nodes,
                done,
                failed,
                retrying,
                running,
                pending,
            },
            taken_over: self.taken_over,
            failed_attempts: self.failed_attempts,
        }
    }
}

impl Facts {
    /// The runs as a listing shows them, newest first, keeping those `filter` asks for.
    pub fn summaries(&self, filter: &RunFilter) -> Vec<RunSummary> {
        let mut runs: Vec<RunSummary> = self
            .runs
            .iter()
            .filter(|r| !r.removing && filter.run.is_none_or(|run| run == r.run))
            .map(|r| r.summary(self.now))
            .filter(|r| filter.states.is_empty() || filter.states.contains(&r.state))
            .collect();
        runs.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then_with(|| a.run.cmp(&b.run))
        });
        runs
    }
}

/// The runs of `index` that `filter` keeps, newest first.
pub async fn list(
    index: &dyn RunIndex,
    cx: &CallContext,
    filter: &RunFilter,
) -> Result<Vec<RunSummary>, ContextStoreError> {
    let select = filter.run.map_or(Select::All, Select::One);
    Ok(index.facts(cx, select).await?.summaries(filter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::FlowRunId;
    use crate::json::JsonText;
    use crate::runs::WorkerRow;

    fn worker(seen_at: i64, ended: Option<(i64, WorkerOutcome)>) -> WorkerRow {
        WorkerRow {
            name: "w".into(),
            incarnation: uuid::Uuid::new_v4(),
            started_at: 0,
            seen_at,
            lease_ms: 1000,
            ended_at: ended.map(|e| e.0),
            outcome: ended.map(|e| e.1),
        }
    }

    fn facts(workers: Vec<WorkerRow>, outputs: u32) -> RunFacts {
        let graph = JsonText::from_stored("{}".into());
        let mut facts = RunFacts::recorded(FlowRunId::new(), "f".into(), "h".into(), graph, 3, 0);
        facts.workers = workers;
        facts.outputs = outputs;
        facts
    }

    #[test]
    fn a_run_is_running_while_a_worker_is_seen_within_its_lease() {
        let run = facts(vec![worker(5000, None)], 1);
        assert_eq!(run.state(5500), RunState::Running);
        assert_eq!(run.state(6000), RunState::Stalled);
    }

    #[test]
    fn a_run_whose_nodes_all_have_outputs_is_done() {
        let run = facts(vec![worker(5000, None)], 3);
        assert_eq!(run.state(5500), RunState::Done);
        assert_eq!(run.summary(5500).ended_at, Some(5000));
    }

    #[test]
    fn a_run_whose_last_worker_failed_is_failed_unless_another_died_later() {
        let mut run = facts(vec![worker(5000, Some((5000, WorkerOutcome::Failed)))], 1);
        assert_eq!(run.state(9000), RunState::Failed);
        let mut later = worker(7000, None);
        later.started_at = 6000;
        run.workers.push(later);
        assert_eq!(run.state(7500), RunState::Running);
        assert_eq!(run.state(9000), RunState::Stalled);
    }

    #[test]
    fn a_cancelled_run_is_cancelled_and_a_live_claim_is_running() {
        let mut run = facts(vec![worker(0, None)], 0);
        run.live_claims = 1;
        assert_eq!(run.state(9000), RunState::Running);
        assert_eq!(run.summary(9000).nodes.running, 1);
        run.cancelled_at = Some(10);
        assert_eq!(run.state(9000), RunState::Cancelled);
    }

    #[test]
    fn states_parse_from_their_names() {
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>(), Ok(state));
        }
        assert!("finished".parse::<RunState>().is_err());
    }
}
