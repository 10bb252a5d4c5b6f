//! `labmq-consumer`: takes tasks from the task queue, computes them through labmq-server
//! and publishes one result document per task.
//!
//! - [`config`]: its configuration and command line;
//! - [`session`]: the work on one broker connection: up to `concurrency` deliveries in
//!   flight; SIGTERM drains; a subscription the broker cancels is taken up again;
//! - [`delivery`]: one delivery, acked only after its results (and, for a bad message,
//!   its dead-letter copy) are confirmed by the broker; requeued on shutdown; a panic
//!   caught;
//! - [`handle`]: one delivery's body in, result documents out (parse, check the limits
//!   and the delivery count, call with capped retries);
//! - [`dead_letter`]: the properties of a bad message's dead-letter copy;
//! - [`status`]: the `STATUS=` line and the one-line-per-outage gRPC log;
//! - [`metrics`]: its Prometheus metrics, served at `metrics_listen`;
//! - [`tasklog`]: per-task records at debug, failures at warn (rate-limited), a summary
//!   at info every `log_summary_secs`.
//!
//! The reconnect loop around sessions is the shared [`crate::amqp::session::Driver`].

mod acks;
pub mod config;
pub mod dead_letter;
mod delivery;
pub mod handle;
mod metrics;
mod session;
mod status;
mod tasklog;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::amqp::AmqpError;
use crate::amqp::session::Driver;
use crate::daemon::metrics::{Metrics, MetricsError};
use crate::daemon::systemd;
use crate::grpc::client::{ClientError, ClientOptions, ComputeClient};
pub use config::{ConsumerArgs, ConsumerConfig};
use status::StatusBoard;

/// How long connecting to the broker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Consumes until `shutdown`, reconnecting to the broker as long as it takes.
pub async fn run(
    config: &ConsumerConfig,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let target = config.amqp.target()?;
    let client = Arc::new(ComputeClient::lazy(
        &config.grpc_targets,
        &ClientOptions {
            request_timeout: Duration::from_secs(config.grpc_timeout_secs),
            tls: config.grpc_tls()?,
            connections: config.grpc_connections.into(),
            batch_max_tasks: config.grpc_batch_max_tasks.into(),
            ..ClientOptions::default()
        },
    )?);
    let metrics = Metrics::new()?;
    let consumer_metrics = metrics::ConsumerMetrics::new(&metrics)?;
    if let Some(addr) = config.metrics_addr() {
        metrics.serve(addr, shutdown.clone()).await?;
    }
    let status = Arc::new(StatusBoard::default());
    // Ready once configured and started, whether or not the broker answers: a unit
    // ordered after this one, `systemctl start` and the boot must not wait for a broker
    // that may be down for hours. The status line says what it waits for, and
    // labmq_consumer_consuming says whether deliveries flow.
    status.broker(format!("connecting to RabbitMQ at {}", target.redacted()));
    systemd::ready(&status.line());
    let task_log = Arc::new(tasklog::TaskLog::new(consumer_metrics.clone()));
    // Stopped after the drain, not at SIGTERM, so the last summary counts every task.
    let summaries_stop = CancellationToken::new();
    let summaries = tokio::spawn({
        let task_log = task_log.clone();
        let interval = Duration::from_secs(config.log_summary_secs);
        let stop = summaries_stop.clone();
        async move { task_log.summarize(interval, stop).await }
    });
    systemd::spawn_watchdog(shutdown.clone());

    let mut session =
        session::ConsumeSession::new(config, &target, client, status, consumer_metrics, task_log);
    Driver {
        target: &target,
        client_name: "labmq-consumer",
        connect_timeout: CONNECT_TIMEOUT,
        reconnect_max: Duration::from_secs(config.reconnect_max_secs),
    }
    .run(&mut session, &shutdown)
    .await;
    // The last summary covers the tasks finished while draining.
    summaries_stop.cancel();
    if let Err(e) = summaries.await {
        tracing::warn!(error = %e, "the log summary task ended abnormally");
    }
    systemd::stopping("stopped");
    tracing::info!("labmq-consumer stopped");
    Ok(())
}
