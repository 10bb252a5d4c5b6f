//! Closing served connections the lingering way (see [`LingeringStream`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a connection the server closes keeps reading, at most, so its peer can take
/// in the last response.
pub const LINGER: Duration = Duration::from_secs(5);

/// A served TCP connection, closed the lingering way once hyper is done with it.
///
/// After a graceful shutdown hyper drops a connection as soon as its last response is
/// written. Closing a socket whose peer still sends (HTTP/2 WINDOW_UPDATEs while it reads
/// a large response) makes the kernel answer with a reset, and the peer loses the part of
/// the response it had not read yet. So instead of closing at once, the socket is shut
/// down for writing (FIN after all data) and read until the peer closes its side, for at
/// most [`LINGER`]. On a connection the client closed, the read ends at once.
pub struct LingeringStream {
    /// `None` only inside `drop`.
    stream: Option<TcpStream>,
    /// Held until the lingering close is over, so the server can wait for it.
    closing: mpsc::Sender<()>,
    /// The connection's place under `max_connections`, also held until the socket is
    /// closed: a lingering socket still takes a file descriptor.
    slot: Option<OwnedSemaphorePermit>,
}

impl LingeringStream {
    pub fn new(stream: TcpStream, closing: &mpsc::Sender<()>, slot: OwnedSemaphorePermit) -> Self {
        Self {
            stream: Some(stream),
            closing: closing.clone(),
            slot: Some(slot),
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let closing = self.closing.clone();
        let slot = self.slot.take();
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, linger(stream)).await;
            drop(slot);
            drop(closing);
        });
    }
}

impl Connected for LingeringStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match &self.stream {
            Some(stream) => stream.connect_info(),
            None => TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
        }
    }
}

impl AsyncRead for LingeringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_shutdown(cx)
    }
}
