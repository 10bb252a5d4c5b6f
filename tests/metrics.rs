//! Prometheus `/metrics` on every daemon, scraped over real HTTP after real work (gRPC
//! calls over TCP, tasks through the shared RabbitMQ) and read with the reference Python
//! parser (`prometheus_client`): counters moved by exactly the work done, histogram
//! counts match, `process_*` present; off by default; bad values refused by
//! `--check-config`; silent peers do not hold the listener's slots.

#[path = "support/procfs.rs"]
mod procfs;
#[allow(dead_code)]
#[path = "support/rawhttp.rs"]
mod rawhttp;
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use labmq::grpc::proto::FactorialRequest;
use labmq::grpc::proto::message_service_client::MessageServiceClient;
use lapin::BasicProperties;
use support::amqp::{Amqp, CONSUMER_BIN, ConsumerSetup, ResultWatch, mixed_tasks, produce_tasks};
use support::metrics::{Exposition, metrics_addr, scrape_parsed, scrape_until};
use support::rabbit::SHARED_AMQP_URL;
use support::web::WebSetup;
use support::{
    COMMAND_TIMEOUT, EXIT_TIMEOUT, READY_TIMEOUT, SERVER_BIN, ServerOptions, free_addr,
    isolated_command, output_within, run,
};
use tonic::Code;

const NO_ENV: &[(&str, &str)] = &[];
const WAIT: Duration = Duration::from_secs(120);

