//! Hostile peers for the poison tests: a raw AMQP 0-9-1 publisher that can send what
//! lapin refuses to build (a `message_id` that is not UTF-8), TCP "brokers" that accept
//! and never speak or hang up mid-handshake, a second broker user, and the peak memory
//! of a process.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::rabbit::PrivateBroker;

/// The peak resident set (`VmHWM`) of `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// Adds a broker user with full permissions on `/` to a private node.
pub fn add_user(broker: &PrivateBroker, user: &str, password: &str) {
    broker.ctl(&["add_user", user, password]);
    broker.ctl(&["set_permissions", "-p", "/", user, ".*", ".*", ".*"]);
}

/// A TCP listener on 127.0.0.1 that plays a broken broker until dropped.
pub struct FakeBroker {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

/// What a [`FakeBroker`] does with each connection.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Accepts and never sends a byte (holds the socket open).
    Silent,
    /// Reads the client's protocol header, then closes.
    HangUpInHandshake,
    /// Completes the handshake (start, tune, open), then never answers again: channels
    /// are never opened, nothing is declared.
    SilentAfterOpen,
}

impl FakeBroker {
    pub fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake broker");
        let port = listener.local_addr().expect("fake broker address").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => match behaviour {
                        Behaviour::Silent => held.push(stream),
                        Behaviour::SilentAfterOpen => {
                            let _ = stream.set_nonblocking(false);
                            let flag = flag.clone();
                            std::thread::spawn(move || serve_handshake_then_nothing(stream, &flag));
                        }
                        Behaviour::HangUpInHandshake => {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                            let mut header = [0u8; 8];
                            let _ = stream.read_exact(&mut header);
                        }
                    },
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self { port, stop }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

/// The broker's half of the AMQP handshake, then silence until `stop`.
fn serve_handshake_then_nothing(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut header = [0u8; 8];
    if stream.read_exact(&mut header).is_err() {
        return;
    }
    let mut start = method(10, 10);
    start.extend([0, 9]);
    start.extend(0u32.to_be_bytes());
    long(&mut start, b"PLAIN");
    long(&mut start, b"en_US");
    send(&mut stream, 1, 0, &start);
    let _ = read_frame(&mut stream); // start-ok
    let mut tune = method(10, 30);
    tune.extend(2047u16.to_be_bytes());
    tune.extend(131_072u32.to_be_bytes());
    tune.extend(0u16.to_be_bytes());
    send(&mut stream, 1, 0, &tune);
    let _ = read_frame(&mut stream); // tune-ok
    let _ = read_frame(&mut stream); // open
    let mut open_ok = method(10, 41);
    short(&mut open_ok, b"");
    send(&mut stream, 1, 0, &open_ok);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 7];
    stream.read_exact(&mut head)?;
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    let mut payload = vec![0u8; size + 1];
    stream.read_exact(&mut payload)?;
    payload.pop();
    Ok(payload)
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A minimal AMQP 0-9-1 client over a plain socket: just enough to log in as guest and
/// publish one message whose `message_id` is arbitrary bytes.
pub fn publish_raw(port: u16, queue: &str, message_id: &[u8], body: &[u8]) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to RabbitMQ");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .write_all(b"AMQP\x00\x00\x09\x01")
        .expect("protocol header");
    expect_method(&mut stream, 10, 10); // connection.start
    let mut start_ok = method(10, 11);
    start_ok.extend(0u32.to_be_bytes()); // client properties: empty table
    short(&mut start_ok, b"PLAIN");
    long(&mut start_ok, b"\0guest\0guest");
    short(&mut start_ok, b"en_US");
    send(&mut stream, 1, 0, &start_ok);
    let tune = expect_method(&mut stream, 10, 30);
    let mut tune_ok = method(10, 31);
    tune_ok.extend(&tune[4..10]); // channel_max, frame_max as offered
    tune_ok.extend(0u16.to_be_bytes()); // no heartbeats
    send(&mut stream, 1, 0, &tune_ok);
    let mut open = method(10, 40);
    short(&mut open, b"/");
    short(&mut open, b"");
    open.push(0);
    send(&mut stream, 1, 0, &open);
    expect_method(&mut stream, 10, 41);
    let mut channel_open = method(20, 10);
    short(&mut channel_open, b"");
    send(&mut stream, 1, 1, &channel_open);
    expect_method(&mut stream, 20, 11);

    let mut publish = method(60, 40);
    publish.extend(0u16.to_be_bytes());
    short(&mut publish, b"");
    short(&mut publish, queue.as_bytes());
    publish.push(0);
    send(&mut stream, 1, 1, &publish);
    let mut header = Vec::new();
    header.extend(60u16.to_be_bytes());
    header.extend(0u16.to_be_bytes());
    header.extend((body.len() as u64).to_be_bytes());
    header.extend((1u16 << 7).to_be_bytes()); // property flags: message-id only
    short(&mut header, message_id);
    send(&mut stream, 2, 1, &header);
    send(&mut stream, 3, 1, body);

    // A clean close: the broker has handled the publish when it answers close-ok.
    let mut close = method(10, 50);
    close.extend(200u16.to_be_bytes());
    short(&mut close, b"bye");
    close.extend(0u32.to_be_bytes());
    send(&mut stream, 1, 0, &close);
    expect_method(&mut stream, 10, 51);
}

fn method(class: u16, method: u16) -> Vec<u8> {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend(method.to_be_bytes());
    payload
}

fn short(buffer: &mut Vec<u8>, value: &[u8]) {
    buffer.push(u8::try_from(value.len()).expect("short string of at most 255 bytes"));
    buffer.extend(value);
}

fn long(buffer: &mut Vec<u8>, value: &[u8]) {
    buffer.extend((value.len() as u32).to_be_bytes());
    buffer.extend(value);
}

fn send(stream: &mut TcpStream, kind: u8, channel: u16, payload: &[u8]) {
    let mut frame = vec![kind];
    frame.extend(channel.to_be_bytes());
    frame.extend((payload.len() as u32).to_be_bytes());
    frame.extend(payload);
    frame.push(0xCE);
    stream.write_all(&frame).expect("send frame");
}

/// Reads frames until the method `class.method` arrives; returns its payload.
fn expect_method(stream: &mut TcpStream, class: u16, method: u16) -> Vec<u8> {
    loop {
        let mut head = [0u8; 7];
        stream.read_exact(&mut head).expect("frame header");
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        stream.read_exact(&mut payload).expect("frame payload");
        payload.pop();
        if head[0] == 1 && payload.len() >= 4 {
            let got = (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            assert_ne!(
                got,
                (10, 50),
                "the broker closed the connection: {payload:?}"
            );
            if got == (class, method) {
                return payload;
            }
        }
    }
}
