//! The broker settings every AMQP program has, defined once and flattened into the
//! configs of labmq-consumer, labmq-web and labmq-produce (the keys stay top-level:
//! `amqp_url`, `queue`, …), and the [`AmqpTarget`] they resolve to: where to connect and
//! as whom, printable only without its password.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use lapin::{Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::ClientConfig as TlsClientConfig;

use super::AmqpError;
use super::topology::{DEFAULT_QUEUE, DEFAULT_RESULTS_EXCHANGE, QueueType, Topology};
use crate::daemon::service::{ConfigError, check_not_empty, invalid};

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The config key of the password, which programs read raw from their environment.
pub const PASSWORD_KEY: &str = "amqp_password";

/// A password: never shown by `Debug`, and a value of the wrong type is refused without
/// echoing it (an unquoted `12345678` in a TOML file would otherwise be printed in the
/// error).
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a quoted string")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Secret, E> {
                Ok(Secret(value.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Secret, E> {
                Ok(Secret(value))
            }
        }
        // Any other type ends in `expecting`'s message; serde's default would quote the
        // value ("invalid type: integer `12345678`").
        deserializer.deserialize_string(Visitor).map_err(|_| {
            serde::de::Error::custom(format!(
                "{PASSWORD_KEY} must be a quoted string (value not shown)"
            ))
        })
    }
}

/// The broker URLs, one per cluster node. A config file may give one string (what every
/// file written before clusters has) or a list; both read into the same list.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AmqpUrls(pub Vec<String>);

impl AmqpUrls {
    pub fn one(url: impl Into<String>) -> Self {
        Self(vec![url.into()])
    }
}

/// Never the passwords a URL may hold.
impl std::fmt::Debug for AmqpUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|url| redact_url(url)))
            .finish()
    }
}

impl<'de> Deserialize<'de> for AmqpUrls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AmqpUrls;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a URL string or a list of URL strings")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<AmqpUrls, E> {
                Ok(AmqpUrls::one(value))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AmqpUrls, A::Error> {
                let mut urls = Vec::new();
                while let Some(url) = seq.next_element::<String>()? {
                    urls.push(url);
                }
                Ok(AmqpUrls(urls))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Broker settings shared by every AMQP program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AmqpSettings {
    /// Broker URLs, one per node of a cluster (a single string is accepted); their
    /// password may be left out and given by `amqp_password(_file)`.
    pub amqp_url: AmqpUrls,
    /// Overrides the URL's password; best set in the program's environment file
    /// (`LABMQ_<PROGRAM>_AMQP_PASSWORD` in `/etc/labmq/<program>.env`), never in a
    /// world-readable file. Read from the environment verbatim.
    pub amqp_password: Secret,
    /// A file holding only the password (e.g. a systemd credential); wins over both.
    pub amqp_password_file: String,
    /// The task queue; its dead-letter queue is this name + ".dead".
    pub queue: String,
    /// `classic` (compatible with plain clients) or `quorum` (replicated, for clusters);
    /// used when a queue does not exist yet.
    pub queue_type: QueueType,
    /// Fanout exchange every result document is published to.
    pub results_exchange: String,
    /// PEM CA bundle that signs the broker's certificate, for `amqps://` URLs; empty: the
    /// system's roots. The broker's certificate must also be valid for the URL's host.
    pub amqp_ca_file: PathBuf,
    /// PEM client certificate presented to the broker over `amqps://` (with
    /// `amqp_key_file`); needed for `?auth_mechanism=external` (the certificate is the
    /// login) and by brokers that set `fail_if_no_peer_cert`.
    pub amqp_cert_file: PathBuf,
    /// PEM private key of `amqp_cert_file`, readable by its owner only.
    pub amqp_key_file: PathBuf,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            amqp_url: AmqpUrls::one(DEFAULT_AMQP_URL),
            amqp_password: Secret::default(),
            amqp_password_file: String::new(),
            queue: DEFAULT_QUEUE.into(),
            queue_type: QueueType::Classic,
            results_exchange: DEFAULT_RESULTS_EXCHANGE.into(),
            amqp_ca_file: PathBuf::new(),
            amqp_cert_file: PathBuf::new(),
            amqp_key_file: PathBuf::new(),
        }
    }
}

