//! `labmq-server`: the tonic service over the pure computations, plus health, reflection,
//! systemd readiness and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

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

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serving = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, {
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        });

    tracing::info!(listen = %local, "labmq-server serving gRPC");
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
    match finished {
        Some(served) => served?,
        None => match tokio::time::timeout(grace, serving).await {
            Ok(served) => served?,
            Err(_) => tracing::warn!(
                grace_secs = config.shutdown_grace_secs,
                "in-flight calls still running after the grace period; exiting anyway"
            ),
        },
    }
    tracing::info!("labmq-server stopped");
    Ok(())
}
