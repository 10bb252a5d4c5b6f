//! The results consumer: labmq-web's own durable queue, bound to the results exchange, so
//! results published while labmq-web is down wait for it. Deliveries are stored in
//! batches (what is already prefetched, up to [`BATCH`]), one transaction each, and acked
//! only after that transaction is committed; a redelivery updates its row. A lost
//! connection is followed by reconnect, redeclare and resume, with backoff.
//!
//! A batch the database refuses stays unacked and is retried with backoff
//! ([`STORE_RETRY_FIRST`] doubling to [`STORE_RETRY_MAX`]) while `/healthz` says the
//! database is failing: requeueing it would only bring it straight back, a busy loop of
//! redeliveries. The queue itself is bounded (`results_queue_max_length`, drop-head).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::Connection;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicQosOptions};
use tokio_util::sync::CancellationToken;

use super::metrics::WebMetrics;
use super::status::Status;
use super::store::Store;
use crate::amqp::AmqpError;
use crate::amqp::session::{Link, Session, SessionEnd};
use crate::amqp::topology::{Topology, subscribe};
use crate::daemon::logging::error_chain;
use crate::task::ResultDocument;

/// Most deliveries stored in one transaction (and the prefetch).
const BATCH: u16 = 256;
/// The first wait before storing a refused batch again.
const STORE_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two tries of a refused batch.
const STORE_RETRY_MAX: Duration = Duration::from_secs(30);

pub(super) struct Ingest {
    /// The broker, for status lines and `/healthz`: no user, no password.
    pub broker: String,
    /// The broker as errors name it (with the user), replaced by `broker` in status text.
    pub broker_in_errors: String,
    pub max_length: u32,
    pub topology: Topology,
    pub queue: String,
    pub store: Store,
    pub status: Arc<Status>,
    pub metrics: WebMetrics,
    /// Sessions that got as far as consuming: every one after the first is a reconnect.
    pub sessions: u64,
}

impl Session for Ingest {
    async fn run(
        &mut self,
        connection: &Connection,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, AmqpError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| AmqpError::amqp("opening the results channel", e))?;
        let channel = self.declare(connection, channel).await?;
        channel
            .basic_qos(BATCH, BasicQosOptions::default())
            .await
            .map_err(|e| AmqpError::amqp("setting prefetch", e))?;
        let mut consumer = subscribe(&channel, &self.queue).await?;
        tracing::info!(queue = %self.queue, exchange = %self.topology.results_exchange, broker = %self.broker, "consuming results");
        if self.sessions > 0 {
            self.metrics.broker_reconnects.inc();
        }
        self.sessions += 1;
        self.metrics.broker_connected.set(1);
        self.status.broker(
            true,
            format!(
                "broker: storing results from {} on {}",
                self.queue, self.broker
            ),
        );

        let end = loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => break SessionEnd::Shutdown,
                next = consumer.next() => next,
            };
            let mut batch = match first {
                Some(Ok(delivery)) => vec![delivery],
                Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                None => break SessionEnd::Lost("subscription cancelled by the broker".into()),
            };
            // Whatever else is already here joins the same transaction.
            let mut lost = None;
            while batch.len() < usize::from(BATCH) {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    Some(Some(Err(e))) => {
                        lost = Some(e.to_string());
                        break;
                    }
                    Some(None) => {
                        lost = Some("subscription cancelled by the broker".into());
                        break;
                    }
                    None => break,
                }
            }
            match self.store_batch(&channel, batch, shutdown).await {
                Ok(()) => {}
                Err(Stop::Lost(reason)) => break SessionEnd::Lost(reason),
                Err(Stop::Shutdown) => break SessionEnd::Shutdown,
            }
            if let Some(reason) = lost {
                break SessionEnd::Lost(reason);
            }
        };
        self.metrics.broker_connected.set(0);
        Ok(end)
    }

    fn link(&self, state: Link<'_>) {
        let text = match state {
            Link::Connecting => format!("broker: connecting to {}", self.broker),
            Link::Reconnecting { reason } => {
                let reason = reason.replace(&self.broker_in_errors, &self.broker);
                format!("broker: reconnecting to {} ({reason})", self.broker)
            }
        };
        self.status.broker(false, text);
    }
}

