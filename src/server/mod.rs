//! `labmq-server`: the gRPC compute service (package `message`, service
//! `MessageService`) with health, reflection, systemd readiness and graceful shutdown.
//!
//! - [`config`]: its configuration and command line;
//! - [`service`]: the `MessageService` methods over [`crate::compute`];
//! - [`pool`]: the compute threads and their bounded queue;
//! - [`inflight`]: one limit on calls in flight over all connections;
//! - [`accept`]: connections accepted within limits (count, handshake time, fd errors);
//! - [`linger`]: connections closed so that the last response always arrives;
//! - [`throttle`]: repeating warnings logged once per period;
//! - [`tls`]: TLS handshakes off the accept loop, certificates reloaded on SIGHUP;
//! - [`metrics`]: gRPC calls by method and status code, their latency, in flight;
//! - [`run`] (here): bind, serve, drain on SIGTERM.

mod accept;
pub mod config;
mod inflight;
mod linger;
mod metrics;
mod pool;
mod service;
mod throttle;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::daemon::metrics::{Metrics, MetricsError};
use crate::daemon::systemd;
use crate::grpc::proto::{self, message_service_server::MessageServiceServer};
use accept::ConnectionLimits;
pub use config::{ServerArgs, ServerConfig};
use inflight::InFlightLimit;
use linger::LINGER;
use metrics::{GrpcMetricsLayer, ServerMetrics};
pub use pool::PoolError;
use service::ComputeService;

/// Messages leave the cause to `source()`, so a chain printed with `{:#}` (as
/// `labmq-server` does) names each cause once.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("socket activation")]
    Activation(#[from] systemd::ActivationError),
    #[error(
        "systemd passed a socket on {activated}, but listen is {configured}: make them agree \
         (`systemctl edit labmq-server.socket`: ListenStream=, or `listen` in the config)"
    )]
    ActivatedElsewhere {
        activated: SocketAddr,
        configured: SocketAddr,
    },
    #[error("compute pool")]
    Pool(#[from] PoolError),
    #[error("reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport")]
    Transport(#[from] tonic::transport::Error),
    #[error("TLS")]
    Tls(#[from] crate::tls::TlsError),
    #[error("metrics")]
    Metrics(#[from] MetricsError),
    #[error("cannot watch SIGHUP for certificate reloads")]
    Signal(#[source] std::io::Error),
}

/// The socket systemd passed (labmq-server.socket), or else one bound to `listen`.
async fn listener(config: &ServerConfig) -> Result<(TcpListener, &'static str), ServerError> {
    let bind_error = |source| ServerError::Bind {
        addr: config.listen,
        source,
    };
    let Some(activated) = systemd::activated_tcp_listener()? else {
        let listener = TcpListener::bind(config.listen).await.map_err(bind_error)?;
        return Ok((listener, "bound"));
    };
    let activated_on = activated.local_addr().map_err(bind_error)?;
    // The socket unit and the config each name an address; serving on another one than
    // the config says would surprise whoever reads the config.
    if activated_on != config.listen {
        return Err(ServerError::ActivatedElsewhere {
            activated: activated_on,
            configured: config.listen,
        });
    }
    let listener = TcpListener::from_std(activated).map_err(bind_error)?;
    Ok((listener, "socket-activated"))
}

/// Takes the listener, serves until `shutdown` is cancelled, then lets in-flight calls
/// finish for up to `shutdown_grace_secs`.
pub async fn run(config: &ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    let (listener, origin) = listener(config).await?;
    let local = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;

    let metrics = Metrics::new()?;
    let server_metrics = ServerMetrics::new(&metrics)?;
    if let Some(addr) = config.metrics_addr() {
        metrics.serve(addr, shutdown.clone()).await?;
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<MessageServiceServer<ComputeService>>()
        .await;
    // Both reflection versions: grpcurl and current clients speak v1; grpcio-reflection's
    // Python client, older grpcurl builds and many GUI clients still speak v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    // Room for a text of max_text_bytes plus protobuf framing, so an over-long text reaches
    // the handler and gets an INVALID_ARGUMENT that names the limit.
    let decode_limit = config.max_text_bytes.saturating_add(64 * 1024);
    let service = MessageServiceServer::new(ComputeService::new(config, server_metrics.clone())?)
        .max_decoding_message_size(decode_limit)
        .max_encoding_message_size(usize::MAX);

    // Every connection holds a clone of `closing` until its lingering close is over.
    let (closing, mut closed) = mpsc::channel::<()>(1);
    let incoming = accept::incoming(
        listener,
        ConnectionLimits {
            max_connections: config.max_connections,
            handshake_timeout: Duration::from_secs(config.handshake_timeout_secs),
        },
        closing,
    );
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .timeout(Duration::from_secs(config.request_timeout_secs))
        .http2_keepalive_interval(Some(Duration::from_secs(config.keepalive_interval_secs)))
        .http2_keepalive_timeout(Some(Duration::from_secs(config.keepalive_timeout_secs)))
        // Outermost, so calls refused by the in-flight limit are counted too.
        .layer(GrpcMetricsLayer::new(server_metrics))
        .layer(InFlightLimit::new(config.max_calls_in_flight))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    let stop = {
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    };
    let scheme = if tls::TlsFiles::from_config(config).is_some() {
        "gRPC over TLS"
    } else {
        "gRPC"
    };
    let serving: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match tls::TlsFiles::from_config(config) {
            Some(files) => {
                let acceptor = tls::Acceptor::new(files)?;
                acceptor
                    .reload_on_sighup(shutdown.clone())
                    .map_err(ServerError::Signal)?;
                let incoming = tls::incoming(
                    incoming,
                    acceptor,
                    Duration::from_secs(config.handshake_timeout_secs),
                );
                Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
            }
            None => Box::pin(router.serve_with_incoming_shutdown(incoming, stop)),
        };

    tracing::info!(listen = %local, socket = origin, "labmq-server serving {scheme} on {local} ({origin})");
    systemd::ready(&format!("serving on {local}"));
    systemd::spawn_watchdog(shutdown.clone());

    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let mut serving = serving;
    // Serve until a shutdown request. When idle, `serving` can finish in the same poll
    // that sees the cancellation, so STOPPING=1 is sent after this select whichever
    // branch won, never from inside a branch that might lose the race.
    let finished = tokio::select! {
        served = &mut serving => Some(served),
        () = shutdown.cancelled() => None,
    };
    if shutdown.is_cancelled() {
        systemd::stopping("draining in-flight calls");
        health
            .set_not_serving::<MessageServiceServer<ComputeService>>()
            .await;
    }
    let drained = match finished {
        Some(served) => served.map(|()| true)?,
        None => match tokio::time::timeout(grace, serving).await {
            Ok(served) => served.map(|()| true)?,
            Err(_) => {
                tracing::warn!(
                    grace_secs = config.shutdown_grace_secs,
                    "in-flight calls still running after the grace period; exiting anyway"
                );
                false
            }
        },
    };
    if drained {
        // Every connection is closed; let the last responses reach their clients.
        let _ = tokio::time::timeout(LINGER, closed.recv()).await;
    }
    tracing::info!("labmq-server stopped");
    Ok(())
}
