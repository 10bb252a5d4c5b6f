//! The RabbitMQ side: connection settings, topology, confirmed publishing, the consumer
//! loop, the result document and the retry/reconnect backoff.

pub mod backoff;
pub mod connection;
pub mod consume;
pub mod handle;
pub mod produce;
pub mod publish;
pub mod result;
pub mod status;
pub mod topology;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid AMQP URL {url}: {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot read AMQP password file {path}: {message}")]
    PasswordFile { path: String, message: String },
    #[error("cannot connect to RabbitMQ at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("RabbitMQ {operation} failed: {message}")]
    Amqp { operation: String, message: String },
    #[error("publish to {target} was not confirmed: {reason}")]
    NotConfirmed { target: String, reason: String },
}

impl BrokerError {
    pub fn amqp(operation: impl Into<String>, error: lapin::Error) -> Self {
        BrokerError::Amqp {
            operation: operation.into(),
            message: error.to_string(),
        }
    }
}
