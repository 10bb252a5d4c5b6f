//! The dead-letter copy of a bad message: its body unchanged and the properties that
//! describe it, minus those that would make the copy fail or vanish, plus headers that
//! say why it is there.
//!
//! Left out, because the republish is made by the consumer's broker user and lives in a
//! queue that is read much later:
//! - `user_id`: RabbitMQ refuses a publish whose `user_id` is not the publishing user
//!   (PRECONDITION_FAILED closes the channel, the message is requeued, and comes back
//!   forever); kept as the header `x-labmq-original-user-id`;
//! - `expiration`: the copy would expire out of the dead-letter queue; kept as
//!   `x-labmq-original-expiration`;
//! - the `CC`/`BCC` headers: sender-selected routing would copy the dead letter into the
//!   queues they name;
//! - the broker's delivery counts (`x-delivery-count`, `x-acquired-count`): a copy sent
//!   back to the task queue would otherwise arrive counted as the original left, and be
//!   dead-lettered again at once at `delivery_limit`; kept as `x-labmq-delivery-count`;
//! - the original headers altogether when, with ours added, they would no longer fit in
//!   one content header frame (`frame_max`): the broker would close the connection.

use std::collections::BTreeMap;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::handle::DELIVERY_COUNT_HEADER;
use crate::amqp::publish::{PERSISTENT, header};
use crate::task::{ErrorInfo, now_rfc3339, truncate};

/// Room a content header frame needs besides the headers table: every other property
/// (at most 255 bytes each), the frame's own fields, and the headers we add (the reason
/// is cut to 1000 characters).
const RESERVED_BYTES: usize = 16 * 1024;

/// Properties for the dead-letter copy of a message that had `original`.
pub fn dead_letter_properties(
    original: &BasicProperties,
    error: &ErrorInfo,
    original_queue: &str,
    frame_max: u32,
) -> BasicProperties {
    let mut table: BTreeMap<ShortString, AMQPValue> = original
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    table.remove("CC");
    table.remove("BCC");
    let delivery_count = table.remove(DELIVERY_COUNT_HEADER);
    table.remove("x-acquired-count");
    let mut headers = FieldTable::from(table);
    let budget = (frame_max as usize).saturating_sub(RESERVED_BYTES);
    let size = encoded_table_bytes(&headers);
    if size > budget {
        headers = FieldTable::default();
        header(
            &mut headers,
            "x-labmq-headers-dropped",
            format!(
                "the original headers took {size} bytes, more than the {budget} a content header frame leaves beside ours (frame_max {frame_max})"
            ),
        );
    }
    header(&mut headers, "x-labmq-error-code", error.code.as_str());
    header(
        &mut headers,
        "x-labmq-error-reason",
        truncate(&error.message, 1000),
    );
    header(&mut headers, "x-labmq-original-queue", original_queue);
    header(&mut headers, "x-labmq-dead-lettered-at", now_rfc3339());
    if let Some(count) = delivery_count {
        headers.insert("x-labmq-delivery-count".into(), count);
    }
    if let Some(user) = original.user_id() {
        header(&mut headers, "x-labmq-original-user-id", user.as_str());
    }
    if let Some(expiration) = original.expiration() {
        header(
            &mut headers,
            "x-labmq-original-expiration",
            expiration.as_str(),
        );
    }

    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Some(v) = original.content_type() {
        properties = properties.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        properties = properties.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        properties = properties.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        properties = properties.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        properties = properties.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        properties = properties.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        properties = properties.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        properties = properties.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        properties = properties.with_app_id(v.clone());
    }
    properties
}

/// The size of `table` on the wire (AMQP 0-9-1 field table encoding).
pub fn encoded_table_bytes(table: &FieldTable) -> usize {
    4 + table
        .inner()
        .iter()
        .map(|(key, value)| 1 + key.as_str().len() + encoded_value_bytes(value))
        .fold(0, usize::saturating_add)
}

fn encoded_value_bytes(value: &AMQPValue) -> usize {
    // One type byte, then the value.
    1 + match value {
        AMQPValue::Void => 0,
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.len(),
        AMQPValue::ByteArray(b) => 4 + b.len(),
        AMQPValue::FieldArray(array) => {
            4 + array
                .as_slice()
                .iter()
                .map(encoded_value_bytes)
                .fold(0, usize::saturating_add)
        }
        AMQPValue::FieldTable(table) => encoded_table_bytes(table),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error() -> ErrorInfo {
        ErrorInfo {
            code: "INVALID_TASK".into(),
            message: "fact: needs an integer".into(),
        }
    }

    fn text(headers: &FieldTable, key: &str) -> Option<String> {
        match headers.inner().get(key) {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    #[test]
    fn user_id_expiration_and_sender_routing_are_not_copied() {
        let mut original_headers = FieldTable::default();
        header(&mut original_headers, "CC", "elsewhere");
        header(&mut original_headers, "trace", "kept");
        let original = BasicProperties::default()
            .with_user_id("mallory".into())
            .with_expiration("1000".into())
            .with_message_id("m1".into())
            .with_correlation_id("c1".into())
            .with_headers(original_headers);
        let copy = dead_letter_properties(&original, &error(), "tasks", 131_072);
        assert!(copy.user_id().is_none());
        assert!(copy.expiration().is_none());
        assert_eq!(copy.delivery_mode(), &Some(PERSISTENT));
        assert_eq!(
            copy.message_id().as_ref().map(ShortString::as_str),
            Some("m1")
        );
        let headers = copy.headers().as_ref().unwrap();
        assert!(!headers.contains_key("CC"));
        assert_eq!(text(headers, "trace").as_deref(), Some("kept"));
        assert_eq!(
            text(headers, "x-labmq-original-user-id").as_deref(),
            Some("mallory")
        );
        assert_eq!(
            text(headers, "x-labmq-original-expiration").as_deref(),
            Some("1000")
        );
        assert_eq!(
            text(headers, "x-labmq-error-code").as_deref(),
            Some("INVALID_TASK")
        );
    }

    #[test]
    fn headers_that_would_overflow_the_frame_are_dropped_and_said_so() {
        let mut big = FieldTable::default();
        header(&mut big, "padding", "x".repeat(125_000));
        let original = BasicProperties::default().with_headers(big);
        let copy = dead_letter_properties(&original, &error(), "tasks", 131_072);
        let headers = copy.headers().as_ref().unwrap();
        assert!(!headers.contains_key("padding"));
        let note = text(headers, "x-labmq-headers-dropped").unwrap();
        assert!(note.contains("frame_max 131072"), "{note}");
        assert!(encoded_table_bytes(headers) < 8 * 1024);
    }

    #[test]
    fn table_size_matches_the_encoding() {
        let mut table = FieldTable::default();
        // 4 (table length) + 1 + 1 ("k") + 1 (type) + 4 + 3 ("abc")
        header(&mut table, "k", "abc");
        assert_eq!(encoded_table_bytes(&table), 14);
    }
}
