//! Accepting connections within limits: at most `max_connections` open, a bounded time
//! to say hello, and accept errors (out of file descriptors) waited out instead of
//! retried in a busy loop (see [`incoming`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::linger::LingeringStream;
use super::throttle::Throttled;

/// The HTTP/2 client connection preface (RFC 9113 §3.4) is this many bytes.
const PREFACE_LEN: usize = 24;
/// First and longest pause after an accept error that is not about one connection.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The connection limits of [`incoming`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

/// Errors that concern one connection only (the peer gave up before it was accepted):
/// the next accept may well succeed at once. Any other error (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM) lasts until something is freed, and accepting again at once would fail again
/// at once: tonic's own accept loop then spins on a CPU.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

struct AcceptState {
    listener: TcpListener,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    closing: mpsc::Sender<()>,
    backoff: Duration,
    refused: Throttled,
    failing: Throttled,
}

/// The served connections of `listener`, for `serve_with_incoming_shutdown`. Never
/// yields an error: tonic would only log it at trace level and ask again at once.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    closing: mpsc::Sender<()>,
) -> impl Stream<Item = Result<ServedConnection, io::Error>> {
    let state = AcceptState {
        listener,
        limits,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        closing,
        backoff: ACCEPT_BACKOFF_MIN,
        refused: Throttled::new(),
        failing: Throttled::new(),
    };
    futures_util::stream::unfold(state, |mut state| async move {
        let connection = accept(&mut state).await;
        Some((Ok(connection), state))
    })
}

async fn accept(state: &mut AcceptState) -> ServedConnection {
    loop {
        let (stream, peer) = match state.listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                if let Some(skipped) = state.failing.due() {
                    tracing::warn!(
                        error = %error,
                        retry_ms = state.backoff.as_millis(),
                        skipped,
                        "cannot accept connections: {error}; retrying with backoff \
                         (out of file descriptors? check LimitNOFILE against max_connections)"
                    );
                }
                tokio::time::sleep(state.backoff).await;
                state.backoff = (state.backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        state.backoff = ACCEPT_BACKOFF_MIN;
        let Ok(slot) = state.slots.clone().try_acquire_owned() else {
            // Closing at once tells the client (UNAVAILABLE) instead of leaving it in the
            // kernel's backlog until its own deadline.
            if let Some(skipped) = state.refused.due() {
                tracing::warn!(
                    peer = %peer,
                    max_connections = state.limits.max_connections,
                    skipped,
                    "refused a connection from {peer}: max_connections ({}) are open",
                    state.limits.max_connections
                );
            }
            drop(stream);
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(peer = %peer, error = %error, "cannot set TCP_NODELAY");
        }
        return ServedConnection {
            inner: LingeringStream::new(stream, &state.closing, slot),
            preface_left: PREFACE_LEN,
            preface_deadline: Some(Box::pin(tokio::time::sleep(state.limits.handshake_timeout))),
        };
    }
}

/// A served connection: the client must send the HTTP/2 preface within the handshake
/// timeout, or reads fail and hyper drops it. Without this a peer that connects and says
/// nothing holds a connection (and a file descriptor) forever: HTTP/2 keepalive pings
/// only start once the handshake is done.
pub struct ServedConnection {
    inner: LingeringStream,
    preface_left: usize,
    preface_deadline: Option<Pin<Box<Sleep>>>,
}

impl Connected for ServedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for ServedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = this.preface_deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within handshake_timeout_secs",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.preface_deadline.is_some() && matches!(read, Poll::Ready(Ok(()))) {
            let got = buf.filled().len() - before;
            this.preface_left = this.preface_left.saturating_sub(got);
            if this.preface_left == 0 {
                this.preface_deadline = None;
            }
        }
        read
    }
}

impl AsyncWrite for ServedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_per_connection_errors_are_retried_at_once() {
        assert!(is_connection_error(
            &io::ErrorKind::ConnectionAborted.into()
        ));
        // EMFILE
        assert!(!is_connection_error(&io::Error::from_raw_os_error(24)));
        assert!(!is_connection_error(&io::ErrorKind::OutOfMemory.into()));
    }
}
