//! gRPC over TLS end to end: the real `labmq-server` with certificates made by the test
//! (tests/support/certs.rs), `labmq-call` and tonic clients over TCP on 127.0.0.1.
//! TLS and mTLS, health and reflection on the TLS listener, the wrong CA, a plaintext
//! client against a TLS server and the reverse (fast, one line), `--check-config` refusing
//! bad files (naming the key), and a certificate rotated by SIGHUP.

#[path = "support/certs.rs"]
mod certs;
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certs::{Ca, Pair};
use rustls_pki_types::pem::PemObject;
use support::{
    CALL_BIN, COMMAND_TIMEOUT, SERVER_BIN, Server, ServerOptions, isolated_command, output_within,
    send_signal,
};
use tempfile::TempDir;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A plaintext/TLS mismatch must be reported well before any of the client's timeouts.
const FAST: Duration = Duration::from_secs(10);

fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

fn tls_config(pair: &Pair, client_ca: Option<&Path>) -> String {
    let mut config = format!(
        "tls_cert_file = {}\ntls_key_file = {}\n",
        toml_path(&pair.cert),
        toml_path(&pair.key)
    );
    if let Some(ca) = client_ca {
        config.push_str(&format!("tls_client_ca_file = {}\n", toml_path(ca)));
    }
    config
}

fn start_tls(pair: &Pair, client_ca: Option<&Path>) -> Server {
    ServerOptions::with_config(&tls_config(pair, client_ca)).start()
}

fn https(server: &Server) -> String {
    format!("https://localhost:{}", server.addr.port())
}

fn call(args: &[&str]) -> (Option<i32>, String, String, Duration) {
    let mut command = isolated_command(CALL_BIN, &[] as &[(&str, &str)]);
    command.args(args);
    let started = Instant::now();
    let output = output_within(command, COMMAND_TIMEOUT);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed(),
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary path")
}

struct Pki {
    dir: TempDir,
    ca: Ca,
    ca_file: std::path::PathBuf,
    server: Pair,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("temporary directory for certificates");
    let ca = Ca::new("labmq test CA");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let server = ca.server(dir.path(), "server-one");
    Pki {
        dir,
        ca,
        ca_file,
        server,
    }
}

#[test]
fn call_over_tls_works() {
    let pki = pki();
    let server = start_tls(&pki.server, None);
    let (code, out, err, _) = call(&[
        "--server",
        &https(&server),
        "--grpc-ca",
        path_str(&pki.ca_file),
        "fact:5",
        "upper:tls",
    ]);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("fact:5 => 120"), "{out}");
    assert!(
        out.contains("upper:tls => Processed by server: TLS"),
        "{out}"
    );
    // A bare host:port is https once a CA is given.
    let (code, out, err, _) = call(&[
        "--server",
        &format!("localhost:{}", server.addr.port()),
        "--grpc-ca",
        path_str(&pki.ca_file),
        "fact:3",
    ]);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("fact:3 => 6"), "{out}");
}

#[tokio::test]
async fn health_and_reflection_are_served_over_tls() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let pki = pki();
    let server = start_tls(&pki.server, None);
    let ca = std::fs::read(&pki.ca_file).expect("read CA");
    let channel = Endpoint::from_shared(https(&server))
        .expect("endpoint")
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        .expect("TLS config")
        .connect()
        .await
        .expect("TLS connection");
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "message.MessageService".into(),
        })
        .await
        .expect("health check over TLS")
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection over TLS")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list: {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"message.MessageService"), "{names:?}");

    // The older protocol version, as grpcio-reflection and older grpcurl builds speak it.
    use tonic_reflection::pb::v1alpha;
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection over TLS")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("v1alpha reflection answer")
        .expect("one answer");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("not a service list: {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"message.MessageService"), "{names:?}");
}

#[test]
fn wrong_ca_is_refused() {
    let pki = pki();
    let server = start_tls(&pki.server, None);
    let other = Ca::new("some other CA");
    let other_file = other.write(pki.dir.path(), "other-ca.crt");
    let (code, out, err, took) = call(&[
        "--server",
        &https(&server),
        "--grpc-ca",
        path_str(&other_file),
        "fact:5",
    ]);
    assert_eq!(code, Some(3), "stdout: {out}\nstderr: {err}");
    assert!(!out.contains("=> 120"), "{out}");
    assert!(err.contains("certificate"), "names the certificate: {err}");
    eprintln!("measured: wrong CA: {took:?}, stderr {err:?}");
    assert!(took < FAST, "took {took:?}");
}

