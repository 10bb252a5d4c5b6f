//! One broker connection's worth of consuming: declare, subscribe, run up to
//! `concurrency` deliveries at once (each handled by [`super::delivery`]), and on SIGTERM
//! drain within the grace period and requeue the rest.
//!
//! A subscription the broker cancels (`basic.cancel`: the queue was deleted, its leader
//! moved, a node went down, or RabbitMQ 4.3's consumer timeout) leaves the channel open:
//! the tasks in flight finish and publish their results on it, then the topology is
//! declared again and a new subscription made on the same connection, with backoff.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::ShortString;
use lapin::{Channel, Connection};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::acks::Acks;
use super::config::ConsumerConfig;
use super::delivery::{Context, process};
use super::handle::{Handler, Limits, RetryPolicy};
use super::metrics::ConsumerMetrics;
use super::status::StatusBoard;
use super::tasklog::TaskLog;
use crate::amqp::AmqpError;
use crate::amqp::publish::Publisher;
use crate::amqp::quarantine;
use crate::amqp::session::{Link, Session, SessionEnd, bounded_step};
use crate::amqp::settings::AmqpTarget;
use crate::amqp::topology::{Topology, inspect_queue, subscribe};
use crate::daemon::backoff;
use crate::daemon::logging::error_chain;
use crate::daemon::systemd;
use crate::grpc::client::ComputeClient;

/// How long tasks that were told to give up may take to requeue their message.
const GIVE_UP_BOUND: Duration = Duration::from_secs(5);
/// How long opening channels, declaring and subscribing may take on a new connection.
const SETUP_BOUND: Duration = Duration::from_secs(10);
/// How long taking unparsable messages off the queue may take.
const QUARANTINE_BOUND: Duration = Duration::from_secs(60);
/// The first wait before subscribing again after a failed attempt.
const RESUBSCRIBE_FIRST_DELAY: Duration = Duration::from_millis(500);
/// AMQP's reply code for a queue that does not exist.
const NOT_FOUND: u16 = 404;

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
    metrics: ConsumerMetrics,
    task_log: Arc<TaskLog>,
    /// Sessions that got as far as consuming: every one after the first is a reconnect.
    sessions: u64,
}

/// Why consuming on a subscription stopped.
enum Stop {
    Shutdown,
    Lost(String),
    /// The broker cancelled the subscription; the channel may still be open.
    Cancelled,
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

        // Tasks stop retrying when this fires: the grace period is over, or the session
        // is gone and their acks could not reach the broker anyway.
        let give_up = CancellationToken::new();
        let broken = CancellationToken::new();
        let acks = Acks::start(channel.clone(), broken.clone());
        let context = Arc::new(self.context(
            publishers,
            acks,
            give_up.clone(),
            broken,
            connection.configuration().frame_max(),
        ));
        if self.sessions > 0 {
            self.metrics.broker_reconnects.inc();
        }
        self.sessions += 1;
        self.metrics.broker_connected.set(1);
        self.consuming("");

        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let mut in_flight = JoinSet::new();
        let end = loop {
            match self
                .consume(&mut consumer, &slots, &mut in_flight, &context, shutdown)
                .await
            {
                Stop::Shutdown => {
                    self.metrics.consuming.set(0);
                    self.drain(
                        &channel,
                        Some(consumer.tag()),
                        &mut in_flight,
                        &give_up,
                        &context.acks,
                    )
                    .await;
                    break SessionEnd::Shutdown;
                }
                Stop::Lost(reason) => {
                    self.lose(&mut consumer, &mut in_flight, &give_up).await;
                    break SessionEnd::Lost(reason);
                }
                Stop::Cancelled => {
                    match self
                        .resubscribe(connection, &channel, &mut in_flight, &context, shutdown)
                        .await
                    {
                        Ok(next) => consumer = next,
                        Err(end) => break end,
                    }
                }
            }
        };
        self.metrics.consuming.set(0);
        self.metrics.broker_connected.set(0);
        // Closed here, before the driver closes the connection: lapin closes a dropped
        // channel in the background, and when that comes after the connection's close
        // has begun it logs a connection ERROR for a clean stop.
        if connection.status().connected() {
            for publisher in &context.publishers {
                bounded_step(
                    "closing a publishing channel",
                    publisher.channel().close(200, "".into()),
                )
                .await;
            }
            bounded_step("closing the consume channel", channel.close(200, "".into())).await;
        }
        Ok(end)
    }

    fn link(&self, state: Link<'_>) {
        let broker = &self.broker;
        match state {
            Link::Connecting => self
                .status
                .broker(format!("connecting to RabbitMQ at {broker}")),
            Link::Reconnecting { reason } => {
                // The reason of a failed connect names the broker already.
                let reason = reason
                    .strip_prefix(&format!("cannot connect to RabbitMQ at {broker}: "))
                    .unwrap_or(reason);
                let waiting = if self.sessions == 0 {
                    "waiting for"
                } else {
                    "reconnecting to"
                };
                self.status
                    .broker(format!("{waiting} RabbitMQ at {broker}: {reason}"));
            }
        }
    }
}

