//! `labmq-web`: a web page and JSON API to submit tasks and browse their results.
//!
//! - [`submit`]: a submit's tasks parsed with the shared grammar, checked against the
//!   limits (tasks per submit, submits per minute) and published with confirms.
//! - [`ingest`]: labmq-web's own durable queue bound to the results exchange; every result
//!   document is stored (idempotently by id) before it is acked.
//! - [`store`]: the SQLite database of results.
//! - [`routes`]: the HTTP API and the page's endpoints; [`page`]: the HTML (maud escapes
//!   everything interpolated).
//!
//! READY=1 is sent once the HTTP listener is bound, not when the broker is reached: stored
//! results can be browsed without a broker, and `STATUS=` and `/healthz` say whether the
//! broker is connected.

pub mod ingest;
pub mod page;
pub mod routes;
pub mod store;
pub mod submit;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::BrokerError;
use crate::broker::connection::AmqpTarget;
use crate::broker::topology::Topology;
use crate::daemon::config::WebConfig;
use crate::daemon::systemd;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: SocketAddr, message: String },
    #[error("HTTP server failed: {0}")]
    Serve(String),
}

/// What the daemon is doing, for `STATUS=` and `/healthz`: the listener's address and the
/// state of the results consumer. A change sends one `STATUS=` line and one log line.
pub struct Status {
    listen: Mutex<Option<SocketAddr>>,
    broker: Mutex<(bool, String)>,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            listen: Mutex::new(None),
            broker: Mutex::new((false, "broker: starting".into())),
        }
    }
}

impl Status {
    fn set_listen(&self, addr: SocketAddr) {
        if let Ok(mut listen) = self.listen.lock() {
            *listen = Some(addr);
        }
    }

    /// Records the broker side's state; `connected` is what `/healthz` reports.
    pub fn broker(&self, connected: bool, text: impl Into<String>) {
        let text = text.into();
        let changed = match self.broker.lock() {
            Ok(mut broker) if *broker != (connected, text.clone()) => {
                *broker = (connected, text);
                true
            }
            _ => false,
        };
        if changed {
            systemd::status(&self.line());
        }
    }

    /// `(connected, description)` of the broker side.
    pub fn broker_state(&self) -> (bool, String) {
        self.broker
            .lock()
            .map(|b| b.clone())
            .unwrap_or((false, "unknown".into()))
    }

    /// `serving on ADDR; broker: …`.
    pub fn line(&self) -> String {
        let listen = self.listen.lock().ok().and_then(|l| *l);
        let broker = self.broker_state().1;
        match listen {
            Some(addr) => format!("serving on {addr}; {broker}"),
            None => broker,
        }
    }
}

/// Runs labmq-web until `shutdown` is cancelled.
pub async fn run(config: &WebConfig, shutdown: CancellationToken) -> Result<(), WebError> {
    let target = AmqpTarget::new(
        &config.amqp_url,
        Some(&config.amqp_password),
        (!config.amqp_password_file.is_empty()).then(|| Path::new(&config.amqp_password_file)),
    )?;
    let topology = Topology {
        queue: config.queue.clone(),
        queue_type: config.queue_type,
        results_exchange: config.results_exchange.clone(),
    };
    let store = store::Store::open(Path::new(&config.database))?;
    let status = Arc::new(Status::default());
    let submitter = submit::Submitter::new(target.clone(), topology.clone(), config);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| WebError::Bind {
            addr: config.listen,
            message: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| WebError::Bind {
        addr: config.listen,
        message: e.to_string(),
    })?;
    status.set_listen(addr);

    let ingest = tokio::spawn(ingest::run(
        ingest::Ingest {
            target,
            topology,
            queue: config.results_queue.clone(),
            store: store.clone(),
            status: status.clone(),
            reconnect_max: Duration::from_secs(config.reconnect_max_secs),
        },
        shutdown.clone(),
    ));

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
    served.map_err(|e| WebError::Serve(e.to_string()))?;
    tracing::info!("labmq-web stopped");
    Ok(())
}