#[test]
fn mtls_refuses_a_client_without_certificate_and_accepts_one_with() {
    let pki = pki();
    let client_ca = Ca::new("labmq client CA");
    let client_ca_file = client_ca.write(pki.dir.path(), "client-ca.crt");
    let server = start_tls(&pki.server, Some(&client_ca_file));

    let (code, out, err, took) = call(&[
        "--server",
        &https(&server),
        "--grpc-ca",
        path_str(&pki.ca_file),
        "fact:5",
    ]);
    assert_eq!(
        code,
        Some(3),
        "no client cert: stdout: {out}\nstderr: {err}"
    );
    assert!(!out.contains("=> 120"), "{out}");
    assert!(took < FAST, "took {took:?}");
    eprintln!("measured: no client cert: {took:?}, stdout {out:?}, stderr {err:?}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("client certificate"), "{err}");

    // A certificate from a CA the server does not trust for clients is refused too.
    let stranger = pki.ca.client(pki.dir.path(), "stranger");
    let (code, out, err, _) = call(&[
        "--server",
        &https(&server),
        "--grpc-ca",
        path_str(&pki.ca_file),
        "--grpc-cert",
        path_str(&stranger.cert),
        "--grpc-key",
        path_str(&stranger.key),
        "fact:5",
    ]);
    assert_eq!(
        code,
        Some(3),
        "untrusted client cert: stdout: {out}\nstderr: {err}"
    );

    let client = client_ca.client(pki.dir.path(), "consumer-one");
    let (code, out, err, _) = call(&[
        "--server",
        &https(&server),
        "--grpc-ca",
        path_str(&pki.ca_file),
        "--grpc-cert",
        path_str(&client.cert),
        "--grpc-key",
        path_str(&client.key),
        "fact:5",
    ]);
    assert_eq!(
        code,
        Some(0),
        "with client cert: stdout: {out}\nstderr: {err}"
    );
    assert!(out.contains("fact:5 => 120"), "{out}");
}

#[test]
fn plaintext_client_against_tls_server_fails_fast_with_one_line() {
    let pki = pki();
    let server = start_tls(&pki.server, None);
    let (code, out, err, took) = call(&[
        "--server",
        &format!("http://127.0.0.1:{}", server.addr.port()),
        "fact:5",
    ]);
    assert_eq!(code, Some(3), "stdout: {out}\nstderr: {err}");
    assert!(took < FAST, "took {took:?}");
    eprintln!("measured: {took:?}, stdout {out:?}, stderr {err:?}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("TLS"), "says TLS: {err}");
}

#[test]
fn tls_client_against_plaintext_server_fails_fast_with_one_line() {
    let pki = pki();
    let server = support::spawn_server("");
    let (code, out, err, took) = call(&[
        "--server",
        &https(&server),
        "--grpc-ca",
        path_str(&pki.ca_file),
        "fact:5",
    ]);
    assert_eq!(code, Some(3), "stdout: {out}\nstderr: {err}");
    assert!(took < FAST, "took {took:?}");
    eprintln!("measured: {took:?}, stdout {out:?}, stderr {err:?}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("TLS"), "says TLS: {err}");
}

/// `labmq-server --check-config` with `config`: its exit code and stderr.
fn check_config(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("server.toml");
    std::fs::write(&path, config).expect("write config");
    let mut command = isolated_command(SERVER_BIN, &[] as &[(&str, &str)]);
    command.arg("--config").arg(&path).arg("--check-config");
    let output = output_within(command, COMMAND_TIMEOUT);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_good_files() {
    let pki = pki();
    let client_ca = pki.ca.write(pki.dir.path(), "clients.crt");
    let (code, err) = check_config(&tls_config(&pki.server, Some(&client_ca)));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn check_config_refuses_a_missing_file_naming_the_key() {
    let pki = pki();
    let missing = Pair {
        cert: pki.dir.path().join("absent.crt"),
        key: pki.server.key.clone(),
    };
    let (code, err) = check_config(&tls_config(&missing, None));
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("tls_cert_file") && err.contains("absent.crt"),
        "{err}"
    );

    let (code, err) = check_config(&tls_config(
        &pki.server,
        Some(&pki.dir.path().join("no-ca.crt")),
    ));
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("tls_client_ca_file"), "{err}");

    // One of the pair alone is a mistake, not plaintext.
    let (code, err) = check_config(&format!(
        "tls_cert_file = {}\n",
        toml_path(&pki.server.cert)
    ));
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("tls_key_file"), "{err}");
}

#[test]
fn check_config_refuses_a_key_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let pki = pki();
    for mode in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(&pki.server.key, std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        let (code, err) = check_config(&tls_config(&pki.server, None));
        assert_eq!(code, Some(78), "mode {mode:o}: {err}");
        assert!(err.contains("tls_key_file"), "{err}");
        assert!(err.contains(&format!("{mode:o}")), "{err}");
    }
    std::fs::set_permissions(&pki.server.key, std::fs::Permissions::from_mode(0o400))
        .expect("chmod");
    let (code, err) = check_config(&tls_config(&pki.server, None));
    assert_eq!(code, Some(0), "mode 400 is fine: {err}");
}

#[test]
fn check_config_refuses_a_key_that_does_not_match_the_certificate() {
    let pki = pki();
    let other = pki.ca.server(pki.dir.path(), "server-two");
    let mismatched = Pair {
        cert: pki.server.cert.clone(),
        key: other.key,
    };
    let (code, err) = check_config(&tls_config(&mismatched, None));
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("tls_key_file") && err.contains("does not match"),
        "{err}"
    );
}