/// The TLS flags every AMQP program has; each overrides the key of the same name.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct AmqpTlsFlags {
    /// PEM CA that signs the broker's certificate, for amqps:// URLs (key `amqp_ca_file`) [default: the system's roots]
    #[arg(long = "amqp-ca", value_name = "FILE")]
    #[serde(rename = "amqp_ca_file", skip_serializing_if = "Option::is_none")]
    pub amqp_ca_file: Option<PathBuf>,
    /// PEM client certificate for the broker, e.g. for auth_mechanism=external (key `amqp_cert_file`)
    #[arg(long = "amqp-cert", value_name = "FILE")]
    #[serde(rename = "amqp_cert_file", skip_serializing_if = "Option::is_none")]
    pub amqp_cert_file: Option<PathBuf>,
    /// PEM private key of --amqp-cert, mode 600 (key `amqp_key_file`)
    #[arg(long = "amqp-key", value_name = "FILE")]
    #[serde(rename = "amqp_key_file", skip_serializing_if = "Option::is_none")]
    pub amqp_key_file: Option<PathBuf>,
}

impl AmqpTlsFlags {
    /// Sets the keys given as flags (for programs that do not read flags through figment).
    pub fn apply(&self, settings: &mut AmqpSettings) {
        let pairs = [
            (&self.amqp_ca_file, &mut settings.amqp_ca_file),
            (&self.amqp_cert_file, &mut settings.amqp_cert_file),
            (&self.amqp_key_file, &mut settings.amqp_key_file),
        ];
        for (flag, key) in pairs {
            if let Some(path) = flag {
                key.clone_from(path);
            }
        }
    }
}

impl AmqpSettings {
    /// The URL must parse, the names must not be empty, and a password file is read now,
    /// so `--check-config` (run by the units as the service user) catches one the service
    /// cannot read.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let parsed = match AmqpTarget::new(&self.amqp_url.0, None, None) {
            Ok(parsed) => parsed,
            Err(e) => return invalid("amqp_url", e.to_string()),
        };
        self.validate_tls(&parsed)?;
        if !self.amqp_password_file.is_empty()
            && let Err(e) = self.target()
        {
            return invalid(
                "amqp_password_file",
                crate::daemon::logging::error_chain(&e),
            );
        }
        check_not_empty(&[
            ("queue", &self.queue),
            ("results_exchange", &self.results_exchange),
        ])
    }

    /// TLS files only with `amqps://` URLs (a file that would be silently ignored is a
    /// mistake worth stopping for), EXTERNAL only over TLS with a client certificate, and
    /// the files themselves as the gRPC ones are checked.
    fn validate_tls(&self, parsed: &AmqpTarget) -> Result<(), ConfigError> {
        use crate::tls::configured;
        let files = [
            ("amqp_ca_file", configured(&self.amqp_ca_file)),
            ("amqp_cert_file", configured(&self.amqp_cert_file)),
            ("amqp_key_file", configured(&self.amqp_key_file)),
        ];
        if !parsed.uses_tls()
            && let Some((key, _)) = files.iter().find(|(_, path)| path.is_some())
        {
            return invalid(
                key,
                "is set, but every amqp_url is plain amqp://, so no TLS is used and the file \
                 would be ignored; use amqps:// URLs (the broker's TLS port, usually 5671) or \
                 remove the key",
            );
        }
        for uri in parsed.nodes.iter() {
            if uri.query.auth_mechanism == Some(SASLMechanism::External) {
                if uri.scheme != AMQPScheme::AMQPS {
                    return invalid(
                        "amqp_url",
                        format!(
                            "{}: auth_mechanism=external logs in with the client certificate, \
                             so it needs amqps://",
                            redact_uri(uri)
                        ),
                    );
                }
                if files[1].1.is_none() {
                    return invalid(
                        "amqp_cert_file",
                        format!(
                            "must be set (with amqp_key_file): {} asks for \
                             auth_mechanism=external, which logs in with the client certificate",
                            redact_uri(uri)
                        ),
                    );
                }
            }
        }
        crate::tls::check_files(files[1], files[2], files[0])
    }

    /// Where to connect, with the password from the file, the setting or the URL, and the
    /// TLS configuration (read from its files now) when a URL is `amqps://`.
    pub fn target(&self) -> Result<AmqpTarget, AmqpError> {
        let mut target = AmqpTarget::new(
            &self.amqp_url.0,
            Some(self.amqp_password.expose()),
            (!self.amqp_password_file.is_empty()).then(|| Path::new(&self.amqp_password_file)),
        )?;
        if target.uses_tls() {
            target.tls = Some(Arc::new(self.tls_config()?));
        }
        Ok(target)
    }

    fn tls_config(&self) -> Result<TlsClientConfig, crate::tls::TlsError> {
        use crate::tls::{KeyedPath, configured};
        let identity = configured(&self.amqp_cert_file)
            .zip(configured(&self.amqp_key_file))
            .map(|(cert, key)| {
                (
                    KeyedPath {
                        key: "amqp_cert_file",
                        path: cert,
                    },
                    KeyedPath {
                        key: "amqp_key_file",
                        path: key,
                    },
                )
            });
        crate::tls::client_rustls_config("amqp_ca_file", configured(&self.amqp_ca_file), identity)
    }

    pub fn topology(&self) -> Topology {
        Topology {
            queue: self.queue.clone(),
            queue_type: self.queue_type,
            results_exchange: self.results_exchange.clone(),
        }
    }
}

