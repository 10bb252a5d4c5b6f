//! `labmq-consumer`: the consumer loop. One long-lived connection and gRPC client; up to
//! `concurrency` tasks in flight; each delivery acked only after its results (and, for a
//! bad message, its dead-letter copy) are confirmed by the broker. A lost connection or a
//! cancelled subscription is followed by reconnect, redeclare and resume.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connection::AmqpTarget;
use super::handle::{Handler, RetryPolicy, Verdict, derived_id};
use super::publish::{Publisher, Route, confirmed, header, unix_now};
use super::result::{ErrorInfo, ResultDocument};
use super::status::StatusBoard;
use super::topology::Topology;
use super::{BrokerError, backoff};
use crate::daemon::config::ConsumerConfig;
use crate::daemon::systemd;
use crate::rpc::client::{ClientError, ClientOptions, ComputeClient};
use crate::task::truncate;

/// How long tasks that were told to give up may take to requeue their message.
const GIVE_UP_BOUND: Duration = Duration::from_secs(5);
/// Bound on each broker operation of the shutdown path, so a broker that stopped
/// answering cannot keep the process from exiting (unacked messages are requeued by the
/// broker when the connection goes anyway).
const SHUTDOWN_STEP_BOUND: Duration = Duration::from_secs(5);

/// Runs one shutdown step with [`SHUTDOWN_STEP_BOUND`], logging a failure or time-out.
async fn bounded_step<T>(
    what: &str,
    step: impl std::future::Future<Output = Result<T, lapin::Error>>,
) {
    match tokio::time::timeout(SHUTDOWN_STEP_BOUND, step).await {
        Ok(Ok(_)) => tracing::debug!("{what}: done"),
        Ok(Err(e)) => tracing::warn!(error = %e, "{what} failed"),
        Err(_) => {
            tracing::warn!("{what}: no answer from the broker within {SHUTDOWN_STEP_BOUND:?}")
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What every in-flight task shares.
struct Context {
    handler: Handler,
    publisher: Publisher,
    topology: Topology,
    /// Tripped by a task whose publish failed: the session is broken and must reconnect.
    broken: CancellationToken,
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

pub async fn run(
    config: &ConsumerConfig,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let target = AmqpTarget::new(
        &config.amqp_url,
        Some(&config.amqp_password),
        (!config.amqp_password_file.is_empty()).then(|| Path::new(&config.amqp_password_file)),
    )?;
    let client = Arc::new(ComputeClient::lazy(
        &config.grpc_targets,
        &ClientOptions {
            request_timeout: Duration::from_secs(config.grpc_timeout_secs),
            ..ClientOptions::default()
        },
    )?);
    let topology = Topology {
        queue: config.queue.clone(),
        queue_type: config.queue_type,
        results_exchange: config.results_exchange.clone(),
    };
    let status = Arc::new(StatusBoard::default());
    systemd::spawn_watchdog(shutdown.clone());

    let mut ready_sent = false;
    let mut delays = backoff::delays(
        Duration::from_millis(500),
        Duration::from_secs(config.reconnect_max_secs),
    );
    let mut outage: Option<String> = None;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let session = Session {
            config,
            target: &target,
            client: client.clone(),
            topology: &topology,
            status: status.clone(),
            shutdown: &shutdown,
        };
        let end = session.run(&mut ready_sent).await;
        let reason = match end {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::Lost(reason)) => reason,
            Err(e) => e.to_string(),
        };
        if outage.as_deref() != Some(reason.as_str()) {
            tracing::warn!(broker = %target.redacted(), error = %reason, "broker unavailable; reconnecting with backoff");
        } else {
            tracing::debug!(error = %reason, "reconnect attempt failed");
        }
        outage = Some(reason.clone());
        status.broker(format!("reconnecting to {} ({reason})", target.redacted()));
        let delay = delays
            .next()
            .unwrap_or(Duration::from_secs(config.reconnect_max_secs));
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    systemd::stopping("stopped");
    tracing::info!("labmq-consumer stopped");
    Ok(())
}

struct Session<'a> {
    config: &'a ConsumerConfig,
    target: &'a AmqpTarget,
    client: Arc<ComputeClient>,
    topology: &'a Topology,
    status: Arc<StatusBoard>,
    shutdown: &'a CancellationToken,
}

impl Session<'_> {
    async fn run(self, ready_sent: &mut bool) -> Result<SessionEnd, BrokerError> {
        let config = self.config;
        self.status
            .broker(format!("connecting to {}", self.target.redacted()));
        let connection = self.target.connect("labmq-consumer").await?;
        let publisher = Publisher::open(&connection).await?;
        self.topology.declare_all(publisher.channel()).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| BrokerError::amqp("opening the consume channel", e))?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| BrokerError::amqp("setting prefetch", e))?;
        let mut consumer = channel
            .basic_consume(
                config.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| BrokerError::amqp(format!("consuming from {:?}", config.queue), e))?;

        // Tasks stop retrying when this fires: the grace period is over, or the session
        // is gone and their acks could not reach the broker anyway.
        let give_up = CancellationToken::new();
        let context = Arc::new(Context {
            handler: Handler {
                client: self.client.clone(),
                retry: RetryPolicy {
                    initial: Duration::from_millis(config.retry_initial_ms),
                    max: Duration::from_millis(config.retry_max_ms),
                },
                max_body_bytes: config.max_body_bytes,
                status: self.status.clone(),
                shutdown: give_up.clone(),
            },
            publisher,
            topology: self.topology.clone(),
            broken: CancellationToken::new(),
        });

        self.status.broker(format!(
            "consuming from {} on {}",
            config.queue,
            self.target.redacted()
        ));
        tracing::info!(queue = %config.queue, broker = %self.target.redacted(), prefetch = config.prefetch, concurrency = config.concurrency, "consuming from {} on {}", config.queue, self.target.redacted());
        if !*ready_sent {
            systemd::ready(&self.status.line());
            *ready_sent = true;
        }

        let slots = Arc::new(Semaphore::new(config.concurrency));
        let mut in_flight = JoinSet::new();
        let end = loop {
            while in_flight.try_join_next().is_some() {}
            let permit = tokio::select! {
                () = self.shutdown.cancelled() => break SessionEnd::Shutdown,
                () = context.broken.cancelled() => break SessionEnd::Lost("publishing failed".into()),
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break SessionEnd::Lost("task slots closed".into()),
                },
            };
            tokio::select! {
                () = self.shutdown.cancelled() => break SessionEnd::Shutdown,
                () = context.broken.cancelled() => break SessionEnd::Lost("publishing failed".into()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        in_flight.spawn(process(delivery, permit, context.clone()));
                    }
                    Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                    None => break SessionEnd::Lost("subscription cancelled by the broker".into()),
                },
            }
        };

        match &end {
            SessionEnd::Shutdown => {
                self.drain(&channel, consumer.tag(), &mut in_flight, &give_up)
                    .await;
            }
            SessionEnd::Lost(_) => {
                // The broker requeues whatever was unacked when the connection goes.
                give_up.cancel();
                in_flight.abort_all();
            }
        }
        close(&connection).await;
        Ok(end)
    }

    /// SIGTERM: stop deliveries, let in-flight tasks finish within the grace period, then
    /// requeue everything still unacked.
    async fn drain(
        &self,
        channel: &lapin::Channel,
        tag: ShortString,
        in_flight: &mut JoinSet<()>,
        give_up: &CancellationToken,
    ) {
        systemd::stopping("draining in-flight tasks");
        bounded_step(
            "cancelling the subscription",
            channel.basic_cancel(tag, BasicCancelOptions::default()),
        )
        .await;
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        tracing::info!(
            in_flight = in_flight.len(),
            grace_secs = grace.as_secs(),
            "draining in-flight tasks"
        );
        let finish = async { while in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, finish).await.is_err() {
            tracing::warn!(
                left = in_flight.len(),
                "grace period over; requeueing tasks still in flight"
            );
            give_up.cancel();
            let finish = async { while in_flight.join_next().await.is_some() {} };
            if tokio::time::timeout(GIVE_UP_BOUND, finish).await.is_err() {
                in_flight.abort_all();
            }
        }
        // Deliveries prefetched but never started go back to the queue (tag 0 + multiple
        // means every outstanding delivery on this channel).
        tracing::info!("in-flight tasks done; requeueing prefetched deliveries");
        bounded_step(
            "requeueing prefetched deliveries",
            channel.basic_nack(
                0,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            ),
        )
        .await;
    }
}