impl ConsumeSession {
    /// What every in-flight task of this session shares.
    fn context(
        &self,
        publishers: Vec<Publisher>,
        acks: Acks,
        give_up: CancellationToken,
        broken: CancellationToken,
        frame_max: u32,
    ) -> Context {
        let config = &self.config;
        Context {
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
                delivery_limit: config.delivery_limit,
                status: self.status.clone(),
                shutdown: give_up,
                metrics: self.metrics.clone(),
            },
            publishers,
            next_publisher: AtomicUsize::new(0),
            topology: self.topology.clone(),
            frame_max,
            broken,
            acks,
            task_log: self.task_log.clone(),
        }
    }

    /// Says that deliveries flow: the status line, a log line and the metric. `again` is
    /// "" for a new connection's subscription, " again" after a broker's cancel.
    fn consuming(&self, again: &str) {
        let queue = &self.topology.queue;
        // The node that serves this session, not the whole list: operators want to know
        // which node to look at.
        let node = self.target.serving();
        self.status
            .broker(format!("consuming from {queue} on {node}"));
        tracing::info!(
            queue = %queue, broker = %node, prefetch = self.config.prefetch,
            concurrency = self.config.concurrency,
            "consuming from {queue} on {node}{again}"
        );
        self.metrics.consuming.set(1);
    }

    /// Takes deliveries and starts a task for each, up to `concurrency` at once, until
    /// shutdown, a lost connection or the broker's cancel.
    async fn consume(
        &mut self,
        consumer: &mut lapin::Consumer,
        slots: &Arc<Semaphore>,
        in_flight: &mut JoinSet<()>,
        context: &Arc<Context>,
        shutdown: &CancellationToken,
    ) -> Stop {
        loop {
            while in_flight.try_join_next().is_some() {}
            let permit = tokio::select! {
                () = shutdown.cancelled() => return Stop::Shutdown,
                () = context.broken.cancelled() => return Stop::Lost("publishing failed".into()),
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return Stop::Lost("task slots closed".into()),
                },
            };
            tokio::select! {
                () = shutdown.cancelled() => return Stop::Shutdown,
                () = context.broken.cancelled() => return Stop::Lost("publishing failed".into()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        context.acks.taken(delivery.delivery_tag);
                        // Boxed: the future is ~7 KB, which tokio would otherwise copy
                        // into and around its task cell (a few % of the consumer's CPU).
                        in_flight.spawn(Box::pin(process(delivery, permit, context.clone())));
                    }
                    Some(Err(e)) => {
                        self.unparsable = matches!(e.kind(), lapin::ErrorKind::ParsingError(_));
                        return Stop::Lost(e.to_string());
                    }
                    // Every delivery that came before the cancel was yielded first.
                    None => return Stop::Cancelled,
                },
            }
        }
    }

    /// The connection is lost: the broker requeues whatever was unacked when it goes, so
    /// the tasks in flight are dropped.
    async fn lose(
        &mut self,
        consumer: &mut lapin::Consumer,
        in_flight: &mut JoinSet<()>,
        give_up: &CancellationToken,
    ) {
        give_up.cancel();
        in_flight.abort_all();
        // A failed publish may have been noticed before the subscription's own error:
        // look for a parse error there too, or the unparsable message would not be swept
        // before the next session.
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

    /// The broker cancelled the subscription. Its reason is logged once; the tasks in
    /// flight finish and publish on the still open channel (within
    /// `shutdown_grace_secs`); then the topology is declared again and a new subscription
    /// made, with backoff. `Err` ends the session: shutdown, or a session that must start
    /// over on a new connection (the channel closed, or tasks still waited after the
    /// grace period and were requeued).
    async fn resubscribe(
        &mut self,
        connection: &Connection,
        channel: &Channel,
        in_flight: &mut JoinSet<()>,
        context: &Context,
        shutdown: &CancellationToken,
    ) -> Result<lapin::Consumer, SessionEnd> {
        self.metrics.consuming.set(0);
        if !channel.status().connected() {
            return Err(SessionEnd::Lost(
                "subscription cancelled and its channel closed".into(),
            ));
        }
        let queue = self.topology.queue.clone();
        let reason = self.cancel_reason(connection).await;
        tracing::warn!(
            queue = %queue, reason = %reason, in_flight = in_flight.len(),
            "the broker cancelled the subscription to {queue}: {reason}; finishing the tasks in flight, then subscribing again"
        );
        self.status.broker(format!(
            "subscription to {queue} cancelled by the broker ({reason}); subscribing again"
        ));
        let give_up = &context.handler.shutdown;
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        let finish = async { while in_flight.join_next().await.is_some() {} };
        let finished = tokio::select! {
            () = shutdown.cancelled() => None,
            () = context.broken.cancelled() => Some(false),
            finished = tokio::time::timeout(grace, finish) => Some(finished.is_ok()),
        };
        match finished {
            None => {
                self.drain(channel, None, in_flight, give_up, &context.acks)
                    .await;
                return Err(SessionEnd::Shutdown);
            }
            Some(false) => {
                tracing::warn!(
                    left = in_flight.len(),
                    "tasks still in flight {} s after the cancel; requeueing them and connecting again",
                    grace.as_secs()
                );
                give_up.cancel();
                let finish = async { while in_flight.join_next().await.is_some() {} };
                if tokio::time::timeout(GIVE_UP_BOUND, finish).await.is_err() {
                    in_flight.abort_all();
                }
                return Err(SessionEnd::Lost(format!(
                    "subscription cancelled by the broker ({reason})"
                )));
            }
            Some(true) => {}
        }
        context.acks.flush().await;
        let mut delays = backoff::delays(
            RESUBSCRIBE_FIRST_DELAY,
            Duration::from_secs(self.config.reconnect_max_secs),
        );
        let mut last_error = None;
        loop {
            let attempt =
                tokio::time::timeout(SETUP_BOUND, self.subscribe_again(connection, channel))
                    .await
                    .unwrap_or_else(|_| {
                        Err(AmqpError::Timeout {
                            operation: "declaring and subscribing again".into(),
                            timeout: SETUP_BOUND,
                        })
                    });
            match attempt {
                Ok(consumer) => {
                    self.consuming(" again");
                    return Ok(consumer);
                }
                Err(e) if !channel.status().connected() => {
                    return Err(SessionEnd::Lost(format!(
                        "subscribing again to {queue} failed: {}",
                        error_chain(&e)
                    )));
                }
                Err(e) => {
                    let error = error_chain(&e);
                    if last_error.as_deref() != Some(error.as_str()) {
                        tracing::warn!(queue = %queue, error = %error, "subscribing again to {queue} failed; retrying with backoff: {error}");
                    }
                    self.status.broker(format!(
                        "subscription to {queue} cancelled by the broker; subscribing again failed: {error}"
                    ));
                    last_error = Some(error);
                }
            }
            let delay = delays
                .next()
                .unwrap_or(Duration::from_secs(self.config.reconnect_max_secs));
            tokio::select! {
                () = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Why the broker would have cancelled the subscription, from what it says of the
    /// queue now.
    async fn cancel_reason(&self, connection: &Connection) -> String {
        let queue = &self.topology.queue;
        let look = async {
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| AmqpError::amqp("opening a channel", e))?;
            let found = inspect_queue(&channel, queue).await;
            if found.is_ok() {
                let _ = channel.close(200, "".into()).await;
            }
            found
        };
        match tokio::time::timeout(SETUP_BOUND, look).await {
            Ok(Ok(_)) => format!(
                "queue {queue} still exists: a broker cancels its consumers when the queue's leader moves to another node or a node goes down, and RabbitMQ 4.3 and later when a delivery is held past consumer_timeout"
            ),
            Ok(Err(e)) if e.reply_code() == Some(NOT_FOUND) => {
                format!("queue {queue} was deleted")
            }
            Ok(Err(e)) => format!("queue {queue} could not be looked up: {}", error_chain(&e)),
            Err(_) => format!("queue {queue} could not be looked up within {SETUP_BOUND:?}"),
        }
    }

    /// Declares the topology again (on a channel of its own: a refused declaration
    /// closes its channel) and subscribes on the consume channel.
    async fn subscribe_again(
        &self,
        connection: &Connection,
        channel: &Channel,
    ) -> Result<lapin::Consumer, AmqpError> {
        let declaring = connection
            .create_channel()
            .await
            .map_err(|e| AmqpError::amqp("opening a channel to declare", e))?;
        self.declare(&declaring).await?;
        let _ = declaring.close(200, "".into()).await;
        subscribe(channel, &self.topology.queue).await
    }

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
        self.declare(publishers[0].channel()).await?;
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

    /// The task queue, its dead-letter queue, the results exchange and `results_queue`.
    async fn declare(&self, channel: &Channel) -> Result<(), AmqpError> {
        self.topology.declare_all(channel).await?;
        if !self.config.results_queue.is_empty() {
            self.topology
                .declare_results_queue(
                    channel,
                    &self.config.results_queue,
                    Some(self.config.results_queue_max_length),
                )
                .await?;
        }
        Ok(())
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

    /// SIGTERM: stop deliveries (cancel the subscription `tag`, unless the broker did),
    /// let in-flight tasks finish within the grace period, then requeue everything still
    /// unacked.
    async fn drain(
        &self,
        channel: &Channel,
        tag: Option<ShortString>,
        in_flight: &mut JoinSet<()>,
        give_up: &CancellationToken,
        acks: &Acks,
    ) {
        systemd::stopping("draining in-flight tasks");
        if let Some(tag) = tag {
            bounded_step(
                "cancelling the subscription",
                channel.basic_cancel(tag, BasicCancelOptions::default()),
            )
            .await;
        }
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
        // means every outstanding delivery on this channel). A basic.nack, which RabbitMQ
        // 4.3 and later do not count towards a quorum queue's delivery limit.
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
