//! The client side: long-lived channels to each server address (`connections` HTTP/2
//! connections per address, so calls are not all serialised through one connection's
//! stream limit and I/O task), calls spread round-robin over addresses and connections,
//! and an address that just failed with a transient error skipped for a while.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::MAX_RESPONSE_BYTES;
use super::batch::Batcher;
use super::proto::{
    AbRequest, FactorialRequest, MessageRequest, TextRequest, batch_result::Outcome,
    batch_task::Kind, message_service_client::MessageServiceClient,
};
use crate::task::{ErrorInfo, Task, TaskOutput};

/// How long an address that failed with a transient error is passed over.
const DOWN_BACKOFF: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no gRPC server address given")]
    NoTargets,
    #[error("invalid gRPC server address {target:?}")]
    BadTarget {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "gRPC server address {target} is https but no CA is configured \
         (--grpc-ca, key grpc_ca_file)"
    )]
    HttpsWithoutCa { target: String },
    #[error(
        "gRPC server {target} does not speak TLS (a plaintext server?): use http:// or \
         give the server tls_cert_file and tls_key_file"
    )]
    NotTls {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "gRPC server {target} broke off the plaintext HTTP/2 connection ({detail}): if it \
         serves TLS, use https:// and --grpc-ca (key grpc_ca_file)"
    )]
    NotPlaintext { target: String, detail: String },
    #[error(
        "gRPC server {target} closed the TLS connection before answering ({detail}): does \
         it require a client certificate (--grpc-cert/--grpc-key, keys grpc_cert_file, \
         grpc_key_file) from a CA it trusts?"
    )]
    TlsRefused { target: String, detail: String },
    #[error("cannot connect to gRPC server {target}")]
    Unreachable {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Whether a failed call may succeed when tried again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The call never reached a server (connection refused, no route, the server said
    /// it is unavailable): an outage. Keep the task and wait, however long it lasts.
    Transient,
    /// The server got the call and gave no answer (deadline, overload, died mid-call):
    /// retry, but only `max_attempts` times, since a task that makes every server time
    /// out or crash would otherwise be retried forever, each try costing the server work.
    Attempted,
    /// The server answered that the task itself is wrong: retrying cannot help.
    Permanent,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CallError {
    pub code: String,
    pub message: String,
    pub failure: Failure,
}

impl CallError {
    /// Worth trying again (on another address, or later).
    pub fn is_transient(&self) -> bool {
        matches!(self.failure, Failure::Transient | Failure::Attempted)
    }

    /// The server got this call: the attempt counts toward the retry cap.
    pub fn counts_as_attempt(&self) -> bool {
        self.failure == Failure::Attempted
    }
}

impl From<Status> for CallError {
    fn from(status: Status) -> Self {
        // A status with a source was made on this side from a transport failure (e.g.
        // the connection dropped mid-call gives UNKNOWN "transport error"); one the server
        // sent has none. Only the server's own answers are permanent.
        let from_transport = std::error::Error::source(&status).is_some();
        let failure = match status.code() {
            // Refused connections and a draining server: nothing was computed.
            Code::Unavailable => Failure::Transient,
            // The server had the call: it ran out of time or room, or died under it.
            Code::DeadlineExceeded | Code::Cancelled | Code::Aborted | Code::ResourceExhausted => {
                Failure::Attempted
            }
            Code::Unknown | Code::Internal if from_transport => Failure::Attempted,
            _ => Failure::Permanent,
        };
        CallError {
            code: code_name(status.code()).to_owned(),
            message: status.message().to_owned(),
            failure,
        }
    }
}

/// gRPC's canonical upper-case code names, as grpcurl and other clients print them.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl From<&CallError> for ErrorInfo {
    fn from(error: &CallError) -> Self {
        ErrorInfo {
            code: error.code.clone(),
            message: error.message.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// The CA (and client certificate) for `https://` targets; see [`crate::tls`].
    pub tls: Option<ClientTlsConfig>,
    /// HTTP/2 connections to each address (at least 1).
    pub connections: usize,
    /// Small tasks per `ComputeBatch` call at most; below 2, every task is a call.
    pub batch_max_tasks: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            tls: None,
            connections: 1,
            batch_max_tasks: 0,
        }
    }
}

/// A time until which something is held off: an address that just failed, batches to a
/// server that refused them.
#[derive(Default)]
pub(super) struct Holdoff(Mutex<Option<Instant>>);

impl Holdoff {
    pub(super) fn is_on(&self, now: Instant) -> bool {
        self.0
            .lock()
            .map(|until| until.is_some_and(|t| t > now))
            .unwrap_or(false)
    }

    /// Holds off for `period` from now; `None` lifts it.
    pub(super) fn set(&self, period: Option<Duration>) {
        if let Ok(mut until) = self.0.lock() {
            *until = period.map(|period| Instant::now() + period);
        }
    }
}

struct Target {
    /// One client per connection; never empty.
    clients: Vec<MessageServiceClient<Channel>>,
    next: AtomicUsize,
    down: Holdoff,
    batcher: Option<Batcher>,
}

impl Target {
    fn client(&self) -> MessageServiceClient<Channel> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }

    fn is_down(&self, now: Instant) -> bool {
        self.down.is_on(now)
    }

    fn mark(&self, down: bool) {
        self.down.set(down.then_some(DOWN_BACKOFF));
    }
}

