//! labmq-web's metrics: submits by outcome, tasks published, results ingested and the
//! results consumer's broker link. Served at `/metrics` on labmq-web's own listener when
//! the `metrics` key is on.

use prometheus::{IntCounter, IntCounterVec, IntGauge};

use crate::daemon::metrics::{Metrics, MetricsError};

#[derive(Clone)]
pub struct WebMetrics {
    submits: IntCounterVec,
    tasks: IntCounterVec,
    pub results_ingested: IntCounter,
    pub results_dropped: IntCounter,
    pub broker_connected: IntGauge,
    pub broker_reconnects: IntCounter,
}

impl WebMetrics {
    pub fn new(metrics: &Metrics) -> Result<Self, MetricsError> {
        Ok(Self {
            submits: metrics.counter_vec(
                "labmq_web_submits_total",
                "Submits (form or API), by outcome: accepted, or the error code (no_tasks, too_many_tasks, rate_limited, broker_unavailable, not_confirmed).",
                &["outcome"],
            )?,
            tasks: metrics.counter_vec(
                "labmq_web_tasks_submitted_total",
                "Tasks of accepted submits, by outcome: published (confirmed by the broker) or rejected (did not parse).",
                &["outcome"],
            )?,
            results_ingested: metrics.counter(
                "labmq_web_results_ingested_total",
                "Result documents stored in the database and acked.",
            )?,
            results_dropped: metrics.counter(
                "labmq_web_results_dropped_total",
                "Messages on the results queue that were not result documents (acked and dropped).",
            )?,
            broker_connected: metrics.gauge(
                "labmq_web_broker_connected",
                "1 while the results consumer is consuming on a broker connection, else 0.",
            )?,
            broker_reconnects: metrics.counter(
                "labmq_web_broker_reconnects_total",
                "Results consumer connections set up again after the first one.",
            )?,
        })
    }

    /// One submit ended with `outcome`: `accepted` or a fixed error code.
    pub fn submit(&self, outcome: &'static str, published: usize, rejected: usize) {
        self.submits.with_label_values(&[outcome]).inc();
        self.tasks
            .with_label_values(&["published"])
            .inc_by(published as u64);
        self.tasks
            .with_label_values(&["rejected"])
            .inc_by(rejected as u64);
    }
}
