//! AMQP over TLS: the handshake on a connection to an `amqps://` node (the broker's
//! certificate checked against `amqp_ca_file` and the URL's host name, our certificate
//! presented when configured), shared by lapin's connections and the quarantine's own
//! client, and the explanation of a failed handshake in words an operator can act on: a
//! handshake that fails is not retried into silence, it says which side is wrong.

use std::io;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, AlertDescription, CertificateError, ClientConfig};

/// A TLS handshake with a broker that failed, explained.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with {host}:{port} failed: {explanation}")]
pub struct HandshakeError {
    pub host: String,
    pub port: u16,
    pub explanation: String,
}

impl HandshakeError {
    pub fn new(host: &str, port: u16, error: &io::Error) -> Self {
        Self {
            host: host.to_owned(),
            port,
            explanation: explain(error, host),
        }
    }

    /// As an `io::Error`, the form lapin's transport takes (its message is ours).
    pub fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// The name the broker's certificate must be valid for: the URL's host.
pub fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a valid TLS server name: {e}"),
        )
    })
}

/// Runs the handshake over a tokio stream (the quarantine's client).
pub async fn connect_tokio<S>(
    config: &Arc<ClientConfig>,
    host: &str,
    port: u16,
    stream: S,
) -> io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(server_name(host)?, stream)
        .await
        .map_err(|e| HandshakeError::new(host, port, &e).into_io())
}

fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// What went wrong, and the likely fix.
fn explain(error: &io::Error, host: &str) -> String {
    let Some(tls) = rustls_error(error) else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => format!(
                "the server closed the connection during the handshake ({error}): is this a \
                 TLS listener (RabbitMQ's listeners.ssl, usually port 5671)? For a plaintext \
                 port use amqp://"
            ),
            _ => error.to_string(),
        };
    };
    match tls {
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "the server does not speak TLS ({tls}): this looks like a plaintext AMQP port; \
             use amqp:// for it, or the broker's TLS port (listeners.ssl, usually 5671) with \
             amqps://"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the broker's certificate is not valid for the host name {host:?} of the URL \
             ({tls}); connect by a name its subjectAltName lists, or reissue it with this one"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!(
            "the broker's certificate is not signed by a CA we trust ({tls}); set \
             amqp_ca_file (--amqp-ca) to the CA that signs it (unset, the system's roots are \
             used)"
        ),
        rustls::Error::InvalidCertificate(_) => {
            format!("the broker's certificate was refused: {tls}")
        }
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => format!(
            "the broker requires a client certificate ({tls}); set amqp_cert_file and \
             amqp_key_file (--amqp-cert, --amqp-key)"
        ),
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::HandshakeFailure,
        ) => format!(
            "the broker refused the handshake ({tls}): it needs a client certificate \
             (amqp_cert_file, amqp_key_file) signed by a CA in its ssl_options.cacertfile"
        ),
        other => format!("{other}"),
    }
}

/// Why a connection to `host:port` failed, when TLS is the reason: our handshake's
/// explanation, a TLS alert the broker sent after it (TLS 1.3 refuses a missing client
/// certificate only then), or, for a plain `amqp://` URL whose connection the server
/// dropped or answered with bytes that are no AMQP frame, a probe finding that the port
/// speaks TLS. `None`: not a TLS matter.
///
/// `tls`: the configuration of an `amqps://` URL (`None` for `amqp://`). A TLS connection
/// reset right after the handshake is probed again with it: a broker that refuses our
/// certificate (or its absence) sends an alert and closes, but when our AMQP header is
/// already on its way the close becomes a reset that can overtake the alert; a second
/// handshake that sends nothing after it reads the alert.
pub async fn explain_failure(
    error: &lapin::Error,
    host: &str,
    port: u16,
    tls: Option<&Arc<ClientConfig>>,
) -> Option<String> {
    // A TLS listener that gets a plain AMQP header either drops the connection or answers
    // with a TLS alert record, which lapin then fails to parse as an AMQP frame.
    let (not_amqp, answer) = match error.kind() {
        lapin::ErrorKind::IOError(io) => {
            if let Some(handshake) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<HandshakeError>())
            {
                return Some(handshake.to_string());
            }
            if rustls_error(io).is_some() {
                return Some(HandshakeError::new(host, port, io).to_string());
            }
            let dropped = matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
            );
            (dropped, io.to_string())
        }
        lapin::ErrorKind::ParsingError(_) => (true, NOT_AN_AMQP_FRAME.to_owned()),
        _ => return None,
    };
    if let Some(config) = tls {
        return if not_amqp {
            alert_after_handshake(config, host, port).await
        } else {
            None
        };
    }
    if not_amqp && speaks_tls(host, port).await {
        return Some(format!(
            "{host}:{port} answers in TLS, not plain AMQP ({answer}): this is a TLS listener \
             (RabbitMQ's listeners.ssl); use amqps:// with amqp_ca_file (--amqp-ca), or the \
             broker's plaintext port (usually 5672)"
        ));
    }
    None
}

/// A second handshake with `host:port` that sends nothing after it, then waits for what
/// the broker says: the explanation of an alert, `None` when it says nothing of TLS.
async fn alert_after_handshake(
    config: &Arc<ClientConfig>,
    host: &str,
    port: u16,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let probe = async {
        let stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let mut tls = match connect_tokio(config, host, port, stream).await {
            Ok(tls) => tls,
            Err(handshake) => return Some(handshake.to_string()),
        };
        let mut byte = [0u8; 1];
        match tls.read(&mut byte).await {
            Err(e) if rustls_error(&e).is_some() => {
                Some(HandshakeError::new(host, port, &e).to_string())
            }
            _ => None,
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
}

/// What a peer that answered the AMQP protocol header with something else did.
pub const NOT_AN_AMQP_FRAME: &str = "its answer to the AMQP protocol header is no AMQP frame";

/// Whether `host:port` answers a TLS ClientHello with a TLS handshake record. Only the
/// first bytes of the answer are read: no certificate is looked at, nothing is sent after.
async fn speaks_tls(host: &str, port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .ok()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
        let name =
            server_name(host).unwrap_or_else(|_| ServerName::from(std::net::Ipv4Addr::LOCALHOST));
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
        let mut hello = Vec::new();
        client.write_tls(&mut hello).ok()?;
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        stream.write_all(&hello).await.ok()?;
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.ok()?;
        // A handshake record (22) of TLS 1.x (major version 3): a ServerHello.
        Some(head == [22, 3])
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// How long the probe of a port that dropped a plain AMQP connection may take.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
