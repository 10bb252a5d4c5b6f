//! The broker settings every AMQP program has, defined once and flattened into the
//! configs of labmq-consumer, labmq-web and labmq-produce (the keys stay top-level:
//! `amqp_url`, `queue`, …), and the [`AmqpTarget`] they resolve to: where to connect and
//! as whom, printable only without its password.

use std::path::Path;
use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};

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

/// Broker settings shared by every AMQP program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AmqpSettings {
    /// Broker URL; its password may be left out and given by `amqp_password(_file)`.
    pub amqp_url: String,
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
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            amqp_url: DEFAULT_AMQP_URL.into(),
            amqp_password: Secret::default(),
            amqp_password_file: String::new(),
            queue: DEFAULT_QUEUE.into(),
            queue_type: QueueType::Classic,
            results_exchange: DEFAULT_RESULTS_EXCHANGE.into(),
        }
    }
}

impl AmqpSettings {
    /// The URL must parse, the names must not be empty, and a password file is read now,
    /// so `--check-config` (run by the units as the service user) catches one the service
    /// cannot read.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = AmqpTarget::new(&self.amqp_url, None, None) {
            return invalid("amqp_url", e.to_string());
        }
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

    /// Where to connect, with the password from the file, the setting or the URL.
    pub fn target(&self) -> Result<AmqpTarget, AmqpError> {
        AmqpTarget::new(
            &self.amqp_url,
            Some(self.amqp_password.expose()),
            (!self.amqp_password_file.is_empty()).then(|| Path::new(&self.amqp_password_file)),
        )
    }

    pub fn topology(&self) -> Topology {
        Topology {
            queue: self.queue.clone(),
            queue_type: self.queue_type,
            results_exchange: self.results_exchange.clone(),
        }
    }
}

/// Where to connect and as whom. The password may come from the URL, from config or from
/// a file (systemd credentials); the file wins, then the explicit password, then the URL.
#[derive(Clone)]
pub struct AmqpTarget {
    uri: AMQPUri,
}

impl std::fmt::Debug for AmqpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl AmqpTarget {
    pub fn new(
        url: &str,
        password: Option<&str>,
        password_file: Option<&Path>,
    ) -> Result<Self, AmqpError> {
        let mut uri: AMQPUri = url.parse().map_err(|reason: String| AmqpError::BadUrl {
            url: redact_url(url),
            reason,
        })?;
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            uri.authority.userinfo.password = password.to_owned();
        }
        if let Some(path) = password_file {
            let secret =
                std::fs::read_to_string(path).map_err(|source| AmqpError::PasswordFile {
                    path: path.display().to_string(),
                    source,
                })?;
            uri.authority.userinfo.password = secret.trim_end_matches(['\n', '\r']).to_owned();
        }
        Ok(Self { uri })
    }

    /// The parsed URL, password included: for clients that speak AMQP themselves
    /// ([`super::quarantine`]). Never print it.
    pub(crate) fn uri(&self) -> &AMQPUri {
        &self.uri
    }

    /// `amqp://user@host:port/vhost`: safe to print anywhere.
    pub fn redacted(&self) -> String {
        let scheme = match self.uri.scheme {
            lapin::uri::AMQPScheme::AMQP => "amqp",
            lapin::uri::AMQPScheme::AMQPS => "amqps",
        };
        let vhost = if self.uri.vhost == "/" {
            "%2f".to_owned()
        } else {
            self.uri.vhost.clone()
        };
        format!(
            "{scheme}://{}@{}:{}/{vhost}",
            self.uri.authority.userinfo.username, self.uri.authority.host, self.uri.authority.port
        )
    }

    /// Opens a connection named after the client, so operators can tell ours apart in
    /// the management UI; gives up after `timeout` (a peer that accepts and never speaks
    /// must not hang the caller).
    pub async fn connect(
        &self,
        client_name: &str,
        timeout: Duration,
    ) -> Result<Connection, AmqpError> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let name = format!("{client_name}@{} pid {}", host.trim(), std::process::id());
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        match tokio::time::timeout(
            timeout,
            Connection::connect_uri(self.uri.clone(), properties),
        )
        .await
        {
            Ok(connected) => connected.map_err(|source| AmqpError::Connect {
                url: self.redacted(),
                source,
            }),
            Err(_) => Err(AmqpError::ConnectTimeout {
                url: self.redacted(),
                timeout,
            }),
        }
    }
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
        let target = AmqpTarget::new("amqp://app:s3cret@broker:5673/%2f", None, None).unwrap();
        assert_eq!(target.redacted(), "amqp://app@broker:5673/%2f");
        assert!(!format!("{target:?}").contains("s3cret"));
    }

    #[test]
    fn password_sources_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "fromfile\n").unwrap();
        let t = AmqpTarget::new("amqp://u:url@h:1/%2f", Some("explicit"), None).unwrap();
        assert_eq!(t.uri.authority.userinfo.password, "explicit");
        let t = AmqpTarget::new("amqp://u:url@h:1/%2f", Some("explicit"), Some(&file)).unwrap();
        assert_eq!(t.uri.authority.userinfo.password, "fromfile");
        let t = AmqpTarget::new("amqp://u:url@h:1/%2f", Some(""), None).unwrap();
        assert_eq!(t.uri.authority.userinfo.password, "url");
    }

    #[test]
    fn missing_password_file_is_named() {
        let err = AmqpTarget::new(DEFAULT_AMQP_URL, None, Some("/nonexistent/pw".as_ref()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/pw"), "{err}");
    }

    #[test]
    fn bad_url_error_hides_password() {
        let err = AmqpTarget::new("amqp://u:topsecret@host:notaport/", None, None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("topsecret"), "{err}");
        assert!(err.contains("u:***@host"), "{err}");
    }
}
