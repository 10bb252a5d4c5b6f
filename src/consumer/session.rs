//! One broker connection's worth of consuming: declare, subscribe, run up to
//! `concurrency` tasks at once, ack each delivery only after its results are confirmed,
//! and on SIGTERM drain within the grace period and requeue the rest.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::ShortString;
use lapin::{Channel, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::acks::Acks;
use super::config::ConsumerConfig;
use super::dead_letter::dead_letter_properties;
use super::handle::{Handler, Limits, RetryPolicy, Verdict, message_key};
use super::metrics::{ConsumerMetrics, InFlight};
use super::status::StatusBoard;
use super::tasklog::TaskLog;
use crate::amqp::AmqpError;
use crate::amqp::publish::{ONE_TASK_HEADER, Publisher, Route, confirmed, persistent};
use crate::amqp::quarantine;
use crate::amqp::session::{Link, Session, SessionEnd, bounded_step};
use crate::amqp::settings::AmqpTarget;
use crate::amqp::topology::{Topology, subscribe};
use crate::daemon::systemd;
use crate::grpc::client::ComputeClient;
use crate::task::{ErrorInfo, ResultDocument, codes, truncate};

/// How long tasks that were told to give up may take to requeue their message.
const GIVE_UP_BOUND: Duration = Duration::from_secs(5);
/// How long opening channels, declaring and subscribing may take on a new connection.
const SETUP_BOUND: Duration = Duration::from_secs(10);
/// How long taking unparsable messages off the queue may take.
const QUARANTINE_BOUND: Duration = Duration::from_secs(60);

/// What every in-flight task shares.
struct Context {
    handler: Handler,
    /// `publish_channels` channels in confirm mode; each message's results go out on the
    /// next one in turn (all of one message's on the same one).
    publishers: Vec<Publisher>,
    next_publisher: AtomicUsize,
    topology: Topology,
    /// The connection's negotiated frame size: a dead-letter copy's properties must fit
    /// in one frame of it.
    frame_max: u32,
    /// Tripped by a task whose publish failed, or by a failed ack: the session is broken
    /// and must reconnect.
    broken: CancellationToken,
    /// Acks deliveries whose results are confirmed, coalescing runs of them.
    acks: Acks,
    task_log: Arc<TaskLog>,
}

impl Context {
    fn publisher(&self) -> &Publisher {
        let i = self.next_publisher.fetch_add(1, Ordering::Relaxed) % self.publishers.len();
        &self.publishers[i]
    }
}

pub(super) struct ConsumeSession {
    config: ConsumerConfig,
    target: AmqpTarget,
    broker: String,
    /// The last connection died parsing a delivery: before consuming again, take the
    /// unparsable message off the queue (else every reconnect dies on it again).
    unparsable: bool,
    client: Arc<ComputeClient>,
    topology: Topology,
    status: Arc<StatusBoard>,
    ready_sent: bool,
    metrics: ConsumerMetrics,
    task_log: Arc<TaskLog>,
    /// Sessions that got as far as consuming: every one after the first is a reconnect.
    sessions: u64,
}

impl ConsumeSession {
    pub(super) fn new(
        config: &ConsumerConfig,
        target: &AmqpTarget,
        client: Arc<ComputeClient>,
        status: Arc<StatusBoard>,
        metrics: ConsumerMetrics,
        task_log: Arc<TaskLog>,
    ) -> Self {
        Self {
            config: config.clone(),
            target: target.clone(),
            broker: target.redacted(),
            unparsable: false,
            client,
            topology: config.amqp.topology(),
            status,
            ready_sent: false,
            metrics,
            task_log,
            sessions: 0,
        }
    }
}

impl Session for ConsumeSession {
    async fn run(
        &mut self,
        connection: &Connection,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, AmqpError> {
        if self.unparsable {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                () = self.quarantine() => {}
            }
        }
        // A broker that finished the handshake may still never answer a channel open or
        // a declaration: setting up is bounded like connecting, and raced with shutdown.
        let set_up = tokio::select! {
            () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            set_up = tokio::time::timeout(SETUP_BOUND, self.set_up(connection)) => set_up,
        };
        let (publishers, channel, mut consumer) = set_up.map_err(|_| AmqpError::Timeout {
            operation: "setting up (channels, declarations, subscription)".into(),
            timeout: SETUP_BOUND,
        })??;
        let config = &self.config;
        let queue = self.topology.queue.as_str();

        // Tasks stop retrying when this fires: the grace period is over, or the session
        // is gone and their acks could not reach the broker anyway.
        let give_up = CancellationToken::new();
        let broken = CancellationToken::new();
        let acks = Acks::start(channel.clone(), broken.clone());
        let context = Arc::new(Context {
            handler: Handler {
                client: self.client.clone(),
                retry: RetryPolicy {
                    initial: Duration::from_millis(config.retry_initial_ms),
                    max: Duration::from_millis(config.retry_max_ms),
                    max_attempts: config.max_attempts,
                },
                limits: Limits {
                    max_body_bytes: config.max_body_bytes,
                    max_tasks_per_message: config.max_tasks_per_message,
                    max_result_bytes_per_message: config.max_result_bytes_per_message,
                },
                status: self.status.clone(),
                shutdown: give_up.clone(),
                metrics: self.metrics.clone(),
            },
            publishers,
            next_publisher: AtomicUsize::new(0),
            topology: self.topology.clone(),
            frame_max: connection.configuration().frame_max(),
            broken,
            acks,
            task_log: self.task_log.clone(),
        });

        // The node that serves this session, not the whole list: operators want to know
        // which node to look at.
        let broker = &self.target.serving();
        self.status
            .broker(format!("consuming from {queue} on {broker}"));
        tracing::info!(queue, broker = %broker, prefetch = config.prefetch, concurrency = config.concurrency, "consuming from {queue} on {broker}");
        if !self.ready_sent {
            systemd::ready(&self.status.line());
            self.ready_sent = true;
        }
        if self.sessions > 0 {
            self.metrics.broker_reconnects.inc();
        }
        self.sessions += 1;
        self.metrics.broker_connected.set(1);

        let slots = Arc::new(Semaphore::new(config.concurrency));
        let mut in_flight = JoinSet::new();
        let end = loop {
            while in_flight.try_join_next().is_some() {}
            let permit = tokio::select! {
                () = shutdown.cancelled() => break SessionEnd::Shutdown,
                () = context.broken.cancelled() => break SessionEnd::Lost("publishing failed".into()),
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break SessionEnd::Lost("task slots closed".into()),
                },
            };
            tokio::select! {
                () = shutdown.cancelled() => break SessionEnd::Shutdown,
                () = context.broken.cancelled() => break SessionEnd::Lost("publishing failed".into()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        context.acks.taken(delivery.delivery_tag);
                        // Boxed: the future is ~7 KB, which tokio would otherwise copy
                        // into and around its task cell (a few % of the consumer's CPU).
                        in_flight.spawn(Box::pin(process(delivery, permit, context.clone())));
                    }
                    Some(Err(e)) => {
                        self.unparsable = matches!(e.kind(), lapin::ErrorKind::ParsingError(_));
                        break SessionEnd::Lost(e.to_string());
                    }
                    None => break SessionEnd::Lost("subscription cancelled by the broker".into()),
                },
            }
        };

        match &end {
            SessionEnd::Shutdown => {
                self.drain(
                    &channel,
                    consumer.tag(),
                    &mut in_flight,
                    &give_up,
                    &context.acks,
                )
                .await;
            }
            SessionEnd::Lost(_) => {
                // The broker requeues whatever was unacked when the connection goes.
                give_up.cancel();
                in_flight.abort_all();
                // A failed publish may have been noticed before the subscription's own
                // error: look for a parse error there too, or the unparsable message
                // would not be swept before the next session.
                if !self.unparsable {
                    let pending = async {
                        while let Some(next) = consumer.next().await {
                            if let Err(e) = next {
                                return matches!(e.kind(), lapin::ErrorKind::ParsingError(_));
                            }
                        }
                        false
                    };
                    self.unparsable = tokio::time::timeout(Duration::from_millis(200), pending)
                        .await
                        .unwrap_or(false);
                }
            }
        }
        self.metrics.broker_connected.set(0);
        Ok(end)
    }

    fn link(&self, state: Link<'_>) {
        match state {
            Link::Connecting => self.status.broker(format!("connecting to {}", self.broker)),
            Link::Reconnecting { reason } => self
                .status
                .broker(format!("reconnecting to {} ({reason})", self.broker)),
        }
    }
}

