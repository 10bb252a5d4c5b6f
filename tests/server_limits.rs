//! `labmq-server` under load and abuse: the real binary over TCP on 127.0.0.1, attacked
//! the way an unlucky client or a hostile peer would. Every limit checked here is a key
//! of /etc/labmq/server.toml. Resource use is read from `/proc` as an operator would;
//! the `measured:` lines (shown with `--nocapture`) are the numbers behind the unit's
//! `TasksMax=`, `LimitNOFILE=` and `MemoryMax=`.

#[path = "support/h2.rs"]
mod h2;
#[path = "support/procfs.rs"]
mod procfs;
mod support;

use std::time::{Duration, Instant};

use labmq::grpc::proto::message_service_client::MessageServiceClient;
use labmq::grpc::proto::{AbRequest, FactorialRequest, MessageRequest, TextRequest};
use procfs::Peak;
use support::{DaemonSpec, SERVER_BIN, Server, spawn_server};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

async fn client(server: &Server) -> MessageServiceClient<Channel> {
    let channel = Endpoint::from_shared(server.url())
        .expect("valid endpoint")
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", server.addr));
    MessageServiceClient::new(channel).max_decoding_message_size(labmq::grpc::MAX_RESPONSE_BYTES)
}

/// Retries `Factorial(10)` on fresh connections until it answers 3628800, for at most
/// `within`: the server must be serving normally again.
async fn serves_again(server: &Server, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = async {
            let channel = Endpoint::from_shared(server.url())
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            MessageServiceClient::new(channel)
                .factorial(FactorialRequest { n: 10 })
                .await
                .map(|reply| reply.into_inner().result)
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(result) => {
                assert_eq!(result, "3628800");
                return;
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "no normal answer within {within:?}; last error: {last}\n{}",
        server.daemon.stderr()
    );
}

fn measured(test: &str, pid: u32, peak: &Peak) {
    eprintln!(
        "measured: {test}: peak threads {}, peak open fds {}, peak RSS {} KiB (VmHWM {} KiB)",
        peak.threads,
        peak.fds,
        peak.rss_kib,
        procfs::peak_rss_kib(pid)
    );
}

// ---------------------------------------------------------------------------------------
// Compute slots and the waiting queue
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_factorials_keep_their_slot_so_threads_stay_bounded() {
    const COMPUTE_THREADS: u64 = 2;
    let server = spawn_server(&format!(
        "compute_threads = {COMPUTE_THREADS}\nmax_waiting_calls = 4\nlog_level = \"warn\"\n"
    ));
    let pid = server.daemon.pid();
    let client = client(&server).await;
    // Every thread the server will ever need exists once it has answered a call.
    client
        .clone()
        .factorial(FactorialRequest { n: 10 })
        .await
        .expect("Factorial(10) before the storm");
    let baseline = procfs::threads(pid);

    // 24 callers, each with a 5 ms deadline on a computation that takes far longer:
    // every call is abandoned while its factorial runs or waits.
    let storm_end = Instant::now() + Duration::from_secs(4);
    let callers: Vec<_> = (0..24)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut codes = std::collections::BTreeMap::<String, u32>::new();
                while Instant::now() < storm_end {
                    let mut request = tonic::Request::new(FactorialRequest { n: 100_000 });
                    request.set_timeout(Duration::from_millis(5));
                    let mut client = client.clone();
                    let code = match tokio::time::timeout(
                        Duration::from_millis(5),
                        client.factorial(request),
                    )
                    .await
                    {
                        Err(_) => "client gave up".to_owned(),
                        Ok(Ok(_)) => "OK".to_owned(),
                        Ok(Err(status)) => format!(
                            "{:?} {}",
                            status.code(),
                            status.message().chars().take(40).collect::<String>()
                        ),
                    };
                    *codes.entry(code).or_default() += 1;
                }
                codes
            })
        })
        .collect();
    let mut peak = Peak::default();
    while Instant::now() < storm_end + Duration::from_millis(500) {
        peak.sample(pid);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for caller in callers {
        for (code, count) in caller.await.expect("caller task") {
            *outcomes.entry(code).or_default() += count;
        }
    }
    eprintln!("storm outcomes: {outcomes:?}");
    measured("factorial storm", pid, &peak);
    let calls: u32 = outcomes.values().sum();
    assert!(
        calls >= 100,
        "the storm made only {calls} calls: {outcomes:?}"
    );
    // A fixed allowance for threads the runtime may add (e.g. timers, a signal waker).
    assert!(
        peak.threads <= baseline + 2,
        "threads grew from {baseline} to {} under {calls} abandoned calls \
         (compute_threads = {COMPUTE_THREADS})",
        peak.threads
    );

    // Afterwards full-size calls still succeed (once the abandoned computations end).
    let mut client = client.clone();
    let mut request = tonic::Request::new(FactorialRequest { n: 100_000 });
    request.set_timeout(Duration::from_secs(120));
    let big = client
        .factorial(request)
        .await
        .expect("Factorial(100000) after the storm")
        .into_inner()
        .result;
    assert_eq!(big.len(), 456_574);
    serves_again(&server, Duration::from_secs(10)).await;
}

