//! labmq-server's metrics: every gRPC call counted by method and status code, its
//! latency, and the calls in flight (see [`GrpcMetricsLayer`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{HistogramVec, IntCounterVec, IntGauge};
use tonic::Code;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::daemon::metrics::{Metrics, MetricsError};
use crate::grpc::client::code_name;

/// The methods a call is counted under; any other path (a client's typo, a scanner) is
/// counted as [`OTHER_METHOD`], so the label set stays bounded whatever clients send.
const KNOWN_METHODS: &[&str] = &[
    "message.MessageService/ProcessMessage",
    "message.MessageService/AssignAB",
    "message.MessageService/Factorial",
    "message.MessageService/MostFrequentLetter",
    "message.MessageService/ComputeBatch",
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];
const OTHER_METHOD: &str = "other";

/// The `method` label of a request path.
fn method_label(path: &str) -> &'static str {
    let path = path.strip_prefix('/').unwrap_or(path);
    KNOWN_METHODS
        .iter()
        .find(|known| **known == path)
        .copied()
        .unwrap_or(OTHER_METHOD)
}

/// labmq-server's own metrics.
#[derive(Clone)]
pub struct ServerMetrics {
    calls: IntCounterVec,
    latency: HistogramVec,
    in_flight: IntGauge,
    batch_tasks: IntCounterVec,
}

impl ServerMetrics {
    pub fn new(metrics: &Metrics) -> Result<Self, MetricsError> {
        Ok(Self {
            calls: metrics.counter_vec(
                "labmq_server_grpc_calls_total",
                "gRPC calls answered, by method and status code (OK, INVALID_ARGUMENT, ...).",
                &["method", "code"],
            )?,
            latency: metrics.latency_vec(
                "labmq_server_grpc_call_duration_seconds",
                "Time from a gRPC call's arrival to its status, by method.",
                &["method"],
            )?,
            in_flight: metrics.gauge(
                "labmq_server_grpc_calls_in_flight",
                "gRPC calls received and not yet answered.",
            )?,
            batch_tasks: metrics.counter_vec(
                "labmq_server_batch_tasks_total",
                "Tasks answered inside ComputeBatch calls, by the method that answered them and \
                 its status code (the batch call itself is in labmq_server_grpc_calls_total).",
                &["method", "code"],
            )?,
        })
    }

    /// One task of a `ComputeBatch` answered by `method` (e.g. `Factorial`) with `code`.
    pub fn batch_task(&self, method: &str, code: Code) {
        self.batch_tasks
            .with_label_values(&[method, code_name(code)])
            .inc();
    }
}

/// Counts every call (refused ones included, when it is the outermost layer) by method
/// and the status code it ended with, and observes its latency.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: ServerMetrics,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: ServerMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetered<S>;

    fn layer(&self, inner: S) -> GrpcMetered<S> {
        GrpcMetered {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetered<S> {
    inner: S,
    metrics: ServerMetrics,
}

/// One call being measured. Whichever way the call ends, it is recorded once: with the
/// status code of its response headers (an error answered at once) or trailers, or as
/// `CANCELLED` if it is dropped first (the client went away, or `request_timeout_secs`
/// cut it off).
struct CallRecord {
    method: &'static str,
    started: Instant,
    metrics: ServerMetrics,
    recorded: bool,
}

impl CallRecord {
    fn new(method: &'static str, metrics: ServerMetrics) -> Self {
        metrics.in_flight.inc();
        Self {
            method,
            started: Instant::now(),
            metrics,
            recorded: false,
        }
    }

    fn finish(&mut self, code: Code) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        self.metrics.in_flight.dec();
        self.metrics
            .calls
            .with_label_values(&[self.method, code_name(code)])
            .inc();
        self.metrics
            .latency
            .with_label_values(&[self.method])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The `grpc-status` of a header or trailer map, if it has one.
fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetered<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body + Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The clone that was made ready is the one that serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let mut record = CallRecord::new(method_label(request.uri().path()), self.metrics.clone());
        Box::pin(async move {
            let response = inner.call(request).await?;
            // An error answered at once comes "trailers-only": the status is in the
            // headers and the body is empty.
            let record = match grpc_status(response.headers()) {
                Some(code) => {
                    record.finish(code);
                    None
                }
                None => Some(record),
            };
            Ok(response.map(|inner| MeteredBody {
                inner: Box::pin(inner),
                record,
            }))
        })
    }
}

/// A response body that records its call when the trailers (with `grpc-status`) pass.
pub struct MeteredBody<B> {
    inner: Pin<Box<B>>,
    record: Option<CallRecord>,
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status)
                    && let Some(mut record) = self.record.take()
                {
                    record.finish(code);
                }
            }
            // A body that ends without a status: the client sees an error too.
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                if let Some(mut record) = self.record.take() {
                    record.finish(Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(
            method_label("/message.MessageService/Factorial"),
            "message.MessageService/Factorial"
        );
        assert_eq!(method_label("/message.MessageService/Nope"), OTHER_METHOD);
        assert_eq!(method_label(&"x".repeat(10_000)), OTHER_METHOD);
    }
}
