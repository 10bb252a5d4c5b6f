//! gRPC over TLS: each accepted connection does its TLS handshake in its own task (a slow
//! or silent peer must not hold up the others), within `handshake_timeout_secs`; the
//! rustls configuration is read again from its files on SIGHUP, so a rotated certificate
//! is served to new connections without a restart (open ones keep theirs).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig as RustlsConfig;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::accept::ServedConnection;
use super::config::ServerConfig;
use super::throttle::Throttled;
use crate::tls::{KeyedPath, TlsError};

/// The files a TLS listener is made from, kept to read them again on SIGHUP.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// `None` when `config` serves plaintext.
    pub fn from_config(config: &ServerConfig) -> Option<Self> {
        use crate::tls::configured as set;
        Some(Self {
            cert: set(&config.tls_cert_file)?.to_owned(),
            key: set(&config.tls_key_file)?.to_owned(),
            client_ca: set(&config.tls_client_ca_file).map(Path::to_owned),
        })
    }

    fn load(&self) -> Result<Arc<RustlsConfig>, TlsError> {
        crate::tls::server_config(
            KeyedPath {
                key: "tls_cert_file",
                path: &self.cert,
            },
            KeyedPath {
                key: "tls_key_file",
                path: &self.key,
            },
            self.client_ca.as_deref().map(|path| KeyedPath {
                key: "tls_client_ca_file",
                path,
            }),
        )
        .map(Arc::new)
    }
}

/// The rustls configuration new connections get; swapped whole on reload.
#[derive(Clone)]
pub struct Acceptor {
    files: TlsFiles,
    current: Arc<RwLock<Arc<RustlsConfig>>>,
}

impl Acceptor {
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let config = files.load()?;
        Ok(Self {
            files,
            current: Arc::new(RwLock::new(config)),
        })
    }

    /// Reads the files again; on any error the running certificate stays.
    pub fn reload(&self) {
        match self.files.load() {
            Ok(config) => {
                if let Ok(mut current) = self.current.write() {
                    *current = config;
                }
                tracing::info!(
                    cert = %self.files.cert.display(),
                    "reloaded the TLS certificate: new connections get the new one"
                );
            }
            Err(e) => {
                tracing::warn!("TLS reload failed, keeping the running certificate: {e}");
            }
        }
    }

    fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current
            .read()
            .ok()
            .map(|config| TlsAcceptor::from(Arc::clone(&config)))
    }

    /// Reloads on each SIGHUP until `shutdown`. The daemon runner handles SIGHUP too (for
    /// log_level); tokio delivers the signal to every listener.
    pub fn reload_on_sighup(&self, shutdown: CancellationToken) -> std::io::Result<()> {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    got = hangup.recv() => match got {
                        Some(()) => this.reload(),
                        None => break,
                    },
                }
            }
        });
        Ok(())
    }
}

/// The TLS connections made over `plain`, each handshake in its own task within
/// `handshake_timeout`. A failed handshake (a plaintext client, a wrong CA, no client
/// certificate under mTLS) closes that connection only and is logged once per period.
pub fn incoming(
    plain: impl Stream<Item = Result<ServedConnection, std::io::Error>> + Send + 'static,
    acceptor: Acceptor,
    handshake_timeout: Duration,
) -> impl Stream<Item = Result<TlsStream<ServedConnection>, std::io::Error>> {
    let (done, ready) = mpsc::unbounded_channel();
    let failed = Arc::new(Mutex::new(Throttled::new()));
    tokio::spawn(async move {
        let mut plain = std::pin::pin!(plain);
        loop {
            // Once the server stops taking connections, drop the listener (and with it
            // the accept state that a lingering close waits for).
            let connection = tokio::select! {
                () = done.closed() => break,
                next = plain.next() => match next {
                    Some(Ok(connection)) => connection,
                    Some(Err(_)) => continue,
                    None => break,
                },
            };
            let Some(tls) = acceptor.acceptor() else {
                continue;
            };
            let done = done.clone();
            let failed = Arc::clone(&failed);
            tokio::spawn(async move {
                let peer = connection_peer(&connection);
                match tokio::time::timeout(handshake_timeout, tls.accept(connection)).await {
                    Ok(Ok(stream)) => {
                        let _ = done.send(Ok(stream));
                    }
                    Ok(Err(error)) => log_failed(&failed, &peer, &error.to_string()),
                    Err(_) => log_failed(
                        &failed,
                        &peer,
                        "no TLS handshake within handshake_timeout_secs",
                    ),
                }
            });
        }
    });
    futures_util::stream::unfold(ready, |mut ready| async move {
        ready.recv().await.map(|item| (item, ready))
    })
}

fn connection_peer(connection: &ServedConnection) -> String {
    use tonic::transport::server::Connected;
    connection
        .connect_info()
        .remote_addr()
        .map_or_else(|| "?".to_owned(), |addr| addr.to_string())
}

fn log_failed(failed: &Mutex<Throttled>, peer: &str, error: &str) {
    let due = failed.lock().ok().and_then(|mut throttled| throttled.due());
    if let Some(skipped) = due {
        tracing::warn!(
            peer = %peer,
            skipped,
            "TLS handshake with {peer} failed: {error} (a plaintext client, or a certificate \
             the other side does not trust?)"
        );
    }
}
