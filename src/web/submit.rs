//! A submit, from the form or the API: its tasks parsed with the shared grammar, the
//! limits checked, the valid tasks published with confirms, and a report per task.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde::Serialize;

use super::config::{CONNECT_TIMEOUT, WebConfig};
use crate::amqp::producer::{ProduceError, Producer};
use crate::amqp::settings::AmqpTarget;
use crate::amqp::topology::Topology;
use crate::daemon::logging::error_chain;
use crate::task::{Task, parse_list, truncate};

/// What happened to one task of a submit.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TaskReport {
    pub task: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    /// Published and confirmed; its result will carry this id.
    Accepted { id: String },
    /// Not published: the task does not parse.
    Rejected { reason: String },
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SubmitReport {
    pub accepted: usize,
    pub rejected: usize,
    pub tasks: Vec<TaskReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("no task given")]
    NoTasks,
    #[error("{count} tasks in one submit; at most {max} are accepted (max_tasks_per_submit)")]
    TooManyTasks { count: usize, max: usize },
    #[error(
        "too many submits: at most {per_minute} per minute (submits_per_minute); retry in {retry_after_secs} s"
    )]
    RateLimited {
        per_minute: u32,
        retry_after_secs: u64,
    },
    #[error("the broker is unavailable, nothing was published")]
    Unavailable(#[source] ProduceError),
    #[error("the broker did not confirm every task (some may have been published)")]
    NotConfirmed(#[source] ProduceError),
}

impl SubmitError {
    pub fn status(&self) -> StatusCode {
        match self {
            SubmitError::NoTasks | SubmitError::TooManyTasks { .. } => StatusCode::BAD_REQUEST,
            SubmitError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            SubmitError::Unavailable(_) | SubmitError::NotConfirmed(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            SubmitError::NoTasks => "no_tasks",
            SubmitError::TooManyTasks { .. } => "too_many_tasks",
            SubmitError::RateLimited { .. } => "rate_limited",
            SubmitError::Unavailable(_) => "broker_unavailable",
            SubmitError::NotConfirmed(_) => "not_confirmed",
        }
    }

    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            SubmitError::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

/// A token bucket: `per_minute` tokens, refilled evenly, one per submit.
struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct Submitter {
    target: AmqpTarget,
    topology: Topology,
    producer: tokio::sync::Mutex<Option<Producer>>,
    bucket: Mutex<Bucket>,
    per_minute: u32,
    max_tasks: usize,
    confirm_timeout: Duration,
}

impl Submitter {
    pub fn new(target: AmqpTarget, topology: Topology, config: &WebConfig) -> Self {
        Self {
            target,
            topology,
            producer: tokio::sync::Mutex::new(None),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(config.submits_per_minute),
                last: Instant::now(),
            }),
            per_minute: config.submits_per_minute,
            max_tasks: config.max_tasks_per_submit,
            confirm_timeout: Duration::from_secs(config.confirm_timeout_secs),
        }
    }

    /// Takes one submit's token, or says when the next one comes.
    fn take_token(&self) -> Result<(), SubmitError> {
        let per_second = f64::from(self.per_minute) / 60.0;
        let limited = |wait: f64| SubmitError::RateLimited {
            per_minute: self.per_minute,
            // Whole seconds, at least 1: what Retry-After carries.
            retry_after_secs: (wait.ceil().max(1.0)) as u64,
        };
        let Ok(mut bucket) = self.bucket.lock() else {
            return Err(limited(1.0));
        };
        let now = Instant::now();
        let refill = now.duration_since(bucket.last).as_secs_f64() * per_second;
        bucket.tokens = (bucket.tokens + refill).min(f64::from(self.per_minute));
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(limited((1.0 - bucket.tokens) / per_second))
        }
    }

    /// Parses `inputs` (each may be a comma-separated list), checks the limits and
    /// publishes the tasks that parse.
    pub async fn submit(&self, inputs: &[String]) -> Result<SubmitReport, SubmitError> {
        self.take_token()?;
        let items: Vec<_> = inputs.iter().flat_map(|input| parse_list(input)).collect();
        if items.is_empty() {
            return Err(SubmitError::NoTasks);
        }
        if items.len() > self.max_tasks {
            return Err(SubmitError::TooManyTasks {
                count: items.len(),
                max: self.max_tasks,
            });
        }
        let valid: Vec<Task> = items
            .iter()
            .filter_map(|(_, parsed)| parsed.as_ref().ok().cloned())
            .collect();
        let mut ids = if valid.is_empty() {
            Vec::new()
        } else {
            self.publish(&valid).await?
        }
        .into_iter();
        let tasks: Vec<TaskReport> = items
            .into_iter()
            .map(|(text, parsed)| {
                let task = truncate(&text, 200);
                match parsed {
                    Ok(_) => TaskReport {
                        task,
                        outcome: Outcome::Accepted {
                            id: ids.next().unwrap_or_default(),
                        },
                    },
                    Err(e) => TaskReport {
                        task,
                        outcome: Outcome::Rejected {
                            reason: e.to_string(),
                        },
                    },
                }
            })
            .collect();
        let accepted = tasks
            .iter()
            .filter(|t| matches!(t.outcome, Outcome::Accepted { .. }))
            .count();
        tracing::info!(
            accepted,
            rejected = tasks.len() - accepted,
            "tasks submitted"
        );
        Ok(SubmitReport {
            accepted,
            rejected: tasks.len() - accepted,
            tasks,
        })
    }

    /// Publishes on the cached producer, reconnecting first when its connection is gone;
    /// returns the ids in task order.
    async fn publish(&self, tasks: &[Task]) -> Result<Vec<String>, SubmitError> {
        let mut cached = self.producer.lock().await;
        let producer = match cached.take() {
            Some(producer) if producer.is_connected() => producer,
            stale => {
                if let Some(old) = stale {
                    old.close().await;
                }
                Producer::connect(&self.target, &self.topology, "labmq-web", CONNECT_TIMEOUT)
                    .await
                    .map_err(SubmitError::Unavailable)?
            }
        };
        let producer = cached.insert(producer);
        match producer.publish(tasks, false, self.confirm_timeout).await {
            Ok(published) => Ok(published.into_iter().map(|p| p.id).collect()),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "publishing submitted tasks failed");
                if let Some(old) = cached.take() {
                    old.close().await;
                }
                Err(SubmitError::NotConfirmed(e))
            }
        }
    }
}