/// Why storing a batch stopped the session.
enum Stop {
    Lost(String),
    Shutdown,
}

impl Ingest {
    /// Declares the results queue bounded by `max_length`. A queue that already exists
    /// with other arguments (declared by an older labmq-web, without a length) makes the
    /// broker close the channel: it is then used as it is, on a new channel, with a
    /// warning that names the key and the way to apply it.
    async fn declare(
        &self,
        connection: &Connection,
        channel: lapin::Channel,
    ) -> Result<lapin::Channel, AmqpError> {
        let bounded = self
            .topology
            .declare_results_queue(&channel, &self.queue, Some(self.max_length))
            .await;
        match bounded {
            Ok(()) => Ok(channel),
            Err(e) if error_chain(&e).contains("PRECONDITION_FAILED") => {
                tracing::warn!(
                    queue = %self.queue,
                    error = %error_chain(&e),
                    "results queue {} exists with other arguments, so results_queue_max_length = {} is not applied and it stays unbounded; delete it while labmq-web is stopped to apply it",
                    self.queue,
                    self.max_length
                );
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(|e| AmqpError::amqp("opening the results channel", e))?;
                self.topology
                    .declare_results_queue(&channel, &self.queue, None)
                    .await?;
                Ok(channel)
            }
            Err(e) => Err(e),
        }
    }

    /// Stores a batch and acks it. A database error keeps the batch unacked and tries
    /// again with backoff until it is stored, the connection goes or shutdown comes (then
    /// the batch is requeued for the next run).
    async fn store_batch(
        &self,
        channel: &lapin::Channel,
        batch: Vec<lapin::message::Delivery>,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let Some(last_tag) = batch.last().map(|d| d.delivery_tag) else {
            return Ok(());
        };
        let mut documents = Vec::with_capacity(batch.len());
        let mut dropped = 0u64;
        for delivery in &batch {
            match serde_json::from_slice::<ResultDocument>(&delivery.data) {
                Ok(document) => {
                    tracing::debug!(task_id = %document.id, kind = ?document.kind, ok = document.ok, redelivered = delivery.redelivered, "storing result");
                    documents.push(document);
                }
                // Acked with the rest: a body that is not a result document never will be.
                Err(e) => {
                    dropped += 1;
                    tracing::warn!(
                        error = %e,
                        body = %crate::task::truncate(&String::from_utf8_lossy(&delivery.data), 200),
                        "dropping a message that is not a result document"
                    );
                }
            }
        }
        let count = documents.len();
        let mut wait = STORE_RETRY_FIRST;
        while let Err(e) = self.store.upsert(documents.clone()).await {
            let error = error_chain(&e);
            tracing::error!(error = %error, count, retry_in = ?wait, "cannot store results; keeping them unacked and retrying in {wait:?}");
            self.status.database_write(Some(error));
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = channel
                        .basic_nack(
                            last_tag,
                            BasicNackOptions {
                                multiple: true,
                                requeue: true,
                            },
                        )
                        .await;
                    return Err(Stop::Shutdown);
                }
                () = tokio::time::sleep(wait) => {}
            }
            if !channel.status().connected() {
                return Err(Stop::Lost(
                    "the results channel closed while the database was failing".into(),
                ));
            }
            wait = (wait * 2).min(STORE_RETRY_MAX);
        }
        self.status.database_write(None);
        channel
            .basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| Stop::Lost(format!("acking stored results: {e}")))?;
        self.metrics.results_ingested.inc_by(count as u64);
        self.metrics.results_dropped.inc_by(dropped);
        tracing::debug!(count, "results stored and acked");
        Ok(())
    }
}