#[test]
fn check_config_refuses_an_expired_certificate() {
    let pki = pki();
    let expired = pki.ca.expired_server(pki.dir.path(), "old-server");
    let (code, err) = check_config(&tls_config(&expired, None));
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("tls_cert_file") && err.contains("expired"),
        "{err}"
    );
}

/// The common name of the certificate the server at `port` presents to a new connection.
async fn served_common_name(port: u16, ca_file: &Path) -> String {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(ca_file).expect("read CA");
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("CA PEM")).expect("add root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("TCP connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (_, session) = tls.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .expect("the server's certificate");
    certs::common_name(leaf.as_ref())
}

#[tokio::test]
async fn sighup_serves_a_rotated_certificate_to_new_connections() {
    let pki = pki();
    let server = start_tls(&pki.server, None);
    let port = server.addr.port();
    assert_eq!(served_common_name(port, &pki.ca_file).await, "server-one");

    // Rotate in place, as certbot or an operator would: same paths, new contents.
    let rotated = pki.ca.server(pki.dir.path(), "server-rotated");
    std::fs::copy(&rotated.cert, &pki.server.cert).expect("replace certificate");
    certs::write_key(
        &pki.server.key,
        &std::fs::read_to_string(&rotated.key).expect("read new key"),
    );
    assert_eq!(
        certs::common_name_of_pem(&std::fs::read(&pki.server.cert).expect("read")),
        "server-rotated"
    );
    send_signal(server.daemon.pid(), libc::SIGHUP);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let name = served_common_name(port, &pki.ca_file).await;
        if name == "server-rotated" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still serving {name} 10 s after SIGHUP\n{}",
            server.daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Same process, still serving calls over the new certificate.
    let (code, out, err, _) = call(&[
        "--server",
        &https(&server),
        "--grpc-ca",
        path_str(&pki.ca_file),
        "fact:4",
    ]);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("fact:4 => 24"), "{out}");

    // A broken rotation (key that does not match) keeps the running certificate.
    let third = pki.ca.server(pki.dir.path(), "server-three");
    std::fs::copy(&third.cert, &pki.server.cert).expect("replace certificate only");
    send_signal(server.daemon.pid(), libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.daemon.stderr().contains("TLS reload failed") {
        assert!(Instant::now() < deadline, "{}", server.daemon.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        served_common_name(port, &pki.ca_file).await,
        "server-rotated"
    );
}

#[test]
fn consumer_computes_through_a_server_that_requires_mtls() {
    use support::amqp::{ConsumerSetup, produce};
    use support::rabbit::SHARED_AMQP_URL;
    let pki = pki();
    let client_ca = Ca::new("labmq client CA");
    let client_ca_file = client_ca.write(pki.dir.path(), "client-ca.crt");
    let server = start_tls(&pki.server, Some(&client_ca_file));
    let client = client_ca.client(pki.dir.path(), "consumer-one");
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[https(&server)]).with_extra(&format!(
        "grpc_ca_file = {}\ngrpc_cert_file = {}\ngrpc_key_file = {}\n",
        toml_path(&pki.ca_file),
        toml_path(&client.cert),
        toml_path(&client.key)
    ));
    let _consumer = setup.start();
    let (code, stdout, stderr) = produce(
        SHARED_AMQP_URL,
        &["--queue", &setup.queue, "--wait", "fact:6", "upper:mtls"],
        "",
    );
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        vec!["fact:6 => 720", "upper:mtls => Processed by server: MTLS"]
    );
}

#[test]
fn consumer_check_config_names_its_grpc_tls_keys() {
    use std::os::unix::fs::PermissionsExt;
    use support::amqp::ConsumerSetup;
    use support::rabbit::SHARED_AMQP_URL;
    let pki = pki();
    let client = pki.ca.client(pki.dir.path(), "consumer-one");
    let check = |setup: &ConsumerSetup| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("consumer.toml");
        std::fs::write(&path, setup.toml()).expect("write config");
        let mut command = isolated_command(support::amqp::CONSUMER_BIN, &[] as &[(&str, &str)]);
        command.arg("--config").arg(&path).arg("--check-config");
        let output = output_within(command, COMMAND_TIMEOUT);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let https_target = vec!["https://localhost:50051".to_owned()];

    let no_ca = ConsumerSetup::new(SHARED_AMQP_URL, &https_target);
    let (code, err) = check(&no_ca);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("grpc_ca_file"), "{err}");

    let files = format!(
        "grpc_ca_file = {}\ngrpc_cert_file = {}\ngrpc_key_file = {}\n",
        toml_path(&pki.ca_file),
        toml_path(&client.cert),
        toml_path(&client.key)
    );
    let good = ConsumerSetup::new(SHARED_AMQP_URL, &https_target).with_extra(&files);
    let (code, err) = check(&good);
    assert_eq!(code, Some(0), "{err}");

    std::fs::set_permissions(&client.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, err) = check(&good);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("grpc_key_file") && err.contains("644"),
        "{err}"
    );
}
