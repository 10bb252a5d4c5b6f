//! One delivery in, result documents out: decode the body, parse its tasks, call the gRPC
//! server (retrying transient failures until shutdown), and decide whether the message
//! belongs in the dead-letter queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::types::{AMQPValue, FieldTable};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::metrics::ConsumerMetrics;
use super::status::StatusBoard;
use crate::daemon::backoff;
use crate::grpc::client::{CallError, ComputeClient, Failure};
use crate::task::{
    ErrorInfo, MAX_TASK_CHARS, ResultDocument, Task, TaskKind, TaskOutput, TaskParseError, codes,
    parse_list, truncate,
};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// Calls the server got without answering (deadline, overload, died mid-call) before
    /// the task is given up; outages (the call never reached a server) do not count.
    pub max_attempts: u32,
}

/// What one message may cost, each a config key of the same name.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_tasks_per_message: usize,
    pub max_result_bytes_per_message: usize,
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
    pub limits: Limits,
    /// `delivery_limit`: the delivery (as the broker counts them) at which a message is
    /// dead-lettered unprocessed.
    pub delivery_limit: u32,
    pub status: Arc<StatusBoard>,
    pub shutdown: CancellationToken,
    pub metrics: ConsumerMetrics,
}

/// AMQP short strings (a result's `message_id`) hold at most 255 bytes; a task id is the
/// message id plus `#N`, so the message id part is kept to this.
pub const MAX_ID_BYTES: usize = 200;

/// A stable id for a message without `message_id`: the same body always gets the same
/// id, so a redelivery is recognisable downstream.
pub fn derived_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("sha256-{}", hex::encode(&digest[..12]))
}

/// The id results of a message carry: its `message_id` when it fits, else the id's
/// start and a digest of the whole (`<first bytes>~<24 hex>`), so an over-long id stays
/// recognisable, stable across redeliveries and distinct from other long ids; the
/// body's digest when the message has no id.
pub fn message_key(message_id: Option<&str>, body: &[u8]) -> String {
    match message_id.filter(|id| !id.is_empty()) {
        None => derived_id(body),
        Some(id) if id.len() <= MAX_ID_BYTES => id.to_owned(),
        Some(id) => {
            let digest = hex::encode(&Sha256::digest(id.as_bytes())[..12]);
            let mut cut = MAX_ID_BYTES - 1 - digest.len();
            while !id.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}~{digest}", &id[..cut])
        }
    }
}

/// One task of a message, ready to run (or already known to be malformed).
pub struct Planned {
    pub id: String,
    pub item: String,
    pub parsed: Result<Task, TaskParseError>,
}

/// Why a message is refused as a whole, before any task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub error: ErrorInfo,
    /// What the failure result shows as the task (a bounded excerpt of the body).
    pub task: String,
}

impl Refused {
    fn new(code: &str, message: String, task: String) -> Self {
        Self {
            error: ErrorInfo {
                code: code.to_owned(),
                message,
            },
            task,
        }
    }
}

/// Decodes and splits a body and checks it against `limits`: everything about a message
/// that can be judged without calling the server. Never panics, whatever the bytes.
pub fn plan(message_id: &str, body: &[u8], limits: &Limits) -> Result<Vec<Planned>, Refused> {
    plan_body(message_id, body, limits, false)
}

