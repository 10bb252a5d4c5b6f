//! AMQP connection settings: the URL, a password kept out of it, redaction for logs.

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use super::BrokerError;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

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
        password_file: Option<&std::path::Path>,
    ) -> Result<Self, BrokerError> {
        let mut uri: AMQPUri = url.parse().map_err(|message: String| BrokerError::BadUrl {
            url: redact_url(url),
            message,
        })?;
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            uri.authority.userinfo.password = password.to_owned();
        }
        if let Some(path) = password_file {
            let secret = std::fs::read_to_string(path).map_err(|e| BrokerError::PasswordFile {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            uri.authority.userinfo.password = secret.trim_end_matches(['\n', '\r']).to_owned();
        }
        Ok(Self { uri })
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
    /// the management UI.
    pub async fn connect(&self, client_name: &str) -> Result<Connection, BrokerError> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let name = format!("{client_name}@{} pid {}", host.trim(), std::process::id());
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        Connection::connect_uri(self.uri.clone(), properties)
            .await
            .map_err(|e| BrokerError::Connect {
                url: self.redacted(),
                message: scrub(&e.to_string(), &self.uri.authority.userinfo.password),
            })
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

/// Defence in depth: a library error should never echo the password, but if it does,
/// it is cut out before the message reaches a log.
fn scrub(message: &str, password: &str) -> String {
    if password.len() < 3 {
        return message.to_owned();
    }
    message.replace(password, "***")
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