/// Where to connect and as whom: one or more nodes of a cluster, tried in a shuffled
/// order (so a fleet of clients spreads over the nodes), the node that served last tried
/// last (so a lost node is not the first one retried). The password may come from the URL,
/// from config or from a file (systemd credentials); the file wins, then the explicit
/// password, then the URL.
#[derive(Clone)]
pub struct AmqpTarget {
    nodes: Arc<[AMQPUri]>,
    /// For `amqps://` nodes: the CA to verify them by and our client certificate.
    tls: Option<Arc<TlsClientConfig>>,
    /// Index of the node the last successful connect reached; shared by clones, so the
    /// quarantine sweep talks to the node the session is on.
    serving: Arc<AtomicUsize>,
}

impl std::fmt::Debug for AmqpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl AmqpTarget {
    pub fn new(
        urls: &[String],
        password: Option<&str>,
        password_file: Option<&Path>,
    ) -> Result<Self, AmqpError> {
        if urls.is_empty() {
            return Err(AmqpError::BadUrl {
                url: String::new(),
                reason: "no broker URL given (amqp_url is an empty list)".into(),
            });
        }
        let secret = match password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| AmqpError::PasswordFile {
                        path: path.display().to_string(),
                        source,
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            ),
            None => password.filter(|p| !p.is_empty()).map(str::to_owned),
        };
        let mut nodes = Vec::with_capacity(urls.len());
        for url in urls {
            let mut uri: AMQPUri = url.parse().map_err(|reason: String| AmqpError::BadUrl {
                url: redact_url(url),
                reason,
            })?;
            if let Some(secret) = &secret {
                uri.authority.userinfo.password.clone_from(secret);
            }
            nodes.push(uri);
        }
        Ok(Self {
            nodes: nodes.into(),
            tls: None,
            serving: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The parsed URL of the node that served last (the first before any connect),
    /// password included: for clients that speak AMQP themselves ([`super::quarantine`]).
    /// Never print it.
    pub(crate) fn uri(&self) -> &AMQPUri {
        &self.nodes[self.serving_index()]
    }

    /// The TLS configuration of `amqps://` nodes (`None` when every node is plain).
    pub(crate) fn tls(&self) -> Option<&Arc<TlsClientConfig>> {
        self.tls.as_ref()
    }

    /// Some node is `amqps://`.
    pub fn uses_tls(&self) -> bool {
        self.nodes.iter().any(|uri| uri.scheme == AMQPScheme::AMQPS)
    }

    fn serving_index(&self) -> usize {
        self.serving
            .load(Ordering::Relaxed)
            .min(self.nodes.len() - 1)
    }

    /// Every node, `amqp://user@host:port/vhost` joined by ", ": safe to print anywhere.
    pub fn redacted(&self) -> String {
        self.nodes
            .iter()
            .map(redact_uri)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The node that served last, without its password.
    pub fn serving(&self) -> String {
        redact_uri(self.uri())
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The order to try the nodes in: shuffled, the one that served last moved to the end.
    fn connect_order(&self) -> Vec<usize> {
        use rand::seq::SliceRandom;
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.shuffle(&mut rand::rng());
        let last = self.serving_index();
        if let Some(position) = order.iter().position(|&i| i == last) {
            let index = order.remove(position);
            order.push(index);
        }
        order
    }

    /// Opens a connection to the first node that answers, named after the client so
    /// operators can tell ours apart in the management UI; each node gets `timeout` (a
    /// peer that accepts and never speaks must not hang the caller).
    pub async fn connect(
        &self,
        client_name: &str,
        timeout: Duration,
    ) -> Result<Connection, AmqpError> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let name = format!("{client_name}@{} pid {}", host.trim(), std::process::id());
        let mut failures = Vec::new();
        for index in self.connect_order() {
            let uri = &self.nodes[index];
            match connect_node(uri, self.tls.as_ref(), &name, timeout).await {
                Ok(connection) => {
                    self.serving.store(index, Ordering::Relaxed);
                    return Ok(connection);
                }
                Err(e) if self.nodes.len() > 1 => {
                    tracing::debug!(node = %redact_uri(uri), error = %crate::daemon::logging::error_chain(&e), "node unavailable; trying the next");
                    failures.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        let tried = self.redacted();
        match failures.pop() {
            Some(last) => Err(AmqpError::NoNode {
                tried,
                last: Box::new(last),
            }),
            None => Err(AmqpError::BadUrl {
                url: tried,
                reason: "no broker URL".into(),
            }),
        }
    }
}

async fn connect_node(
    uri: &AMQPUri,
    tls: Option<&Arc<TlsClientConfig>>,
    name: &str,
    timeout: Duration,
) -> Result<Connection, AmqpError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime().map_err(|source| AmqpError::Connect {
        url: redact_uri(uri),
        source,
    })?;
    // lapin's own TLS (tcp-stream) adds a CA to the system's roots and cannot be given a
    // rustls configuration; this transport does the handshake with ours (only our CA,
    // our client certificate) and explains a failed one.
    let connector = tls.map(|config| lapin::tcp::RustlsConnector::from(Arc::clone(config)));
    let transport = async move |uri: AMQPUri, runtime| {
        use lapin::tcp::AMQPUriTcpExt;
        let tls_host = (uri.scheme == AMQPScheme::AMQPS).then(|| uri.authority.host.clone());
        let mut plain = uri.clone();
        plain.scheme = AMQPScheme::AMQP;
        let stream = plain.connect_async(&runtime).await?;
        match (tls_host, &connector) {
            (None, _) => Ok(stream),
            (Some(host), Some(connector)) => {
                super::tls::server_name(&host)?;
                stream
                    .into_rustls(connector, &host)
                    .await
                    .map_err(|e| {
                        super::tls::HandshakeError::new(&host, uri.authority.port, &e).into_io()
                    })
                    .map_err(lapin::Error::from)
            }
            (Some(_), None) => Err(lapin::Error::from(std::io::Error::other(
                "amqps:// without a TLS configuration",
            ))),
        }
    };
    let connecting = Connection::connector(uri.clone(), runtime, transport, properties);
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => {
            let (host, port) = (&uri.authority.host, uri.authority.port);
            let uses_tls = uri.scheme == AMQPScheme::AMQPS;
            Err(
                match super::tls::explain_failure(
                    &source,
                    host,
                    port,
                    uses_tls.then_some(tls).flatten(),
                )
                .await
                {
                    Some(reason) => AmqpError::TlsFailure {
                        url: redact_uri(uri),
                        reason,
                    },
                    None if matches!(source.kind(), lapin::ErrorKind::ParsingError(_)) => {
                        AmqpError::NotAmqp {
                            url: redact_uri(uri),
                        }
                    }
                    None => AmqpError::Connect {
                        url: redact_uri(uri),
                        source,
                    },
                },
            )
        }
        Err(_) => Err(AmqpError::ConnectTimeout {
            url: redact_uri(uri),
            timeout,
        }),
    }
}

/// `amqp://user@host:port/vhost`.
fn redact_uri(uri: &AMQPUri) -> String {
    let scheme = match uri.scheme {
        lapin::uri::AMQPScheme::AMQP => "amqp",
        lapin::uri::AMQPScheme::AMQPS => "amqps",
    };
    let vhost = if uri.vhost == "/" {
        "%2f".to_owned()
    } else {
        uri.vhost.clone()
    };
    format!(
        "{scheme}://{}@{}:{}/{vhost}",
        uri.authority.userinfo.username, uri.authority.host, uri.authority.port
    )
}

/// Removes the password from any URL-looking string, for messages about unparsable URLs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_hides_password() {
        let target =
            AmqpTarget::new(&["amqp://app:s3cret@broker:5673/%2f".into()], None, None).unwrap();
        assert_eq!(target.redacted(), "amqp://app@broker:5673/%2f");
        assert!(!format!("{target:?}").contains("s3cret"));
    }

    #[test]
    fn password_sources_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "fromfile\n").unwrap();
        let t = AmqpTarget::new(&["amqp://u:url@h:1/%2f".into()], Some("explicit"), None).unwrap();
        assert_eq!(t.uri().authority.userinfo.password, "explicit");
        let t = AmqpTarget::new(
            &["amqp://u:url@h:1/%2f".into()],
            Some("explicit"),
            Some(&file),
        )
        .unwrap();
        assert_eq!(t.uri().authority.userinfo.password, "fromfile");
        let t = AmqpTarget::new(&["amqp://u:url@h:1/%2f".into()], Some(""), None).unwrap();
        assert_eq!(t.uri().authority.userinfo.password, "url");
    }

