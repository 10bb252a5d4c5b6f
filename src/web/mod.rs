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
//! READY=1 is sent once the HTTP listener is bound, not when the broker is reached: stored
//! results can be browsed without a broker, and `STATUS=` and `/healthz` say whether the
//! broker is connected.

pub mod config;
mod ingest;
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
use crate::amqp::session::Driver;
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
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// Runs labmq-web until `shutdown` is cancelled.
pub async fn run(config: &WebConfig, shutdown: CancellationToken) -> Result<(), WebError> {
    let target = config.amqp.target()?;
    let topology = config.amqp.topology();
    let store = store::Store::open(Path::new(&config.database))?;
    let status = Arc::new(Status::default());
    let submitter = submit::Submitter::new(target.clone(), topology.clone(), config);

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

    let mut ingest = ingest::Ingest {
        broker: target.redacted(),
        topology,
        queue: config.results_queue.clone(),
        store: store.clone(),
        status: status.clone(),
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

    let app = routes::router(routes::AppState {
        store,
        submitter: Arc::new(submitter),
        status: status.clone(),
        page_size: config.page_size,
        max_body_bytes: config.max_body_bytes,
    });
    tracing::info!(listen = %addr, database = %config.database, results_queue = %config.results_queue, "serving");
    systemd::ready(&status.line());
    systemd::spawn_watchdog(shutdown.clone());

    let stop = shutdown.clone();
    let served = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    // The server ends on shutdown, or on its own failure: stop the consumer either way.
    shutdown.cancel();
    systemd::stopping("stopping");
    if let Err(e) = ingest.await {
        tracing::warn!(error = %e, "results consumer ended abnormally");
    }
    served.map_err(WebError::Serve)?;
    tracing::info!("labmq-web stopped");
    Ok(())
}
