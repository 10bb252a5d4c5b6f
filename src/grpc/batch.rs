//! Small tasks in batches: when many callers have a task for one server at once, they go
//! out together in one `ComputeBatch` call instead of one unary call each, which is most
//! of what a small task costs client and server (HTTP/2 stream, headers, tonic's per-call
//! machinery). Nothing waits to fill a batch: a batch leaves as soon as one of the
//! target's batch slots is free, with whatever tasks gathered while the slots were busy,
//! so a lone task goes at once and a busy consumer sends batches of many.
//!
//! A server that refuses batches as such (an older labmq-server answers `UNIMPLEMENTED`,
//! one with a lower `max_batch_tasks` `INVALID_ARGUMENT`) gets those tasks as unary calls
//! and no batches for [`REFUSED_PAUSE`]; the answers are the same either way.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::BATCH_FACTORIAL_MAX_N;
use super::client::{Holdoff, request, task_output};
use super::proto::{BatchRequest, BatchTask, message_service_client::MessageServiceClient};
use crate::task::{Task, TaskOutput};

/// Texts and user ids longer than this go as unary calls of their own.
const BATCH_TEXT_MAX_BYTES: usize = 1024;
/// A batch's request stays under this, inside any labmq-server's decoding limit (which
/// is `max_text_bytes` plus 64 KiB).
const BATCH_REQUEST_MAX_BYTES: usize = 48 * 1024;
/// Batches in flight on one HTTP/2 connection; while they are out, tasks gather.
const BATCHES_PER_CONNECTION: usize = 2;
/// Tasks handed to a target's dispatcher and not yet in a batch; callers wait beyond it.
const QUEUE_CAPACITY: usize = 1024;
/// How long a server that refused a batch as such gets unary calls only.
pub const REFUSED_PAUSE: Duration = Duration::from_secs(60);
/// Protobuf framing per task, on top of its text.
const TASK_OVERHEAD_BYTES: usize = 16;
// The largest task for a batch fits a batch on its own.
const _: () = assert!(BATCH_TEXT_MAX_BYTES + TASK_OVERHEAD_BYTES <= BATCH_REQUEST_MAX_BYTES);

type Client = MessageServiceClient<Channel>;
type Reply = oneshot::Sender<Result<TaskOutput, Status>>;

struct Pending {
    task: Task,
    bytes: usize,
    reply: Reply,
}

/// The batching side of one server address.
pub(super) struct Batcher {
    max_tasks: usize,
    clients: Vec<Client>,
    /// Started on first use, so it runs on the caller's runtime.
    queue: OnceLock<mpsc::Sender<Pending>>,
    refused: Arc<Holdoff>,
}

impl Batcher {
    /// `None` when `max_tasks` is below 2: every task is its own call.
    pub(super) fn new(max_tasks: usize, clients: &[Client]) -> Option<Self> {
        (max_tasks >= 2).then(|| Self {
            max_tasks,
            clients: clients.to_vec(),
            queue: OnceLock::new(),
            refused: Arc::default(),
        })
    }

    /// Runs `task` in a batch; `None` when it is not one for a batch (too big, or the
    /// server refuses batches for now): the caller makes a unary call.
    pub(super) async fn call(&self, task: &Task) -> Option<Result<TaskOutput, Status>> {
        let bytes = batch_bytes(task)?;
        if self.refused.is_on(Instant::now()) {
            return None;
        }
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
            tokio::spawn(dispatch(
                receiver,
                self.clients.clone(),
                self.max_tasks,
                self.refused.clone(),
            ));
            sender
        });
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            task: task.clone(),
            bytes,
            reply,
        };
        // The dispatcher is gone only if its runtime is: a unary call then.
        queue.send(pending).await.ok()?;
        Some(answer.await.unwrap_or_else(|_| {
            Err(Status::aborted(
                "the batch holding this task was dropped before it was answered",
            ))
        }))
    }
}

/// The task's share of a batch request, or `None` if it is not one for a batch.
fn batch_bytes(task: &Task) -> Option<usize> {
    let text = match task {
        Task::Factorial(n) => return (*n <= BATCH_FACTORIAL_MAX_N).then_some(TASK_OVERHEAD_BYTES),
        Task::FrequentLetter(text) | Task::Upper(text) | Task::Ab(text) => text,
    };
    (text.len() <= BATCH_TEXT_MAX_BYTES).then_some(text.len() + TASK_OVERHEAD_BYTES)
}

