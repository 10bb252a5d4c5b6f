//! AMQP over TLS end to end, on a private RabbitMQ node with a TLS listener that requires a
//! client certificate and offers EXTERNAL (certificates made by the test with rcgen, see
//! tests/support/certs.rs): produce --wait through the consumer and labmq-web over
//! amqps://, EXTERNAL login by client certificate (and the poisoned-message quarantine
//! over it), the wrong CA, a host name the certificate does not list, plaintext/TLS
//! mismatches in both directions (fast, one line, the URL without its password), and
//! `--check-config` refusing bad TLS settings by key.
//!
//! One node serves every test of this file (it starts in about ten seconds); it is
//! stopped when the test binary exits. It is a RabbitMQ 4.0 node (tests/rabbitmq4), the
//! broker people run today.

#[path = "support/certs.rs"]
mod certs;
mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use certs::{Ca, Pair};
use lapin::types::{AMQPValue, FieldTable};
use support::amqp::{CONSUMER_BIN, ConsumerSetup, ResultWatch, produce, unique};
use support::poison::{add_user, publish_raw};
use support::rabbit::{BrokerTls, PrivateBroker, Rabbit};
use support::web::{WEB_BIN, WebSetup};
use support::{COMMAND_TIMEOUT, isolated_command, output_within, spawn_server};

/// The user EXTERNAL logs in as: the common name of its client certificate.
const EXTERNAL_USER: &str = "labmq-tls-client";
/// A plaintext/TLS mismatch must be reported well before this (a hang guard, far above
/// the milliseconds it takes; produce gets a longer connect timeout than this).
const FAST: Duration = Duration::from_secs(30);

struct Fixture {
    broker: PrivateBroker,
    dir: PathBuf,
    ca_file: PathBuf,
    /// A CA that signed nothing the broker has.
    other_ca_file: PathBuf,
    /// Client certificate for PLAIN logins (guest) over TLS.
    client: Pair,
    /// Client certificate whose common name is [`EXTERNAL_USER`].
    external: Pair,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

extern "C" fn stop_fixture() {
    if let Some(fixture) = FIXTURE.get() {
        let _ = std::panic::catch_unwind(|| fixture.broker.shutdown());
        let _ = std::fs::remove_dir_all(&fixture.dir);
    }
}

/// The node, started on first use. Its certificate lists 127.0.0.1 only (no host name),
/// so `amqps://localhost:…` is a host name mismatch.
fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir()
            .expect("temporary directory for certificates")
            .keep();
        let ca = Ca::new("labmq amqp test CA");
        let ca_file = ca.write(&dir, "ca.crt");
        let other_ca_file = Ca::new("some other CA").write(&dir, "other-ca.crt");
        let server = ca.server_ip_only(&dir, "rabbit-tls");
        let client = ca.client(&dir, "guest-client");
        let external = ca.client(&dir, EXTERNAL_USER);
        let broker = PrivateBroker::start_tls(
            Rabbit::V4_0,
            &BrokerTls {
                ca: &ca_file,
                cert: &server.cert,
                key: &server.key,
                require_client_cert: true,
                external: true,
            },
        );
        add_user(&broker, EXTERNAL_USER, &unique("unused-password"));
        // SAFETY: registers a plain function, run once at exit.
        unsafe { libc::atexit(stop_fixture) };
        Fixture {
            broker,
            dir,
            ca_file,
            other_ca_file,
            client,
            external,
        }
    })
}

fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// Config lines for the CA and a client certificate.
fn tls_keys(ca: &Path, client: &Pair) -> String {
    format!(
        "amqp_ca_file = {}\namqp_cert_file = {}\namqp_key_file = {}\n",
        toml_path(ca),
        toml_path(&client.cert),
        toml_path(&client.key)
    )
}

fn tls_flags<'a>(ca: &'a Path, client: &'a Pair) -> Vec<&'a str> {
    vec![
        "--amqp-ca",
        ca.to_str().expect("UTF-8 path"),
        "--amqp-cert",
        client.cert.to_str().expect("UTF-8 path"),
        "--amqp-key",
        client.key.to_str().expect("UTF-8 path"),
    ]
}

