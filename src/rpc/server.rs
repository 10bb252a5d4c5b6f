//! `labmq-server`: the tonic service over the pure computations, plus health, reflection,
//! systemd readiness and graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tonic::{Request, Response, Status};

use crate::compute::{self, AbSplitter};
use crate::daemon::{config::ServerConfig, systemd};
use crate::rpc::proto::{
    self, AbRequest, AbResponse, FactorialRequest, FactorialResponse, LetterResponse,
    MessageRequest, MessageResponse, TextRequest,
    message_service_server::{MessageService, MessageServiceServer},
};
use crate::task::truncate;

/// Payloads in logs are cut to this many characters.
const LOGGED_PAYLOAD_CHARS: usize = 200;
/// Below this `n` a factorial costs microseconds; above it, it goes to the compute pool.
const INLINE_FACTORIAL_MAX_N: u64 = 2_000;
/// Texts up to this size are counted inline; longer ones go to the compute pool.
const INLINE_TEXT_MAX_BYTES: usize = 64 * 1024;
/// How long a connection the server closes keeps reading, at most, so its peer can take
/// in the last response (see [`LingeringStream`]).
const LINGER: Duration = Duration::from_secs(5);

/// Messages leave the cause to `source()`, so a chain printed with `{:#}` (as
/// `labmq-server` does) names each cause once.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("gRPC transport")]
    Transport(#[from] tonic::transport::Error),
}

/// The `MessageService` implementation.
pub struct ComputeService {
    splitter: AbSplitter,
    max_factorial_n: u64,
    max_text_bytes: usize,
    /// Bounds how many heavy computations run at once, so big requests queue instead of
    /// starving each other (and never block the async runtime).
    compute_slots: Arc<Semaphore>,
}

impl ComputeService {
    pub fn new(config: &ServerConfig) -> Self {
        let threads = if config.compute_threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            config.compute_threads
        };
        Self {
            splitter: AbSplitter::new(config.ab_salt.clone(), config.ab_a_percent),
            max_factorial_n: config.max_factorial_n,
            max_text_bytes: config.max_text_bytes,
            compute_slots: Arc::new(Semaphore::new(threads)),
        }
    }

    /// Runs `work` on the blocking pool once a compute slot is free.
    async fn offload<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let _slot = self
            .compute_slots
            .acquire()
            .await
            .map_err(|_| Status::unavailable("server is shutting down"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Status::internal(format!("computation failed: {e}")))
    }
}

fn invalid(method: &str, error: impl std::fmt::Display) -> Status {
    tracing::warn!(method, error = %error, "invalid argument");
    Status::invalid_argument(error.to_string())
}

#[tonic::async_trait]
impl MessageService for ComputeService {
    async fn process_message(
        &self,
        request: Request<MessageRequest>,
    ) -> Result<Response<MessageResponse>, Status> {
        let text = request.into_inner().text;
        tracing::debug!(method = "ProcessMessage", text = %truncate(&text, LOGGED_PAYLOAD_CHARS));
        if text.len() > self.max_text_bytes {
            return Err(invalid(
                "ProcessMessage",
                compute::LettersError::TooLong {
                    len: text.len(),
                    max: self.max_text_bytes,
                },
            ));
        }
        Ok(Response::new(MessageResponse {
            processed_text: compute::processed_text(&text),
        }))
    }

    async fn assign_ab(&self, request: Request<AbRequest>) -> Result<Response<AbResponse>, Status> {
        let user_id = request.into_inner().user_id;
        tracing::debug!(method = "AssignAB", user_id = %truncate(&user_id, LOGGED_PAYLOAD_CHARS));
        let group = self
            .splitter
            .assign(&user_id)
            .map_err(|e| invalid("AssignAB", e))?;
        Ok(Response::new(AbResponse {
            group: group.as_str().to_owned(),
        }))
    }

    async fn factorial(
        &self,
        request: Request<FactorialRequest>,
    ) -> Result<Response<FactorialResponse>, Status> {
        let n = request.into_inner().n;
        tracing::debug!(method = "Factorial", n);
        let max = self.max_factorial_n;
        let checked = compute::factorial::validate(n, max).map_err(|e| invalid("Factorial", e))?;
        let result = if checked <= INLINE_FACTORIAL_MAX_N {
            compute::factorial_decimal(n, max)
        } else {
            self.offload(move || compute::factorial_decimal(n, max))
                .await?
        }
        .map_err(|e| invalid("Factorial", e))?;
        Ok(Response::new(FactorialResponse { result }))
    }

