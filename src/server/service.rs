//! The `MessageService` implementation: each method checks its limits, runs the pure
//! computation (heavy ones on the [`ComputePool`], so the async workers stay free for
//! I/O) and maps domain errors to `INVALID_ARGUMENT`.

use tonic::{Request, Response, Status};

use super::config::ServerConfig;
use super::metrics::ServerMetrics;
use super::pool::{ComputePool, PoolError};
use super::throttle::Throttled;
use crate::compute::{self, AbSplitter};
use crate::grpc::BATCH_FACTORIAL_MAX_N;
use crate::grpc::proto::{
    AbRequest, AbResponse, BatchRequest, BatchResponse, BatchResult, BatchTask, FactorialRequest,
    FactorialResponse, LetterResponse, MessageRequest, MessageResponse, TaskError, TextRequest,
    batch_result::Outcome, batch_task::Kind, message_service_server::MessageService,
};
use crate::task::truncate;

/// Payloads in logs are cut to this many characters.
const LOGGED_PAYLOAD_CHARS: usize = 200;
/// Below this `n` a factorial costs microseconds; above it, it goes to the compute pool.
const INLINE_FACTORIAL_MAX_N: u64 = 2_000;
/// Texts and user ids up to this size are handled inline (well under a millisecond);
/// longer ones go to the compute pool.
const INLINE_TEXT_MAX_BYTES: usize = 64 * 1024;

/// The `MessageService` implementation.
pub struct ComputeService {
    splitter: AbSplitter,
    max_factorial_n: u64,
    max_text_bytes: usize,
    max_batch_tasks: usize,
    /// Bounds how many heavy computations run and wait at once, so big requests queue
    /// (boundedly) instead of starving each other or blocking the async runtime.
    pool: ComputePool,
    /// A flood of refused calls logs one line per period, not one per call.
    refusals: std::sync::Mutex<Throttled>,
    metrics: ServerMetrics,
}

impl ComputeService {
    pub fn new(config: &ServerConfig, metrics: ServerMetrics) -> Result<Self, PoolError> {
        let threads = if config.compute_threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            config.compute_threads
        };
        Ok(Self {
            splitter: AbSplitter::new(config.ab_salt.clone(), config.ab_a_percent),
            max_factorial_n: config.max_factorial_n,
            max_text_bytes: config.max_text_bytes,
            max_batch_tasks: config.max_batch_tasks,
            pool: ComputePool::new(threads, config.max_waiting_calls)?,
            refusals: std::sync::Mutex::new(Throttled::new()),
            metrics,
        })
    }

    /// Runs `work` on the compute pool.
    async fn offload<T: Send + 'static>(
        &self,
        method: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        self.pool.run(work).await.map_err(|e| match e {
            PoolError::Full { .. } => {
                let due = match self.refusals.lock() {
                    Ok(mut throttle) => throttle.due(),
                    Err(poisoned) => poisoned.into_inner().due(),
                };
                if let Some(skipped) = due {
                    tracing::warn!(method, skipped, "{e}");
                }
                Status::resource_exhausted(e.to_string())
            }
            PoolError::Closed => Status::unavailable(e.to_string()),
            PoolError::Panicked | PoolError::Spawn { .. } => {
                tracing::error!(method, "{e}");
                Status::internal(e.to_string())
            }
        })
    }
}

impl ComputeService {
    /// One task of a batch, answered as the unary method of its kind would answer it.
    async fn batch_task(&self, task: BatchTask) -> BatchResult {
        let (method, outcome) = match task.kind {
            None => (
                "none",
                Err(invalid(
                    "ComputeBatch",
                    "a task of the batch has no kind (process_message, assign_ab, factorial or most_frequent_letter)",
                )),
            ),
            Some(Kind::ProcessMessage(request)) => (
                "ProcessMessage",
                self.process_message(Request::new(request))
                    .await
                    .map(|r| Outcome::ProcessMessage(r.into_inner())),
            ),
            Some(Kind::AssignAb(request)) => (
                "AssignAB",
                self.assign_ab(Request::new(request))
                    .await
                    .map(|r| Outcome::AssignAb(r.into_inner())),
            ),
            Some(Kind::Factorial(request)) if request.n > BATCH_FACTORIAL_MAX_N => (
                "Factorial",
                Err(invalid(
                    "ComputeBatch",
                    format!(
                        "n = {} is over {BATCH_FACTORIAL_MAX_N}, the largest factorial a batch takes; call Factorial for it",
                        request.n
                    ),
                )),
            ),
            Some(Kind::Factorial(request)) => (
                "Factorial",
                self.factorial(Request::new(request))
                    .await
                    .map(|r| Outcome::Factorial(r.into_inner())),
            ),
            Some(Kind::MostFrequentLetter(request)) => (
                "MostFrequentLetter",
                self.most_frequent_letter(Request::new(request))
                    .await
                    .map(|r| Outcome::MostFrequentLetter(r.into_inner())),
            ),
        };
        self.metrics.batch_task(
            method,
            outcome
                .as_ref()
                .map_or_else(Status::code, |_| tonic::Code::Ok),
        );
        BatchResult {
            outcome: Some(outcome.unwrap_or_else(|status| {
                Outcome::Error(TaskError {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                })
            })),
        }
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
        let processed_text = if text.len() <= INLINE_TEXT_MAX_BYTES {
            compute::processed_text(&text)
        } else {
            self.offload("ProcessMessage", move || compute::processed_text(&text))
                .await?
        };
        Ok(Response::new(MessageResponse { processed_text }))
    }

    async fn assign_ab(&self, request: Request<AbRequest>) -> Result<Response<AbResponse>, Status> {
        let user_id = request.into_inner().user_id;
        tracing::debug!(method = "AssignAB", user_id = %truncate(&user_id, LOGGED_PAYLOAD_CHARS));
        let group = if user_id.len() <= INLINE_TEXT_MAX_BYTES {
            self.splitter.assign(&user_id)
        } else {
            let splitter = self.splitter.clone();
            self.offload("AssignAB", move || splitter.assign(&user_id))
                .await?
        }
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
            self.offload("Factorial", move || compute::factorial_decimal(n, max))
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
            self.offload("MostFrequentLetter", move || {
                compute::most_frequent_letter(&text, max)
            })
            .await?
        }
        .map_err(|e| invalid("MostFrequentLetter", e))?;
        Ok(Response::new(LetterResponse {
            letter: counted.letter,
            count: counted.count,
        }))
    }

    async fn compute_batch(
        &self,
        request: Request<BatchRequest>,
    ) -> Result<Response<BatchResponse>, Status> {
        let tasks = request.into_inner().tasks;
        tracing::debug!(method = "ComputeBatch", tasks = tasks.len());
        if tasks.len() > self.max_batch_tasks {
            return Err(invalid(
                "ComputeBatch",
                format!(
                    "the batch holds {} tasks, over the limit of {} (max_batch_tasks)",
                    tasks.len(),
                    self.max_batch_tasks
                ),
            ));
        }
        // Together, so one task waiting for the compute pool does not hold up the rest.
        let results =
            futures_util::future::join_all(tasks.into_iter().map(|task| self.batch_task(task)))
                .await;
        Ok(Response::new(BatchResponse { results }))
    }
}
