//! Process metrics of a worker (feature `metrics`), in the Prometheus text
//! format: what this process does, as opposed to what the store holds
//! (`contextstore serve` reads that).
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `contextstore_store_commit_seconds{backend}` | histogram | one store commit, as the writer waited for it: on SQLite a group-commit transaction from `BEGIN IMMEDIATE` (lock wait included) to `COMMIT`; on PostgreSQL a write call with its retries |
//! | `contextstore_store_group_commit_writes` | histogram | writes per SQLite group-commit transaction |
//! | `contextstore_invocations_in_flight` | gauge | step invocations running now |
//! | `contextstore_invocations_total` | counter | step invocations started |
//!
//! The metrics live in one registry per process, made at first use; the
//! store and the runtime record into it only in a build with the feature.
//! [`render`] gives the text a `/metrics` endpoint serves.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, Registry, TextEncoder,
};

/// An error rendering the metrics.
#[derive(Debug, thiserror::Error)]
#[error("cannot render the metrics: {0}")]
pub struct MetricsError(String);

/// Which backend a commit went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL database.
    Postgres,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

struct Metrics {
    registry: Registry,
    commit_seconds: HistogramVec,
    batch_writes: Histogram,
    in_flight: IntGauge,
    invocations: IntCounter,
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let commit_seconds = HistogramVec::new(
            HistogramOpts::new(
                "contextstore_store_commit_seconds",
                "Store commit latency as the writer waited for it (SQLite: one group-commit \
                 transaction, lock wait included; PostgreSQL: one write call with its retries).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["backend"],
        )?;
        let batch_writes = Histogram::with_opts(
            HistogramOpts::new(
                "contextstore_store_group_commit_writes",
                "Writes per SQLite group-commit transaction.",
            )
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 11)?),
        )?;
        let in_flight = IntGauge::new(
            "contextstore_invocations_in_flight",
            "Step invocations running now.",
        )?;
        let invocations = IntCounter::new(
            "contextstore_invocations_total",
            "Step invocations started.",
        )?;
        registry.register(Box::new(commit_seconds.clone()))?;
        registry.register(Box::new(batch_writes.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(invocations.clone()))?;
        Ok(Self {
            registry,
            commit_seconds,
            batch_writes,
            in_flight,
            invocations,
        })
    }
}

/// The process's metrics; `None` (logged once) if they could not be made.
static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| match Metrics::new() {
    Ok(metrics) => Some(metrics),
    Err(error) => {
        tracing::warn!(%error, "process metrics are off: cannot make them");
        None
    }
});

/// Records one commit to `backend` that took `elapsed`.
pub fn record_commit(backend: Backend, elapsed: Duration) {
    if let Some(m) = METRICS.as_ref() {
        m.commit_seconds
            .with_label_values(&[backend.label()])
            .observe(elapsed.as_secs_f64());
    }
}

/// Records one SQLite group-commit transaction of `writes` writes.
pub fn record_batch(writes: usize) {
    if let Some(m) = METRICS.as_ref() {
        m.batch_writes.observe(writes as f64);
    }
}

/// Counts a step invocation as in flight until the guard is dropped.
pub fn invocation_started() -> InFlightInvocation {
    if let Some(m) = METRICS.as_ref() {
        m.in_flight.inc();
        m.invocations.inc();
    }
    InFlightInvocation { _private: () }
}

/// An invocation counted in `contextstore_invocations_in_flight` while it
/// lives (see [`invocation_started`]).
#[derive(Debug)]
#[must_use = "the invocation counts as in flight only while the guard lives"]
pub struct InFlightInvocation {
    _private: (),
}

impl Drop for InFlightInvocation {
    fn drop(&mut self) {
        if let Some(m) = METRICS.as_ref() {
            m.in_flight.dec();
        }
    }
}

/// The process's metrics in the Prometheus text format (version 0.0.4).
pub fn render() -> Result<String, MetricsError> {
    let mut text = String::new();
    if let Some(m) = METRICS.as_ref() {
        TextEncoder::new()
            .encode_utf8(&m.registry.gather(), &mut text)
            .map_err(|e| MetricsError(e.to_string()))?;
    }
    Ok(text)
}

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    // Other tests of this binary record into the same registry at the same
    // time: only what they cannot change is checked.
    #[test]
    fn recorded_metrics_render_in_the_text_format() {
        record_commit(Backend::Sqlite, Duration::from_millis(3));
        record_batch(5);
        let guard = invocation_started();
        let text = render().unwrap();
        for line in [
            "# TYPE contextstore_invocations_in_flight gauge",
            "# TYPE contextstore_invocations_total counter",
            "# TYPE contextstore_store_commit_seconds histogram",
            "contextstore_store_commit_seconds_count{backend=\"sqlite\"}",
            "contextstore_store_group_commit_writes_bucket{le=\"8\"}",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
        drop(guard);
    }
}
