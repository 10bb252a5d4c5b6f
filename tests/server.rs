//! End-to-end tests of the real `labmq-server` binary over TCP on 127.0.0.1, and of
//! `labmq-call` against it. Each test starts its own server on a port the OS picks.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use labmq::grpc::proto::batch_result::Outcome;
use labmq::grpc::proto::batch_task::Kind;
use labmq::grpc::proto::message_service_client::MessageServiceClient;
use labmq::grpc::proto::{
    AbRequest, BatchRequest, BatchTask, FactorialRequest, MessageRequest, TextRequest,
};
use support::{
    CALL_BIN, EXIT_TIMEOUT, SERVER_BIN, Server, ServerOptions, free_addr, notify_field, run,
    spawn_server,
};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const NO_ENV: &[(&str, &str)] = &[];

async fn channel(server: &Server) -> Channel {
    Endpoint::from_shared(server.url())
        .expect("valid endpoint")
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", server.addr))
}

async fn client(server: &Server) -> MessageServiceClient<Channel> {
    MessageServiceClient::new(channel(server).await)
        .max_decoding_message_size(labmq::grpc::MAX_RESPONSE_BYTES)
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------
// Methods and values
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn factorial_values() {
    let server = spawn_server("");
    let mut client = client(&server).await;
    for (n, expected) in [(0, "1"), (1, "1"), (6, "720"), (20, "2432902008176640000")] {
        let result = client
            .factorial(FactorialRequest { n })
            .await
            .unwrap_or_else(|e| panic!("Factorial({n}): {e}"))
            .into_inner()
            .result;
        assert_eq!(result, expected, "{n}!");
    }
    // The default limit, computed on the compute pool: 456,574 exact digits.
    let big = client
        .factorial(FactorialRequest { n: 100_000 })
        .await
        .expect("Factorial(100000)")
        .into_inner()
        .result;
    assert_eq!(big.len(), 456_574);
    assert!(big.starts_with("28242294079603478742"), "{}", &big[..20]);
    assert!(big.bytes().all(|b| b.is_ascii_digit()));
    // 100000! has 24,999 trailing zeros (floor(n/5) + floor(n/25) + ...).
    let zeros = big.bytes().rev().take_while(|&b| b == b'0').count();
    assert_eq!(zeros, 24_999);
}

#[tokio::test]
async fn most_frequent_letter_values() {
    let server = spawn_server("");
    let mut client = client(&server).await;
    for (text, letter, count) in [
        ("abracadabra", "a", 5),
        ("Привет, мир", "р", 2),
        ("AaAbB", "a", 3),
        ("1111 !!! x ,,,", "x", 1),
    ] {
        let reply = client
            .most_frequent_letter(TextRequest { text: text.into() })
            .await
            .unwrap_or_else(|e| panic!("MostFrequentLetter({text:?}): {e}"))
            .into_inner();
        assert_eq!(
            (reply.letter.as_str(), reply.count),
            (letter, count),
            "{text:?}"
        );
    }
}

#[tokio::test]
async fn process_message_values() {
    let server = spawn_server("");
    let mut client = client(&server).await;
    for (text, expected) in [
        ("привет", "Processed by server: ПРИВЕТ"),
        ("hello", "Processed by server: HELLO"),
        ("straße", "Processed by server: STRASSE"),
        ("", "Processed by server: "),
    ] {
        let processed = client
            .process_message(MessageRequest { text: text.into() })
            .await
            .unwrap_or_else(|e| panic!("ProcessMessage({text:?}): {e}"))
            .into_inner()
            .processed_text;
        assert_eq!(processed, expected, "{text:?}");
    }
}

#[tokio::test]
async fn assign_ab_golden_ids() {
    let server = spawn_server("");
    let mut client = client(&server).await;
    for (user_id, group) in [
        ("user0", "A"),
        ("user1", "B"),
        ("user2", "A"),
        ("user3", "B"),
    ] {
        let reply = client
            .assign_ab(AbRequest {
                user_id: user_id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("AssignAB({user_id:?}): {e}"))
            .into_inner();
        assert_eq!(reply.group, group, "{user_id}");
    }
    // Stable across calls.
    let again = client
        .assign_ab(AbRequest {
            user_id: "user0".into(),
        })
        .await
        .expect("AssignAB(user0)")
        .into_inner();
    assert_eq!(again.group, "A");
}

#[tokio::test]
async fn ab_share_comes_from_config() {
    let server = spawn_server("ab_a_percent = 0\n");
    let mut client = client(&server).await;
    let reply = client
        .assign_ab(AbRequest {
            user_id: "user0".into(),
        })
        .await
        .expect("AssignAB(user0)")
        .into_inner();
    assert_eq!(reply.group, "B", "with ab_a_percent = 0 everyone is B");
}

// ---------------------------------------------------------------------------------------
// INVALID_ARGUMENT
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn negative_factorial_is_invalid_argument() {
    let server = spawn_server("");
    let mut client = client(&server).await;
    let status = client
        .factorial(FactorialRequest { n: -1 })
        .await
        .expect_err("n = -1 must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("-1"), "{}", status.message());
}

#[tokio::test]
async fn factorial_over_limit_names_the_limit() {
    let server = spawn_server("max_factorial_n = 50\n");
    let mut client = client(&server).await;
    let ok = client
        .factorial(FactorialRequest { n: 50 })
        .await
        .expect("n = max is allowed")
        .into_inner();
    assert_eq!(ok.result.len(), 65, "50! has 65 digits");
    let status = client
        .factorial(FactorialRequest { n: 51 })
        .await
        .expect_err("n over max_factorial_n must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("max_factorial_n") && status.message().contains("50"),
        "message must name the limit: {}",
        status.message()
    );
    let status = client
        .factorial(FactorialRequest { n: i64::MAX })
        .await
        .expect_err("i64::MAX must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn empty_user_id_is_invalid_argument() {
    let server = spawn_server("");
    let mut client = client(&server).await;
    let status = client
        .assign_ab(AbRequest {
            user_id: String::new(),
        })
        .await
        .expect_err("empty user id must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("user_id"), "{}", status.message());
}

#[tokio::test]
async fn text_without_letters_is_invalid_argument() {
    let server = spawn_server("");
    let mut client = client(&server).await;
    for text in ["", "123 !?", "   "] {
        let status = client
            .most_frequent_letter(TextRequest { text: text.into() })
            .await
            .expect_err("a text without letters must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{text:?}: {status:?}");
        assert!(
            status.message().contains("no letters"),
            "{}",
            status.message()
        );
    }
}

#[tokio::test]
async fn text_over_limit_names_the_limit() {
    let server = spawn_server("max_text_bytes = 16\n");
    let mut client = client(&server).await;
    let at_limit = "a".repeat(16);
    let reply = client
        .most_frequent_letter(TextRequest {
            text: at_limit.clone(),
        })
        .await
        .expect("a text of exactly max_text_bytes is allowed")
        .into_inner();
    assert_eq!((reply.letter.as_str(), reply.count), ("a", 16));

    let over = "a".repeat(17);
    let status = client
        .most_frequent_letter(TextRequest { text: over.clone() })
        .await
        .expect_err("a text over max_text_bytes must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("max_text_bytes") && status.message().contains("16"),
        "message must name the limit: {}",
        status.message()
    );

    // Bytes, not chars: 9 Cyrillic letters are 18 bytes.
    let status = client
        .most_frequent_letter(TextRequest {
            text: "ааааааааа".into(),
        })
        .await
        .expect_err("18 bytes are over a 16-byte limit");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // ProcessMessage has the same limit.
    let status = client
        .process_message(MessageRequest { text: over })
        .await
        .expect_err("ProcessMessage over max_text_bytes must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("max_text_bytes"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn large_text_over_default_limit_is_invalid_argument_not_transport_error() {
    // Just over the default 1 MiB: must reach the handler (the decode limit leaves room)
    // and come back as INVALID_ARGUMENT naming the limit, not RESOURCE_EXHAUSTED.
    let server = spawn_server("");
    let mut client = client(&server).await;
    let text = "b".repeat(1024 * 1024 + 1);
    let status = client
        .most_frequent_letter(TextRequest { text })
        .await
        .expect_err("over 1 MiB must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("1048576"), "{}", status.message());
}

// ---------------------------------------------------------------------------------------
// Health, reflection, readiness
// ---------------------------------------------------------------------------------------

/// Each task of a `ComputeBatch` gets what its unary call answers, errors included, in
/// order; a task with no kind, a factorial too big for a batch and a batch over
/// `max_batch_tasks` are refused naming what was wrong.
#[tokio::test]
async fn compute_batch_answers_each_task_as_its_unary_call_would() {
    let server = spawn_server("max_batch_tasks = 8\n");
    let mut client = client(&server).await;
    let task = |kind| BatchTask { kind: Some(kind) };
    let tasks = vec![
        task(Kind::Factorial(FactorialRequest { n: 20 })),
        task(Kind::MostFrequentLetter(TextRequest {
            text: "Привет мир".into(),
        })),
        task(Kind::AssignAb(AbRequest {
            user_id: "user1".into(),
        })),
        task(Kind::ProcessMessage(MessageRequest {
            text: "hello".into(),
        })),
        task(Kind::Factorial(FactorialRequest { n: -1 })),
        task(Kind::Factorial(FactorialRequest { n: 2_001 })),
        BatchTask { kind: None },
        task(Kind::MostFrequentLetter(TextRequest { text: "123".into() })),
    ];
    let results = client
        .compute_batch(BatchRequest {
            tasks: tasks.clone(),
        })
        .await
        .expect("ComputeBatch")
        .into_inner()
        .results;
    let outcomes: Vec<Outcome> = results.into_iter().map(|r| r.outcome.unwrap()).collect();
    assert_eq!(outcomes.len(), 8);
    assert!(matches!(&outcomes[0], Outcome::Factorial(r) if r.result == "2432902008176640000"));
    assert!(
        matches!(&outcomes[1], Outcome::MostFrequentLetter(r) if r.letter == "р" && r.count == 2)
    );
    assert!(matches!(&outcomes[2], Outcome::AssignAb(r) if r.group == "B"));
    assert!(
        matches!(&outcomes[3], Outcome::ProcessMessage(r) if r.processed_text == "Processed by server: HELLO")
    );
    let error = |i: usize| match &outcomes[i] {
        Outcome::Error(e) => (Code::from(e.code), e.message.clone()),
        other => panic!("task {i}: expected an error, got {other:?}"),
    };
    // The same refusal as the unary call.
    let unary = client
        .factorial(FactorialRequest { n: -1 })
        .await
        .unwrap_err();
    assert_eq!(error(4), (unary.code(), unary.message().to_owned()));
    let (code, message) = error(5);
    assert_eq!(code, Code::InvalidArgument);
    assert!(
        message.contains("2000") && message.contains("call Factorial"),
        "{message}"
    );
    let (code, message) = error(6);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("no kind"), "{message}");
    assert_eq!(error(7).0, Code::InvalidArgument);

    let mut over = tasks.clone();
    over.push(task(Kind::Factorial(FactorialRequest { n: 1 })));
    let refused = client
        .compute_batch(BatchRequest { tasks: over })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("9 tasks") && refused.message().contains("max_batch_tasks"),
        "{}",
        refused.message()
    );
    // An empty batch is answered with no results.
    let empty = client
        .compute_batch(BatchRequest { tasks: vec![] })
        .await
        .expect("empty ComputeBatch")
        .into_inner();
    assert!(empty.results.is_empty());
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let server = spawn_server("");
    let mut health = HealthClient::new(channel(&server).await);
    for service in ["", "message.MessageService"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("Health.Check({service:?}): {e}"))
            .into_inner();
        assert_eq!(
            reply.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    let status = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("an unknown service is NOT_FOUND");
    assert_eq!(status.code(), Code::NotFound);
}

/// One reflection test per protocol version: `$version` is `v1` or `v1alpha` (older
/// grpcurl builds, grpcio-reflection and many GUI clients speak only v1alpha).
macro_rules! reflection_lists_services {
    ($name:ident, $version:ident) => {
#[tokio::test]
async fn $name() {
    use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::$version::server_reflection_request::MessageRequest as ReflectionRequest;
    use tonic_reflection::pb::$version::server_reflection_response::MessageResponse as ReflectionResponse;
    use tonic_reflection::pb::$version::{ServerReflectionRequest, ServerReflectionResponse};

    let server = spawn_server("");
    let mut reflection = ServerReflectionClient::new(channel(&server).await);
    let request = |message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let requests = tokio_stream::iter(vec![
        request(ReflectionRequest::ListServices(String::new())),
        request(ReflectionRequest::FileContainingSymbol(
            "message.MessageService".into(),
        )),
    ]);
    let mut replies = reflection
        .server_reflection_info(requests)
        .await
        .expect("ServerReflectionInfo")
        .into_inner();

    let first: ServerReflectionResponse = replies
        .message()
        .await
        .expect("reflection reply")
        .expect("a reply to ListServices");
    let Some(ReflectionResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("expected a service list, got {:?}", first.message_response);
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["message.MessageService", "grpc.health.v1.Health"] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }

    let second = replies
        .message()
        .await
        .expect("reflection reply")
        .expect("a reply to FileContainingSymbol");
    let Some(ReflectionResponse::FileDescriptorResponse(files)) = second.message_response else {
        panic!(
            "expected file descriptors, got {:?}",
            second.message_response
        );
    };
    assert!(
        !files.file_descriptor_proto.is_empty(),
        "reflection must serve the descriptor of message.MessageService"
    );
}
    };
}

reflection_lists_services!(reflection_v1_lists_services, v1);
reflection_lists_services!(reflection_v1alpha_lists_services, v1alpha);

#[test]
fn ready_notification_names_the_bound_address() {
    let mut daemon = ServerOptions::default().spawn();
    let message = daemon.wait_notify("READY", "1", support::READY_TIMEOUT);
    let status = notify_field(&message, "STATUS").expect("READY=1 comes with a STATUS");
    let addr: std::net::SocketAddr = status
        .strip_prefix("serving on ")
        .unwrap_or_else(|| panic!("STATUS={status:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("STATUS={status:?}: {e}"));
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0, "the status names the port actually bound");
    // By the time READY=1 arrives the port accepts connections.
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr} after READY=1: {e}"));
    let status = daemon.stop(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", daemon.stderr());
}

#[test]
fn flags_beat_environment_which_beats_file() {
    // File says 5, environment says 7: the environment wins.
    let server = ServerOptions::with_config("max_factorial_n = 5\n")
        .env("LABMQ_SERVER_MAX_FACTORIAL_N", "7")
        .start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = client(&server).await;
        assert!(client.factorial(FactorialRequest { n: 7 }).await.is_ok());
        let status = client
            .factorial(FactorialRequest { n: 8 })
            .await
            .expect_err("8 is over the limit from the environment");
        assert!(status.message().contains('7'), "{}", status.message());
    });
    // The --listen flag beat the file's listen (port 0 was asked for, not 1).
    let mut flagged = ServerOptions::with_config("listen = \"127.0.0.1:1\"\n").start();
    assert_ne!(flagged.addr.port(), 1);
    assert_eq!(flagged.daemon.stop(EXIT_TIMEOUT).code(), Some(0));
}

// ---------------------------------------------------------------------------------------
// Reload (SIGHUP, what `systemctl reload` sends)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn sighup_applies_log_level_keeps_the_status_line_and_names_keys_needing_a_restart() {
    let mut server = ServerOptions::with_config("log_level = \"info\"\n").start();
    let serving = format!("serving on {}", server.addr);
    // Same listen address (it is also a flag), a new level and a new factorial limit.
    std::fs::write(
        server.daemon.dir().join("server.toml"),
        "log_level = \"debug\"\nmax_factorial_n = 5\n",
    )
    .expect("rewrite server.toml");
    support::send_signal(server.daemon.pid(), libc::SIGHUP);
    server
        .daemon
        .wait_notify("RELOADING", "1", Duration::from_secs(10));
    let ready = server
        .daemon
        .wait_notify("READY", "1", Duration::from_secs(10));
    assert_eq!(
        notify_field(&ready, "STATUS"),
        Some(serving.as_str()),
        "the reload must end with the daemon's own status line: {ready:?}"
    );
    server.wait_for_log(
        &["reloaded: log_level is debug", "max_factorial_n"],
        Duration::from_secs(10),
    );
    // The running limit is unchanged until a restart; the new level is live.
    let mut client = client(&server).await;
    let result = client
        .factorial(FactorialRequest { n: 10 })
        .await
        .expect("Factorial(10) under the running limit")
        .into_inner()
        .result;
    assert_eq!(result, "3628800");
    server.wait_for_log(&["Factorial"], Duration::from_secs(10));
    let log = server.daemon.stderr();
    assert!(!log.contains("configuration reloaded"), "{log}");
}

// ---------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_calls_then_exits_zero() {
    // One compute slot and two big factorials: the second queues behind the first, so
    // both are in flight for a while (seconds in a debug build; on a loaded machine more
    // than the default 60 s request timeout, hence its own).
    let mut server = ServerOptions::with_config(
        "max_factorial_n = 2000000\ncompute_threads = 1\nshutdown_grace_secs = 600\n\
         request_timeout_secs = 600\nlog_level = \"warn,labmq=debug\"\n",
    )
    .start();
    let client = client(&server).await;
    let ns = [400_000_i64, 400_001];
    let calls: Vec<_> = ns
        .iter()
        .map(|&n| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let reply = client.factorial(FactorialRequest { n }).await;
                (reply, Instant::now())
            })
        })
        .collect();

    // Both requests reached the handler...
    server.wait_for_log(&["n=400000", "n=400001"], Duration::from_secs(60));
    // ...then SIGTERM, acknowledged with STOPPING=1.
    server.daemon.terminate();
    server
        .daemon
        .wait_notify("STOPPING", "1", Duration::from_secs(30));
    let stopping_seen = Instant::now();

    for (call, n) in calls.into_iter().zip(ns) {
        let (reply, finished) = tokio::time::timeout(Duration::from_secs(600), call)
            .await
            .unwrap_or_else(|_| panic!("{n}! did not finish within 10 minutes"))
            .expect("call task");
        let digits = reply
            .unwrap_or_else(|e| panic!("{n}! failed during shutdown: {e}"))
            .into_inner()
            .result;
        let expected = if n == 400_000 { 2_067_110 } else { 2_067_116 };
        assert_eq!(digits.len(), expected, "digits of {n}!");
        if n == ns[1] {
            assert!(
                finished > stopping_seen,
                "the queued call must still have been running after SIGTERM"
            );
        }
    }
    drop(client);
    let status = server.daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(0),
        "clean stop after draining\n{}",
        server.daemon.stderr()
    );
}