fn assert_process_metrics(exposition: &Exposition, pid: u32) {
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert_eq!(exposition.kind(name), "gauge", "{name}");
        assert!(exposition.value(name, &[]) > 0.0, "{name} > 0");
    }
    assert_eq!(exposition.kind("process_cpu_seconds"), "counter");
    assert!(exposition.value("process_cpu_seconds_total", &[]) >= 0.0);
    // The collector reads this very process: its RSS is the one /proc reports, within
    // the time between the two reads (a generous factor, not a timing).
    let rss = exposition.value("process_resident_memory_bytes", &[]);
    let peak = procfs::peak_rss_kib(pid) as f64 * 1024.0;
    assert!(rss <= peak * 1.5, "RSS {rss} vs peak {peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_counts_grpc_calls_by_method_and_code() {
    let mut server = ServerOptions {
        config: "max_factorial_n = 50\n".into(),
        args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..ServerOptions::default()
    }
    .start();
    let addr = metrics_addr(&mut server.daemon, READY_TIMEOUT);
    let ports = procfs::listening_ports(server.daemon.pid());
    assert_eq!(
        ports,
        {
            let mut both = vec![server.addr.port(), addr.port()];
            both.sort_unstable();
            both
        },
        "gRPC and metrics listeners"
    );

    let mut client = MessageServiceClient::connect(server.url())
        .await
        .expect("connect");
    for n in [1, 5, 10] {
        client
            .factorial(FactorialRequest { n })
            .await
            .expect("factorial");
    }
    for n in [51, 1000] {
        let refused = client
            .factorial(FactorialRequest { n })
            .await
            .expect_err("over max_factorial_n");
        assert_eq!(refused.code(), Code::InvalidArgument);
    }

    let exposition = tokio::task::spawn_blocking(move || scrape_parsed(addr))
        .await
        .expect("scrape");
    let factorial = "message.MessageService/Factorial";
    assert_eq!(exposition.kind("labmq_server_grpc_calls"), "counter");
    assert_eq!(
        exposition.value(
            "labmq_server_grpc_calls_total",
            &[("method", factorial), ("code", "OK")]
        ),
        3.0
    );
    assert_eq!(
        exposition.value(
            "labmq_server_grpc_calls_total",
            &[("method", factorial), ("code", "INVALID_ARGUMENT")]
        ),
        2.0
    );
    assert_eq!(
        exposition.sum("labmq_server_grpc_calls_total", &[]),
        5.0,
        "no other call was made"
    );
    assert_eq!(
        exposition.kind("labmq_server_grpc_call_duration_seconds"),
        "histogram"
    );
    assert_eq!(
        exposition.value(
            "labmq_server_grpc_call_duration_seconds_count",
            &[("method", factorial)]
        ),
        5.0
    );
    assert_eq!(
        exposition.value(
            "labmq_server_grpc_call_duration_seconds_bucket",
            &[("method", factorial), ("le", "+Inf")]
        ),
        5.0
    );
    assert_eq!(
        exposition.value("labmq_server_grpc_calls_in_flight", &[]),
        0.0
    );
    assert_process_metrics(&exposition, server.daemon.pid());

    // An unknown method is answered UNIMPLEMENTED and counted under "other", whatever
    // its name: client text never becomes a label.
    let mut raw = tonic::client::Grpc::new(
        tonic::transport::Endpoint::from_shared(server.url())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect"),
    );
    raw.ready().await.expect("ready");
    let unknown = raw
        .unary::<FactorialRequest, labmq::grpc::proto::FactorialResponse, _>(
            tonic::Request::new(FactorialRequest { n: 1 }),
            "/message.MessageService/NoSuchMethodXYZ"
                .parse()
                .expect("path"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("unknown method");
    assert_eq!(unknown.code(), Code::Unimplemented);
    let exposition = tokio::task::spawn_blocking(move || scrape_parsed(addr))
        .await
        .expect("scrape");
    assert_eq!(
        exposition.value(
            "labmq_server_grpc_calls_total",
            &[("method", "other"), ("code", "UNIMPLEMENTED")]
        ),
        1.0
    );
    assert!(!exposition.text.contains("NoSuchMethodXYZ"));
}

/// The whole pipeline with metrics on: tasks go through RabbitMQ and labmq-server (first
/// down, so tasks retry), results come back, labmq-web submits and ingests; every
/// daemon's counters say exactly what happened.
#[test]
fn pipeline_daemons_count_their_work() {
    // labmq-server is not up yet: the consumer's first calls fail and are retried.
    let grpc_addr = free_addr();
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[format!("http://{grpc_addr}")])
        .with_extra("metrics_listen = \"127.0.0.1:0\"\n");
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let mut consumer = setup.start();
    let consumer_metrics = metrics_addr(&mut consumer, READY_TIMEOUT);
    assert_eq!(
        procfs::listening_ports(consumer.pid()),
        vec![consumer_metrics.port()],
        "the consumer's only listener is its metrics one"
    );
    let connected = scrape_parsed(consumer_metrics);
    assert_eq!(connected.value("labmq_consumer_broker_connected", &[]), 1.0);

    let mut ids = produce_tasks(SHARED_AMQP_URL, &setup.queue, &mixed_tasks(20));
    // labmq-produce refuses what does not parse: two bad bodies published directly.
    let amqp = Amqp::connect(SHARED_AMQP_URL);
    for (id, body) in [("bad-1", "freq:"), ("bad-2", "fact:nope")] {
        amqp.publish(
            &setup.queue,
            body.as_bytes(),
            BasicProperties::default().with_message_id(id.into()),
        );
        ids.push(id.to_owned());
    }
    scrape_until(consumer_metrics, WAIT, "a failed gRPC call", |e| {
        e.sum(
            "labmq_consumer_grpc_calls_total",
            &[("code", "UNAVAILABLE")],
        ) >= 1.0
    });
    let mut server = ServerOptions {
        listen: grpc_addr.to_string(),
        args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..ServerOptions::default()
    }
    .start();
    let server_metrics = metrics_addr(&mut server.daemon, READY_TIMEOUT);
    watch.counter.wait_for_all(&ids, WAIT);

    let consumer_view = scrape_until(consumer_metrics, WAIT, "22 tasks", |e| {
        e.sum("labmq_consumer_tasks_total", &[]) >= 22.0
    });
    let c = &consumer_view;
    assert_eq!(c.sum("labmq_consumer_tasks_total", &[]), 22.0);
    for kind in ["ab", "factorial", "frequent_letter", "upper"] {
        assert_eq!(
            c.value(
                "labmq_consumer_tasks_total",
                &[("kind", kind), ("outcome", "ok")]
            ),
            5.0,
            "{kind}"
        );
    }
    assert_eq!(
        c.sum("labmq_consumer_tasks_total", &[("outcome", "failed")]),
        2.0
    );
    assert_eq!(
        c.value(
            "labmq_consumer_dead_letters_total",
            &[("code", "INVALID_TASK")]
        ),
        2.0
    );
    assert_eq!(
        c.sum("labmq_consumer_task_duration_seconds_count", &[]),
        22.0
    );
    assert_eq!(c.kind("labmq_consumer_task_duration_seconds"), "histogram");
    assert_eq!(
        c.value("labmq_consumer_message_duration_seconds_count", &[]),
        22.0
    );
    // Every valid task ends with one answered call; every other call was retried.
    let answered = c.sum("labmq_consumer_grpc_calls_total", &[("code", "OK")]);
    assert_eq!(answered, 20.0);
    let calls = c.sum("labmq_consumer_grpc_calls_total", &[]);
    let retries = c.value("labmq_consumer_task_retries_total", &[]);
    assert!(retries >= 1.0, "the server was down at first: {retries}");
    assert_eq!(retries, calls - 20.0, "retries = calls - tasks that called");
    assert_eq!(
        c.sum("labmq_consumer_grpc_call_duration_seconds_count", &[]),
        calls
    );
    assert_eq!(c.value("labmq_consumer_messages_in_flight", &[]), 0.0);
    assert_eq!(c.value("labmq_consumer_broker_connected", &[]), 1.0);
    assert_eq!(c.value("labmq_consumer_broker_reconnects_total", &[]), 0.0);
    assert_eq!(c.value("labmq_consumer_requeues_total", &[]), 0.0);
    assert_process_metrics(c, consumer.pid());
    assert_example_alerts_use_exported_names(c);

    // The server answered the 20 valid tasks (failed calls never reached it): each in a
    // unary call of its method or inside a ComputeBatch call, counted there by method.
    let s = scrape_parsed(server_metrics);
    for method in [
        "AssignAB",
        "Factorial",
        "MostFrequentLetter",
        "ProcessMessage",
    ] {
        let unary = s.sum(
            "labmq_server_grpc_calls_total",
            &[
                ("method", &format!("message.MessageService/{method}")),
                ("code", "OK"),
            ],
        );
        let batched = s.sum(
            "labmq_server_batch_tasks_total",
            &[("method", method), ("code", "OK")],
        );
        assert_eq!(
            unary + batched,
            5.0,
            "{method}: {unary} unary, {batched} batched"
        );
    }
    let batches = s.sum(
        "labmq_server_grpc_calls_total",
        &[
            ("method", "message.MessageService/ComputeBatch"),
            ("code", "OK"),
        ],
    );
    assert_eq!(
        s.sum("labmq_server_grpc_calls_total", &[("code", "OK")]) - batches
            + s.sum("labmq_server_batch_tasks_total", &[("code", "OK")]),
        20.0
    );

    // labmq-web on the same queue and results exchange, metrics on.
    let mut web_setup = WebSetup::for_consumer(&setup);
    web_setup.extra = "metrics = true\n".into();
    let web = web_setup.start_healthy();
    let web_ids = web.submit_ok(&["fact:4", "upper:x", "fact:nope"]);
    assert_eq!(web_ids.len(), 2);
    let (status, _) = web.submit(&[]);
    assert_eq!(status, 400, "a submit without tasks");
    web.wait_results(&web_ids, WAIT);
    let w = scrape_until(web.addr, WAIT, "2 ingested results", |e| {
        e.value("labmq_web_results_ingested_total", &[]) >= 2.0
    });
    assert_eq!(
        w.value("labmq_web_submits_total", &[("outcome", "accepted")]),
        1.0
    );
    assert_eq!(
        w.value("labmq_web_submits_total", &[("outcome", "no_tasks")]),
        1.0
    );
    assert_eq!(
        w.value(
            "labmq_web_tasks_submitted_total",
            &[("outcome", "published")]
        ),
        2.0
    );
    assert_eq!(
        w.value(
            "labmq_web_tasks_submitted_total",
            &[("outcome", "rejected")]
        ),
        1.0
    );
    // Its results queue was bound when it started: it holds exactly the web's results.
    assert_eq!(w.value("labmq_web_results_ingested_total", &[]), 2.0);
    assert_eq!(w.value("labmq_web_broker_connected", &[]), 1.0);
    assert_process_metrics(&w, web.daemon.pid());
    let c = scrape_until(consumer_metrics, WAIT, "24 tasks", |e| {
        e.sum("labmq_consumer_tasks_total", &[]) >= 24.0
    });
    assert_eq!(c.sum("labmq_consumer_tasks_total", &[]), 24.0);
}

#[test]
fn metrics_are_off_by_default() {
    let server = ServerOptions::default().start();
    assert_eq!(
        procfs::listening_ports(server.daemon.pid()),
        vec![server.addr.port()],
        "only the gRPC listener"
    );
    assert!(!server.daemon.stderr().contains("Prometheus"));

    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let consumer = setup.start();
    assert_eq!(
        procfs::listening_ports(consumer.pid()),
        Vec::<u16>::new(),
        "the consumer listens on nothing"
    );

    let web_setup = WebSetup::for_consumer(&setup);

    let web = web_setup.start();
    assert_eq!(web.get("/metrics").status(), 404);
}

#[test]
fn bad_metrics_listen_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (program, file) in [(SERVER_BIN, "server.toml"), (CONSUMER_BIN, "consumer.toml")] {
        let path = dir.path().join(file);
        std::fs::write(&path, "metrics_listen = \"localhost:9\"\n").expect("write config");
        let config = path.to_str().expect("utf-8");
        let output = run(program, &["--config", config, "--check-config"], NO_ENV);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{program}: {stderr}");
        assert!(stderr.contains("metrics_listen"), "{program}: {stderr}");
        assert!(stderr.contains("localhost:9"), "{program}: {stderr}");

        std::fs::write(&path, "").expect("write config");
        let output = run(
            program,
            &[
                "--config",
                config,
                "--check-config",
                "--metrics-listen",
                "nowhere",
            ],
            NO_ENV,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{program}: {stderr}");
        assert!(stderr.contains("metrics_listen"), "{program}: {stderr}");
    }
    // The gRPC address twice.
    let path = dir.path().join("same.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:50999\"\nmetrics_listen = \"127.0.0.1:50999\"\n",
    )
    .expect("write config");
    let output = run(
        SERVER_BIN,
        &["--config", path.to_str().expect("utf-8"), "--check-config"],
        NO_ENV,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("metrics_listen"), "{stderr}");
}

/// Peers that connect to the metrics port and say nothing fill every slot; the header
/// timeout closes them, so they do not hold a slot forever, and a scrape gets through.
#[test]
fn silent_peers_do_not_hold_metrics_slots() {
    let mut server = ServerOptions {
        args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..ServerOptions::default()
    }
    .start();
    let addr = metrics_addr(&mut server.daemon, READY_TIMEOUT);
    let mut silent: Vec<TcpStream> = (0..labmq::daemon::metrics::MAX_CONNECTIONS + 4)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    // One peer that sends half a request line and stops.
    let mut partial = TcpStream::connect(addr).expect("connect");
    partial.write_all(b"GET /metr").expect("write");
    silent.push(partial);
    for stream in &mut silent {
        assert!(
            rawhttp::wait_closed(stream, Duration::from_secs(60)).is_some(),
            "a silent peer was still connected after 60 s"
        );
    }
    let exposition = scrape_parsed(addr);
    assert!(exposition.value("process_open_fds", &[]) > 0.0);
}

/// `promtool`: `LABMQ_PROMTOOL`, else on `PATH` (tests/run unpacks Debian's into
/// target/tools/bin and puts it there).
fn promtool() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("LABMQ_PROMTOOL") {
        return path.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|candidate| candidate.is_file())
        .expect(
            "promtool not found on PATH nor in LABMQ_PROMTOOL: tests/run installs it \
             (Debian's prometheus package, unpacked into target/tools/bin)",
        )
}

