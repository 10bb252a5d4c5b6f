//! Prometheus metrics plumbing shared by every daemon: a registry that already holds the
//! standard `process_*` metrics, constructors for labmq's own metrics, and the small
//! HTTP exporter that serves `GET /metrics` in the text exposition format.
//!
//! The `prometheus` crate (without its protobuf default feature) is used rather than
//! `prometheus-client`: its `process` feature brings the standard process collector
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`, …) read from /proc by the `procfs`
//! crate, which `prometheus-client` would leave to hand-written code.
//!
//! Each program keeps its own metric struct in its own module; metrics are always
//! counted (an atomic add each) and served only when the program is configured to.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::http;

pub use prometheus::Error as RegistryError;

/// Connections the metrics listener serves at once; more wait in the listen backlog.
/// A scraper uses one; this leaves room for a few scrapers and a curl.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a metrics client may take to send its request headers (and may idle
/// between kept-alive requests) before its connection is closed, so a silent peer
/// cannot hold one of the [`MAX_CONNECTIONS`] slots.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// After shutdown, how long a scrape in progress may finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The `Content-Type` of the text exposition format, version 0.0.4.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets, in seconds, from 1 ms to 30 s: the range of a gRPC call or a task
/// (the longest end near the default `grpc_timeout_secs`).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric {name}")]
    Register {
        name: String,
        #[source]
        source: RegistryError,
    },
    #[error("cannot listen for metrics on {addr} (metrics_listen)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A registry with the process collector in it, and helpers that create and register
/// labmq's metrics in one step.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry with the standard `process_*` metrics of this process.
    pub fn new() -> Result<Self, MetricsError> {
        let metrics = Self {
            registry: Registry::new(),
        };
        metrics.register(
            "process_*",
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        )?;
        Ok(metrics)
    }

    fn register(
        &self,
        name: &str,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), MetricsError> {
        self.registry
            .register(collector)
            .map_err(|source| MetricsError::Register {
                name: name.to_owned(),
                source,
            })
    }

    pub fn counter(&self, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
        let counter = IntCounter::new(name, help).map_err(|source| registering(name, source))?;
        self.register(name, Box::new(counter.clone()))?;
        Ok(counter)
    }

    /// A counter per combination of `labels`; every label's values must come from a
    /// fixed, small set (never a task id or user text).
    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, MetricsError> {
        let counter = IntCounterVec::new(Opts::new(name, help), labels)
            .map_err(|source| registering(name, source))?;
        self.register(name, Box::new(counter.clone()))?;
        Ok(counter)
    }

    pub fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
        let gauge = IntGauge::new(name, help).map_err(|source| registering(name, source))?;
        self.register(name, Box::new(gauge.clone()))?;
        Ok(gauge)
    }

    /// A latency histogram with [`LATENCY_BUCKETS`].
    pub fn latency(&self, name: &str, help: &str) -> Result<Histogram, MetricsError> {
        let histogram =
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.into()))
                .map_err(|source| registering(name, source))?;
        self.register(name, Box::new(histogram.clone()))?;
        Ok(histogram)
    }

    /// A latency histogram with [`LATENCY_BUCKETS`] per combination of `labels`.
    pub fn latency_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<HistogramVec, MetricsError> {
        let histogram = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.into()),
            labels,
        )
        .map_err(|source| registering(name, source))?;
        self.register(name, Box::new(histogram.clone()))?;
        Ok(histogram)
    }

    /// Every metric in the text exposition format.
    pub fn render(&self) -> String {
        let mut body = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut body) {
            // Only a metric with invalid names could fail, and those are refused when
            // registered: say so in the body rather than serve half a page silently.
            tracing::warn!(error = %e, "encoding metrics failed");
            return format!("# encoding metrics failed: {e}\n");
        }
        String::from_utf8_lossy(&body).into_owned()
    }

    /// The `GET /metrics` route, for a program that serves it on a listener of its own
    /// making (labmq-web).
    pub fn route<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let metrics = self.clone();
        Router::new().route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.response() }
            }),
        )
    }

    fn response(&self) -> Response {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, TEXT_FORMAT)],
            self.render(),
        )
            .into_response()
    }

    /// Binds `addr` (a daemon's `metrics_listen`) and serves `/metrics` there until
    /// `shutdown`, in a task of its own. Binding happens here, before the daemon says it
    /// is ready, so a port in use is a startup failure that names the key.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<SocketAddr, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let limits = http::Limits {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
        };
        tokio::spawn(http::serve(listener, self.route::<()>(), limits, shutdown));
        tracing::info!(metrics_listen = %local, "serving Prometheus metrics on http://{local}/metrics");
        Ok(local)
    }
}

fn registering(name: &str, source: RegistryError) -> MetricsError {
    MetricsError::Register {
        name: name.to_owned(),
        source,
    }
}

/// Parses a `metrics_listen` value: empty is "off", anything else must be an address
/// such as `127.0.0.1:50081`.
pub fn parse_listen(value: &str) -> Result<Option<SocketAddr>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        format!("{value:?} is not an address such as \"127.0.0.1:50081\" (or \"\" for off)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_values() {
        assert_eq!(parse_listen(""), Ok(None));
        assert_eq!(
            parse_listen("127.0.0.1:50081"),
            Ok(Some(SocketAddr::from(([127, 0, 0, 1], 50081))))
        );
        assert!(parse_listen("localhost:50081").is_err());
        assert!(parse_listen("127.0.0.1").is_err());
    }

    #[test]
    fn registry_renders_process_and_own_metrics() {
        let metrics = Metrics::new().unwrap();
        let tasks = metrics
            .counter_vec("labmq_test_tasks_total", "Tasks.", &["kind"])
            .unwrap();
        tasks.with_label_values(&["ab"]).inc_by(3);
        let text = metrics.render();
        assert!(
            text.contains("labmq_test_tasks_total{kind=\"ab\"} 3"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        assert!(
            metrics.counter("labmq_test_tasks_total", "again").is_err(),
            "a name registered twice is refused"
        );
    }
}