impl ConsumeSession {
    /// Opens the publishing and consuming channels, declares the topology and subscribes.
    async fn set_up(
        &self,
        connection: &Connection,
    ) -> Result<(Vec<Publisher>, Channel, lapin::Consumer), AmqpError> {
        let config = &self.config;
        let mut publishers = Vec::with_capacity(config.publish_channels.into());
        for _ in 0..config.publish_channels.max(1) {
            publishers.push(Publisher::open(connection).await?);
        }
        let publisher = &publishers[0];
        self.topology.declare_all(publisher.channel()).await?;
        if !config.results_queue.is_empty() {
            self.topology
                .declare_results_queue(
                    publisher.channel(),
                    &config.results_queue,
                    Some(config.results_queue_max_length),
                )
                .await?;
        }
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| AmqpError::amqp("opening the consume channel", e))?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| AmqpError::amqp("setting prefetch", e))?;
        let consumer = subscribe(&channel, &self.topology.queue).await?;
        Ok((publishers, channel, consumer))
    }

    /// Moves messages lapin cannot parse from the head of the task queue to the
    /// dead-letter queue; on failure, tries again before the next session.
    async fn quarantine(&mut self) {
        // The bad message is among those this consumer had prefetched and not yet
        // parsed when the connection died; they are all back at the head of the queue.
        let limit = usize::from(self.config.prefetch) + 1;
        match quarantine::sweep(&self.target, &self.topology, limit, QUARANTINE_BOUND).await {
            Ok(moved) => {
                tracing::warn!(
                    moved,
                    "dead-lettered {moved} message(s) whose properties lapin cannot parse"
                );
                self.unparsable = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not take the unparsable message off the queue: {e}");
            }
        }
    }

    /// SIGTERM: stop deliveries, let in-flight tasks finish within the grace period, then
    /// requeue everything still unacked.
    async fn drain(
        &self,
        channel: &Channel,
        tag: ShortString,
        in_flight: &mut JoinSet<()>,
        give_up: &CancellationToken,
        acks: &Acks,
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
        // The finished tasks' acks go out before the nack below, which would otherwise
        // requeue messages whose results are already published.
        bounded_step("sending the last acks", async {
            acks.flush().await;
            Ok(())
        })
        .await;
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

async fn process(delivery: Delivery, _slot: OwnedSemaphorePermit, context: Arc<Context>) {
    let metrics = &context.handler.metrics;
    let _in_flight = InFlight::enter(&metrics.in_flight);
    let started = Instant::now();
    let message_id = message_key(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(ShortString::as_str),
        &delivery.data,
    );
    // A panic must not lose the delivery: dropped silently by the task set, it would stay
    // unacked (holding a prefetch slot) until the connection goes, then come back.
    let Err(reason) = guarded(handle_and_deliver(
        &delivery,
        &message_id,
        &context,
        started,
    ))
    .await
    else {
        return;
    };
    let count = context.handler.status.panicked();
    tracing::error!(
        task_id = %message_id, panic = %reason, panics = count,
        "handling the message panicked; dead-lettering it: {reason}"
    );
    let error = ErrorInfo {
        code: codes::PANIC.into(),
        message: format!("handling the message panicked: {reason}"),
    };
    let result = ResultDocument::failure(
        message_id.clone(),
        &String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(200)]),
        None,
        error.clone(),
        0,
        0.0,
    );
    match guarded(deliver(&context, &delivery, &[result], Some(&error))).await {
        Ok(Ok(())) => {
            context.acks.confirmed(delivery.delivery_tag);
            metrics.dead_lettered(codes::PANIC);
        }
        Ok(Err(e)) => {
            tracing::warn!(task_id = %message_id, error = %e, "could not dead-letter the message; it stays queued");
            context.broken.cancel();
            requeue(&delivery, &message_id, &context).await;
        }
        // Even the bare dead-letter copy panicked: requeue once, and drop it the second
        // time rather than loop on it forever.
        Err(again) => {
            if delivery.redelivered {
                tracing::error!(task_id = %message_id, panic = %again, "dead-lettering panicked again on a redelivery; the message is dropped");
                let options = BasicNackOptions {
                    multiple: false,
                    requeue: false,
                };
                let _ = delivery.acker.nack(options).await;
                context.acks.settled(delivery.delivery_tag);
            } else {
                tracing::error!(task_id = %message_id, panic = %again, "dead-lettering panicked; requeueing the message once");
                requeue(&delivery, &message_id, &context).await;
            }
        }
    }
}

