//! The results consumer: labmq-web's own durable queue, bound to the results exchange, so
//! results published while labmq-web is down wait for it. Deliveries are stored in
//! batches (what is already prefetched, up to [`BATCH`]), one transaction each, and acked
//! only after that transaction is committed; a redelivery updates its row. A lost
//! connection is followed by reconnect, redeclare and resume, with backoff.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use super::Status;
use super::store::Store;
use crate::broker::connection::AmqpTarget;
use crate::broker::result::ResultDocument;
use crate::broker::topology::Topology;
use crate::broker::{BrokerError, backoff};

/// Most deliveries stored in one transaction (and the prefetch).
const BATCH: u16 = 256;
/// How long closing the connection may take at shutdown.
const CLOSE_BOUND: Duration = Duration::from_secs(5);

pub struct Ingest {
    pub target: AmqpTarget,
    pub topology: Topology,
    pub queue: String,
    pub store: Store,
    pub status: Arc<Status>,
    pub reconnect_max: Duration,
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Consumes until `shutdown`, reconnecting as long as it takes.
pub async fn run(ingest: Ingest, shutdown: CancellationToken) {
    let mut delays = backoff::delays(Duration::from_millis(500), ingest.reconnect_max);
    let mut outage: Option<String> = None;
    while !shutdown.is_cancelled() {
        let reason = match ingest.session(&shutdown).await {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::Lost(reason)) => reason,
            Err(e) => e.to_string(),
        };
        if outage.as_deref() != Some(reason.as_str()) {
            tracing::warn!(broker = %ingest.target.redacted(), error = %reason, "results consumer: broker unavailable; reconnecting with backoff");
        } else {
            tracing::debug!(error = %reason, "reconnect attempt failed");
        }
        ingest.status.broker(
            false,
            format!(
                "broker: reconnecting to {} ({reason})",
                ingest.target.redacted()
            ),
        );
        outage = Some(reason);
        let delay = delays.next().unwrap_or(ingest.reconnect_max);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

impl Ingest {
    async fn session(&self, shutdown: &CancellationToken) -> Result<SessionEnd, BrokerError> {
        self.status.broker(
            false,
            format!("broker: connecting to {}", self.target.redacted()),
        );
        let connection = self.target.connect("labmq-web").await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| BrokerError::amqp("opening the results channel", e))?;
        self.topology
            .declare_results_queue(&channel, &self.queue)
            .await?;
        channel
            .basic_qos(BATCH, BasicQosOptions::default())
            .await
            .map_err(|e| BrokerError::amqp("setting prefetch", e))?;
        let mut consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| BrokerError::amqp(format!("consuming from {:?}", self.queue), e))?;
        tracing::info!(queue = %self.queue, exchange = %self.topology.results_exchange, broker = %self.target.redacted(), "consuming results");
        self.status.broker(
            true,
            format!(
                "broker: storing results from {} on {}",
                self.queue,
                self.target.redacted()
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
        // Bounded: a broker that stopped answering must not keep the daemon from exiting
        // (it requeues whatever is unacked when the connection goes anyway).
        let close = connection.close(200, "labmq-web closing".into());
        match tokio::time::timeout(CLOSE_BOUND, close).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "closing the results connection"),
            Err(_) => tracing::warn!("the broker did not answer the close within {CLOSE_BOUND:?}"),
        }
        Ok(end)
    }

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
            tracing::error!(error = %e, "cannot store results; requeueing them");
            let _ = channel
                .basic_nack(
                    last_tag,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await;
            return Err(format!("storing results: {e}"));
        }
        channel
            .basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| format!("acking stored results: {e}"))?;
        tracing::debug!(count, "results stored and acked");
        Ok(())
    }
}
