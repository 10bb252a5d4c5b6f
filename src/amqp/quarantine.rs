//! Messages lapin cannot parse. lapin holds AMQP short strings as Rust `String`s, so a
//! delivery whose properties hold bytes that are not UTF-8 (a `message_id` of
//! `b"\xff\xfe"`, which RabbitMQ accepts) fails the whole connection with a parse error.
//! The broker then requeues the message at the head of the queue and the next
//! connection fails on it again: every consumer of the queue is stuck for good.
//!
//! This module takes such messages off the queue without lapin: a minimal AMQP 0-9-1
//! client over a plain socket gets messages from the head of the queue (`basic.get`,
//! unacked), checks each one's properties with the protocol parser lapin uses, and
//! moves every unparsable one to the dead-letter queue (confirmed, with a reason and its
//! raw properties in hex) before acking it. The good ones it saw go back to the queue, in
//! order, when its connection closes.
//!
//! Over `amqps://` it does the TLS handshake the session does (same CA, same client
//! certificate), and with `?auth_mechanism=external` it logs in as the session does, by the
//! client certificate: a poisoned message must not block a TLS deployment's queue either.

use std::time::Duration;

use lapin::uri::{AMQPScheme, SASLMechanism};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::settings::AmqpTarget;
use super::topology::Topology;

/// Error code of a message dead-lettered because its properties could not be parsed.
pub const UNPARSABLE_PROPERTIES: &str = "UNPARSABLE_PROPERTIES";
/// Raw properties kept (hex) in the dead-letter copy, at most.
const KEPT_PROPERTY_BYTES: usize = 8 * 1024;
/// The frame size this client asks for.
const FRAME_MAX: u32 = 131_072;
/// The largest body this client will read off the queue.
const MAX_BODY: u64 = 512 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("quarantine: {0}")]
    Io(#[from] std::io::Error),
    #[error("quarantine: the broker {0}")]
    Protocol(String),
    #[error("quarantine: no answer from the broker within {0:?}")]
    Timeout(Duration),
    #[error("quarantine: amqps:// without a TLS configuration")]
    Tls,
}

/// Looks at up to `limit` messages at the head of the task queue and dead-letters those
/// whose properties lapin cannot parse; returns how many it moved. Bounded by `timeout`.
pub async fn sweep(
    target: &AmqpTarget,
    topology: &Topology,
    limit: usize,
    timeout: Duration,
) -> Result<usize, QuarantineError> {
    tokio::time::timeout(timeout, sweep_unbounded(target, topology, limit))
        .await
        .unwrap_or(Err(QuarantineError::Timeout(timeout)))
}

async fn sweep_unbounded(
    target: &AmqpTarget,
    topology: &Topology,
    limit: usize,
) -> Result<usize, QuarantineError> {
    let uri = target.uri();
    let (host, port) = (uri.authority.host.as_str(), uri.authority.port);
    let tcp = TcpStream::connect((host, port)).await?;
    let stream: Box<dyn Io> = match uri.scheme {
        AMQPScheme::AMQP => Box::new(tcp),
        AMQPScheme::AMQPS => {
            let config = target.tls().ok_or(QuarantineError::Tls)?;
            Box::new(super::tls::connect_tokio(config, host, port, tcp).await?)
        }
    };
    let mut wire = Wire { stream };
    let login = match uri.query.auth_mechanism {
        Some(SASLMechanism::External) => Login::External,
        _ => Login::Plain {
            user: &uri.authority.userinfo.username,
            password: &uri.authority.userinfo.password,
        },
    };
    wire.handshake(login, &uri.vhost).await?;

    let mut moved = 0;
    let mut publishes = 0u64;
    for _ in 0..limit {
        let mut get = method(60, 70);
        get.extend(0u16.to_be_bytes());
        short(&mut get, topology.queue.as_bytes());
        get.push(0); // no-ack off: we ack only what we moved
        wire.send(1, 1, &get).await?;
        let answer = wire.method_on(1).await?;
        match class_method(&answer) {
            (60, 72) => break, // get-empty
            (60, 71) => {}
            other => return Err(unexpected(other)),
        }
        let delivery_tag = u64::from_be_bytes(slice8(&answer, 4)?);
        let (properties, body) = wire.content().await?;
        if lapin::protocol::basic::parse_properties(properties.as_slice()).is_ok() {
            continue; // held unacked; back to the queue when we close
        }
        let reason = describe(&properties);
        tracing::warn!(
            queue = %topology.queue, reason = %reason,
            "a message lapin cannot parse was at the head of the queue; dead-lettering it: {reason}"
        );
        let mut headers = Vec::new();
        table_entry(&mut headers, "x-labmq-error-code", UNPARSABLE_PROPERTIES);
        table_entry(&mut headers, "x-labmq-error-reason", &reason);
        table_entry(&mut headers, "x-labmq-original-queue", &topology.queue);
        table_entry(
            &mut headers,
            "x-labmq-dead-lettered-at",
            &crate::task::now_rfc3339(),
        );
        table_entry(
            &mut headers,
            "x-labmq-original-properties-hex",
            &hex::encode(&properties[..properties.len().min(KEPT_PROPERTY_BYTES)]),
        );
        wire.publish(&topology.dead_letter_queue(), &headers, &body)
            .await?;
        publishes += 1;
        wire.await_confirm(publishes).await?;
        let mut ack = method(60, 80);
        ack.extend(delivery_tag.to_be_bytes());
        ack.push(0);
        wire.send(1, 1, &ack).await?;
        moved += 1;
    }
    wire.close().await?;
    Ok(moved)
}

