//! Names and declarations. The task queue is declared exactly as a plain pika producer
//! declares it (`queue_declare('task_queue', durable=True)`, no arguments), so either
//! side may declare first; `queue_type = "quorum"` opts into a quorum queue instead.

use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use serde::{Deserialize, Serialize};

use super::AmqpError;

pub const DEFAULT_QUEUE: &str = "task_queue";
pub const DEFAULT_RESULTS_EXCHANGE: &str = "labmq.results";
/// Appended to the task queue's name to name its dead-letter queue.
pub const DEAD_LETTER_SUFFIX: &str = ".dead";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Single-node, compatible with plain clients that declare the queue themselves.
    #[default]
    Classic,
    /// Replicated over a RabbitMQ cluster (Raft); survives the loss of a minority of nodes.
    Quorum,
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub queue: String,
    pub queue_type: QueueType,
    pub results_exchange: String,
}

impl Topology {
    pub fn dead_letter_queue(&self) -> String {
        format!("{}{DEAD_LETTER_SUFFIX}", self.queue)
    }

    fn queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        arguments
    }

    /// The task queue only: what a producer needs.
    pub async fn declare_task_queue(&self, channel: &Channel) -> Result<(), AmqpError> {
        declare_queue(channel, &self.queue, self.queue_arguments()).await
    }

    /// Everything the consumer touches: task queue, dead-letter queue, results exchange.
    pub async fn declare_all(&self, channel: &Channel) -> Result<(), AmqpError> {
        self.declare_task_queue(channel).await?;
        declare_queue(channel, &self.dead_letter_queue(), self.queue_arguments()).await?;
        self.declare_results_exchange(channel).await
    }

    pub async fn declare_results_exchange(&self, channel: &Channel) -> Result<(), AmqpError> {
        channel
            .exchange_declare(
                self.results_exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                AmqpError::amqp(format!("declaring exchange {:?}", self.results_exchange), e)
            })
    }

    /// A durable queue of `queue_type` bound to the results exchange (for result readers
    /// such as labmq-web, or callers who collect results later). With `max_length` the
    /// queue keeps at most that many results, dropping the oldest (`x-overflow =
    /// drop-head`): the broker's disk stays bounded when nobody reads it, and a publish
    /// to it is never refused (a refusal would hold the task unacked).
    pub async fn declare_results_queue(
        &self,
        channel: &Channel,
        queue: &str,
        max_length: Option<u32>,
    ) -> Result<(), AmqpError> {
        self.declare_results_exchange(channel).await?;
        let mut arguments = self.queue_arguments();
        if let Some(max_length) = max_length {
            arguments.insert("x-max-length".into(), AMQPValue::LongUInt(max_length));
            arguments.insert(
                "x-overflow".into(),
                AMQPValue::LongString("drop-head".into()),
            );
        }
        declare_queue(channel, queue, arguments).await?;
        channel
            .queue_bind(
                queue.into(),
                self.results_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| AmqpError::amqp(format!("binding queue {queue:?}"), e))
    }
}

/// A durable queue with `arguments` (none: what a plain client declares).
pub async fn declare_queue(
    channel: &Channel,
    queue: &str,
    arguments: FieldTable,
) -> Result<(), AmqpError> {
    let asked = arguments.clone();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map(|_| ())
        .map_err(|e| match e.kind() {
            lapin::ErrorKind::ProtocolError(reply) if reply.get_id() == PRECONDITION_FAILED => {
                AmqpError::DeclareMismatch {
                    queue: queue.to_owned(),
                    asked: describe_arguments(&asked),
                    broker: reply.get_message().to_string(),
                }
            }
            _ => AmqpError::amqp(format!("declaring queue {queue:?}"), e),
        })
}

/// AMQP's reply code for a declare that does not match the existing queue.
const PRECONDITION_FAILED: u16 = 406;

/// `durable, x-queue-type = "quorum", x-max-length = 100`: what we declared, for the
/// error of a mismatch (the broker's reply names only the first argument that differs).
pub fn describe_arguments(arguments: &FieldTable) -> String {
    let mut parts = vec!["durable".to_owned()];
    let mut pairs: Vec<_> = arguments.inner().iter().collect();
    pairs.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    for (key, value) in pairs {
        let value = match value {
            AMQPValue::LongString(text) => format!("{:?}", text.to_string()),
            AMQPValue::ShortString(text) => format!("{:?}", text.as_str()),
            AMQPValue::LongUInt(n) => n.to_string(),
            AMQPValue::LongLongInt(n) => n.to_string(),
            AMQPValue::LongInt(n) => n.to_string(),
            other => format!("{other:?}"),
        };
        parts.push(format!("{} = {value}", key.as_str()));
    }
    if arguments.inner().is_empty() {
        parts.push("no arguments (classic queue)".to_owned());
    }
    parts.join(", ")
}

/// A passive declare: the queue with its message and consumer counts, or an error if it
/// does not exist (which closes `channel`, as AMQP does for any failed declare).
pub async fn inspect_queue(channel: &Channel, queue: &str) -> Result<lapin::Queue, AmqpError> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| AmqpError::amqp(format!("looking up queue {queue:?}"), e))
}

/// Subscribes to `queue` with manual acks.
pub async fn subscribe(channel: &Channel, queue: &str) -> Result<lapin::Consumer, AmqpError> {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| AmqpError::amqp(format!("consuming from {queue:?}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_described_sorted_with_their_values() {
        let topology = Topology {
            queue: "q".into(),
            queue_type: QueueType::Quorum,
            results_exchange: "x".into(),
        };
        let mut arguments = topology.queue_arguments();
        arguments.insert("x-max-length".into(), AMQPValue::LongUInt(100));
        assert_eq!(
            describe_arguments(&arguments),
            r#"durable, x-max-length = 100, x-queue-type = "quorum""#
        );
        assert_eq!(
            describe_arguments(&FieldTable::default()),
            "durable, no arguments (classic queue)"
        );
    }
}