async fn close(connection: &Connection) {
    bounded_step(
        "closing the broker connection",
        connection.close(200, "labmq-consumer closing".into()),
    )
    .await;
}

async fn process(delivery: Delivery, _slot: OwnedSemaphorePermit, context: Arc<Context>) {
    let properties = &delivery.properties;
    let message_id = properties
        .message_id()
        .as_ref()
        .map(ShortString::to_string)
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| derived_id(&delivery.data));

    let (results, dead_letter) = match context.handler.handle(&message_id, &delivery.data).await {
        Verdict::Abandoned => {
            requeue(&delivery, &message_id).await;
            return;
        }
        Verdict::Done {
            results,
            dead_letter,
        } => (results, dead_letter),
    };

    if let Err(e) = deliver(&context, &delivery, &results, dead_letter.as_ref()).await {
        tracing::warn!(task_id = %message_id, error = %e, "could not publish the result; the message stays queued");
        context.broken.cancel();
        requeue(&delivery, &message_id).await;
        return;
    }
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(task_id = %message_id, error = %e, "ack failed; the broker will redeliver");
        return;
    }
    for document in &results {
        log_processed(document, delivery.redelivered);
    }
}

/// Publishes every result (exchange and `reply_to`) and the dead-letter copy if any, all
/// sent at once, then waits for every confirm: one broker round trip per message.
async fn deliver(
    context: &Context,
    delivery: &Delivery,
    results: &[ResultDocument],
    dead_letter: Option<&ErrorInfo>,
) -> Result<(), BrokerError> {
    let properties = &delivery.properties;
    let reply_to = properties
        .reply_to()
        .as_ref()
        .map(ShortString::to_string)
        .filter(|r| !r.is_empty());
    let correlation_id = properties.correlation_id().clone();
    let results_route = Route {
        exchange: &context.topology.results_exchange,
        routing_key: "",
        mandatory: false,
    };
    let mut pending = Vec::with_capacity(results.len() * 2 + 1);
    for document in results {
        let body = document.to_json();
        let result_properties = BasicProperties::default()
            .with_delivery_mode(super::publish::PERSISTENT)
            .with_content_type("application/json".into())
            .with_message_id(document.id.as_str().into())
            .with_timestamp(unix_now());
        pending.push((
            context
                .publisher
                .send(&results_route, &body, result_properties.clone())
                .await?,
            "the results exchange",
        ));
        if let Some(reply_to) = reply_to.as_deref() {
            let reply_properties = match &correlation_id {
                Some(id) => result_properties.with_correlation_id(id.clone()),
                None => result_properties,
            };
            // Not mandatory: a requester that has gone away is not the task's failure.
            let reply_route = Route {
                exchange: "",
                routing_key: reply_to,
                mandatory: false,
            };
            pending.push((
                context
                    .publisher
                    .send(&reply_route, &body, reply_properties)
                    .await?,
                "reply_to",
            ));
        }
    }
    if let Some(error) = dead_letter {
        let queue = context.topology.dead_letter_queue();
        let mut headers = properties.headers().clone().unwrap_or_default();
        header(&mut headers, "x-labmq-error-code", error.code.as_str());
        header(
            &mut headers,
            "x-labmq-error-reason",
            truncate(&error.message, 1000),
        );
        header(
            &mut headers,
            "x-labmq-original-queue",
            context.topology.queue.as_str(),
        );
        header(
            &mut headers,
            "x-labmq-dead-lettered-at",
            super::result::now_rfc3339(),
        );
        let dead_properties = properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(super::publish::PERSISTENT);
        let dead_route = Route {
            exchange: "",
            routing_key: &queue,
            mandatory: true,
        };
        pending.push((
            context
                .publisher
                .send(&dead_route, &delivery.data, dead_properties)
                .await?,
            "the dead-letter queue",
        ));
    }
    for (confirm, target) in pending {
        confirmed(confirm, target).await?;
    }
    Ok(())
}