#[test]
fn sigterm_when_idle_exits_zero_with_stopping() {
    let mut server = spawn_server("");
    server.daemon.terminate();
    server
        .daemon
        .wait_notify("STOPPING", "1", Duration::from_secs(30));
    let status = server.daemon.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", server.daemon.stderr());
}

// ---------------------------------------------------------------------------------------
// Configuration errors and --check-config
// ---------------------------------------------------------------------------------------

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("server.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8 temp path").to_owned()
}

fn assert_config_error(output: &std::process::Output, key: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(78), "exit 78 (EX_CONFIG): {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one stderr line: {err:?}");
    assert!(
        lines[0].to_lowercase().contains(&key.to_lowercase()),
        "the line names {key}: {err}"
    );
}

#[test]
fn unknown_key_in_file_exits_78_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&dir, "listn = \"127.0.0.1:1\"\n");
    let output = run(SERVER_BIN, &["--config", &config], NO_ENV);
    assert_config_error(&output, "listn");
    assert!(stderr(&output).contains("server.toml"), "names the file");
}

#[test]
fn bad_value_in_environment_exits_78_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&dir, "");
    let output = run(
        SERVER_BIN,
        &["--config", &config],
        &[("LABMQ_SERVER_MAX_FACTORIAL_N", "abc")],
    );
    assert_config_error(&output, "max_factorial_n");
}