/// `amqps://` to the node by 127.0.0.1, logging in as guest (PLAIN).
fn tls_url(f: &Fixture) -> String {
    f.broker.tls_url("127.0.0.1")
}

/// `amqps://` to the node by 127.0.0.1, logging in by client certificate.
fn external_url(f: &Fixture) -> String {
    let port = f.broker.tls_port.expect("TLS port");
    format!("amqps://127.0.0.1:{port}/%2f?auth_mechanism=external")
}

/// Runs labmq-produce; returns (exit code, stdout, stderr, how long it took).
fn timed_produce(url: &str, args: &[&str]) -> (i32, String, String, Duration) {
    let started = Instant::now();
    let (code, out, err) = produce(url, args, "");
    (code, out, err, started.elapsed())
}

fn sorted_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines
}

#[test]
fn produce_wait_through_the_consumer_over_amqps() {
    let f = fixture();
    let server = spawn_server("");
    let url = tls_url(f);
    let setup =
        ConsumerSetup::new(&url, &[server.url()]).with_extra(&tls_keys(&f.ca_file, &f.client));
    let mut consumer = setup.start();
    let mut args = vec!["--queue", &setup.queue, "--wait", "fact:6", "upper:tls"];
    args.extend(tls_flags(&f.ca_file, &f.client));
    let (code, out, err, _) = timed_produce(&url, &args);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(
        sorted_lines(&out),
        ["fact:6 => 720", "upper:tls => Processed by server: TLS"]
    );
    let port = f.broker.tls_port.expect("TLS port");
    let log = consumer.stderr();
    assert!(
        log.contains(&format!("amqps://guest@127.0.0.1:{port}/%2f")),
        "the consumer names the amqps node it serves from: {log}"
    );
    consumer.stop(COMMAND_TIMEOUT);
}

#[test]
fn web_submits_and_stores_results_over_amqps() {
    let f = fixture();
    let server = spawn_server("");
    let url = tls_url(f);
    let keys = tls_keys(&f.ca_file, &f.client);
    let consumer_setup = ConsumerSetup::new(&url, &[server.url()]).with_extra(&keys);
    let _consumer = consumer_setup.start();
    let mut web_setup = WebSetup::for_consumer(&consumer_setup);
    web_setup.extra = keys;
    let web = web_setup.start_healthy();
    let ids = web.submit_ok(&["fact:5", "upper:web"]);
    let results = web.wait_results(&ids, Duration::from_secs(30));
    let texts: Vec<String> = ids.iter().map(|id| results[id].to_string()).collect();
    assert!(texts[0].contains("120"), "{texts:?}");
    assert!(texts[1].contains("WEB"), "{texts:?}");
}

#[test]
fn external_login_by_client_certificate_runs_the_pipeline() {
    let f = fixture();
    let server = spawn_server("");
    let url = external_url(f);
    let setup =
        ConsumerSetup::new(&url, &[server.url()]).with_extra(&tls_keys(&f.ca_file, &f.external));
    let _consumer = setup.start();
    let mut args = vec!["--queue", &setup.queue, "--wait", "fact:4"];
    args.extend(tls_flags(&f.ca_file, &f.external));
    let (code, out, err, _) = timed_produce(&url, &args);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "fact:4 => 24");
    // The broker saw the certificate's name as the user, and no password.
    let listed = f
        .broker
        .ctl(&["list_connections", "user", "auth_mechanism"]);
    assert!(
        listed
            .lines()
            .any(|line| line.contains(EXTERNAL_USER) && line.contains("EXTERNAL")),
        "{listed}"
    );
}

