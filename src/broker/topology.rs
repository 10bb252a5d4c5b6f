//! Names and declarations. The task queue is declared exactly as a plain pika producer
//! declares it (`queue_declare('task_queue', durable=True)`, no arguments), so either
//! side may declare first; `queue_type = "quorum"` opts into a quorum queue instead.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use serde::{Deserialize, Serialize};

use super::BrokerError;

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
    pub async fn declare_task_queue(&self, channel: &Channel) -> Result<(), BrokerError> {
        declare_queue(channel, &self.queue, self.queue_arguments()).await
    }

    /// Everything the consumer touches: task queue, dead-letter queue, results exchange.
    pub async fn declare_all(&self, channel: &Channel) -> Result<(), BrokerError> {
        self.declare_task_queue(channel).await?;
        declare_queue(channel, &self.dead_letter_queue(), self.queue_arguments()).await?;
        self.declare_results_exchange(channel).await
    }

    pub async fn declare_results_exchange(&self, channel: &Channel) -> Result<(), BrokerError> {
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
                BrokerError::amqp(format!("declaring exchange {:?}", self.results_exchange), e)
            })
    }

    /// A durable queue of `queue_type` bound to the results exchange (for result readers
    /// such as labmq-web).
    pub async fn declare_results_queue(
        &self,
        channel: &Channel,
        queue: &str,
    ) -> Result<(), BrokerError> {
        self.declare_results_exchange(channel).await?;
        declare_queue(channel, queue, self.queue_arguments()).await?;
        channel
            .queue_bind(
                queue.into(),
                self.results_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| BrokerError::amqp(format!("binding queue {queue:?}"), e))
    }
}

async fn declare_queue(
    channel: &Channel,
    queue: &str,
    arguments: FieldTable,
) -> Result<(), BrokerError> {
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
        .map_err(|e| BrokerError::amqp(format!("declaring queue {queue:?}"), e))
}