#[test]
fn unknown_environment_key_exits_78() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&dir, "");
    let output = run(
        SERVER_BIN,
        &["--config", &config],
        &[("LABMQ_SERVER_BOGUS_KEY", "1")],
    );
    assert_config_error(&output, "bogus_key");
}

#[test]
fn out_of_range_value_exits_78_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&dir, "ab_a_percent = 101\n");
    let output = run(SERVER_BIN, &["--config", &config], NO_ENV);
    assert_config_error(&output, "ab_a_percent");
}

#[test]
fn missing_explicit_config_file_exits_78() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("absent.toml");
    let missing = missing.to_str().expect("utf-8 temp path");
    let output = run(SERVER_BIN, &["--config", missing], NO_ENV);
    assert_config_error(&output, "absent.toml");
}

#[test]
fn check_config_accepts_a_good_file_without_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&dir, "max_factorial_n = 10\nlog_level = \"debug\"\n");
    // The port is taken: --check-config must not try to bind it.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = run(
        SERVER_BIN,
        &["--config", &config, "--check-config", "--listen", &addr],
        NO_ENV,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let out = stdout(&output);
    assert_eq!(out.lines().count(), 1, "one line: {out:?}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(out.contains(&config), "names the file: {out}");
}

#[test]
fn check_config_rejects_a_bad_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&dir, "max_factorial_n = \"lots\"\n");
    let output = run(SERVER_BIN, &["--config", &config, "--check-config"], NO_ENV);
    assert_config_error(&output, "max_factorial_n");
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
}

