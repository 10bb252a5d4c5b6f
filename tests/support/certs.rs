#![allow(dead_code)] // Each test crate that includes this file uses some of it.

//! Test certificates made in-process with rcgen: a CA, server certificates for
//! `localhost`/127.0.0.1 (optionally expired), client certificates, written as PEM files
//! with keys of mode 600, as labmq expects them under /etc/labmq/tls/.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// A certificate authority that can sign server and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// The PEM files of one certificate and its key.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate to `dir/name` and returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).expect("write CA certificate");
        path
    }

    /// A server certificate for localhost and 127.0.0.1 with common name `cn`.
    pub fn server(&self, dir: &Path, cn: &str) -> Pair {
        self.issue(dir, cn, true, false)
    }

    /// A server certificate for the address 127.0.0.1 only (no host name): connecting by
    /// `localhost` is a host name mismatch.
    pub fn server_ip_only(&self, dir: &Path, cn: &str) -> Pair {
        self.issue_for(dir, cn, &[], true, false)
    }

    /// As [`Ca::server`], but its validity ended in 2020.
    pub fn expired_server(&self, dir: &Path, cn: &str) -> Pair {
        self.issue(dir, cn, true, true)
    }

    /// A client certificate with common name `cn`.
    pub fn client(&self, dir: &Path, cn: &str) -> Pair {
        self.issue(dir, cn, false, false)
    }

    fn issue(&self, dir: &Path, cn: &str, server: bool, expired: bool) -> Pair {
        self.issue_for(dir, cn, &["localhost"], server, expired)
    }

    fn issue_for(&self, dir: &Path, cn: &str, names: &[&str], server: bool, expired: bool) -> Pair {
        let names = names
            .iter()
            .map(|name| (*name).to_owned())
            .collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let pair = Pair {
            cert: dir.join(format!("{cn}.crt")),
            key: dir.join(format!("{cn}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write certificate");
        write_key(&pair.key, &key.serialize_pem());
        pair
    }
}

/// Writes a private key with mode 600 (replacing any file there).
pub fn write_key(path: &Path, pem: &str) {
    std::fs::write(path, pem).expect("write key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// The common name of the first certificate in a PEM file.
pub fn common_name_of_pem(pem: &[u8]) -> String {
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .expect("a certificate")
        .expect("valid PEM");
    common_name(der.as_ref())
}

/// The common name of a DER certificate.
pub fn common_name(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("X.509");
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned()
}

use rustls_pki_types::pem::PemObject;