/// [`plan`]; `one_task` (the [`crate::amqp::publish::ONE_TASK_HEADER`]) means the body is
/// one task whose text may hold commas, not a comma list.
pub fn plan_body(
    message_id: &str,
    body: &[u8],
    limits: &Limits,
    one_task: bool,
) -> Result<Vec<Planned>, Refused> {
    let excerpt = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if body.len() > limits.max_body_bytes {
        return Err(Refused::new(
            codes::BODY_TOO_LARGE,
            format!(
                "body is {} bytes, over the limit of {} bytes (max_body_bytes)",
                body.len(),
                limits.max_body_bytes
            ),
            excerpt(),
        ));
    }
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            return Err(Refused::new(
                codes::INVALID_UTF8,
                format!("body is not valid UTF-8: {e}"),
                excerpt(),
            ));
        }
    };
    let items = if one_task && !text.trim().is_empty() {
        vec![(text.trim().to_owned(), Task::parse(text.trim()))]
    } else {
        parse_list(text)
    };
    if items.is_empty() {
        return Err(Refused::new(
            codes::EMPTY_BODY,
            "body holds no task".into(),
            truncate(text, 200),
        ));
    }
    if items.len() > limits.max_tasks_per_message {
        return Err(Refused::new(
            codes::TOO_MANY_TASKS,
            format!(
                "body holds {} tasks, over the limit of {} (max_tasks_per_message)",
                items.len(),
                limits.max_tasks_per_message
            ),
            truncate(text, 200),
        ));
    }
    // A task whose result alone would be over the limit is left to the server, which
    // refuses an `n` over its own maximum with a reason naming that limit; if it computes
    // the result instead, the check on real results below refuses the message.
    let estimate: usize = items
        .iter()
        .map(|(item, parsed)| match parsed {
            Ok(task) => estimated_result_bytes(task),
            Err(_) => item.len().min(1000) + RESULT_OVERHEAD,
        })
        .filter(|bytes| *bytes <= limits.max_result_bytes_per_message)
        .fold(0, usize::saturating_add);
    if estimate > limits.max_result_bytes_per_message {
        return Err(Refused::new(
            codes::RESULT_TOO_LARGE,
            format!(
                "results of this body would take about {estimate} bytes, over the limit of {} bytes (max_result_bytes_per_message)",
                limits.max_result_bytes_per_message
            ),
            truncate(text, 200),
        ));
    }
    let single = items.len() == 1;
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(index, (item, parsed))| Planned {
            id: if single {
                message_id.to_owned()
            } else {
                format!("{message_id}#{}", index + 1)
            },
            item,
            parsed,
        })
        .collect())
}

/// A result document's size apart from the answer itself.
const RESULT_OVERHEAD: usize = 512;

/// What a task's result document will weigh, known before computing it: n! has
/// log10(n!) + 1 digits (Stirling), an upper-cased text is as long as the text.
pub fn estimated_result_bytes(task: &Task) -> usize {
    let answer = match task {
        Task::Factorial(n) if *n > 1 => {
            let n = *n as f64;
            let log10 = n * (n / std::f64::consts::E).log10()
                + 0.5 * (2.0 * std::f64::consts::PI * n).log10();
            // Saturates for absurd n, which the server refuses anyway.
            log10 as usize + 1
        }
        Task::Factorial(_) => 1,
        Task::Upper(text) => text.len(),
        Task::FrequentLetter(_) | Task::Ab(_) => 16,
    };
    answer
        .saturating_add(task_text_bytes(task))
        .saturating_add(RESULT_OVERHEAD)
}

fn task_text_bytes(task: &Task) -> usize {
    match task {
        Task::Factorial(_) => 24,
        Task::FrequentLetter(text) | Task::Upper(text) | Task::Ab(text) => {
            text.len().min(4 * MAX_TASK_CHARS)
        }
    }
}

/// The header in which quorum queues count a message's earlier deliveries (returns to
/// the queue: a requeue, a consumer's channel or connection closing while it held the
/// message). RabbitMQ 4.3 counts only the returns it takes for failures (`basic.reject`,
/// a closed channel), not `basic.nack` or a consumer timeout.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// How many times the message was delivered before this delivery, as the broker counts
/// them in [`DELIVERY_COUNT_HEADER`]. 0 for a first delivery (`redelivered` unset), whatever
/// the header says: RabbitMQ 4 passes a publisher's own header of that name through on a
/// first delivery (a copy republished from the dead-letter queue, a confused or hostile
/// publisher), and only sets it once the message has come back. 0 too when the header is
/// absent (a classic queue) or not a non-negative integer.
pub fn earlier_deliveries(headers: Option<&FieldTable>, redelivered: bool) -> u32 {
    if !redelivered {
        return 0;
    }
    let Some(value) = headers.and_then(|h| h.inner().get(DELIVERY_COUNT_HEADER)) else {
        return 0;
    };
    let count: Option<i128> = match value {
        AMQPValue::ShortShortInt(n) => Some((*n).into()),
        AMQPValue::ShortShortUInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        AMQPValue::ShortUInt(n) => Some((*n).into()),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::LongLongInt(n) => Some((*n).into()),
        _ => None,
    };
    count
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or_default()
}

