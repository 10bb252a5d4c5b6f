//! `labmq-web`: a web page and JSON API to submit tasks and browse their results.
//!
//! - [`config`]: its configuration and command line;
//! - [`submit`]: a submit's tasks parsed with the shared grammar, checked against the
//!   limits (tasks per submit, submits per minute) and published with confirms.
//! - [`ingest`]: labmq-web's own durable queue bound to the results exchange; every result
//!   document is stored (idempotently by id) before it is acked; run by the shared
//!   reconnecting [`crate::amqp::session::Driver`].
//! - [`store`]: the SQLite database of results.
//! - [`routes`]: the HTTP API and the page's endpoints; [`page`]: the HTML (maud escapes
//!   everything interpolated).
//!
//! - [`metrics`]: submits, published tasks, ingested results, the broker link; served
//!   at `/metrics` when the `metrics` key is on.
//! - [`http`]: the listener (connection cap, header and body timeouts, bounded shutdown)
//!   and the guards against DNS rebinding and cross-site POSTs.
//!
//! READY=1 is sent once the HTTP listener is bound, not when the broker is reached: stored
//! results can be browsed without a broker, and `STATUS=` and `/healthz` say whether the
//! broker is connected. SIGTERM at any moment ends the process within
//! `shutdown_grace_secs` (plus the short closing steps): requests in flight and the
//! results consumer get the grace, then are cut off.

pub mod config;
mod http;
mod ingest;
mod metrics;
mod page;
mod routes;
mod status;
mod store;
mod submit;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::amqp::AmqpError;
use crate::amqp::session::{self, Driver};
use crate::daemon::systemd;
use config::CONNECT_TIMEOUT;
pub use config::{WebArgs, WebConfig};
use status::Status;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Metrics(#[from] crate::daemon::metrics::MetricsError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs labmq-web until `shutdown` is cancelled.
pub async fn run(config: &WebConfig, shutdown: CancellationToken) -> Result<(), WebError> {
    let target = config.amqp.target()?;
    let topology = config.amqp.topology();
    let store = store::Store::open(Path::new(&config.database))?;
    let status = Arc::new(Status::default());
    let registry = crate::daemon::metrics::Metrics::new()?;
    let web_metrics = metrics::WebMetrics::new(&registry)?;
    let submitter = submit::Submitter::new(
        target.clone(),
        topology.clone(),
        config,
        web_metrics.clone(),
    );

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| WebError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| WebError::Bind {
        addr: config.listen,
        source,
    })?;
    status.set_listen(addr);

    let broker_in_errors = target.redacted();
    let mut ingest = ingest::Ingest {
        broker: broker_in_errors
            .split(", ")
            .map(without_user)
            .collect::<Vec<_>>()
            .join(", "),
        broker_in_errors,
        max_length: config.results_queue_max_length,
        topology,
        queue: config.results_queue.clone(),
        store: store.clone(),
        status: status.clone(),
        metrics: web_metrics,
        sessions: 0,
    };
    let reconnect_max = Duration::from_secs(config.reconnect_max_secs);
    let ingest_shutdown = shutdown.clone();
    let ingest = tokio::spawn(async move {
        Driver {
            target: &target,
            client_name: "labmq-web",
            connect_timeout: CONNECT_TIMEOUT,
            reconnect_max,
        }
        .run(&mut ingest, &ingest_shutdown)
        .await;
    });

    let retention = store::Retention {
        max_rows: config.retention_max_rows,
        max_age_secs: config.retention_max_days.saturating_mul(86_400),
    };
    let retention_task = tokio::spawn(keep_retention(
        store.clone(),
        retention,
        Duration::from_secs(config.retention_interval_secs),
        shutdown.clone(),
    ));

    let guard = http::Guard {
        allowed_hosts: Arc::new(config.allowed_hosts.clone()),
        body_timeout: Duration::from_secs(config.body_timeout_secs),
    };
    let app = routes::router(
        routes::AppState {
            store,
            submitter: Arc::new(submitter),
            status: status.clone(),
            page_size: config.page_size,
            max_body_bytes: config.max_body_bytes,
        },
        guard,
        config.metrics.then(|| registry.route()),
    );
    tracing::info!(listen = %addr, database = %config.database, results_queue = %config.results_queue, "serving");
    systemd::ready(&status.line());
    systemd::spawn_watchdog(shutdown.clone());

    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let limits = http::Limits {
        max_connections: config.max_connections,
        header_timeout: Duration::from_secs(config.header_timeout_secs),
        shutdown_grace: grace,
    };
    let stop = shutdown.clone();
    // The HTTP side and the results consumer drain side by side, each within the grace.
    let http_side = http::serve(listener, app, limits, shutdown.clone());
    let ingest_side = async {
        stop.cancelled().await;
        systemd::stopping("stopping");
        // The driver closes its connection with its own bounds; a session stuck on a
        // broker that stopped answering is cut off here (the broker requeues).
        let abort = ingest.abort_handle();
        match tokio::time::timeout(grace + session::CLOSE_BOUND, ingest).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "results consumer ended abnormally"),
            Err(_) => {
                abort.abort();
                tracing::warn!(
                    "results consumer still busy after shutdown_grace_secs = {}; cut off",
                    grace.as_secs()
                );
            }
        }
    };
    tokio::join!(http_side, ingest_side);
    retention_task.abort();
    tracing::info!("labmq-web stopped");
    Ok(())
}

/// `scheme://user@host:port/vhost` without `user@`: what anyone may read.
fn without_user(redacted: &str) -> String {
    match (redacted.find("://"), redacted.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}{}", &redacted[..scheme_end + 3], &redacted[at + 1..])
        }
        _ => redacted.to_owned(),
    }
}

/// Enforces `retention` now and every `interval` until shutdown.
async fn keep_retention(
    store: store::Store,
    retention: store::Retention,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match store.enforce(retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(
                deleted,
                max_rows = retention.max_rows,
                max_age_secs = retention.max_age_secs,
                "retention: deleted {deleted} old results (retention_max_rows, retention_max_days)"
            ),
            Err(e) => {
                tracing::warn!(error = %crate::daemon::logging::error_chain(&e), "retention pass failed");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