async fn requeue(delivery: &Delivery, message_id: &str) {
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    match delivery.acker.nack(options).await {
        Ok(_) => tracing::info!(task_id = %message_id, "task {message_id} requeued"),
        Err(e) => {
            tracing::debug!(task_id = %message_id, error = %e, "requeue failed; the broker requeues on disconnect")
        }
    }
}

fn log_processed(document: &ResultDocument, redelivered: bool) {
    let kind = document.kind.map_or("none", |k| k.as_str());
    let task = truncate(&document.task, 80);
    match &document.error {
        None => tracing::info!(
            task_id = %document.id,
            kind,
            ok = true,
            duration_ms = document.duration_ms,
            attempts = document.attempts,
            redelivered,
            task = %task,
            // The short journal view shows only the message, so it says what matters.
            "task processed: {task} ({kind}) in {} ms, {} attempt(s)",
            document.duration_ms,
            document.attempts
        ),
        Some(error) => tracing::warn!(
            task_id = %document.id,
            kind,
            ok = false,
            duration_ms = document.duration_ms,
            attempts = document.attempts,
            redelivered,
            task = %task,
            error_code = %error.code,
            error = %truncate(&error.message, 200),
            "task failed; message dead-lettered: {task} ({kind}) {}: {}",
            error.code,
            truncate(&error.message, 200)
        ),
    }
}
