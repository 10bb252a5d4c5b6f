//! One delivery in, result documents out: decode the body, parse its tasks, call the gRPC
//! server (retrying transient failures until shutdown), and decide whether the message
//! belongs in the dead-letter queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::status::StatusBoard;
use crate::daemon::backoff;
use crate::grpc::client::{CallError, ComputeClient};
use crate::task::{
    ErrorInfo, ResultDocument, Task, TaskKind, TaskOutput, TaskParseError, codes, parse_list,
    truncate,
};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

pub enum Verdict {
    /// Every task of the message has a real answer or a definite error. `dead_letter`
    /// is set when the message itself was bad (it then goes to the dead-letter queue).
    Done {
        results: Vec<ResultDocument>,
        dead_letter: Option<ErrorInfo>,
    },
    /// Shutdown came while a task still waited for the gRPC server: requeue the message.
    Abandoned,
}

pub struct Handler {
    pub client: Arc<ComputeClient>,
    pub retry: RetryPolicy,
    pub max_body_bytes: usize,
    pub status: Arc<StatusBoard>,
    pub shutdown: CancellationToken,
}

/// A stable id for a message without `message_id`: the same body always gets the same
/// id, so a redelivery is recognisable downstream.
pub fn derived_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("sha256-{}", hex::encode(&digest[..12]))
}

/// The `kind` a task was meant to be, from its prefix, even when it did not parse.
fn intended_kind(item: &str) -> Option<TaskKind> {
    let item = item.trim_start();
    if item.starts_with("fact:") {
        Some(TaskKind::Factorial)
    } else if item.starts_with("freq:") {
        Some(TaskKind::FrequentLetter)
    } else if item.starts_with("upper:") {
        Some(TaskKind::Upper)
    } else if item.is_empty() {
        None
    } else {
        Some(TaskKind::Ab)
    }
}

impl Handler {
    pub async fn handle(&self, message_id: &str, body: &[u8]) -> Verdict {
        let started = Instant::now();
        let reject = |code: &str, message: String, task: &str| {
            let error = ErrorInfo {
                code: code.to_owned(),
                message,
            };
            Verdict::Done {
                results: vec![ResultDocument::failure(
                    message_id.to_owned(),
                    task,
                    None,
                    error.clone(),
                    0,
                    elapsed_ms(started),
                )],
                dead_letter: Some(error),
            }
        };
        if body.len() > self.max_body_bytes {
            return reject(
                codes::BODY_TOO_LARGE,
                format!(
                    "body is {} bytes, over the limit of {} bytes (max_body_bytes)",
                    body.len(),
                    self.max_body_bytes
                ),
                &String::from_utf8_lossy(&body[..body.len().min(200)]),
            );
        }
        let text = match std::str::from_utf8(body) {
            Ok(text) => text,
            Err(e) => {
                return reject(
                    codes::INVALID_UTF8,
                    format!("body is not valid UTF-8: {e}"),
                    &String::from_utf8_lossy(body),
                );
            }
        };
        let items = parse_list(text);
        if items.is_empty() {
            return reject(
                codes::EMPTY_BODY,
                "body holds no task".into(),
                &truncate(text, 200),
            );
        }

        let single = items.len() == 1;
        let mut results = Vec::with_capacity(items.len());
        let mut first_error = None;
        for (index, (item, parsed)) in items.into_iter().enumerate() {
            let id = if single {
                message_id.to_owned()
            } else {
                format!("{message_id}#{}", index + 1)
            };
            let task_started = Instant::now();
            let document = match parsed {
                Err(e) => invalid_task(id, &item, &e, task_started),
                Ok(task) => match self.run_with_retry(&task).await {
                    None => return Verdict::Abandoned,
                    Some((Ok(output), attempts)) => ResultDocument::success(
                        id,
                        &task,
                        &output,
                        attempts,
                        elapsed_ms(task_started),
                    ),
                    Some((Err(error), attempts)) => ResultDocument::failure(
                        id,
                        &task.to_string(),
                        Some(task.kind()),
                        ErrorInfo::from(&error),
                        attempts,
                        elapsed_ms(task_started),
                    ),
                },
            };
            if first_error.is_none() {
                first_error = document.error.clone();
            }
            results.push(document);
        }
        Verdict::Done {
            results,
            dead_letter: first_error,
        }
    }

    /// Calls the server until it gives a real answer or a permanent error; `None` if
    /// shutdown interrupted the retries.
    async fn run_with_retry(&self, task: &Task) -> Option<(Result<TaskOutput, CallError>, u32)> {
        let mut delays = backoff::delays(self.retry.initial, self.retry.max);
        let mut attempts = 0u32;
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            attempts += 1;
            let call_started = Instant::now();
            match self.client.run(task).await {
                Err(error) if error.is_transient() => {
                    self.status
                        .grpc_unavailable(&error.to_string(), call_started);
                    let delay = delays.next().unwrap_or(self.retry.max);
                    tokio::select! {
                        () = self.shutdown.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                outcome => {
                    self.status.grpc_available(call_started);
                    return Some((outcome, attempts));
                }
            }
        }
    }
}

fn invalid_task(
    id: String,
    item: &str,
    error: &TaskParseError,
    started: Instant,
) -> ResultDocument {
    ResultDocument::failure(
        id,
        item,
        intended_kind(item),
        ErrorInfo {
            code: codes::INVALID_TASK.into(),
            message: error.to_string(),
        },
        0,
        elapsed_ms(started),
    )
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(derived_id(b"fact:6"), derived_id(b"fact:6"));
        assert_ne!(derived_id(b"fact:6"), derived_id(b"fact:7"));
        assert!(derived_id(b"").starts_with("sha256-"));
    }

    #[test]
    fn intended_kind_follows_prefix() {
        assert_eq!(intended_kind("fact:abc"), Some(TaskKind::Factorial));
        assert_eq!(intended_kind("freq:"), Some(TaskKind::FrequentLetter));
        assert_eq!(intended_kind("user"), Some(TaskKind::Ab));
        assert_eq!(intended_kind(""), None);
    }
}