#[test]
fn port_in_use_exits_nonzero_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut daemon = ServerOptions {
        listen: addr.clone(),
        ..ServerOptions::default()
    }
    .spawn();
    let status = daemon.wait_exit(EXIT_TIMEOUT);
    let err = daemon.stderr();
    assert_eq!(status.code(), Some(1), "runtime failure exits 1: {err}");
    assert!(
        err.contains(&format!("cannot listen on {addr}")),
        "stderr names {addr}: {err}"
    );
    assert_eq!(err.matches("in use").count(), 1, "cause named once: {err}");
    assert!(
        !err.contains('\x1b'),
        "no colour codes in a log file: {err:?}"
    );
    while let Some(message) = daemon.notify.recv_already_sent() {
        assert_ne!(
            notify_field(&message, "READY"),
            Some("1"),
            "no READY=1 without a listener"
        );
    }
    drop(taken);
}

// ---------------------------------------------------------------------------------------
// labmq-call
// ---------------------------------------------------------------------------------------

fn call(server: &str, tasks: &[&str]) -> std::process::Output {
    let mut args = vec!["--server", server];
    args.extend_from_slice(tasks);
    run(CALL_BIN, &args, NO_ENV)
}

#[test]
fn call_prints_one_line_per_task_and_exits_0() {
    let server = spawn_server("");
    let addr = server.addr.to_string();
    let output = call(
        &addr,
        &[
            "fact:6",
            "freq:abracadabra",
            "upper:привет",
            "user0",
            "user1",
            "fact:0, fact:5",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output).lines().collect::<Vec<_>>(),
        [
            "fact:6 => 720",
            "freq:abracadabra => a (5 times)",
            "upper:привет => Processed by server: ПРИВЕТ",
            "user0 => group A",
            "user1 => group B",
            "fact:0 => 1",
            "fact:5 => 120",
        ]
    );
}

