//! HTTP/1.1 by hand, for what a well-behaved client cannot do: send any Host or Origin,
//! stall in the middle of a request, connect from another loopback address.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A TCP connection to `addr` from `from` (any address of 127.0.0.0/8 works on Linux's
/// loopback), or from the default address.
pub fn connect_from(addr: SocketAddr, from: Option<IpAddr>) -> TcpStream {
    let Some(from) = from else {
        return TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime for a bound connect");
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(from, 0))
            .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        let stream = socket
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr} from {from}: {e}"));
        let stream = stream.into_std().expect("std stream");
        stream.set_nonblocking(false).expect("blocking stream");
        stream
    })
}

/// Sends `request` (already formatted, `Connection: close`) and returns (status, body).
pub fn exchange(addr: SocketAddr, from: Option<IpAddr>, request: &str) -> (u16, String) {
    let mut stream = connect_from(addr, from);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .unwrap_or_else(|e| panic!("reading the answer to {request:?}: {e}"));
    parse(&response).unwrap_or_else(|| {
        panic!(
            "no HTTP answer to {request:?}: {:?}",
            String::from_utf8_lossy(&response)
        )
    })
}

/// (status, body) of a whole response, if it is one.
pub fn parse(response: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(response);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// A request with `headers` (each `Name: value`) and an optional body.
pub fn request(method: &str, path: &str, host: &str, headers: &[&str], body: &str) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text
}

/// Waits until the server closes `stream` (read returns 0 or an error); returns how long
/// it took, or `None` if it was still open after `limit`.
pub fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut buffer = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}