#[test]
fn unparsable_message_is_quarantined_over_amqps_with_external_login() {
    let f = fixture();
    let server = spawn_server("");
    let url = external_url(f);
    let setup =
        ConsumerSetup::new(&url, &[server.url()]).with_extra(&tls_keys(&f.ca_file, &f.external));
    let watch = ResultWatch::start(&f.broker.url(), &setup.results_exchange);
    watch
        .amqp
        .declare_queue(&setup.queue, FieldTable::default());
    let mut consumer = setup.start();
    publish_raw(f.broker.port, &setup.queue, b"bad-\xff\xfe-id", b"fact:4");
    let good: Vec<String> = (0..5)
        .map(|i| {
            let id = format!("good-after-{i}");
            watch.amqp.publish(
                &setup.queue,
                format!("fact:{}", i + 3).as_bytes(),
                lapin::BasicProperties::default().with_message_id(id.as_str().into()),
            );
            id
        })
        .collect();
    let seen = watch.counter.wait_for_all(&good, Duration::from_secs(60));
    assert_eq!(seen.len(), good.len());
    let dead_queue = format!("{}.dead", setup.queue);
    let deadline = Instant::now() + Duration::from_secs(30);
    while watch.amqp.ready_count(&dead_queue) < 1 {
        assert!(
            Instant::now() < deadline,
            "no dead letter: {}",
            consumer.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let dead = watch.amqp.drain(&dead_queue);
    assert_eq!(dead.len(), 1);
    let code = dead[0]
        .1
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-labmq-error-code").cloned());
    assert!(
        matches!(&code, Some(AMQPValue::LongString(s)) if s.to_string() == "UNPARSABLE_PROPERTIES"),
        "{code:?}"
    );
    let log = consumer.stderr();
    assert!(
        !log.contains("could not take the unparsable message off the queue"),
        "{log}"
    );
    consumer.stop(COMMAND_TIMEOUT);
}

/// A refused connection: exit 3, one line on stderr naming the URL without its password.
fn assert_one_clear_line(code: i32, err: &str, took: Duration, url_shown: &str, says: &[&str]) {
    eprintln!("measured: {took:?}, stderr {err:?}");
    assert_eq!(code, 3, "{err}");
    assert!(took < FAST, "took {took:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(url_shown), "names {url_shown}: {err}");
    assert!(!err.contains("guest:guest"), "no password: {err}");
    for needle in says {
        assert!(err.contains(needle), "says {needle:?}: {err}");
    }
}

#[test]
fn wrong_ca_fails_with_one_clear_line() {
    let f = fixture();
    let port = f.broker.tls_port.expect("TLS port");
    let mut args = vec!["--connect-timeout", "60", "fact:1"];
    args.extend(tls_flags(&f.other_ca_file, &f.client));
    let (code, _, err, took) = timed_produce(&tls_url(f), &args);
    assert_one_clear_line(
        code,
        &err,
        took,
        &format!("amqps://guest@127.0.0.1:{port}/%2f"),
        &["not signed by a CA we trust", "amqp_ca_file"],
    );
}

#[test]
fn host_name_the_certificate_does_not_list_fails() {
    let f = fixture();
    let port = f.broker.tls_port.expect("TLS port");
    let mut args = vec!["--connect-timeout", "60", "fact:1"];
    args.extend(tls_flags(&f.ca_file, &f.client));
    let (code, _, err, took) = timed_produce(&f.broker.tls_url("localhost"), &args);
    assert_one_clear_line(
        code,
        &err,
        took,
        &format!("amqps://guest@localhost:{port}/%2f"),
        &["not valid for the host name \"localhost\""],
    );
}

#[test]
fn plaintext_client_against_the_tls_listener_fails_fast_with_one_line() {
    let f = fixture();
    let port = f.broker.tls_port.expect("TLS port");
    assert_plain_client_on_port_is_told(port, &["amqps://"]);
}

#[test]
fn amqps_client_against_the_plaintext_listener_fails_fast_with_one_line() {
    let f = fixture();
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", f.broker.port);
    let mut args = vec!["--connect-timeout", "60", "fact:1"];
    args.extend(tls_flags(&f.ca_file, &f.client));
    let (code, _, err, took) = timed_produce(&url, &args);
    assert_one_clear_line(
        code,
        &err,
        took,
        &format!("amqps://guest@127.0.0.1:{}/%2f", f.broker.port),
        &["does not speak TLS", "amqp://"],
    );
}

/// `labmq-produce` given a plain `amqp://` URL to `port`: one clear line saying `says`.
fn assert_plain_client_on_port_is_told(port: u16, says: &[&str]) {
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let (code, _, err, took) = timed_produce(&url, &["--connect-timeout", "60", "fact:1"]);
    assert_one_clear_line(
        code,
        &err,
        took,
        &format!("amqp://guest@127.0.0.1:{port}/%2f"),
        says,
    );
    assert!(!err.contains("ParserErrors"), "{err}");
}

/// A peer on `127.0.0.1` that answers what a connection sends first with
/// `answer(its first byte)`, then closes cleanly (it reads until the client hangs up, so
/// that unread bytes do not turn its close into a reset); serves `connections`
/// connections.
fn scripted_peer(connections: usize, answer: fn(u8) -> &'static [u8]) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a scripted peer");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut first = [0u8; 4096];
            if let Ok(1..) = stream.read(&mut first) {
                let _ = stream.write_all(answer(first[0]));
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let _ = std::io::copy(&mut stream, &mut std::io::sink());
            }
        }
    });
    port
}

