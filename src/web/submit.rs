//! A submit, from the form or the API: its tasks parsed with the shared grammar, the
//! limits checked, the valid tasks published with confirms, and a report per task.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde::Serialize;

use super::config::{CONNECT_TIMEOUT, WebConfig};
use super::metrics::WebMetrics;
use crate::amqp::producer::{ProduceError, Producer};
use crate::amqp::settings::AmqpTarget;
use crate::amqp::topology::Topology;
use crate::daemon::logging::error_chain;
use crate::task::{Task, TaskParseError, parse_list, truncate};

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
        "too many submits: at most {per_minute} per minute ({key}); retry in {retry_after_secs} s"
    )]
    RateLimited {
        key: &'static str,
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

impl Bucket {
    fn full(per_minute: u32) -> Self {
        Self {
            tokens: f64::from(per_minute),
            last: Instant::now(),
        }
    }

    /// Takes a token, or says how many seconds until the next one.
    fn take(&mut self, per_minute: u32) -> Result<(), f64> {
        let per_second = f64::from(per_minute) / 60.0;
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * per_second;
        self.tokens = (self.tokens + refill).min(f64::from(per_minute));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - self.tokens) / per_second)
        }
    }

    fn give_back(&mut self, per_minute: u32) {
        self.tokens = (self.tokens + 1.0).min(f64::from(per_minute));
    }
}

/// The key of a client's bucket: its IPv4 address, or the /64 of its IPv6 address (one
/// host usually holds a whole /64, so a finer key would be free to multiply).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
        v4 => v4,
    }
}

/// One bucket per client, at most `capacity` of them: when full, the least recently
/// used is forgotten (it comes back with a full bucket, which the global bucket still
/// bounds).
struct ClientBuckets {
    buckets: HashMap<IpAddr, Bucket>,
    capacity: usize,
}

impl ClientBuckets {
    fn bucket(&mut self, client: IpAddr, per_minute: u32) -> &mut Bucket {
        if !self.buckets.contains_key(&client) && self.buckets.len() >= self.capacity {
            let oldest = self
                .buckets
                .iter()
                .min_by_key(|(_, bucket)| bucket.last)
                .map(|(ip, _)| *ip);
            if let Some(oldest) = oldest {
                self.buckets.remove(&oldest);
            }
        }
        self.buckets
            .entry(client)
            .or_insert_with(|| Bucket::full(per_minute))
    }
}

/// Where a submit's tasks come from: the form's text is a comma list; each element of
/// the API's JSON array is one task when it is `upper:`/`freq:` text (commas are then
/// part of the text), else a comma list.
#[derive(Debug, Clone, Copy)]
pub enum Inputs<'a> {
    Form(&'a str),
    Api(&'a [String]),
}

impl Inputs<'_> {
    fn items(self) -> Vec<(String, Result<Task, TaskParseError>)> {
        match self {
            Inputs::Form(text) => parse_list(text),
            Inputs::Api(elements) => elements
                .iter()
                .flat_map(|element| {
                    let task = element.trim();
                    if task.starts_with("upper:") || task.starts_with("freq:") {
                        vec![(task.to_owned(), Task::parse(task))]
                    } else {
                        parse_list(element)
                    }
                })
                .collect(),
        }
    }
}

pub struct Submitter {
    target: AmqpTarget,
    topology: Topology,
    producer: tokio::sync::Mutex<Option<Producer>>,
    bucket: Mutex<Bucket>,
    per_minute: u32,
    clients: Mutex<ClientBuckets>,
    per_client: u32,
    max_tasks: usize,
    confirm_timeout: Duration,
    metrics: WebMetrics,
}