    #[test]
    fn missing_password_file_is_named() {
        let err = AmqpTarget::new(
            &[DEFAULT_AMQP_URL.into()],
            None,
            Some("/nonexistent/pw".as_ref()),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/pw"), "{err}");
    }

    #[test]
    fn bad_url_error_hides_password() {
        let err = AmqpTarget::new(&["amqp://u:topsecret@host:notaport/".into()], None, None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("topsecret"), "{err}");
        assert!(err.contains("u:***@host"), "{err}");
    }

    #[test]
    fn several_nodes_share_the_password_and_print_without_it() {
        let urls = [
            "amqp://u@a:1/%2f".to_owned(),
            "amqp://u:inurl@b:2/%2f".to_owned(),
        ];
        let t = AmqpTarget::new(&urls, Some("explicit"), None).unwrap();
        assert_eq!(t.node_count(), 2);
        assert!(
            t.nodes
                .iter()
                .all(|n| n.authority.userinfo.password == "explicit")
        );
        assert_eq!(t.redacted(), "amqp://u@a:1/%2f, amqp://u@b:2/%2f");
        assert!(!format!("{t:?}").contains("explicit"));
    }

    #[test]
    fn connect_order_is_a_permutation_with_the_last_server_last() {
        let urls: Vec<String> = (1..=4).map(|p| format!("amqp://u@h:{p}/%2f")).collect();
        let t = AmqpTarget::new(&urls, None, None).unwrap();
        t.serving.store(2, Ordering::Relaxed);
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            let order = t.connect_order();
            assert_eq!(order.last(), Some(&2), "{order:?}");
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2, 3]);
            firsts.insert(order[0]);
        }
        // Shuffled: every other node comes first some of the time.
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }

    #[test]
    fn empty_url_list_is_refused() {
        let settings = AmqpSettings {
            amqp_url: AmqpUrls(vec![]),
            ..AmqpSettings::default()
        };
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("amqp_url"), "{err}");
    }

    #[tokio::test]
    async fn all_nodes_down_names_every_node() {
        let closed = |_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let urls: Vec<String> = (0..2)
            .map(closed)
            .map(|port| format!("amqp://u:pw@127.0.0.1:{port}/%2f"))
            .collect();
        let t = AmqpTarget::new(&urls, None, None).unwrap();
        let err = t.connect("test", Duration::from_secs(5)).await.unwrap_err();
        assert!(err.is_connect());
        let text = crate::daemon::logging::error_chain(&err);
        for url in &urls {
            assert!(
                text.contains(&redact_url(url).replace(":***", "")),
                "{text}"
            );
        }
        assert!(!text.contains("pw"), "{text}");
    }
}