/// A TLS listener may answer the plain AMQP header with a TLS alert record instead of
/// hanging up (RabbitMQ does either); lapin then cannot parse a frame. The probe still
/// finds TLS. The peer is scripted so that the alert, the rarer answer, is certain.
#[test]
fn plaintext_client_answered_with_a_tls_alert_is_told_to_use_amqps() {
    let port = scripted_peer(4, |first| match first {
        // A ClientHello (the probe): the start of a ServerHello record.
        22 => &[22, 3, 3, 0, 0],
        // Anything else: a fatal alert record (protocol_version).
        _ => &[21, 3, 3, 0, 2, 2, 70],
    });
    assert_plain_client_on_port_is_told(port, &["answers in TLS", "amqps://", "no AMQP frame"]);
}

/// A port that speaks another protocol (here HTTP) is named as such, not as a parser's
/// internal error.
#[test]
fn a_port_that_speaks_another_protocol_fails_with_one_clear_line() {
    let port = scripted_peer(4, |_| {
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    });
    assert_plain_client_on_port_is_told(port, &["no AMQP frame", "RabbitMQ AMQP listener"]);
}

/// The consumer keeps retrying a node that refuses it, but says why once, not per try.
#[test]
fn consumer_reconnect_loop_says_why_once_per_outage() {
    let f = fixture();
    let server = spawn_server("");
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", f.broker.port);
    // At debug level each further attempt logs "reconnect attempt failed".
    let keys = format!("{}log_level = \"debug\"\n", tls_keys(&f.ca_file, &f.client));
    let setup = ConsumerSetup::new(&url, &[server.url()]).with_extra(&keys);
    let consumer = setup.spawn();
    let deadline = Instant::now() + FAST;
    // reconnect_max_secs = 1: several attempts within a few seconds.
    while consumer
        .stderr()
        .matches("reconnect attempt failed")
        .count()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "no retries logged: {}",
            consumer.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    consumer.terminate();
    let log = consumer.stderr();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("broker unavailable; reconnecting"))
        .collect();
    eprintln!("measured: {warnings:?}");
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("does not speak TLS"), "{log}");
}

#[test]
fn a_client_without_certificate_is_refused_clearly() {
    let f = fixture();
    let port = f.broker.tls_port.expect("TLS port");
    let args = vec![
        "--connect-timeout",
        "60",
        "--amqp-ca",
        f.ca_file.to_str().expect("UTF-8 path"),
        "fact:1",
    ];
    let (code, _, err, took) = timed_produce(&tls_url(f), &args);
    assert_one_clear_line(
        code,
        &err,
        took,
        &format!("amqps://guest@127.0.0.1:{port}/%2f"),
        &["amqp_cert_file"],
    );
}