/// What is wrong with raw properties, for the log and the dead-letter reason.
fn describe(properties: &[u8]) -> String {
    let shown = &properties[..properties.len().min(64)];
    format!(
        "the message's properties are not valid AMQP for lapin (a short string that is not UTF-8?); first bytes: {}",
        String::from_utf8_lossy(shown).escape_debug()
    )
}

fn unexpected((class, method): (u16, u16)) -> QuarantineError {
    QuarantineError::Protocol(format!("answered with method {class}.{method}"))
}

fn class_method(payload: &[u8]) -> (u16, u16) {
    match payload {
        [a, b, c, d, ..] => (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d])),
        _ => (0, 0),
    }
}

fn slice8(payload: &[u8], at: usize) -> Result<[u8; 8], QuarantineError> {
    payload
        .get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| QuarantineError::Protocol("sent a truncated method".into()))
}

fn method(class: u16, method: u16) -> Vec<u8> {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend(method.to_be_bytes());
    payload
}

fn short(buffer: &mut Vec<u8>, value: &[u8]) {
    let value = &value[..value.len().min(255)];
    buffer.push(value.len() as u8);
    buffer.extend(value);
}

fn long(buffer: &mut Vec<u8>, value: &[u8]) {
    buffer.extend((value.len() as u32).to_be_bytes());
    buffer.extend(value);
}

/// One `key: long string` entry of a field table.
fn table_entry(buffer: &mut Vec<u8>, key: &str, value: &str) {
    short(buffer, key.as_bytes());
    buffer.push(b'S');
    long(buffer, value.as_bytes());
}

/// A plain or TLS connection to the broker.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Wire {
    stream: Box<dyn Io>,
}

/// How the client logs in: the URL's user and password, or (EXTERNAL) the client
/// certificate of the TLS connection, with an empty response.
enum Login<'a> {
    Plain { user: &'a str, password: &'a str },
    External,
}

/// One frame: type, channel, payload.
type Frame = (u8, u16, Vec<u8>);

