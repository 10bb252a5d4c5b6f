//! The results consumer: labmq-web's own durable queue, bound to the results exchange, so
//! results published while labmq-web is down wait for it. Deliveries are stored in
//! batches (what is already prefetched, up to [`BATCH`]), one transaction each, and acked
//! only after that transaction is committed; a redelivery updates its row. A lost
//! connection is followed by reconnect, redeclare and resume, with backoff.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::Connection;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicQosOptions};
use tokio_util::sync::CancellationToken;

use super::status::Status;
use super::store::Store;
use crate::amqp::AmqpError;
use crate::amqp::session::{Link, Session, SessionEnd};
use crate::amqp::topology::{Topology, subscribe};
use crate::daemon::logging::error_chain;
use crate::task::ResultDocument;

/// Most deliveries stored in one transaction (and the prefetch).
const BATCH: u16 = 256;

pub(super) struct Ingest {
    /// The broker, for status lines (no password).
    pub broker: String,
    pub topology: Topology,
    pub queue: String,
    pub store: Store,
    pub status: Arc<Status>,
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
        self.topology
            .declare_results_queue(&channel, &self.queue, None)
            .await?;
        channel
            .basic_qos(BATCH, BasicQosOptions::default())
            .await
            .map_err(|e| AmqpError::amqp("setting prefetch", e))?;
        let mut consumer = subscribe(&channel, &self.queue).await?;
        tracing::info!(queue = %self.queue, exchange = %self.topology.results_exchange, broker = %self.broker, "consuming results");
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
            if let Err(reason) = self.store_batch(&channel, batch).await {
                break SessionEnd::Lost(reason);
            }
            if let Some(reason) = lost {
                break SessionEnd::Lost(reason);
            }
        };
        Ok(end)
    }

    fn link(&self, state: Link<'_>) {
        let text = match state {
            Link::Connecting => format!("broker: connecting to {}", self.broker),
            Link::Reconnecting { reason } => {
                format!("broker: reconnecting to {} ({reason})", self.broker)
            }
        };
        self.status.broker(false, text);
    }
}

impl Ingest {
    /// Stores a batch and acks it; on a database error requeues it and ends the session
    /// (the reconnect backoff paces the retries).
    async fn store_batch(
        &self,
        channel: &lapin::Channel,
        batch: Vec<lapin::message::Delivery>,
    ) -> Result<(), String> {
        let Some(last_tag) = batch.last().map(|d| d.delivery_tag) else {
            return Ok(());
        };
        let mut documents = Vec::with_capacity(batch.len());
        for delivery in &batch {
            match serde_json::from_slice::<ResultDocument>(&delivery.data) {
                Ok(document) => {
                    tracing::debug!(task_id = %document.id, kind = ?document.kind, ok = document.ok, redelivered = delivery.redelivered, "storing result");
                    documents.push(document);
                }
                // Acked with the rest: a body that is not a result document never will be.
                Err(e) => tracing::warn!(
                    error = %e,
                    body = %crate::task::truncate(&String::from_utf8_lossy(&delivery.data), 200),
                    "dropping a message that is not a result document"
                ),
            }
        }
        let count = documents.len();
        if let Err(e) = self.store.upsert(documents).await {
            tracing::error!(error = %error_chain(&e), "cannot store results; requeueing them");
            let _ = channel
                .basic_nack(
                    last_tag,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await;
            return Err(format!("storing results: {}", error_chain(&e)));
        }
        channel
            .basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| format!("acking stored results: {e}"))?;
        tracing::debug!(count, "results stored and acked");
        Ok(())
    }
}