impl Submitter {
    pub fn new(
        target: AmqpTarget,
        topology: Topology,
        config: &WebConfig,
        metrics: WebMetrics,
    ) -> Self {
        Self {
            target,
            topology,
            producer: tokio::sync::Mutex::new(None),
            bucket: Mutex::new(Bucket::full(config.submits_per_minute)),
            per_minute: config.submits_per_minute,
            clients: Mutex::new(ClientBuckets {
                buckets: HashMap::new(),
                capacity: config.rate_limit_clients,
            }),
            per_client: config.submits_per_minute_per_client,
            max_tasks: config.max_tasks_per_submit,
            confirm_timeout: Duration::from_secs(config.confirm_timeout_secs),
            metrics,
        }
    }

    /// Takes one submit's token from `client`'s bucket and from the global one, or says
    /// when the next one comes. The client's token is spent first, so a client over its
    /// own budget never drains the shared one.
    fn take_token(&self, client: Option<IpAddr>) -> Result<(), SubmitError> {
        let limited = |key, per_minute, wait: f64| SubmitError::RateLimited {
            key,
            per_minute,
            // Whole seconds, at least 1: what Retry-After carries.
            retry_after_secs: (wait.ceil().max(1.0)) as u64,
        };
        let client = client.map(client_key);
        if let Some(client) = client {
            let Ok(mut clients) = self.clients.lock() else {
                return Err(limited(
                    "submits_per_minute_per_client",
                    self.per_client,
                    1.0,
                ));
            };
            clients
                .bucket(client, self.per_client)
                .take(self.per_client)
                .map_err(|wait| limited("submits_per_minute_per_client", self.per_client, wait))?;
        }
        let global = match self.bucket.lock() {
            Ok(mut bucket) => bucket.take(self.per_minute),
            Err(_) => Err(1.0),
        };
        if let Err(wait) = global {
            // The submit is refused: its client's token was not spent.
            if let (Some(client), Ok(mut clients)) = (client, self.clients.lock()) {
                clients
                    .bucket(client, self.per_client)
                    .give_back(self.per_client);
            }
            return Err(limited("submits_per_minute", self.per_minute, wait));
        }
        Ok(())
    }

    /// Parses `inputs`, checks the limits (with `client`'s own budget) and publishes the
    /// tasks that parse.
    pub async fn submit(
        &self,
        inputs: Inputs<'_>,
        client: Option<IpAddr>,
    ) -> Result<SubmitReport, SubmitError> {
        let submitted = self.submit_counted(inputs, client).await;
        match &submitted {
            Ok(report) => self
                .metrics
                .submit("accepted", report.accepted, report.rejected),
            Err(e) => self.metrics.submit(e.code(), 0, 0),
        }
        submitted
    }

    async fn submit_counted(
        &self,
        inputs: Inputs<'_>,
        client: Option<IpAddr>,
    ) -> Result<SubmitReport, SubmitError> {
        self.take_token(client)?;
        let items = inputs.items();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_elements_keep_commas_in_text_tasks_and_the_form_splits() {
        let api = [
            "upper:Hello, world".to_owned(),
            " freq:a, b, c ".to_owned(),
            "fact:5, user1".to_owned(),
        ];
        let tasks: Vec<String> = Inputs::Api(&api).items().into_iter().map(|i| i.0).collect();
        assert_eq!(
            tasks,
            ["upper:Hello, world", "freq:a, b, c", "fact:5", "user1"]
        );
        let form: Vec<String> = Inputs::Form("upper:Hello, world")
            .items()
            .into_iter()
            .map(|i| i.0)
            .collect();
        assert_eq!(form, ["upper:Hello", "world"]);
    }

    #[test]
    fn client_buckets_are_bounded_and_v6_is_keyed_by_its_64() {
        let mut clients = ClientBuckets {
            buckets: HashMap::new(),
            capacity: 2,
        };
        for last in 1..=5u8 {
            let _ = clients.bucket(IpAddr::from([10, 0, 0, last]), 1).take(1);
        }
        assert_eq!(clients.buckets.len(), 2);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), IpAddr::from([10, 0, 0, 1]));
    }
}