/// Runs `work`, turning a panic into `Err` with what the panic said.
async fn guarded<T>(work: impl std::future::Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|panic| panic_message(panic.as_ref()))
}

/// What a panic carried, for the log and the dead-letter reason.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        truncate(text, 1000)
    } else {
        "a panic without a message".to_owned()
    }
}

async fn handle_and_deliver(
    delivery: &Delivery,
    message_id: &str,
    context: &Context,
    started: Instant,
) {
    let metrics = &context.handler.metrics;
    let one_task = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ONE_TASK_HEADER).cloned())
        == Some(lapin::types::AMQPValue::Boolean(true));
    let verdict = context
        .handler
        .handle_body(message_id, &delivery.data, one_task)
        .await;
    let (results, dead_letter) = match verdict {
        Verdict::Abandoned => {
            requeue(delivery, message_id, context).await;
            return;
        }
        Verdict::Done {
            results,
            dead_letter,
        } => (results, dead_letter),
    };

    if let Err(e) = deliver(context, delivery, &results, dead_letter.as_ref()).await {
        tracing::warn!(task_id = %message_id, error = %e, "could not publish the result; the message stays queued");
        context.broken.cancel();
        requeue(delivery, message_id, context).await;
        return;
    }
    // Acked once every older delivery is done too (coalesced), else at once alone.
    context.acks.confirmed(delivery.delivery_tag);
    metrics.message_done(started.elapsed().as_secs_f64());
    if let Some(error) = &dead_letter {
        metrics.dead_lettered(&error.code);
    }
    for document in &results {
        metrics.task_done(document);
        context.task_log.processed(document, delivery.redelivered);
    }
}