/// The README's scrape config and example alert rules are valid for Prometheus, and each
/// alert fires on the series that should trigger it (labmq-alerts.test.yml).
#[test]
fn example_scrape_config_and_alert_rules_pass_promtool() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/prometheus");
    for args in [
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "labmq-alerts.test.yml"],
    ] {
        let mut command = isolated_command(promtool(), NO_ENV);
        command.args(args).current_dir(&dir);
        let out = output_within(command, COMMAND_TIMEOUT);
        assert!(
            out.status.success(),
            "promtool {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every labmq metric the example alerts use is one the consumer exports once it has
/// done work (the rules would otherwise never fire).
fn assert_example_alerts_use_exported_names(consumer: &Exposition) {
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/prometheus/labmq-alerts.yml"),
    )
    .expect("read labmq-alerts.yml");
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("labmq_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 3, "{used:?}");
    for name in used {
        assert!(
            consumer.text.lines().any(|line| line.starts_with(name)),
            "the example alerts use {name}, which labmq-consumer does not export:\n{}",
            consumer.text
        );
    }
}

/// Under load labmq-consumer sends small tasks in `ComputeBatch` calls; a server that
/// refuses batches (here one with `max_batch_tasks = 1`, as an older server answers
/// UNIMPLEMENTED) still gets every task, one call each, and the consumer says why.
#[test]
fn small_tasks_go_in_batches_and_a_server_refusing_batches_still_answers_every_task() {
    const TASKS: usize = 1000;
    for (server_config, batches_allowed) in [("", true), ("max_batch_tasks = 1\n", false)] {
        let mut server = ServerOptions {
            config: server_config.into(),
            args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
            ..ServerOptions::default()
        }
        .start();
        let server_metrics = metrics_addr(&mut server.daemon, READY_TIMEOUT);
        let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
        let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
        let mut consumer = setup.start();
        let ids = produce_tasks(SHARED_AMQP_URL, &setup.queue, &mixed_tasks(TASKS));
        let seen = watch.counter.wait_for_all(&ids, WAIT);
        for (id, (_, document)) in &seen {
            assert_eq!(document["ok"], true, "{id}: {document}");
        }
        let s = scrape_parsed(server_metrics);
        let batch_method = ("method", "message.MessageService/ComputeBatch");
        let batches = s.sum(
            "labmq_server_grpc_calls_total",
            &[batch_method, ("code", "OK")],
        );
        let batched = s.sum("labmq_server_batch_tasks_total", &[("code", "OK")]);
        let unary = s.sum("labmq_server_grpc_calls_total", &[("code", "OK")]) - batches;
        assert_eq!(
            unary + batched,
            TASKS as f64,
            "{server_config:?}: {unary} unary, {batched} in {batches} batches"
        );
        assert!(consumer.stop(EXIT_TIMEOUT).success());
        let log = consumer.stderr();
        if batches_allowed {
            assert!(
                batched > batches,
                "no batch held two tasks: {batched} tasks in {batches} batches"
            );
            assert!(!log.contains("refused a batch"), "{log}");
        } else {
            let refused = s.sum(
                "labmq_server_grpc_calls_total",
                &[batch_method, ("code", "INVALID_ARGUMENT")],
            );
            assert!(refused >= 1.0, "no batch was refused");
            assert_eq!(batched, batches, "only batches of one task are taken");
            assert!(
                log.contains("refused a batch") && log.contains("max_batch_tasks"),
                "{log}"
            );
        }
    }
}
