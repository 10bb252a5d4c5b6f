//! The `MessageService` implementation: each method checks its limits, runs the pure
//! computation (heavy ones on the blocking pool, bounded by compute slots) and maps
//! domain errors to `INVALID_ARGUMENT`.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::config::ServerConfig;
use crate::compute::{self, AbSplitter};
use crate::grpc::proto::{
    AbRequest, AbResponse, FactorialRequest, FactorialResponse, LetterResponse, MessageRequest,
    MessageResponse, TextRequest, message_service_server::MessageService,
};
use crate::task::truncate;

/// Payloads in logs are cut to this many characters.
const LOGGED_PAYLOAD_CHARS: usize = 200;
/// Below this `n` a factorial costs microseconds; above it, it goes to the compute pool.
const INLINE_FACTORIAL_MAX_N: u64 = 2_000;
/// Texts up to this size are counted inline; longer ones go to the compute pool.
const INLINE_TEXT_MAX_BYTES: usize = 64 * 1024;

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
                compute::FrequentLetterError::TooLong {
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
