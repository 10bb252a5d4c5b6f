//! Confirmed publishing: every publish waits for the broker's ack, and a `mandatory`
//! publish that could not be routed counts as a failure, not a success.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};

use super::AmqpError;

/// AMQP delivery mode 2: the broker writes the message to disk.
pub const PERSISTENT: u8 = 2;
/// Header (boolean) of a task message whose body is one task, not a comma list: an
/// `upper:`/`freq:` task whose text holds commas. Set only then, so every other message
/// stays what any client can publish.
pub const ONE_TASK_HEADER: &str = "labmq-one-task";

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

/// Where a message goes.
#[derive(Debug, Clone)]
pub struct Route<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// Ask the broker to return the message if no queue takes it.
    pub mandatory: bool,
}

impl Route<'_> {
    fn describe(&self) -> String {
        if self.exchange.is_empty() {
            format!("queue {:?}", self.routing_key)
        } else {
            format!("exchange {:?}", self.exchange)
        }
    }
}

impl Publisher {
    pub async fn open(connection: &Connection) -> Result<Self, AmqpError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| AmqpError::amqp("opening a channel", e))?;
        Self::on(channel).await
    }

    /// Puts `channel` into confirm mode and publishes on it.
    pub async fn on(channel: Channel) -> Result<Self, AmqpError> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| AmqpError::amqp("enabling publisher confirms", e))?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Sends without waiting for the confirm; await [`confirmed`] on the result. Lets a
    /// producer keep many publishes in flight on one channel.
    pub async fn send(
        &self,
        route: &Route<'_>,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PublisherConfirm, AmqpError> {
        self.channel
            .basic_publish(
                route.exchange.into(),
                route.routing_key.into(),
                BasicPublishOptions {
                    mandatory: route.mandatory,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(|e| AmqpError::amqp(format!("publishing to {}", route.describe()), e))
    }
}

/// Waits for one confirm: Ok only for an ack of a message that was not returned.
pub async fn confirmed(pending: PublisherConfirm, target: &str) -> Result<(), AmqpError> {
    let not_confirmed = |reason: String| AmqpError::NotConfirmed {
        target: target.to_owned(),
        reason,
    };
    match pending.await {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(returned))) => Err(not_confirmed(format!(
            "returned by the broker: {} {}",
            returned.reply_code, returned.reply_text
        ))),
        Ok(Confirmation::Nack(_)) => Err(not_confirmed("nacked by the broker".into())),
        Ok(Confirmation::NotRequested) => {
            Err(not_confirmed("channel is not in confirm mode".into()))
        }
        Err(e) => Err(not_confirmed(e.to_string())),
    }
}

/// Seconds since the epoch, for the AMQP `timestamp` property.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Properties of a persistent text message.
pub fn persistent(content_type: &str, message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(short_string(content_type))
        .with_message_id(short_string(message_id))
        .with_timestamp(unix_now())
}

/// `text` as an AMQP short string, cut at a character boundary to its 255-byte limit
/// (lapin's `From<&str>` panics beyond it). Callers that need a recognisable id shorten
/// it themselves first; this only makes sure nothing panics.
pub fn short_string(text: &str) -> ShortString {
    let mut cut = text.len().min(MAX_SHORT_STRING);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    ShortString::try_new(&text[..cut]).unwrap_or_default()
}

/// The longest AMQP short string, in bytes.
pub const MAX_SHORT_STRING: usize = 255;

pub fn header(headers: &mut FieldTable, key: &str, value: impl Into<String>) {
    headers.insert(
        short_string(key),
        AMQPValue::LongString(value.into().into()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_long_short_strings_are_cut_not_panicked_on() {
        let long = "é".repeat(200);
        let cut = short_string(&long);
        assert!(cut.as_str().len() <= MAX_SHORT_STRING);
        assert!(long.starts_with(cut.as_str()));
        let properties = persistent("text/plain", &"x".repeat(300));
        assert_eq!(
            properties.message_id().as_ref().unwrap().as_str().len(),
            255
        );
    }
}