/// Starts `Factorial(n)` in the background and waits until the handler has it.
fn occupy(
    server: &mut Server,
    client: &MessageServiceClient<Channel>,
    n: i64,
) -> tokio::task::JoinHandle<Result<String, tonic::Status>> {
    let mut client = client.clone();
    let call = tokio::spawn(async move {
        client
            .factorial(FactorialRequest { n })
            .await
            .map(|reply| reply.into_inner().result)
    });
    server.wait_for_log(&[&format!("n={n}")], Duration::from_secs(30));
    call
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_max_waiting_calls_get_resource_exhausted_naming_the_limit() {
    // Long request timeouts: a debug build on a busy machine takes tens of seconds.
    let mut server = spawn_server(
        "compute_threads = 1\nmax_waiting_calls = 1\nmax_factorial_n = 2000000\n\
         request_timeout_secs = 600\nlog_level = \"warn,labmq=debug\"\n",
    );
    let client = client(&server).await;
    // One running (seconds in a debug build), one waiting: the queue is full.
    let running = occupy(&mut server, &client, 300_000);
    let waiting = occupy(&mut server, &client, 3_000);
    let status = client
        .clone()
        .factorial(FactorialRequest { n: 3_001 })
        .await
        .expect_err("a third heavy call must be refused while one runs and one waits");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_waiting_calls (1)"),
        "the refusal names the limit: {}",
        status.message()
    );
    // Small work never queues.
    let small = client
        .clone()
        .factorial(FactorialRequest { n: 20 })
        .await
        .expect("Factorial(20) is computed inline while the pool is full");
    assert_eq!(small.into_inner().result, "2432902008176640000");
    // The client of the running call gives up; its computation still holds the thread,
    // so the queue stays full until it ends...
    running.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = client
        .clone()
        .factorial(FactorialRequest { n: 3_002 })
        .await
        .expect_err("an abandoned computation still holds its slot");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // ...and then the waiting call is served.
    let digits = tokio::time::timeout(Duration::from_secs(300), waiting)
        .await
        .expect("the waiting call finishes once the slot is free")
        .expect("call task")
        .expect("Factorial(3000) after waiting");
    assert_eq!(digits.len(), 9_131, "digits of 3000!");
    let log = server.daemon.stderr();
    assert!(log.contains("max_waiting_calls"), "refusal logged: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_texts_are_computed_on_the_compute_pool_not_the_async_workers() {
    // No waiting allowed: while the only compute thread is busy, any call that needs
    // it is refused at once, which shows which calls need it.
    let mut server = spawn_server(
        "compute_threads = 1\nmax_waiting_calls = 0\nmax_factorial_n = 2000000\n\
         request_timeout_secs = 600\nlog_level = \"warn,labmq=debug\"\n",
    );
    let client = client(&server).await;
    let running = occupy(&mut server, &client, 300_000);
    let mib = "x".repeat(1024 * 1024);

    let refused = |result: Result<_, tonic::Status>, method: &str| {
        let status = result.expect_err(&format!("1 MiB {method} needs the busy compute thread"));
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "{method}: {status:?}"
        );
        assert!(
            status.message().contains("max_waiting_calls (0)"),
            "{method}: {}",
            status.message()
        );
    };
    refused(
        client
            .clone()
            .process_message(MessageRequest { text: mib.clone() })
            .await
            .map(drop),
        "ProcessMessage",
    );
    refused(
        client
            .clone()
            .assign_ab(AbRequest {
                user_id: mib.clone(),
            })
            .await
            .map(drop),
        "AssignAB",
    );
    refused(
        client
            .clone()
            .most_frequent_letter(TextRequest { text: mib.clone() })
            .await
            .map(drop),
        "MostFrequentLetter",
    );
    // Small texts are still answered at once: the async workers are free.
    let reply = client
        .clone()
        .process_message(MessageRequest {
            text: "hello".into(),
        })
        .await
        .expect("a small ProcessMessage while the pool is busy");
    assert_eq!(
        reply.into_inner().processed_text,
        "Processed by server: HELLO"
    );
    let reply = client
        .clone()
        .assign_ab(AbRequest {
            user_id: "user0".into(),
        })
        .await
        .expect("a small AssignAB while the pool is busy");
    assert_eq!(reply.into_inner().group, "A");

    // Once the pool is free the same megabyte calls succeed, with the same results as
    // inline computing would give.
    running.abort();
    let deadline = Instant::now() + Duration::from_secs(300);
    let processed = loop {
        match client
            .clone()
            .process_message(MessageRequest { text: mib.clone() })
            .await
        {
            Ok(reply) => break reply.into_inner().processed_text,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(Instant::now() < deadline, "the pool never freed up");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("1 MiB ProcessMessage: {status:?}"),
        }
    };
    assert_eq!(processed.len(), "Processed by server: ".len() + mib.len());
    assert!(processed.ends_with("XXXX"));
    let letter = client
        .clone()
        .most_frequent_letter(TextRequest { text: mib.clone() })
        .await
        .expect("1 MiB MostFrequentLetter")
        .into_inner();
    assert_eq!((letter.letter.as_str(), letter.count), ("x", 1024 * 1024));
    client
        .clone()
        .assign_ab(AbRequest { user_id: mib })
        .await
        .expect("1 MiB AssignAB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_max_calls_in_flight_are_refused_but_health_still_answers() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let mut server = spawn_server(
        "compute_threads = 1\nmax_calls_in_flight = 2\nmax_factorial_n = 2000000\n\
         log_level = \"warn,labmq=debug\"\n",
    );
    let client = client(&server).await;
    let running = occupy(&mut server, &client, 600_000);
    let _waiting = occupy(&mut server, &client, 3_000);
    // Even a call that would be computed inline is refused: two are in flight.
    let status = client
        .clone()
        .factorial(FactorialRequest { n: 5 })
        .await
        .expect_err("a third call in flight must be refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_calls_in_flight (2)"),
        "the refusal names the limit: {}",
        status.message()
    );
    let channel = Endpoint::from_shared(server.url())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect for health");
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "message.MessageService".into(),
        })
        .await
        .expect("health answers at the limit")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_megabyte_texts_is_answered_or_refused_within_bounded_memory() {
    // Defaults (256 calls in flight, 128 waiting, one thread per CPU), except logging
    // and a request timeout long enough for a debug build on a busy machine.
    let server = spawn_server("request_timeout_secs = 600\nlog_level = \"warn\"\n");
    let pid = server.daemon.pid();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client(&server).await);
    }
    let text = std::sync::Arc::new("y".repeat(1024 * 1024));
    let calls: Vec<_> = (0..300)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let text = text.clone();
            tokio::spawn(async move {
                let text = String::clone(&text);
                if i % 2 == 0 {
                    client
                        .most_frequent_letter(TextRequest { text })
                        .await
                        .map(|r| r.into_inner().count == 1024 * 1024)
                } else {
                    client
                        .process_message(MessageRequest { text })
                        .await
                        .map(|r| r.into_inner().processed_text.ends_with("YYY"))
                }
            })
        })
        .collect();
    let mut peak = Peak::default();
    let mut pending = calls;
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !pending.is_empty() {
        peak.sample(pid);
        assert!(Instant::now() < deadline, "the flood did not end in 10 min");
        let (done, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|c| c.is_finished());
        pending = rest;
        for call in done {
            let key = match call.await.expect("call task") {
                Ok(true) => "OK".to_owned(),
                Ok(false) => panic!("a wrong answer under load"),
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    assert!(status.message().contains("max_"), "{}", status.message());
                    format!("{:?}", status.code())
                }
            };
            *outcomes.entry(key).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("flood outcomes: {outcomes:?}");
    measured("300 concurrent 1 MiB texts", pid, &peak);
    assert!(outcomes.contains_key("OK"), "{outcomes:?}");
    // 256 requests of 1 MiB and their answers, with room for allocator slack.
    assert!(
        peak.rss_kib < 1024 * 1024,
        "peak RSS {} KiB over 1 GiB",
        peak.rss_kib
    );
    serves_again(&server, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_ends_a_call_that_runs_too_long() {
    let server =
        spawn_server("compute_threads = 1\nrequest_timeout_secs = 1\nmax_factorial_n = 2000000\n");
    let mut client = client(&server).await;
    let start = Instant::now();
    let status = client
        .factorial(FactorialRequest { n: 600_000 })
        .await
        .expect_err("600000! takes longer than request_timeout_secs = 1");
    let took = start.elapsed();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(
        took < Duration::from_secs(10),
        "ended after {took:?}, not about 1 s"
    );
    // Other calls are unaffected.
    let reply = client
        .factorial(FactorialRequest { n: 5 })
        .await
        .expect("Factorial(5) after a timed-out call");
    assert_eq!(reply.into_inner().result, "120");
}

// ---------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------

#[test]
fn max_concurrent_streams_is_announced_to_clients() {
    let server = spawn_server("max_concurrent_streams = 7\n");
    let mut stream = h2::handshake(server.addr);
    let settings = h2::server_settings(&mut stream, Duration::from_secs(10))
        .expect("the server's SETTINGS frame");
    assert!(
        settings
            .settings()
            .contains(&(h2::SETTINGS_MAX_CONCURRENT_STREAMS, 7)),
        "SETTINGS_MAX_CONCURRENT_STREAMS = 7 expected in {:?}",
        settings.settings()
    );
}

#[test]
fn a_peer_that_says_nothing_is_dropped_after_the_handshake_timeout() {
    let server = spawn_server("handshake_timeout_secs = 1\n");
    let mut silent = h2::connect(server.addr);
    let mut half = h2::connect(server.addr);
    std::io::Write::write_all(&mut half, &h2::PREFACE[..10]).expect("half a preface");
    for (name, stream) in [("silent", &mut silent), ("half-preface", &mut half)] {
        let (_, took) = h2::wait_closed(stream, Duration::from_secs(8)).unwrap_or_else(|frames| {
            panic!(
                "the {name} peer was still connected after 8 s (frames: {frames:?})\n{}",
                server.daemon.stderr()
            )
        });
        eprintln!("measured: {name} peer closed after {took:?}");
    }
    // A well-behaved client on its own connection is unaffected.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(serves_again(&server, Duration::from_secs(10)));
}

#[test]
fn a_peer_that_stops_answering_is_dropped_by_keepalive() {
    let server = spawn_server("keepalive_interval_secs = 1\nkeepalive_timeout_secs = 1\n");
    let mut mute = h2::handshake(server.addr);
    let settings =
        h2::server_settings(&mut mute, Duration::from_secs(10)).expect("server SETTINGS");
    // Acknowledge the settings, like a client that then vanishes without a FIN.
    std::io::Write::write_all(&mut mute, &h2::frame(h2::SETTINGS, h2::ACK, 0, &[]))
        .expect("SETTINGS ack");
    drop(settings);
    let (frames, took) =
        h2::wait_closed(&mut mute, Duration::from_secs(15)).unwrap_or_else(|frames| {
            panic!(
                "a peer that answers no PING was still connected after 15 s (frames: {frames:?})"
            )
        });
    eprintln!("measured: unanswered-ping peer closed after {took:?}");
    assert!(
        frames
            .iter()
            .any(|f| f.kind == h2::PING && f.flags & h2::ACK == 0),
        "the server pinged before closing: {frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_at_once() {
    // The default max_connections (256), with a handshake timeout long enough that idle
    // peers are not dropped for silence during the test.
    let server = spawn_server("handshake_timeout_secs = 600\nlog_level = \"warn\"\n");
    let pid = server.daemon.pid();
    let baseline_fds = procfs::open_fds(pid);
    let mut peak = Peak::default();
    let addr = server.addr;
    let held: Vec<_> = tokio::task::spawn_blocking(move || {
        (0..256)
            .map(|i| {
                let mut stream = h2::handshake(addr);
                h2::server_settings(&mut stream, Duration::from_secs(10))
                    .unwrap_or_else(|| panic!("connection {i} is served"));
                stream
            })
            .collect()
    })
    .await
    .expect("opening connections");
    peak.sample(pid);

    // Only connect: the server may close it before a preface could be written.
    let mut extra = h2::connect(server.addr);
    match h2::wait_closed(&mut extra, Duration::from_secs(5)) {
        Ok((frames, _)) => assert!(
            !frames.iter().any(|f| f.kind == h2::SETTINGS),
            "connection 257 must not be served: {frames:?}"
        ),
        Err(frames) => panic!("connection 257 was left open: {frames:?}"),
    }
    let log = server.daemon.stderr();
    assert!(
        log.contains("max_connections (256)"),
        "the refusal is logged with the limit: {log}"
    );
    measured("256 connections held", pid, &peak);
    eprintln!(
        "measured: open fds {baseline_fds} idle, {} with 256 connections",
        peak.fds
    );

    // Freeing some lets new clients in again.
    drop(held);
    serves_again(&server, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_waits_instead_of_spinning() {
    // 64 descriptors, far more allowed connections: the descriptors run out first.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        "max_connections = 1000\nhandshake_timeout_secs = 600\nlog_level = \"warn\"\n",
    )
    .expect("write server.toml");
    let mut daemon = DaemonSpec::new("prlimit")
        .arg("--nofile=64:64")
        .arg(SERVER_BIN)
        .arg("--config")
        .arg(config.as_os_str())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .spawn_in(dir);
    let status = daemon.wait_ready(support::READY_TIMEOUT);
    let addr = status
        .strip_prefix("serving on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("STATUS={status:?}"));
    let server = Server { daemon, addr };
    let pid = server.daemon.pid();

    // More silent connections than descriptors; the kernel completes them all and keeps
    // the rest in the listen backlog.
    let flood: Vec<_> = (0..100).map(|_| h2::connect(addr)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.daemon.stderr().contains("cannot accept connections") {
        assert!(
            Instant::now() < deadline,
            "no accept error logged with {} fds open\n{}",
            procfs::open_fds(pid),
            server.daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let fds = procfs::open_fds(pid);
    assert!(fds >= 60, "only {fds} fds open: the limit was not reached");

    let before = procfs::cpu_time(pid);
    std::thread::sleep(Duration::from_secs(3));
    let spent = procfs::cpu_time(pid) - before;
    eprintln!("measured: CPU time over 3 s out of descriptors: {spent:?}");
    // A spinning accept loop burns a whole CPU: about 3 s here.
    assert!(
        spent < Duration::from_millis(750),
        "the server used {spent:?} of CPU in 3 s while out of descriptors"
    );
    let log = server.daemon.stderr();
    assert!(
        log.matches("cannot accept connections").count() <= 2,
        "the accept error is logged at most once per period: {log}"
    );

    drop(flood);
    serves_again(&server, Duration::from_secs(20)).await;
}
