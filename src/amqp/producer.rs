//! Publishing tasks: one persistent message per task on the default exchange, routed to
//! the task queue, each confirmed by the broker; optionally waiting for each task's
//! result over RabbitMQ direct reply-to.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::AmqpError;
use super::publish::{ONE_TASK_HEADER, Publisher, Route, confirmed, persistent};
use super::session::bounded_step;
use super::settings::AmqpTarget;
use super::topology::{Topology, inspect_queue};
use crate::task::{ResultDocument, Task};

/// RabbitMQ's pseudo-queue for direct reply-to: no queue to declare or clean up.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Publishes allowed in flight before waiting for confirms.
const CONFIRM_WINDOW: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error(transparent)]
    Unreachable(AmqpError),
    #[error(transparent)]
    Broker(#[from] AmqpError),
    #[error("{} of {total} tasks were not confirmed by the broker: {}", failed.len(), describe(failed))]
    NotConfirmed {
        total: usize,
        failed: Vec<(String, String)>,
    },
    #[error("waiting for results: the broker closed the reply consumer")]
    RepliesClosed,
    #[error("timed out waiting for {} of {total} results: {}", missing.len(), missing.join(", "))]
    WaitTimeout { total: usize, missing: Vec<String> },
}

fn describe(failed: &[(String, String)]) -> String {
    let shown: Vec<String> = failed
        .iter()
        .take(10)
        .map(|(task, reason)| format!("{task} ({reason})"))
        .collect();
    let more = failed.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// One task as published.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: String,
    pub task: String,
}

pub struct Producer {
    connection: Connection,
    publisher: Publisher,
    queue: String,
}

impl Producer {
    /// Connects and makes sure the task queue exists: it is declared as `topology`
    /// says, and an existing queue declared differently (e.g. a quorum queue while the
    /// producer's config says classic) is used as it is.
    pub async fn connect(
        target: &AmqpTarget,
        topology: &Topology,
        client_name: &str,
        connect_timeout: Duration,
    ) -> Result<Self, ProduceError> {
        let connection = target
            .connect(client_name, connect_timeout)
            .await
            .map_err(ProduceError::Unreachable)?;
        // A broker that took the connection may still never answer on it.
        tokio::time::timeout(connect_timeout, Self::set_up(connection, topology))
            .await
            .unwrap_or_else(|_| {
                Err(ProduceError::Unreachable(AmqpError::Timeout {
                    operation: "opening a channel and declaring the task queue".into(),
                    timeout: connect_timeout,
                }))
            })
    }

    async fn set_up(connection: Connection, topology: &Topology) -> Result<Self, ProduceError> {
        let channel = open_channel(&connection).await?;
        // The common case costs one round trip on the channel that will publish; only a
        // refused declaration (which closes its channel) needs a second channel.
        let channel = match topology.declare_task_queue(&channel).await {
            Ok(()) => channel,
            Err(declare_error) => {
                let channel = open_channel(&connection).await?;
                if inspect_queue(&channel, &topology.queue).await.is_err() {
                    return Err(declare_error.into());
                }
                channel
            }
        };
        let publisher = Publisher::on(channel).await?;
        Ok(Self {
            connection,
            publisher,
            queue: topology.queue.clone(),
        })
    }

