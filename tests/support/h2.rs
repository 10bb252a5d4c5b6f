//! Just enough HTTP/2 (RFC 9113) to act as a misbehaving client over a plain TCP
//! socket: send the preface, read frames, and watch whether and when the server hangs
//! up. A real gRPC client would answer pings and settings, which is exactly what these
//! peers must not do.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const ACK: u8 = 0x1;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The (identifier, value) pairs of a SETTINGS frame.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }
}

/// A frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame payload fits u32");
    let mut bytes = len.to_be_bytes()[1..].to_vec();
    bytes.extend([kind, flags]);
    bytes.extend(stream.to_be_bytes());
    bytes.extend(payload);
    bytes
}

/// A TCP connection to `addr` that has said nothing yet.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("set read timeout");
    stream
}

/// A connection that sent the preface and an empty SETTINGS frame, as every HTTP/2
/// client does first, and nothing more.
pub fn handshake(addr: SocketAddr) -> TcpStream {
    let mut stream = connect(addr);
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream
        .write_all(&hello)
        .unwrap_or_else(|e| panic!("send preface to {addr}: {e}"));
    stream
}

/// What reading a connection came to.
#[derive(Debug)]
pub enum Outcome {
    Frame(Frame),
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing within the deadline.
    Quiet,
}

fn read_full(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), Outcome> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(Outcome::Closed),
            Ok(n) => filled += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    return Err(Outcome::Quiet);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(Outcome::Closed),
        }
    }
    Ok(())
}

/// The next frame, or why there is none, waiting at most `timeout` for it to start.
pub fn read_frame(stream: &mut TcpStream, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut header = [0u8; 9];
    if let Err(outcome) = read_full(stream, &mut header, deadline) {
        return outcome;
    }
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    // Once a frame has started the rest follows at once.
    if let Err(outcome) = read_full(
        stream,
        &mut payload,
        Instant::now() + Duration::from_secs(5),
    ) {
        return outcome;
    }
    Outcome::Frame(Frame {
        kind: header[3],
        flags: header[4],
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Reads frames, answering none, until the server closes the connection; returns the
/// frames and how long that took, or `Err(frames)` if it was still open after `within`.
pub fn wait_closed(
    stream: &mut TcpStream,
    within: Duration,
) -> Result<(Vec<Frame>, Duration), Vec<Frame>> {
    let start = Instant::now();
    let mut frames = Vec::new();
    loop {
        let left = within.saturating_sub(start.elapsed());
        match read_frame(stream, left) {
            Outcome::Frame(frame) => frames.push(frame),
            Outcome::Closed => return Ok((frames, start.elapsed())),
            Outcome::Quiet => return Err(frames),
        }
    }
}

/// The server's first SETTINGS frame (not an acknowledgement), read within `timeout`.
pub fn server_settings(stream: &mut TcpStream, timeout: Duration) -> Option<Frame> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match read_frame(stream, left) {
            Outcome::Frame(frame) if frame.kind == SETTINGS && frame.flags & ACK == 0 => {
                return Some(frame);
            }
            Outcome::Frame(_) => {}
            Outcome::Closed | Outcome::Quiet => return None,
        }
    }
}
