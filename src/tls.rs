//! PEM certificates and keys for TLS (rustls, no OpenSSL), for gRPC and for AMQP: loading
//! them, the checks `--check-config` makes (file present, key not readable by others, key
//! matching its certificate, certificate not expired), and the rustls configurations built
//! from them. Every error names the configuration key whose file was wrong.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{key}: {path} is readable by group or others (mode {mode:o}); \
         a private key must be readable only by its owner (chmod 600)"
    )]
    KeyReadableByOthers {
        key: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{key}: {path} holds no PEM certificate")]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("{key}: {path} holds no PEM private key: {detail}")]
    NoKey {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{key}: {path} is not a valid X.509 certificate: {detail}")]
    BadCertificate {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{key}: the certificate in {path} expired on {not_after}")]
    Expired {
        key: &'static str,
        path: PathBuf,
        not_after: String,
    },
    #[error("{key}: the certificate in {path} is not valid before {not_before}")]
    NotYetValid {
        key: &'static str,
        path: PathBuf,
        not_before: String,
    },
    #[error(
        "{key_key}: the key in {key_path} does not match the certificate in {cert_path} ({cert_key})"
    )]
    Mismatch {
        key_key: &'static str,
        key_path: PathBuf,
        cert_key: &'static str,
        cert_path: PathBuf,
    },
    #[error("{key}: {detail}")]
    Rustls { key: &'static str, detail: String },
}

/// A PEM file named by a configuration key, so that errors can name the key.
#[derive(Debug, Clone, Copy)]
pub struct KeyedPath<'a> {
    pub key: &'static str,
    pub path: &'a Path,
}

fn read(file: KeyedPath<'_>) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file.path).map_err(|source| TlsError::Read {
        key: file.key,
        path: file.path.to_owned(),
        source,
    })
}

/// The certificates of `file` (a chain: the leaf first), each checked to be in its
/// validity period now.
pub fn load_certs(file: KeyedPath<'_>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            key: file.key,
            path: file.path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key: file.key,
            path: file.path.to_owned(),
        });
    }
    for cert in &certs {
        check_validity(file, cert)?;
    }
    Ok(certs)
}

fn check_validity(file: KeyedPath<'_>, cert: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
        TlsError::BadCertificate {
            key: file.key,
            path: file.path.to_owned(),
            detail: e.to_string(),
        }
    })?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if validity.not_after < now {
        return Err(TlsError::Expired {
            key: file.key,
            path: file.path.to_owned(),
            not_after: validity.not_after.to_string(),
        });
    }
    if validity.not_before > now {
        return Err(TlsError::NotYetValid {
            key: file.key,
            path: file.path.to_owned(),
            not_before: validity.not_before.to_string(),
        });
    }
    Ok(())
}

/// The private key of `file`, refused if anyone but its owner may read the file: a key
/// others can read is as good as published.
pub fn load_key(file: KeyedPath<'_>) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_private_mode(file)?;
    let pem = read(file)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::NoKey {
        key: file.key,
        path: file.path.to_owned(),
        detail: e.to_string(),
    })
}