    async fn most_frequent_letter(
        &self,
        request: Request<TextRequest>,
    ) -> Result<Response<LetterResponse>, Status> {
        let text = request.into_inner().text;
        tracing::debug!(method = "MostFrequentLetter", text = %truncate(&text, LOGGED_PAYLOAD_CHARS));
        let max = self.max_text_bytes;
        let counted = if text.len() <= INLINE_TEXT_MAX_BYTES {
            compute::most_frequent_letter(&text, max)
        } else {
            self.offload(move || compute::most_frequent_letter(&text, max))
                .await?
        }
        .map_err(|e| invalid("MostFrequentLetter", e))?;
        Ok(Response::new(LetterResponse {
            letter: counted.letter,
            count: counted.count,
        }))
    }
}

/// Binds the listener, serves until `shutdown` is cancelled, then lets in-flight calls
/// finish for up to `shutdown_grace_secs`.
pub async fn run(config: &ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<MessageServiceServer<ComputeService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    // Room for a text of max_text_bytes plus protobuf framing, so an over-long text reaches
    // the handler and gets an INVALID_ARGUMENT that names the limit.
    let decode_limit = config.max_text_bytes.saturating_add(64 * 1024);
    let service = MessageServiceServer::new(ComputeService::new(config))
        .max_decoding_message_size(decode_limit)
        .max_encoding_message_size(usize::MAX);

    // Every connection holds a clone of `closing` until its lingering close is over.
    let (closing, mut closed) = mpsc::channel::<()>(1);
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(move |accepted| accepted.map(|stream| LingeringStream::new(stream, &closing)));
    let serving = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, {
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        });

    tracing::info!(listen = %local, "labmq-server serving gRPC on {local}");
    systemd::ready(&format!("serving on {local}"));
    systemd::spawn_watchdog(shutdown.clone());

    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let mut serving = std::pin::pin!(serving);
    // Serve until a shutdown request. When idle, `serving` can finish in the same poll
    // that sees the cancellation, so STOPPING=1 is sent after this select whichever
    // branch won, never from inside a branch that might lose the race.
    let finished = tokio::select! {
        served = &mut serving => Some(served),
        () = shutdown.cancelled() => None,
    };
    if shutdown.is_cancelled() {
        systemd::stopping("draining in-flight calls");
        health
            .set_not_serving::<MessageServiceServer<ComputeService>>()
            .await;
    }
    let drained = match finished {
        Some(served) => served.map(|()| true)?,
        None => match tokio::time::timeout(grace, serving).await {
            Ok(served) => served.map(|()| true)?,
            Err(_) => {
                tracing::warn!(
                    grace_secs = config.shutdown_grace_secs,
                    "in-flight calls still running after the grace period; exiting anyway"
                );
                false
            }
        },
    };
    if drained {
        // Every connection is closed; let the last responses reach their clients.
        let _ = tokio::time::timeout(LINGER, closed.recv()).await;
    }
    tracing::info!("labmq-server stopped");
    Ok(())
}

/// A served TCP connection, closed the lingering way once hyper is done with it.
///
/// After a graceful shutdown hyper drops a connection as soon as its last response is
/// written. Closing a socket whose peer still sends (HTTP/2 WINDOW_UPDATEs while it reads
/// a large response) makes the kernel answer with a reset, and the peer loses the part of
/// the response it had not read yet. So instead of closing at once, the socket is shut
/// down for writing (FIN after all data) and read until the peer closes its side, for at
/// most [`LINGER`]. On a connection the client closed, the read ends at once.
struct LingeringStream {
    /// `None` only inside `drop`.
    stream: Option<TcpStream>,
    /// Held until the lingering close is over, so the server can wait for it.
    closing: mpsc::Sender<()>,
}

impl LingeringStream {
    fn new(stream: TcpStream, closing: &mpsc::Sender<()>) -> Self {
        Self {
            stream: Some(stream),
            closing: closing.clone(),
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
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, linger(stream)).await;
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
