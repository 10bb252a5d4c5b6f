//! One delivery: its tasks handled ([`super::handle`]), its results and dead-letter copy
//! published with confirms, then its ack reported for coalescing ([`super::acks`]); a
//! delivery whose tasks were interrupted by shutdown is requeued, and a panic while
//! handling it is caught and the message dead-lettered, never silently dropped.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::FutureExt;
use lapin::message::Delivery;
use lapin::options::BasicNackOptions;
use lapin::types::ShortString;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::acks::Acks;
use super::dead_letter::dead_letter_properties;
use super::handle::{Handler, Verdict, earlier_deliveries, message_key};
use super::metrics::InFlight;
use super::tasklog::TaskLog;
use crate::amqp::AmqpError;
use crate::amqp::publish::{ONE_TASK_HEADER, Publisher, Route, confirmed, persistent};
use crate::amqp::topology::Topology;
use crate::task::{ErrorInfo, ResultDocument, codes, truncate};

/// What every in-flight task shares.
pub(super) struct Context {
    pub(super) handler: Handler,
    /// `publish_channels` channels in confirm mode; each message's results go out on the
    /// next one in turn (all of one message's on the same one).
    pub(super) publishers: Vec<Publisher>,
    pub(super) next_publisher: AtomicUsize,
    pub(super) topology: Topology,
    /// The connection's negotiated frame size: a dead-letter copy's properties must fit
    /// in one frame of it.
    pub(super) frame_max: u32,
    /// Tripped by a task whose publish failed, or by a failed ack: the session is broken
    /// and must reconnect.
    pub(super) broken: CancellationToken,
    /// Acks deliveries whose results are confirmed, coalescing runs of them.
    pub(super) acks: Acks,
    pub(super) task_log: Arc<TaskLog>,
}

impl Context {
    fn publisher(&self) -> &Publisher {
        let i = self.next_publisher.fetch_add(1, Ordering::Relaxed) % self.publishers.len();
        &self.publishers[i]
    }
}

pub(super) async fn process(
    delivery: Delivery,
    _slot: OwnedSemaphorePermit,
    context: Arc<Context>,
) {
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
    let earlier = earlier_deliveries(delivery.properties.headers().as_ref(), delivery.redelivered);
    let verdict = context
        .handler
        .handle_body(message_id, &delivery.data, one_task, earlier)
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