fn check_private_mode(file: KeyedPath<'_>) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file.path).map_err(|source| TlsError::Read {
        key: file.key,
        path: file.path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyReadableByOthers {
            key: file.key,
            path: file.path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// A certificate chain and its key, checked to belong together.
pub fn load_pair(
    cert: KeyedPath<'_>,
    key: KeyedPath<'_>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = load_certs(cert)?;
    let private = load_key(key)?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| TlsError::NoKey {
            key: key.key,
            path: key.path.to_owned(),
            detail: e.to_string(),
        })?;
    CertifiedKey::new(certs.clone(), signing)
        .keys_match()
        .map_err(|_| TlsError::Mismatch {
            key_key: key.key,
            key_path: key.path.to_owned(),
            cert_key: cert.key,
            cert_path: cert.path.to_owned(),
        })?;
    Ok((certs, private))
}

fn roots(ca: KeyedPath<'_>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(ca)? {
        store.add(cert).map_err(|e| TlsError::BadCertificate {
            key: ca.key,
            path: ca.path.to_owned(),
            detail: e.to_string(),
        })?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: its certificate and key, and with `client_ca` a client certificate
/// signed by that CA is required (mTLS). ALPN offers h2 only: gRPC needs HTTP/2.
pub fn server_config(
    cert: KeyedPath<'_>,
    key: KeyedPath<'_>,
    client_ca: Option<KeyedPath<'_>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let (certs, private) = load_pair(cert, key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls {
            key: cert.key,
            detail: e.to_string(),
        })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Rustls {
                        key: ca.key,
                        detail: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, private)
        .map_err(|e| TlsError::Rustls {
            key: key.key,
            detail: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The client side as tonic takes it: the CA that signs the server's certificate, and
/// optionally this client's own certificate and key for mTLS. The files are checked here
/// (tonic would only complain at the first connection).
pub fn client_config(
    ca: KeyedPath<'_>,
    identity: Option<(KeyedPath<'_>, KeyedPath<'_>)>,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    roots(ca)?;
    let mut config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = identity {
        load_pair(cert, key)?;
        config = config.identity(tonic::transport::Identity::from_pem(
            read(cert)?,
            read(key)?,
        ));
    }
    Ok(config)
}

/// A rustls client configuration (for AMQP over TLS): the server's certificate must chain
/// to a CA of `ca` (or, without it, to the system's roots, whose absence is reported
/// against `ca_key`) and be valid for the host name connected to; with `identity` this
/// client presents its own certificate (mutual TLS, RabbitMQ's EXTERNAL login).
pub fn client_rustls_config(
    ca_key: &'static str,
    ca: Option<&Path>,
    identity: Option<(KeyedPath<'_>, KeyedPath<'_>)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let store = match ca {
        Some(path) => roots(KeyedPath { key: ca_key, path })?,
        None => system_roots(ca_key)?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls {
            key: ca_key,
            detail: e.to_string(),
        })?
        .with_root_certificates(store);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let (certs, private) = load_pair(cert, key)?;
            builder
                .with_client_auth_cert(certs, private)
                .map_err(|e| TlsError::Rustls {
                    key: key.key,
                    detail: e.to_string(),
                })
        }
    }
}

/// The system's CA certificates (Debian/Ubuntu: /etc/ssl/certs, from ca-certificates).
fn system_roots(ca_key: &'static str) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(TlsError::Rustls {
            key: ca_key,
            detail: format!(
                "unset, and no system CA certificates were found ({}); install \
                 ca-certificates or set {ca_key} to the CA that signs the broker's certificate",
                if errors.is_empty() {
                    "none readable".to_owned()
                } else {
                    errors.join("; ")
                }
            ),
        });
    }
    Ok(store)
}

/// Checks the files of optional `*_cert_file`/`*_key_file`/CA keys: both or neither of the
/// pair; then each file as [`load_pair`] and [`load_certs`] read them.
pub fn check_files<'a>(
    cert: (&'static str, Option<&'a Path>),
    key: (&'static str, Option<&'a Path>),
    ca: (&'static str, Option<&'a Path>),
) -> Result<(), crate::daemon::service::ConfigError> {
    use crate::daemon::service::invalid;
    fn named<'a>((key, path): (&'static str, Option<&'a Path>)) -> Option<KeyedPath<'a>> {
        path.map(|path| KeyedPath { key, path })
    }
    match (named(cert), named(key)) {
        (Some(c), Some(k)) => {
            load_pair(c, k).or_else(|e| refuse(&e))?;
        }
        (Some(_), None) => return invalid(key.0, format!("must be set with {}", cert.0)),
        (None, Some(_)) => return invalid(cert.0, format!("must be set with {}", key.0)),
        (None, None) => {}
    }
    if let Some(ca) = named(ca) {
        roots(ca).or_else(|e| refuse(&e))?;
    }
    Ok(())
}

/// A path key's value, `None` when empty (the key is unset).
pub fn configured(path: &Path) -> Option<&Path> {
    (!path.as_os_str().is_empty()).then_some(path)
}

/// `Err(Invalid)` naming the key `error` is about (once: the message drops its prefix).
fn refuse<T>(error: &TlsError) -> Result<T, crate::daemon::service::ConfigError> {
    let key = error_key(error);
    let text = error.to_string();
    let message = text
        .strip_prefix(key)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(&text);
    Err(crate::daemon::service::ConfigError::Invalid {
        key,
        message: message.to_owned(),
    })
}

/// The configuration key an error is about.
pub fn error_key(error: &TlsError) -> &'static str {
    match error {
        TlsError::Read { key, .. }
        | TlsError::KeyReadableByOthers { key, .. }
        | TlsError::NoCertificate { key, .. }
        | TlsError::NoKey { key, .. }
        | TlsError::BadCertificate { key, .. }
        | TlsError::Expired { key, .. }
        | TlsError::NotYetValid { key, .. }
        | TlsError::Rustls { key, .. } => key,
        TlsError::Mismatch { key_key, .. } => key_key,
    }
}