/// Calls the compute service over one or more server addresses.
pub struct ComputeClient {
    targets: Vec<Target>,
    next: AtomicUsize,
}

/// Accepts `host:port` as well as `http://host:port` and `https://host:port`.
pub fn normalize_target(target: &str) -> String {
    normalize_target_for(target, false)
}

/// A bare `host:port` is `https://` when TLS is configured: setting a CA means the
/// servers speak TLS, and only an explicit `http://` says otherwise.
fn normalize_target_for(target: &str, tls: bool) -> String {
    let target = target.trim();
    if target.contains("://") {
        target.to_owned()
    } else if tls {
        format!("https://{target}")
    } else {
        format!("http://{target}")
    }
}

fn endpoint(target: &str, options: &ClientOptions) -> Result<Endpoint, ClientError> {
    let address = normalize_target_for(target, options.tls.is_some());
    let https = address.starts_with("https://");
    let endpoint =
        Endpoint::from_shared(address.clone()).map_err(|source| ClientError::BadTarget {
            target: target.to_owned(),
            source,
        })?;
    let endpoint = match (&options.tls, https) {
        (Some(tls), true) => {
            endpoint
                .tls_config(tls.clone())
                .map_err(|source| ClientError::BadTarget {
                    target: target.to_owned(),
                    source,
                })?
        }
        (None, true) => return Err(ClientError::HttpsWithoutCa { target: address }),
        (_, false) => endpoint,
    };
    Ok(endpoint
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

/// Whether a TLS handshake failed because the server answered in plaintext.
fn is_plaintext_answer(error: &tonic::transport::Error) -> bool {
    use tokio_rustls::rustls::{Error as TlsError, InvalidMessage};
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        let tls = current.downcast_ref::<TlsError>().or_else(|| {
            current
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<TlsError>())
        });
        if matches!(
            tls,
            Some(TlsError::InvalidMessage(InvalidMessage::InvalidContentType))
        ) {
            return true;
        }
        cause = current.source();
    }
    false
}