/// Takes tasks off the queue and sends them in batches, at most
/// `BATCHES_PER_CONNECTION` per connection at once, until every caller is gone.
async fn dispatch(
    mut queue: mpsc::Receiver<Pending>,
    clients: Vec<Client>,
    max_tasks: usize,
    refused: Arc<Holdoff>,
) {
    let slots = Arc::new(Semaphore::new(clients.len() * BATCHES_PER_CONNECTION));
    let mut carried: Option<Pending> = None;
    let mut next_client = 0usize;
    loop {
        let first = match carried.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        // Waiting for a slot is when a batch fills up.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < max_tasks {
            let Ok(pending) = queue.try_recv() else { break };
            if bytes + pending.bytes > BATCH_REQUEST_MAX_BYTES {
                carried = Some(pending);
                break;
            }
            bytes += pending.bytes;
            batch.push(pending);
        }
        let Some(client) = clients.get(next_client % clients.len().max(1)).cloned() else {
            return;
        };
        next_client = next_client.wrapping_add(1);
        let refused = refused.clone();
        tokio::spawn(async move {
            send(client, batch, &refused).await;
            drop(slot);
        });
    }
}

/// One `ComputeBatch` call, its answers handed to the callers.
async fn send(mut client: Client, batch: Vec<Pending>, refused: &Holdoff) {
    let request = BatchRequest {
        tasks: batch
            .iter()
            .map(|p| BatchTask {
                kind: Some(request(&p.task)),
            })
            .collect(),
    };
    match client.compute_batch(request).await {
        Ok(response) => {
            let results = response.into_inner().results;
            if results.len() != batch.len() {
                let status = Status::internal(format!(
                    "the server answered a batch of {} tasks with {} results",
                    batch.len(),
                    results.len()
                ));
                for pending in batch {
                    let _ = pending.reply.send(Err(status.clone()));
                }
                return;
            }
            for (pending, result) in batch.into_iter().zip(results) {
                let _ = pending
                    .reply
                    .send(task_output(&pending.task, result.outcome));
            }
        }
        Err(status) if is_refusal(&status) => {
            tracing::warn!(
                code = super::client::code_name(status.code()),
                "the gRPC server refused a batch of {} tasks ({}); sending tasks one call each for {} s",
                batch.len(),
                status.message(),
                REFUSED_PAUSE.as_secs()
            );
            refused.set(Some(REFUSED_PAUSE));
            for pending in batch {
                let answer = super::client::call(client.clone(), &pending.task).await;
                let _ = pending.reply.send(answer);
            }
        }
        Err(status) => {
            for pending in batch {
                let _ = pending.reply.send(Err(status.clone()));
            }
        }
    }
}

/// The server answered that it takes no batch like this one (not its tasks' fault).
fn is_refusal(status: &Status) -> bool {
    let from_server = std::error::Error::source(status).is_none();
    from_server
        && matches!(
            status.code(),
            Code::Unimplemented | Code::InvalidArgument | Code::OutOfRange
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::proto::batch_result::Outcome;
    use crate::grpc::proto::{BatchResult, FactorialResponse, TaskError};

    #[test]
    fn only_small_tasks_go_in_batches() {
        assert!(batch_bytes(&Task::Factorial(2_000)).is_some());
        assert!(batch_bytes(&Task::Factorial(2_001)).is_none());
        assert!(batch_bytes(&Task::Upper("x".repeat(1024))).is_some());
        assert!(batch_bytes(&Task::FrequentLetter("x".repeat(1025))).is_none());
    }

    #[test]
    fn answers_of_the_wrong_kind_or_none_are_the_servers_error() {
        let factorial = BatchResult {
            outcome: Some(Outcome::Factorial(FactorialResponse { result: "6".into() })),
        };
        assert!(matches!(
            task_output(&Task::Factorial(3), factorial.clone().outcome),
            Ok(TaskOutput::Factorial { result }) if result == "6"
        ));
        let wrong = task_output(&Task::Upper("a".into()), factorial.outcome).unwrap_err();
        assert_eq!(wrong.code(), Code::Internal);
        let none = task_output(&Task::Ab("u".into()), None).unwrap_err();
        assert_eq!(none.code(), Code::Internal);
        let error = BatchResult {
            outcome: Some(Outcome::Error(TaskError {
                code: Code::InvalidArgument as i32,
                message: "n".into(),
            })),
        };
        let status = task_output(&Task::Factorial(-1), error.outcome).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        // A code this side does not know stays an error, not a success.
        let odd = BatchResult {
            outcome: Some(Outcome::Error(TaskError {
                code: 999,
                message: "?".into(),
            })),
        };
        assert!(task_output(&Task::Factorial(1), odd.outcome).is_err());
        let ok_error = BatchResult {
            outcome: Some(Outcome::Error(TaskError {
                code: 0,
                message: "?".into(),
            })),
        };
        let status = task_output(&Task::Factorial(1), ok_error.outcome).unwrap_err();
        assert_eq!(status.code(), Code::Internal);
    }

    #[test]
    fn only_the_servers_own_refusals_turn_batching_off() {
        assert!(is_refusal(&Status::unimplemented("no ComputeBatch")));
        assert!(is_refusal(&Status::invalid_argument("max_batch_tasks")));
        assert!(!is_refusal(&Status::unavailable("down")));
        assert!(!is_refusal(&Status::resource_exhausted("busy")));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(!is_refusal(&Status::from_error(Box::new(io))));
    }
}