    /// Starts listening for replies; must come before publishing with `reply_to`.
    pub async fn listen_for_results(&self) -> Result<lapin::Consumer, AmqpError> {
        self.publisher
            .channel()
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| AmqpError::amqp("consuming from direct reply-to", e))
    }

    /// Publishes every task, many in flight, and returns them once all are confirmed.
    /// With `reply`, each message asks for its result on direct reply-to.
    pub async fn publish(
        &self,
        tasks: &[Task],
        reply: bool,
        confirm_timeout: Duration,
    ) -> Result<Vec<Published>, ProduceError> {
        let route = Route {
            exchange: "",
            routing_key: &self.queue,
            mandatory: true,
        };
        let target = format!("queue {:?}", self.queue);
        let mut published = Vec::with_capacity(tasks.len());
        let mut pending = FuturesUnordered::new();
        let mut failed = Vec::new();
        for task in tasks {
            let id = uuid::Uuid::new_v4().to_string();
            let mut properties = persistent("text/plain", &id);
            if reply {
                properties = properties
                    .with_reply_to(DIRECT_REPLY_TO.into())
                    .with_correlation_id(id.as_str().into());
            }
            let text = task.to_string();
            if text.contains(',') {
                let mut headers = FieldTable::default();
                headers.insert(
                    ONE_TASK_HEADER.into(),
                    lapin::types::AMQPValue::Boolean(true),
                );
                properties = properties.with_headers(headers);
            }
            let confirm = self
                .publisher
                .send(&route, text.as_bytes(), properties)
                .await?;
            let index = published.len();
            published.push(Published { id, task: text });
            let target = target.clone();
            pending.push(async move {
                let outcome = tokio::time::timeout(confirm_timeout, confirmed(confirm, &target))
                    .await
                    .unwrap_or_else(|_| {
                        Err(AmqpError::NotConfirmed {
                            target,
                            reason: format!("no confirm within {confirm_timeout:?}"),
                        })
                    });
                (index, outcome)
            });
            if pending.len() >= CONFIRM_WINDOW {
                collect_one(&mut pending, &published, &mut failed).await;
            }
        }
        while !pending.is_empty() {
            collect_one(&mut pending, &published, &mut failed).await;
        }
        if !failed.is_empty() {
            return Err(ProduceError::NotConfirmed {
                total: tasks.len(),
                failed,
            });
        }
        Ok(published)
    }

    /// False once the connection is gone (closed, or lost with the broker); a cached
    /// producer is then replaced.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Closes the connection, waiting at most [`CLOSE_BOUND`](super::session::CLOSE_BOUND)
    /// for the broker.
    pub async fn close(self) {
        bounded_step(
            "closing the broker connection",
            self.connection.close(200, "done".into()),
        )
        .await;
    }
}

async fn collect_one<F>(
    pending: &mut FuturesUnordered<F>,
    published: &[Published],
    failed: &mut Vec<(String, String)>,
) where
    F: std::future::Future<Output = (usize, Result<(), AmqpError>)>,
{
    if let Some((index, Err(e))) = pending.next().await {
        let task = published
            .get(index)
            .map_or_else(String::new, |p| p.task.clone());
        failed.push((task, e.to_string()));
    }
}

/// Waits for one result per published task, calling `on_result` as each arrives.
pub async fn wait_for_results(
    replies: &mut lapin::Consumer,
    published: &[Published],
    timeout: Duration,
    mut on_result: impl FnMut(ResultDocument),
) -> Result<(), ProduceError> {
    let mut waiting: HashMap<&str, &str> = published
        .iter()
        .map(|p| (p.id.as_str(), p.task.as_str()))
        .collect();
    let deadline = tokio::time::Instant::now() + timeout;
    while !waiting.is_empty() {
        let next = tokio::time::timeout_at(deadline, replies.next()).await;
        let delivery = match next {
            Err(_) => break,
            Ok(None) => {
                return Err(ProduceError::RepliesClosed);
            }
            Ok(Some(Err(e))) => return Err(AmqpError::amqp("waiting for results", e).into()),
            Ok(Some(Ok(delivery))) => delivery,
        };
        let Some(correlation) = delivery.properties.correlation_id().as_ref() else {
            continue;
        };
        if waiting.remove(correlation.as_str()).is_none() {
            continue;
        }
        match serde_json::from_slice::<ResultDocument>(&delivery.data) {
            Ok(document) => on_result(document),
            Err(e) => tracing::warn!(error = %e, "ignoring a reply that is not a result document"),
        }
    }
    if waiting.is_empty() {
        return Ok(());
    }
    let mut missing: Vec<String> = waiting.values().map(|t| (*t).to_owned()).collect();
    missing.sort();
    Err(ProduceError::WaitTimeout {
        total: published.len(),
        missing,
    })
}

async fn open_channel(connection: &Connection) -> Result<Channel, AmqpError> {
    connection
        .create_channel()
        .await
        .map_err(|e| AmqpError::amqp("opening a channel", e))
}