fn wrap(channel: Channel) -> MessageServiceClient<Channel> {
    MessageServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

impl ComputeClient {
    /// Channels connect on first use and reconnect by themselves; nothing is dialled here.
    pub fn lazy(targets: &[String], options: &ClientOptions) -> Result<Self, ClientError> {
        if targets.is_empty() {
            return Err(ClientError::NoTargets);
        }
        let targets = targets
            .iter()
            .map(|t| {
                endpoint(t, options).map(|e| {
                    // Each connect_lazy() is a connection of its own.
                    let clients: Vec<_> = (0..options.connections.max(1))
                        .map(|_| wrap(e.connect_lazy()))
                        .collect();
                    Target {
                        batcher: Batcher::new(options.batch_max_tasks, &clients),
                        clients,
                        next: AtomicUsize::new(0),
                        down: Holdoff::default(),
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            targets,
            next: AtomicUsize::new(0),
        })
    }

    /// Dials every address now, failing with `Unreachable` if one cannot be reached, and
    /// with `NotTls`/`NotPlaintext` if client and server disagree about TLS.
    pub async fn connect(targets: &[String], options: &ClientOptions) -> Result<Self, ClientError> {
        let client = Self::lazy(targets, options)?;
        for target in targets {
            let address = normalize_target_for(target, options.tls.is_some());
            let channel = endpoint(target, options)?
                .connect()
                .await
                .map_err(|source| {
                    if is_plaintext_answer(&source) {
                        ClientError::NotTls {
                            target: address.clone(),
                            source,
                        }
                    } else {
                        ClientError::Unreachable {
                            target: address.clone(),
                            source,
                        }
                    }
                })?;
            // A plaintext HTTP/2 client only learns that the server speaks TLS when the
            // first call fails; one cheap call (any answer will do) tells it now.
            // Likewise under TLS 1.3 a client learns that its certificate was refused only
            // after its side of the handshake is done.
            let probe = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if let Err(status) = probe
                && let Some(source) = std::error::Error::source(&status)
            {
                let detail = crate::daemon::logging::error_chain(source);
                return Err(if address.starts_with("https://") {
                    ClientError::TlsRefused {
                        target: address,
                        detail,
                    }
                } else {
                    ClientError::NotPlaintext {
                        target: address,
                        detail: status.message().to_owned(),
                    }
                });
            }
        }
        Ok(client)
    }

    /// Runs `task` on one server, moving on to the next address when one fails
    /// transiently; the error of the last address tried is returned if all fail.
    pub async fn run(&self, task: &Task) -> Result<TaskOutput, CallError> {
        let count = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let now = Instant::now();
        // Healthy addresses first, in round-robin order; addresses marked down last.
        let mut order: Vec<&Target> = (0..count)
            .map(|i| &self.targets[(start + i) % count])
            .collect();
        order.sort_by_key(|t| t.is_down(now));

        let Some((last, healthy_first)) = order.split_last() else {
            return Err(CallError {
                code: "UNAVAILABLE".into(),
                message: "no gRPC server configured".into(),
                failure: Failure::Transient,
            });
        };
        for target in healthy_first {
            match target.call(task).await {
                Err(error) if error.is_transient() => continue,
                outcome => return outcome,
            }
        }
        last.call(task).await
    }
}

impl Target {
    /// One call; marks the address down after a transient failure, up after an answer.
    async fn call(&self, task: &Task) -> Result<TaskOutput, CallError> {
        let batched = match &self.batcher {
            Some(batcher) => batcher.call(task).await,
            None => None,
        };
        let answer = match batched {
            Some(answer) => answer,
            None => call(self.client(), task).await,
        };
        match answer {
            Ok(output) => {
                self.mark(false);
                Ok(output)
            }
            Err(status) => {
                let error = CallError::from(status);
                self.mark(error.is_transient());
                Err(error)
            }
        }
    }
}

/// One unary call of `task`'s method.
pub(super) async fn call(
    mut client: MessageServiceClient<Channel>,
    task: &Task,
) -> Result<TaskOutput, Status> {
    let outcome = match request(task) {
        Kind::Factorial(request) => {
            Outcome::Factorial(client.factorial(request).await?.into_inner())
        }
        Kind::MostFrequentLetter(request) => {
            Outcome::MostFrequentLetter(client.most_frequent_letter(request).await?.into_inner())
        }
        Kind::ProcessMessage(request) => {
            Outcome::ProcessMessage(client.process_message(request).await?.into_inner())
        }
        Kind::AssignAb(request) => Outcome::AssignAb(client.assign_ab(request).await?.into_inner()),
    };
    task_output(task, Some(outcome))
}

/// `task` as the request of its method, in the form a `ComputeBatch` carries it.
pub(super) fn request(task: &Task) -> Kind {
    match task {
        Task::Factorial(n) => Kind::Factorial(FactorialRequest { n: *n }),
        Task::FrequentLetter(text) => Kind::MostFrequentLetter(TextRequest { text: text.clone() }),
        Task::Upper(text) => Kind::ProcessMessage(MessageRequest { text: text.clone() }),
        Task::Ab(user_id) => Kind::AssignAb(AbRequest {
            user_id: user_id.clone(),
        }),
    }
}

/// `task`'s answer from what the server answered for it; an answer of another kind (or
/// none, or an error coded OK) is the server's error, not the task's.
pub(super) fn task_output(task: &Task, outcome: Option<Outcome>) -> Result<TaskOutput, Status> {
    match (task, outcome) {
        (_, Some(Outcome::Error(error))) => Err(match Code::from(error.code) {
            Code::Ok => Status::internal(format!(
                "the server answered task {task} with an error of code OK: {}",
                error.message
            )),
            code => Status::new(code, error.message),
        }),
        (Task::Factorial(_), Some(Outcome::Factorial(reply))) => Ok(TaskOutput::Factorial {
            result: reply.result,
        }),
        (Task::FrequentLetter(_), Some(Outcome::MostFrequentLetter(reply))) => {
            Ok(TaskOutput::FrequentLetter {
                letter: reply.letter,
                count: reply.count,
            })
        }
        (Task::Upper(_), Some(Outcome::ProcessMessage(reply))) => Ok(TaskOutput::Upper {
            processed_text: reply.processed_text,
        }),
        (Task::Ab(_), Some(Outcome::AssignAb(reply))) => Ok(TaskOutput::Ab { group: reply.group }),
        (_, other) => Err(Status::internal(format!(
            "the server answered task {task} with {}",
            match other {
                None => "no result",
                Some(_) => "a result of another kind",
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(status: Status) -> Failure {
        CallError::from(status).failure
    }

    #[test]
    fn outages_wait_calls_the_server_had_count_answers_are_final() {
        assert_eq!(failure(Status::unavailable("down")), Failure::Transient);
        for status in [
            Status::deadline_exceeded("slow"),
            Status::resource_exhausted("full"),
            Status::cancelled("timeout"),
            Status::aborted("x"),
        ] {
            assert_eq!(failure(status), Failure::Attempted);
        }
        // The server's own UNKNOWN/INTERNAL is an answer; one made here from a broken
        // transport means the server died under the call.
        assert_eq!(failure(Status::internal("bug")), Failure::Permanent);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(
            failure(Status::from_error(Box::new(io))),
            Failure::Attempted
        );
        assert_eq!(failure(Status::invalid_argument("n")), Failure::Permanent);
        assert!(CallError::from(Status::deadline_exceeded("d")).is_transient());
        assert!(!CallError::from(Status::unavailable("d")).counts_as_attempt());
    }
}
