//! The HTTP/1.1 listener of labmq-web and of every daemon's `/metrics` endpoint.
//!
//! axum's own `serve` has no header-read timeout and no connection cap: a client that
//! connects and says nothing (slowloris) would hold a connection, a task and a file
//! descriptor forever. This loop serves each connection with hyper's HTTP/1 builder:
//! - at most `max_connections` at once (a further connection waits in the listen backlog
//!   until one closes);
//! - `header_timeout` to send a request's headers, which is also the longest a
//!   kept-alive connection may stay idle;
//! - after shutdown, `shutdown_grace` for requests in flight, then every connection is
//!   dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The client's address, put into every request's extensions by [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown`, then gives requests in flight
/// `limits.shutdown_grace` and drops whatever is left.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    // Logged at most once a minute: a flood must not become a flood of log lines.
    let mut cap_logged: Option<std::time::Instant> = None;
    let mut accept_logged: Option<std::time::Instant> = None;
    loop {
        let permit = if let Ok(permit) = slots.clone().try_acquire_owned() {
            permit
        } else {
            if cap_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "{} HTTP connections open (max_connections); new ones wait in the backlog",
                    limits.max_connections
                );
                cap_logged = Some(std::time::Instant::now());
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            }
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: do
                    // not spin, the condition needs a moment to clear.
                    if accept_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "accepting an HTTP connection failed (logged once a minute)");
                        accept_logged = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks so the set does not grow with the total served.
        while connections.try_join_next().is_some() {}
        let service = app.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(Peer(peer));
                request.map(Body::new)
            },
        );
        let stop = shutdown.clone();
        let header_timeout = limits.header_timeout;
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            if let Err(e) = served {
                tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "HTTP connections still open after shutdown_grace_secs = {}; closing them",
            limits.shutdown_grace.as_secs()
        );
        connections.shutdown().await;
    }
}