#[test]
fn call_accepts_http_url_and_environment_target() {
    let server = spawn_server("");
    let output = call(&server.url(), &["fact:3"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "fact:3 => 6\n");

    let addr = server.addr.to_string();
    let output = run(
        CALL_BIN,
        &["fact:4"],
        &[("LABMQ_GRPC_TARGET", addr.as_str())],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "fact:4 => 24\n");
}

#[test]
fn call_exits_1_when_a_task_fails_but_prints_the_others() {
    let server = spawn_server("max_factorial_n = 10\n");
    let addr = server.addr.to_string();
    let output = call(
        &addr,
        &["fact:-1", "fact:3", "fact:11", "freq:123", "fact:abc"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(
        lines[0],
        "fact:-1 => error: INVALID_ARGUMENT: n must be >= 0, got -1"
    );
    assert_eq!(lines[1], "fact:3 => 6");
    assert!(
        lines[2].starts_with("fact:11 => error: INVALID_ARGUMENT:")
            && lines[2].contains("max_factorial_n"),
        "{}",
        lines[2]
    );
    assert_eq!(
        lines[3],
        "freq:123 => error: INVALID_ARGUMENT: text contains no letters"
    );
    assert!(
        lines[4].starts_with("fact:abc => error: invalid task:"),
        "{}",
        lines[4]
    );
}

#[test]
fn call_usage_errors_exit_2() {
    // No task at all (clap), only empty list items, an unknown flag.
    for args in [vec![], vec![" , ,"], vec!["--bogus", "fact:1"]] {
        let output = run(CALL_BIN, &args, NO_ENV);
        assert_eq!(
            output.status.code(),
            Some(2),
            "labmq-call {args:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).is_empty(), "a usage error explains itself");
        assert!(stdout(&output).is_empty());
    }
}

#[test]
fn call_unreachable_server_exits_3() {
    // Nothing listens on this port (it was free a moment ago).
    let addr = free_addr().to_string();
    let output = call(&addr, &["fact:6"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(stderr(&output).contains(&addr), "{}", stderr(&output));
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
}
