//! labmq-consumer's metrics: tasks by kind and outcome, their latency, retries, dead
//! letters, requeues, deliveries in flight, the broker link, and its own gRPC calls.
//! Every label value comes from a fixed set (task kinds, result error codes, gRPC code
//! names), never from a message.

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};

use crate::daemon::metrics::{Metrics, MetricsError};
use crate::task::{ResultDocument, TaskKind};

/// The `kind` label of a result whose body was not a task at all.
pub const NO_KIND: &str = "none";
/// Every value of the `kind` label.
pub const KINDS: &[&str] = &["ab", "factorial", "frequent_letter", "upper", NO_KIND];
/// Every value of the `outcome` label.
pub const OUTCOMES: [&str; 2] = ["ok", "failed"];

#[derive(Clone)]
pub struct ConsumerMetrics {
    pub(super) tasks: IntCounterVec,
    pub(super) task_latency: HistogramVec,
    pub retries: IntCounter,
    pub(super) dead_letters: IntCounterVec,
    pub requeues: IntCounter,
    pub in_flight: IntGauge,
    pub broker_connected: IntGauge,
    pub consuming: IntGauge,
    pub broker_reconnects: IntCounter,
    grpc_calls: IntCounterVec,
    grpc_latency: HistogramVec,
    /// Time from a delivery's arrival to its ack, whatever the number of tasks in it.
    message_latency: Histogram,
}

impl ConsumerMetrics {
    pub fn new(metrics: &Metrics) -> Result<Self, MetricsError> {
        let created = Self {
            tasks: metrics.counter_vec(
                "labmq_consumer_tasks_total",
                "Tasks processed (result published and message acked), by kind and outcome (ok, failed).",
                &["kind", "outcome"],
            )?,
            task_latency: metrics.latency_vec(
                "labmq_consumer_task_duration_seconds",
                "Processing time of one task (gRPC calls and retry waits), by kind.",
                &["kind"],
            )?,
            retries: metrics.counter(
                "labmq_consumer_task_retries_total",
                "gRPC calls made again after a transient failure (server unavailable, overloaded, timed out).",
            )?,
            dead_letters: metrics.counter_vec(
                "labmq_consumer_dead_letters_total",
                "Messages copied to the dead-letter queue, by the error code of their first failed task.",
                &["code"],
            )?,
            requeues: metrics.counter(
                "labmq_consumer_requeues_total",
                "Deliveries given back to the queue unprocessed (shutdown, publish failure).",
            )?,
            in_flight: metrics.gauge(
                "labmq_consumer_messages_in_flight",
                "Deliveries being processed now (at most concurrency).",
            )?,
            broker_connected: metrics.gauge(
                "labmq_consumer_broker_connected",
                "1 while connected to a broker (set up, channels open), else 0.",
            )?,
            consuming: metrics.gauge(
                "labmq_consumer_consuming",
                "1 while subscribed to the task queue (deliveries flow), else 0: waiting for the broker, reconnecting, or subscribing again after the broker cancelled the subscription.",
            )?,
            broker_reconnects: metrics.counter(
                "labmq_consumer_broker_reconnects_total",
                "Broker connections set up again after the first one.",
            )?,
            grpc_calls: metrics.counter_vec(
                "labmq_consumer_grpc_calls_total",
                "gRPC calls made to labmq-server, by method and status code.",
                &["method", "code"],
            )?,
            grpc_latency: metrics.latency_vec(
                "labmq_consumer_grpc_call_duration_seconds",
                "Duration of one gRPC call to labmq-server, by method.",
                &["method"],
            )?,
            message_latency: metrics.latency(
                "labmq_consumer_message_duration_seconds",
                "Time from a delivery's arrival to its ack (all its tasks, publish and confirms).",
            )?,
        };
        // Every kind and outcome from the start, at 0: rate() and increase() then see
        // the first task of a kind too.
        for kind in KINDS {
            for outcome in OUTCOMES {
                created.tasks.with_label_values(&[*kind, outcome]);
            }
            created.task_latency.with_label_values(&[*kind]);
        }
        Ok(created)
    }

    /// One result published and acked.
    pub fn task_done(&self, document: &ResultDocument) {
        let kind = document.kind.map_or(NO_KIND, TaskKind::as_str);
        let outcome = if document.error.is_none() {
            OUTCOMES[0]
        } else {
            OUTCOMES[1]
        };
        self.tasks.with_label_values(&[kind, outcome]).inc();
        self.task_latency
            .with_label_values(&[kind])
            .observe(document.duration_ms / 1000.0);
    }

    /// A message copied to the dead-letter queue; `code` is one of the fixed result
    /// error codes or a gRPC code name.
    pub fn dead_lettered(&self, code: &str) {
        self.dead_letters.with_label_values(&[code]).inc();
    }

    pub fn message_done(&self, seconds: f64) {
        self.message_latency.observe(seconds);
    }

    /// One gRPC call of a task of `kind`, ended with gRPC code name `code`.
    pub fn grpc_call(&self, kind: TaskKind, code: &str, seconds: f64) {
        let method = grpc_method(kind);
        self.grpc_calls.with_label_values(&[method, code]).inc();
        self.grpc_latency
            .with_label_values(&[method])
            .observe(seconds);
    }
}

/// The `MessageService` method that computes a task of `kind`.
fn grpc_method(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Ab => "AssignAB",
        TaskKind::Factorial => "Factorial",
        TaskKind::FrequentLetter => "MostFrequentLetter",
        TaskKind::Upper => "ProcessMessage",
    }
}

/// Holds one unit of `in_flight` while alive, so a delivery is counted out however its
/// processing ends (panic and abort included).
pub struct InFlight(IntGauge);

impl InFlight {
    pub fn enter(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