/// The intended kind of a task, from its prefix, even when it did not parse.
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

/// The single failure result and dead-letter reason of a message refused as a whole,
/// after `attempts` (its earlier deliveries).
pub fn refusal(message_id: &str, refused: Refused, started: Instant, attempts: u32) -> Verdict {
    Verdict::Done {
        results: vec![ResultDocument::failure(
            message_id.to_owned(),
            &refused.task,
            None,
            refused.error.clone(),
            attempts,
            elapsed_ms(started),
        )],
        dead_letter: Some(refused.error),
    }
}

impl Handler {
    /// Handles a body that is a comma list of tasks, on its first delivery.
    pub async fn handle(&self, message_id: &str, body: &[u8]) -> Verdict {
        self.handle_body(message_id, body, false, 0).await
    }

    /// Handles a body; `one_task`: see [`plan_body`]; `earlier`: the message's earlier
    /// deliveries ([`earlier_deliveries`]), which count as attempts of each of its tasks.
    pub async fn handle_body(
        &self,
        message_id: &str,
        body: &[u8],
        one_task: bool,
        earlier: u32,
    ) -> Verdict {
        let started = Instant::now();
        if earlier.saturating_add(1) >= self.delivery_limit {
            let refused = Refused::new(
                codes::DELIVERY_LIMIT,
                format!(
                    "delivered {} times without being settled (x-delivery-count {earlier}): consumers were stopped or killed while they held it; dead-lettered unprocessed at delivery_limit ({}) so that the queue's own delivery limit cannot drop it; requeue it from the dead-letter queue once the cause is fixed",
                    earlier.saturating_add(1),
                    self.delivery_limit
                ),
                String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            );
            return refusal(message_id, refused, started, earlier);
        }
        let planned = match plan_body(message_id, body, &self.limits, one_task) {
            Ok(planned) => planned,
            Err(refused) => return refusal(message_id, refused, started, earlier),
        };
        let total = planned.len();
        let mut results = Vec::with_capacity(total);
        let mut first_error = None;
        let mut result_bytes = 0usize;
        for (done, Planned { id, item, parsed }) in planned.into_iter().enumerate() {
            let task_started = Instant::now();
            let mut document = match parsed {
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
            // Earlier deliveries were attempts too, whoever made them.
            document.attempts = document.attempts.saturating_add(earlier);
            // The estimate in `plan` is the first line; this one holds whatever the
            // server really sent (a server with other limits, a longer answer).
            result_bytes = result_bytes.saturating_add(document.to_json().len());
            if result_bytes > self.limits.max_result_bytes_per_message {
                let refused = Refused::new(
                    codes::RESULT_TOO_LARGE,
                    format!(
                        "results of this body reached {result_bytes} bytes after {} of {total} tasks, over the limit of {} bytes (max_result_bytes_per_message)",
                        done + 1,
                        self.limits.max_result_bytes_per_message
                    ),
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                );
                return refusal(message_id, refused, started, earlier);
            }
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

    /// Calls the server until it gives a real answer or a permanent error, or until
    /// `max_attempts` calls it got went unanswered; `None` if shutdown interrupted.
    async fn run_with_retry(&self, task: &Task) -> Option<(Result<TaskOutput, CallError>, u32)> {
        let mut delays = backoff::delays(self.retry.initial, self.retry.max);
        let mut attempts = 0u32;
        let mut unanswered = 0u32;
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            attempts += 1;
            if attempts > 1 {
                self.metrics.retries.inc();
            }
            let call_started = Instant::now();
            let called = self.client.run(task).await;
            let code = called.as_ref().map_or_else(|e| e.code.as_str(), |_| "OK");
            self.metrics
                .grpc_call(task.kind(), code, call_started.elapsed().as_secs_f64());
            match called {
                Err(error) if error.is_transient() => {
                    self.status
                        .grpc_unavailable(&error.to_string(), call_started);
                    if error.counts_as_attempt() {
                        unanswered += 1;
                        if unanswered >= self.retry.max_attempts {
                            let gave_up = CallError {
                                message: format!(
                                    "{}; gave up after {unanswered} calls the server did not answer (max_attempts = {})",
                                    error.message, self.retry.max_attempts
                                ),
                                failure: Failure::Permanent,
                                ..error
                            };
                            return Some((Err(gave_up), attempts));
                        }
                    }
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
    use crate::amqp::publish::{MAX_SHORT_STRING, persistent};
    use crate::consumer::dead_letter::{dead_letter_properties, encoded_table_bytes};
    use crate::grpc::client::ClientOptions;
    use crate::server::config::ServerConfig;
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            max_body_bytes: 4096,
            max_tasks_per_message: 20,
            max_result_bytes_per_message: 64 * 1024,
        }
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(derived_id(b"fact:6"), derived_id(b"fact:6"));
        assert_ne!(derived_id(b"fact:6"), derived_id(b"fact:7"));
        assert!(derived_id(b"").starts_with("sha256-"));
    }

    #[test]
    fn earlier_deliveries_come_from_a_redelivery_s_integer_count_only() {
        let with = |value: AMQPValue| {
            let mut table = FieldTable::default();
            table.insert(DELIVERY_COUNT_HEADER.into(), value);
            table
        };
        assert_eq!(earlier_deliveries(None, true), 0);
        assert_eq!(earlier_deliveries(Some(&FieldTable::default()), true), 0);
        // What 3.x and 4.x send: a long (signed 64-bit).
        assert_eq!(
            earlier_deliveries(Some(&with(AMQPValue::LongLongInt(19))), true),
            19
        );
        assert_eq!(
            earlier_deliveries(Some(&with(AMQPValue::LongInt(3))), true),
            3
        );
        assert_eq!(
            earlier_deliveries(Some(&with(AMQPValue::ShortShortUInt(7))), true),
            7
        );
        // A first delivery: the publisher's header, not the broker's count.
        assert_eq!(
            earlier_deliveries(Some(&with(AMQPValue::LongLongInt(19))), false),
            0
        );
        // Not a count.
        for value in [
            AMQPValue::LongLongInt(-1),
            AMQPValue::LongLongInt(i64::MAX),
            AMQPValue::LongString("19".into()),
            AMQPValue::Double(19.0),
            AMQPValue::Boolean(true),
            AMQPValue::FieldTable(FieldTable::default()),
        ] {
            assert_eq!(
                earlier_deliveries(Some(&with(value.clone())), true),
                0,
                "{value:?}"
            );
        }
    }

    #[test]
    fn intended_kind_follows_prefix() {
        assert_eq!(intended_kind("fact:abc"), Some(TaskKind::Factorial));
        assert_eq!(intended_kind("freq:"), Some(TaskKind::FrequentLetter));
        assert_eq!(intended_kind("user"), Some(TaskKind::Ab));
        assert_eq!(intended_kind(""), None);
    }

    #[test]
    fn long_message_ids_are_shortened_recognisably_and_stably() {
        let long = "m".repeat(254);
        let key = message_key(Some(&long), b"fact:1,fact:2");
        assert!(key.len() <= MAX_ID_BYTES, "{key}");
        assert!(key.starts_with("mmmm"), "{key}");
        assert_eq!(key, message_key(Some(&long), b"other body"));
        let other = format!("{}n", "m".repeat(253));
        assert_ne!(key, message_key(Some(&other), b""));
        assert_eq!(message_key(Some("short"), b""), "short");
        assert_eq!(message_key(Some(""), b"fact:1"), derived_id(b"fact:1"));
        // Multi-byte characters are never cut in half.
        let wide = "ж".repeat(127);
        assert!(message_key(Some(&wide), b"").is_char_boundary(0));
    }

    #[test]
    fn limits_refuse_before_any_work_and_name_their_key() {
        let body = vec!["fact:100000"; 10_000].join(",");
        let defaults = Limits {
            max_body_bytes: 2 * 1024 * 1024,
            max_tasks_per_message: 1000,
            max_result_bytes_per_message: 8 * 1024 * 1024,
        };
        let refused = plan("m", body.as_bytes(), &defaults).err().unwrap();
        assert_eq!(refused.error.code, codes::TOO_MANY_TASKS);
        assert!(refused.error.message.contains("max_tasks_per_message"));
        assert!(refused.error.message.contains("10000"));
        let body = vec!["fact:100000"; 100].join(",");
        let refused = plan("m", body.as_bytes(), &defaults).err().unwrap();
        assert_eq!(refused.error.code, codes::RESULT_TOO_LARGE);
        assert!(
            refused
                .error
                .message
                .contains("max_result_bytes_per_message (8388608)")
                || refused
                    .error
                    .message
                    .contains("8388608 bytes (max_result_bytes_per_message)"),
            "{}",
            refused.error.message
        );
        // 100000! has 456,574 digits; the estimate must not be below it.
        let estimate = estimated_result_bytes(&Task::Factorial(100_000));
        assert!((456_574..470_000).contains(&estimate), "{estimate}");
        assert!(plan("m", b"fact:100000,fact:5", &defaults).is_ok());
        // Out of the server's range: its INVALID_ARGUMENT names its limit, so it decides.
        assert!(plan("m", b"fact:99999999,fact:5", &defaults).is_ok());
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        // Bodies that look like task lists as well as raw noise.
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..max),
            prop::collection::vec(
                prop_oneof![
                    Just(b"fact:".to_vec()),
                    Just(b"freq:".to_vec()),
                    Just(b"upper:".to_vec()),
                    Just(b",".to_vec()),
                    Just(b" ".to_vec()),
                    Just("é".as_bytes().to_vec()),
                    prop::collection::vec(any::<u8>(), 0..8),
                    (0i64..200).prop_map(|n| n.to_string().into_bytes()),
                ],
                0..40
            )
            .prop_map(|parts| parts.concat()),
        ]
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter)
    }

    fn short(max: usize) -> impl Strategy<Value = Option<ShortString>> {
        prop::option::of(text(max).prop_map(|t| crate::amqp::publish::short_string(&t)))
    }

    fn properties() -> impl Strategy<Value = BasicProperties> {
        (
            (short(80), short(80), short(80), short(80)),
            prop::option::of(any::<u8>()),
            prop::collection::vec((text(20), 0usize..40_000), 0..6),
        )
            .prop_map(
                |((user, expiration, reply_to, correlation), priority, headers)| {
                    let mut properties = BasicProperties::default();
                    if let Some(v) = user {
                        properties = properties.with_user_id(v);
                    }
                    if let Some(v) = expiration {
                        properties = properties.with_expiration(v);
                    }
                    if let Some(v) = reply_to {
                        properties = properties.with_reply_to(v);
                    }
                    if let Some(v) = correlation {
                        properties = properties.with_correlation_id(v);
                    }
                    if let Some(v) = priority {
                        properties = properties.with_priority(v);
                    }
                    let mut table = FieldTable::default();
                    for (key, size) in headers {
                        table.insert(
                            crate::amqp::publish::short_string(&key),
                            AMQPValue::LongString(LongString::from(vec![b'h'; size])),
                        );
                    }
                    properties.with_headers(table)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever the bytes and the id: a plan or a reason, ids that fit a short string.
        #[test]
        fn plan_never_panics_and_ids_fit(id in prop::option::of(text(400)), body in bytes(6000)) {
            let key = message_key(id.as_deref(), &body);
            prop_assert!(key.len() <= MAX_ID_BYTES);
            match plan(&key, &body, &limits()) {
                Ok(planned) => {
                    prop_assert!(!planned.is_empty());
                    prop_assert!(planned.len() <= limits().max_tasks_per_message);
                    for task in &planned {
                        prop_assert!(task.id.len() <= MAX_SHORT_STRING);
                        prop_assert!(ShortString::try_new(task.id.clone()).is_ok());
                    }
                }
                Err(refused) => {
                    prop_assert!(!refused.error.code.is_empty());
                    prop_assert!(!refused.error.message.is_empty());
                    prop_assert!(refused.task.len() <= 4 * 1000 + 64);
                }
            }
        }

        /// Any properties a publisher may set give a dead-letter copy the broker takes:
        /// no foreign user_id, no expiration, headers within the frame.
        #[test]
        fn dead_letter_copies_are_always_publishable(original in properties(), reason in text(3000)) {
            let error = ErrorInfo { code: "X".into(), message: reason };
            let copy = dead_letter_properties(&original, &error, "tasks", 131_072);
            prop_assert!(copy.user_id().is_none());
            prop_assert!(copy.expiration().is_none());
            let headers = copy.headers().clone().unwrap_or_default();
            prop_assert!(encoded_table_bytes(&headers) + 4096 < 131_072);
            let _ = persistent("application/json", &message_key(None, b""));
        }
    }

    /// A handler of `client` with the test's limits and quick retries.
    fn test_handler(client: ComputeClient) -> Handler {
        Handler {
            client: Arc::new(client),
            retry: RetryPolicy {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(200),
                max_attempts: 3,
            },
            limits: limits(),
            delivery_limit: 20,
            status: Arc::new(StatusBoard::default()),
            shutdown: CancellationToken::new(),
            metrics: super::super::metrics::ConsumerMetrics::new(
                &crate::daemon::metrics::Metrics::new().unwrap(),
            )
            .unwrap(),
        }
    }

    /// At `delivery_limit` the message is dead-lettered before any call (the server here
    /// does not exist, and is never asked), its earlier deliveries counted as attempts.
    #[test]
    fn a_message_at_its_delivery_limit_is_dead_lettered_unprocessed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = rt.enter();
        let client =
            ComputeClient::lazy(&["127.0.0.1:1".to_owned()], &ClientOptions::default()).unwrap();
        let handler = test_handler(client);
        let Verdict::Done {
            results,
            dead_letter,
        } = rt.block_on(handler.handle_body("m", b"fact:5,fact:6", false, 19))
        else {
            panic!("abandoned");
        };
        assert_eq!(results.len(), 1, "one result for the message as a whole");
        let error = dead_letter.expect("dead-lettered");
        assert_eq!(error.code, codes::DELIVERY_LIMIT);
        assert!(
            error.message.contains("delivered 20 times"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("delivery_limit (20)"),
            "{}",
            error.message
        );
        assert_eq!(results[0].attempts, 19);
        assert_eq!(results[0].task, "fact:5,fact:6");
    }

    /// The whole handler against a real labmq-server: arbitrary bodies always end in
    /// results, a dead-letter reason when one failed, and never a panic.
    #[test]
    fn handler_always_yields_results_or_a_reason() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = ServerConfig {
            listen: ([127, 0, 0, 1], port).into(),
            max_factorial_n: 500,
            ..ServerConfig::default()
        };
        let shutdown = CancellationToken::new();
        rt.spawn({
            let shutdown = shutdown.clone();
            async move { crate::server::run(&config, shutdown).await }
        });
        // Channels are made inside the runtime they will run on.
        let _entered = rt.enter();
        let client =
            ComputeClient::lazy(&[format!("127.0.0.1:{port}")], &ClientOptions::default()).unwrap();
        let handler = test_handler(client);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 96,
            ..ProptestConfig::default()
        });
        runner
            .run(&(prop::option::of(text(300)), bytes(3000)), |(id, body)| {
                let key = message_key(id.as_deref(), &body);
                let verdict = rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(30), handler.handle(&key, &body)).await
                });
                let Ok(Verdict::Done {
                    results,
                    dead_letter,
                }) = verdict
                else {
                    return Err(TestCaseError::fail("no verdict within 30 s, or abandoned"));
                };
                prop_assert!(!results.is_empty());
                let failed = results.iter().any(|r| r.error.is_some());
                prop_assert_eq!(failed, dead_letter.is_some());
                for result in &results {
                    prop_assert!(ShortString::try_new(result.id.clone()).is_ok());
                    let json: serde_json::Value =
                        serde_json::from_slice(&result.to_json()).unwrap();
                    prop_assert_eq!(json["id"].as_str(), Some(result.id.as_str()));
                }
                Ok(())
            })
            .unwrap();
        shutdown.cancel();
    }
}
