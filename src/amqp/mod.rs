//! RabbitMQ, shared by labmq-consumer, labmq-web and labmq-produce:
//!
//! - [`settings`]: the broker settings every AMQP program has (`amqp_url`, password,
//!   queue names), read once into an [`AmqpTarget`](settings::AmqpTarget) that never
//!   prints its password;
//! - [`topology`]: queue and exchange names and their declarations;
//! - [`publish`]: confirmed publishing on a channel in confirm mode;
//! - [`producer`]: publishing tasks (labmq-produce, labmq-web's submits) and waiting for
//!   their results over direct reply-to;
//! - [`quarantine`]: taking messages lapin cannot parse (properties that are not UTF-8)
//!   off the head of a queue with a minimal client of its own, so they cannot wedge it;
//! - [`tls`]: the TLS handshake with `amqps://` nodes and what a failed one means;
//! - [`session`]: the one reconnecting session driver that the consumer and labmq-web's
//!   results ingest both run (connect with a time limit, one log line per outage,
//!   backoff, bounded close).

pub mod producer;
pub(crate) mod publish;
pub mod quarantine;
pub(crate) mod session;
pub mod settings;
pub mod tls;
pub mod topology;

/// A broker failure. Every variant keeps the library error it came from as its `source`,
/// so a caller can tell a refused login from a refused connection and a log line can
/// print the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("invalid AMQP URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot read AMQP password file {path}")]
    PasswordFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to RabbitMQ at {url}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    /// TLS is why: a failed handshake, a refused client certificate, a plaintext/TLS
    /// mismatch; `reason` says which and the likely fix.
    #[error("cannot connect to RabbitMQ at {url}: {reason}")]
    TlsFailure { url: String, reason: String },
    /// The peer answered with bytes that are no AMQP 0-9-1 frame (another protocol).
    #[error(
        "cannot connect to RabbitMQ at {url}: {}; is this port a RabbitMQ AMQP listener (usually 5672)?",
        tls::NOT_AN_AMQP_FRAME
    )]
    NotAmqp { url: String },
    #[error("cannot connect to RabbitMQ at {url}: no answer within {timeout:?}")]
    ConnectTimeout {
        url: String,
        timeout: std::time::Duration,
    },
    #[error("cannot connect to any RabbitMQ node of {tried}")]
    NoNode {
        tried: String,
        /// The last node's failure.
        #[source]
        last: Box<AmqpError>,
    },
    /// The queue exists with other arguments than ours; `asked` is what we declared,
    /// `broker` the broker's reply, which names the argument and the queue's value.
    #[error(
        "declaring queue {queue:?} with {asked} was refused because the queue exists with other arguments (PRECONDITION_FAILED: {broker}); give every client (consumer, web, produce) the same queue_type (and results_queue_max_length for a results queue), or delete the queue once drained (rabbitmqctl delete_queue {queue}) so it is declared again"
    )]
    DeclareMismatch {
        queue: String,
        asked: String,
        broker: String,
    },
    #[error("RabbitMQ {operation} failed")]
    Amqp {
        operation: String,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ {operation}: no answer within {timeout:?}")]
    Timeout {
        operation: String,
        timeout: std::time::Duration,
    },
    #[error("publish to {target} was not confirmed: {reason}")]
    NotConfirmed { target: String, reason: String },
}

impl AmqpError {
    pub fn amqp(operation: impl Into<String>, source: lapin::Error) -> Self {
        AmqpError::Amqp {
            operation: operation.into(),
            source,
        }
    }

    /// The broker could not be reached or refused the connection (as opposed to an
    /// operation failing on an open connection).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            AmqpError::Connect { .. }
                | AmqpError::ConnectTimeout { .. }
                | AmqpError::TlsFailure { .. }
                | AmqpError::NoNode { .. }
        )
    }

    /// The broker answered with this AMQP reply code (e.g. 403 ACCESS_REFUSED, 404
    /// NOT_FOUND, 406 PRECONDITION_FAILED).
    pub fn reply_code(&self) -> Option<u16> {
        let source = match self {
            AmqpError::Connect { source, .. } | AmqpError::Amqp { source, .. } => source,
            AmqpError::NoNode { last, .. } => return last.reply_code(),
            AmqpError::DeclareMismatch { .. } => return Some(406),
            _ => return None,
        };
        match source.kind() {
            lapin::ErrorKind::ProtocolError(error) => Some(error.get_id()),
            _ => None,
        }
    }
}