impl Wire {
    async fn send(
        &mut self,
        kind: u8,
        channel: u16,
        payload: &[u8],
    ) -> Result<(), QuarantineError> {
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.push(kind);
        frame.extend(channel.to_be_bytes());
        frame.extend((payload.len() as u32).to_be_bytes());
        frame.extend(payload);
        frame.push(0xCE);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    async fn frame(&mut self) -> Result<Frame, QuarantineError> {
        let mut head = [0u8; 7];
        self.stream.read_exact(&mut head).await?;
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
        if size > FRAME_MAX {
            return Err(QuarantineError::Protocol(format!(
                "sent a {size}-byte frame, over the {FRAME_MAX} agreed"
            )));
        }
        let mut payload = vec![0u8; size as usize + 1];
        self.stream.read_exact(&mut payload).await?;
        payload.pop();
        Ok((head[0], u16::from_be_bytes([head[1], head[2]]), payload))
    }

    /// The next method frame on `channel`, skipping heartbeats; a close is an error.
    async fn method_on(&mut self, channel: u16) -> Result<Vec<u8>, QuarantineError> {
        loop {
            let (kind, on, payload) = self.frame().await?;
            if kind != 1 {
                continue;
            }
            match class_method(&payload) {
                (10, 50) | (20, 40) => {
                    let text = payload.get(6..).map_or_else(String::new, |rest| {
                        let len = rest.first().copied().unwrap_or(0) as usize;
                        String::from_utf8_lossy(rest.get(1..1 + len).unwrap_or_default())
                            .into_owned()
                    });
                    return Err(QuarantineError::Protocol(format!(
                        "closed the channel: {text}"
                    )));
                }
                _ if on == channel => return Ok(payload),
                _ => {}
            }
        }
    }

    async fn expect(
        &mut self,
        channel: u16,
        class: u16,
        id: u16,
    ) -> Result<Vec<u8>, QuarantineError> {
        let payload = self.method_on(channel).await?;
        if class_method(&payload) == (class, id) {
            Ok(payload)
        } else {
            Err(unexpected(class_method(&payload)))
        }
    }

    async fn handshake(&mut self, login: Login<'_>, vhost: &str) -> Result<(), QuarantineError> {
        self.stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        self.expect(0, 10, 10).await?;
        let mut start_ok = method(10, 11);
        start_ok.extend(0u32.to_be_bytes());
        match login {
            Login::Plain { user, password } => {
                short(&mut start_ok, b"PLAIN");
                long(&mut start_ok, format!("\0{user}\0{password}").as_bytes());
            }
            Login::External => {
                short(&mut start_ok, b"EXTERNAL");
                long(&mut start_ok, b"");
            }
        }
        short(&mut start_ok, b"en_US");
        self.send(1, 0, &start_ok).await?;
        let tune = self.expect(0, 10, 30).await?;
        let channel_max = tune.get(4..6).unwrap_or(&[0, 1]).to_vec();
        let offered = tune
            .get(6..10)
            .and_then(|s| s.try_into().ok())
            .map_or(FRAME_MAX, u32::from_be_bytes);
        let frame_max = if offered == 0 {
            FRAME_MAX
        } else {
            offered.min(FRAME_MAX)
        };
        let mut tune_ok = method(10, 31);
        tune_ok.extend(channel_max);
        tune_ok.extend(frame_max.to_be_bytes());
        tune_ok.extend(0u16.to_be_bytes());
        self.send(1, 0, &tune_ok).await?;
        let mut open = method(10, 40);
        short(&mut open, vhost.as_bytes());
        short(&mut open, b"");
        open.push(0);
        self.send(1, 0, &open).await?;
        self.expect(0, 10, 41).await?;
        let mut channel_open = method(20, 10);
        short(&mut channel_open, b"");
        self.send(1, 1, &channel_open).await?;
        self.expect(1, 20, 11).await?;
        let mut select = method(85, 10);
        select.push(0);
        self.send(1, 1, &select).await?;
        self.expect(1, 85, 11).await?;
        Ok(())
    }

    /// The content header and body that follow a `get-ok`: raw properties and body.
    async fn content(&mut self) -> Result<(Vec<u8>, Vec<u8>), QuarantineError> {
        let (kind, _, header) = self.frame().await?;
        if kind != 2 || header.len() < 12 {
            return Err(QuarantineError::Protocol("sent no content header".into()));
        }
        let size = u64::from_be_bytes(slice8(&header, 4)?);
        if size > MAX_BODY {
            return Err(QuarantineError::Protocol(format!(
                "sent a {size}-byte body, over the {MAX_BODY} bytes this client reads"
            )));
        }
        let properties = header[12..].to_vec();
        let mut body = Vec::with_capacity(size as usize);
        while (body.len() as u64) < size {
            let (kind, _, payload) = self.frame().await?;
            if kind != 3 {
                return Err(QuarantineError::Protocol("interrupted a body".into()));
            }
            body.extend(payload);
        }
        Ok((properties, body))
    }

    /// Publishes `body` persistently to `queue` (mandatory) with `headers` (an encoded
    /// field table without its length).
    async fn publish(
        &mut self,
        queue: &str,
        headers: &[u8],
        body: &[u8],
    ) -> Result<(), QuarantineError> {
        let mut publish = method(60, 40);
        publish.extend(0u16.to_be_bytes());
        short(&mut publish, b"");
        short(&mut publish, queue.as_bytes());
        publish.push(1); // mandatory
        self.send(1, 1, &publish).await?;
        let mut header = Vec::new();
        header.extend(60u16.to_be_bytes());
        header.extend(0u16.to_be_bytes());
        header.extend((body.len() as u64).to_be_bytes());
        header.extend(((1u16 << 13) | (1u16 << 12)).to_be_bytes()); // headers, delivery-mode
        long(&mut header, headers);
        header.push(2); // persistent
        self.send(2, 1, &header).await?;
        for chunk in body.chunks(FRAME_MAX as usize - 8) {
            self.send(3, 1, chunk).await?;
        }
        Ok(())
    }

    /// Waits for the broker's confirm of publish number `tag`; a return or nack fails.
    async fn await_confirm(&mut self, tag: u64) -> Result<(), QuarantineError> {
        loop {
            let payload = self.method_on(1).await?;
            match class_method(&payload) {
                (60, 80) if u64::from_be_bytes(slice8(&payload, 4)?) >= tag => return Ok(()),
                (60, 80) => {}
                (60, 50) => {
                    return Err(QuarantineError::Protocol(
                        "returned the dead-letter copy: no dead-letter queue".into(),
                    ));
                }
                (60, 120) => {
                    return Err(QuarantineError::Protocol(
                        "nacked the dead-letter copy".into(),
                    ));
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    async fn close(&mut self) -> Result<(), QuarantineError> {
        let mut close = method(10, 50);
        close.extend(200u16.to_be_bytes());
        short(&mut close, b"quarantine done");
        close.extend(0u32.to_be_bytes());
        self.send(1, 0, &close).await?;
        loop {
            let (kind, _, payload) = self.frame().await?;
            if kind == 1 && class_method(&payload) == (10, 51) {
                return Ok(());
            }
        }
    }
}