/// Publishes every result (exchange and `reply_to`) and the dead-letter copy if any, all
/// sent at once, then waits for every confirm: one broker round trip per message.
///
/// Replies are best effort: a requester's queue that is gone or full (`reject-publish`)
/// refuses them, which is logged and never fails the message (the result is on the
/// results exchange all the same).
async fn deliver(
    context: &Context,
    delivery: &Delivery,
    results: &[ResultDocument],
    dead_letter: Option<&ErrorInfo>,
) -> Result<(), AmqpError> {
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
    let publisher = context.publisher();
    let mut pending = Vec::with_capacity(results.len() + 1);
    let mut replies = Vec::new();
    for document in results {
        let body = document.to_json();
        let result_properties = persistent("application/json", &document.id);
        pending.push((
            publisher
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
            replies.push(
                publisher
                    .send(&reply_route, &body, reply_properties)
                    .await?,
            );
        }
    }
    if let Some(error) = dead_letter {
        let queue = context.topology.dead_letter_queue();
        let dead_properties = dead_letter_properties(
            properties,
            error,
            &context.topology.queue,
            context.frame_max,
        );
        let dead_route = Route {
            exchange: "",
            routing_key: &queue,
            mandatory: true,
        };
        pending.push((
            publisher
                .send(&dead_route, &delivery.data, dead_properties)
                .await?,
            "the dead-letter queue",
        ));
    }
    for (confirm, target) in pending {
        confirmed(confirm, target).await?;
    }
    for reply in replies {
        if let Err(e) = confirmed(reply, "reply_to").await {
            let reply_to = reply_to.as_deref().unwrap_or_default();
            tracing::warn!(
                reply_to, error = %e,
                "reply to {reply_to} refused; the result is on the results exchange only: {e}"
            );
        }
    }
    Ok(())
}

async fn requeue(delivery: &Delivery, message_id: &str, context: &Context) {
    context.handler.metrics.requeues.inc();
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
    // After the nack went out: a coalesced ack may now pass over this delivery.
    context.acks.settled(delivery.delivery_tag);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_with_its_message() {
        let long = "x".repeat(300);
        let outcome = guarded(async {
            // What main did with a 254-byte message_id.
            let _ = ShortString::from(long.as_str());
        })
        .await;
        let reason = outcome.unwrap_err();
        assert!(
            reason.contains("ShortString exceeds maximum length"),
            "{reason}"
        );
        let formatted = guarded(async { panic!("task {} broke", 7) }).await;
        assert_eq!(formatted.unwrap_err(), "task 7 broke");
        assert_eq!(guarded(async { 5 }).await, Ok(5));
    }
}