/// `--check-config` of `program` (consumer or web) with `toml`: exit code and stderr.
fn check_config(program: &str, toml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml).expect("write config");
    let mut command = isolated_command(program, &[] as &[(&str, &str)]);
    command.arg("--config").arg(&path).arg("--check-config");
    let output = output_within(command, COMMAND_TIMEOUT);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_refuses_bad_amqp_tls_settings_naming_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new("check CA");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let client = ca.client(dir.path(), "checked-client");
    let tls = "amqp_url = \"amqps://u@broker.example:5671/%2f\"\n";
    let external = "amqp_url = \"amqps://broker.example:5671/%2f?auth_mechanism=external\"\n";
    let plain = "amqp_url = [\"amqp://u@a:5672/%2f\", \"amqp://u@b:5672/%2f\"]\n";
    let missing = dir.path().join("missing.crt");
    let expired = ca.expired_server(dir.path(), "expired");
    let other = ca.client(dir.path(), "other-client");
    let mismatched = Pair {
        cert: client.cert.clone(),
        key: other.key.clone(),
    };
    let lax_key = dir.path().join("lax.key");
    std::fs::copy(&client.key, &lax_key).expect("copy key");
    std::fs::set_permissions(&lax_key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let lax = Pair {
        cert: client.cert.clone(),
        key: lax_key,
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{tls}amqp_ca_file = {}\n", toml_path(&missing)),
            "amqp_ca_file",
            "missing.crt",
        ),
        (
            format!("{tls}{}", tls_keys(&ca_file, &lax)),
            "amqp_key_file",
            "640",
        ),
        (
            format!("{tls}{}", tls_keys(&ca_file, &mismatched)),
            "amqp_key_file",
            "does not match",
        ),
        (
            format!("{tls}{}", tls_keys(&ca_file, &expired)),
            "amqp_cert_file",
            "expired",
        ),
        (
            format!("{tls}amqp_cert_file = {}\n", toml_path(&client.cert)),
            "amqp_key_file",
            "must be set with amqp_cert_file",
        ),
        (
            format!("{tls}amqp_key_file = {}\n", toml_path(&client.key)),
            "amqp_cert_file",
            "must be set with amqp_key_file",
        ),
        (
            format!("{plain}amqp_ca_file = {}\n", toml_path(&ca_file)),
            "amqp_ca_file",
            "every amqp_url is plain amqp://",
        ),
        (
            format!("{external}amqp_ca_file = {}\n", toml_path(&ca_file)),
            "amqp_cert_file",
            "auth_mechanism=external",
        ),
        (
            "amqp_url = \"amqp://broker.example:5672/%2f?auth_mechanism=external\"\n".to_owned(),
            "amqp_url",
            "needs amqps://",
        ),
    ];
    for program in [CONSUMER_BIN, WEB_BIN] {
        let (code, err) = check_config(program, &format!("{tls}{}", tls_keys(&ca_file, &client)));
        assert_eq!(code, Some(0), "{program}: good files: {err}");
        let (code, err) = check_config(
            program,
            &format!("{external}{}", tls_keys(&ca_file, &client)),
        );
        assert_eq!(
            code,
            Some(0),
            "{program}: EXTERNAL with a certificate: {err}"
        );
        for (toml, key, says) in &cases {
            let (code, err) = check_config(program, toml);
            assert_eq!(code, Some(78), "{program} with\n{toml}\n{err}");
            assert!(
                err.contains(&format!("\"{key}\"")) && err.contains(says),
                "{program} with\n{toml}\nnames {key} and says {says:?}: {err}"
            );
        }
    }
}

#[test]
fn produce_refuses_tls_flags_with_a_plain_url() {
    let f = fixture();
    let mut args = vec!["fact:1"];
    args.extend(tls_flags(&f.ca_file, &f.client));
    let (code, out, err, _) = timed_produce(&f.broker.url(), &args);
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("amqp_ca_file") && err.contains("plain amqp://"),
        "{err}"
    );
}
