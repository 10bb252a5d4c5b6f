//! The asynchronous pipeline end to end over the real broker: labmq-produce →
//! RabbitMQ → labmq-consumer → labmq-server → results on the results exchange and via
//! `--wait`. Each test uses its own queue and results exchange on the shared broker.

mod support;

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use support::amqp::{
    Amqp, ConsumerSetup, ResultWatch, mixed_tasks, produce, produce_tasks, unique,
    wait_status_containing,
};
use support::rabbit::{SHARED_AMQP_URL, SharedBroker};
use support::{EXIT_TIMEOUT, Server, ServerOptions, spawn_server};

const RESULTS_TIMEOUT: Duration = Duration::from_secs(120);

fn server() -> Server {
    spawn_server("")
}

#[test]
fn produce_wait_prints_every_result() {
    let server = server();
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let _consumer = setup.start();
    let (code, stdout, stderr) = produce(
        SHARED_AMQP_URL,
        &[
            "--queue",
            &setup.queue,
            "--wait",
            "fact:6",
            "freq:abracadabra,upper:hello",
            "user0",
        ],
        "",
    );
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        vec![
            "fact:6 => 720",
            "freq:abracadabra => a (5 times)",
            "upper:hello => Processed by server: HELLO",
            "user0 => group A",
        ]
    );
}

#[test]
fn results_exchange_gets_one_document_per_task_with_values() {
    let server = server();
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let _consumer = setup.start();
    let counter = &watch.counter;

    let tasks: Vec<String> = ["fact:20", "freq:Привет мир", "user1", "upper:привет"]
        .map(String::from)
        .to_vec();
    let ids = produce_tasks(SHARED_AMQP_URL, &setup.queue, &tasks);
    let seen = counter.wait_for_all(&ids, RESULTS_TIMEOUT);
    let doc = |i: usize| &seen[&ids[i]].1;

    assert_eq!(doc(0)["kind"], "factorial");
    assert_eq!(doc(0)["result"]["result"], "2432902008176640000");
    assert_eq!(doc(1)["result"]["letter"], "р");
    assert_eq!(doc(1)["result"]["count"], 2);
    assert_eq!(doc(2)["result"]["group"], "B");
    assert_eq!(
        doc(3)["result"]["processed_text"],
        "Processed by server: ПРИВЕТ"
    );
    for (id, (_, document)) in &seen {
        assert_eq!(document["ok"], true, "{document}");
        assert_eq!(document["attempts"], 1);
        assert!(
            document["processed_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        assert!(document["duration_ms"].as_f64().is_some());
        assert_eq!(&document["id"], id.as_str());
    }
}

#[test]
fn results_queue_keeps_the_newest_results_up_to_its_length() {
    let server = server();
    let kept_queue = unique("kept");
    // One task at a time, so the results arrive in the order the tasks were sent.
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]).with_extra(&format!(
        "results_queue = {kept_queue:?}\nresults_queue_max_length = 3\nconcurrency = 1\nprefetch = 1\n"
    ));
    let amqp = Amqp::connect(SHARED_AMQP_URL);
    let _consumer = setup.start();
    let (code, stdout, stderr) = produce(
        SHARED_AMQP_URL,
        &[
            "--queue",
            &setup.queue,
            "--wait",
            "fact:1",
            "fact:2",
            "fact:3",
            "fact:4",
            "fact:5",
        ],
        "",
    );
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let kept: Vec<String> = amqp
        .drain(&kept_queue)
        .iter()
        .map(|(body, _)| {
            let document: Value = serde_json::from_slice(body).expect("a result document");
            document["task"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    amqp.delete_queue(&kept_queue);
    assert_eq!(
        kept,
        ["fact:3", "fact:4", "fact:5"],
        "the newest 3 of 5 results"
    );
}

#[test]
fn plain_body_without_properties_is_a_task_and_list_bodies_split() {
    let server = server();
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let amqp = &watch.amqp;
    // Declared the way a plain pika producer declares it: durable, no arguments.
    amqp.declare_queue(&setup.queue, FieldTable::default());
    let _consumer = setup.start();
    let counter = &watch.counter;

    amqp.publish(&setup.queue, b"fact:6", BasicProperties::default());
    amqp.publish(&setup.queue, b"fact:3, user0", BasicProperties::default());
    counter.wait_for_count(3, RESULTS_TIMEOUT);
    let single = lapin_free_id(b"fact:6");
    let list = lapin_free_id(b"fact:3, user0");
    let seen = counter.wait_for_all(
        &[single.clone(), format!("{list}#1"), format!("{list}#2")],
        RESULTS_TIMEOUT,
    );
    assert_eq!(seen[&single].1["result"]["result"], "720");
    assert_eq!(seen[&format!("{list}#1")].1["result"]["result"], "6");
    assert_eq!(seen[&format!("{list}#2")].1["result"]["group"], "A");
}

/// The id the consumer derives for a message without `message_id`.
fn lapin_free_id(body: &[u8]) -> String {
    labmq::consumer::handle::derived_id(body)
}

#[test]
fn reply_to_gets_the_result_with_correlation_id() {
    let server = server();
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let amqp = Amqp::connect(SHARED_AMQP_URL);
    let replies = unique("replies");
    amqp.declare_queue(&replies, FieldTable::default());
    let _consumer = setup.start();
    amqp.declare_queue(&setup.queue, FieldTable::default());
    amqp.publish(
        &setup.queue,
        b"upper:abc",
        BasicProperties::default()
            .with_reply_to(replies.as_str().into())
            .with_correlation_id("corr-1".into()),
    );
    let deadline = std::time::Instant::now() + RESULTS_TIMEOUT;
    let reply = loop {
        if let Some(message) = amqp.drain(&replies).pop() {
            break message;
        }
        assert!(std::time::Instant::now() < deadline, "no reply");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        reply.1.correlation_id().as_ref().map(|c| c.as_str()),
        Some("corr-1")
    );
    let document: Value = serde_json::from_slice(&reply.0).unwrap();
    assert_eq!(
        document["result"]["processed_text"],
        "Processed by server: ABC"
    );
    amqp.delete_queue(&replies);
}

#[test]
fn competing_consumers_share_the_work_and_lose_nothing() {
    let server = server();
    // Per-task records are at debug.
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()])
        .with_extra("prefetch = 10\nconcurrency = 4\nlog_level = \"info,labmq=debug\"");
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let mut first = setup.start();
    let mut second = setup.start();
    let counter = &watch.counter;

    let ids = produce_tasks(SHARED_AMQP_URL, &setup.queue, &mixed_tasks(2000));
    let seen = counter.wait_for_all(&ids, RESULTS_TIMEOUT);
    assert_eq!(seen.len(), 2000);
    assert!(first.stop(EXIT_TIMEOUT).success());
    assert!(second.stop(EXIT_TIMEOUT).success());
    let processed = |stderr: String| stderr.matches("task processed").count();
    let (a, b) = (processed(first.stderr()), processed(second.stderr()));
    assert!(a + b >= 2000, "{a} + {b}");
    assert!(
        a >= 200 && b >= 200,
        "work not spread: first {a}, second {b}"
    );
}

#[test]
fn one_of_two_grpc_servers_killed_mid_stream_loses_nothing() {
    let mut doomed = server();
    let survivor = server();
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[doomed.url(), survivor.url()]);
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let _consumer = setup.start();
    let counter = &watch.counter;

    let ids = produce_tasks(SHARED_AMQP_URL, &setup.queue, &mixed_tasks(3000));
    counter.wait_for_count(500, RESULTS_TIMEOUT);
    support::send_signal(doomed.daemon.pid(), libc::SIGKILL);
    let _ = doomed.daemon.wait_exit(EXIT_TIMEOUT);
    let seen = counter.wait_for_all(&ids, RESULTS_TIMEOUT);
    let errors: Vec<&Value> = seen
        .values()
        .map(|(_, d)| d)
        .filter(|d| d["ok"] != true)
        .collect();
    assert!(
        errors.is_empty(),
        "tasks failed: {:?}",
        &errors[..errors.len().min(3)]
    );
}

/// `queue_type = "quorum"` declares the task queue and its dead-letter queue as quorum
/// queues; a task goes through. Queue declarations differ by version (4.x names the
/// classic type where 3.x names none), so on both brokers.
fn quorum_queue_type_declares_quorum_queues(broker: &SharedBroker) {
    eprintln!("{}", broker.describe());
    let server = server();
    let setup =
        ConsumerSetup::new(broker.url, &[server.url()]).with_extra("queue_type = \"quorum\"");
    let mut consumer = setup.start();
    let listing = broker.ctl(&[
        "list_queues",
        "name",
        "type",
        "--no-table-headers",
        "--quiet",
    ]);
    let type_of = |name: &str| {
        listing.lines().find_map(|l| {
            l.split_once('\t')
                .filter(|(n, _)| *n == name)
                .map(|(_, t)| t.trim().to_owned())
        })
    };
    assert_eq!(
        type_of(&setup.queue).as_deref(),
        Some("quorum"),
        "{listing}"
    );
    assert_eq!(
        type_of(&format!("{}.dead", setup.queue)).as_deref(),
        Some("quorum"),
        "{listing}"
    );
    // And it works: a task goes through.
    let (code, stdout, stderr) = produce(
        broker.url,
        &["--queue", &setup.queue, "--wait", "fact:5"],
        "",
    );
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert_eq!(stdout.trim(), "fact:5 => 120");
    assert!(consumer.stop(EXIT_TIMEOUT).success());
}

#[test]
fn produce_exit_status_broker_down_is_3_without_password() {
    let url = format!(
        "amqp://guest:hunter2secret@127.0.0.1:{}/%2f",
        support::free_port()
    );
    let (code, stdout, stderr) = produce(&url, &["fact:1"], "");
    assert_eq!(code, 3, "{stdout} {stderr}");
    assert!(stderr.contains("cannot connect to RabbitMQ"), "{stderr}");
    assert!(!stderr.contains("hunter2secret") && !stdout.contains("hunter2secret"));
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
}

#[test]
fn produce_exit_status_wrong_credentials_is_3() {
    let url = "amqp://guest:wrong-password-x@127.0.0.1:5672/%2f";
    let (code, _, stderr) = produce(url, &["fact:1"], "");
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("ACCESS_REFUSED"), "{stderr}");
    assert!(!stderr.contains("wrong-password-x"), "{stderr}");
}

#[test]
fn produce_exit_status_unconfirmed_is_4() {
    // A queue that rejects every publish makes the broker nack it.
    let amqp = Amqp::connect(SHARED_AMQP_URL);
    let queue = unique("full");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    amqp.declare_queue(&queue, arguments);
    let (code, _, stderr) = produce(SHARED_AMQP_URL, &["--queue", &queue, "fact:1", "user7"], "");
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("2 of 2 tasks were not confirmed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("fact:1") && stderr.contains("user7"),
        "{stderr}"
    );
    amqp.delete_queue(&queue);
}

#[test]
fn produce_exit_status_wait_timeout_is_5() {
    let queue = unique("nobody");
    let (code, _, stderr) = produce(
        SHARED_AMQP_URL,
        &["--queue", &queue, "--wait", "--timeout", "1", "fact:1"],
        "",
    );
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains("timed out waiting for 1 of 1 results: fact:1"),
        "{stderr}"
    );
    Amqp::connect(SHARED_AMQP_URL).delete_queue(&queue);
}

#[test]
fn produce_rejects_invalid_tasks_before_publishing() {
    let queue = unique("invalid");
    let (code, _, stderr) = produce(
        SHARED_AMQP_URL,
        &["--queue", &queue, "fact:6", "fact:abc"],
        "",
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("invalid task \"fact:abc\""), "{stderr}");
    assert!(stderr.contains("nothing was published"), "{stderr}");
    let (code, _, stderr) = produce(SHARED_AMQP_URL, &["--queue", &queue, "-"], "\n\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no tasks"), "{stderr}");
}

#[test]
fn produce_stdin_with_many_tasks_is_one_connection() {
    let queue = unique("bulk");
    let tasks: Vec<String> = (1..=5000).map(|i| format!("fact:{i}")).collect();
    let (code, stdout, stderr) = produce(
        SHARED_AMQP_URL,
        &["--queue", &queue, "-"],
        &tasks.join("\n"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("published 5000 task(s) to {queue} (confirmed by the broker)")
    );
    let amqp = Amqp::connect(SHARED_AMQP_URL);
    assert_eq!(amqp.ready_count(&queue), 5000);
    let (_, properties) = amqp.drain(&queue).into_iter().next().expect("a message");
    assert_eq!(properties.delivery_mode(), &Some(2));
    assert_eq!(
        properties.content_type().as_ref().map(|c| c.as_str()),
        Some("text/plain")
    );
    assert!(properties.message_id().is_some());
    assert!(properties.timestamp().is_some());
    amqp.delete_queue(&queue);
}

#[test]
fn consumer_waits_for_missing_server_and_reports_status() {
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[format!("http://{addr}")]);
    let mut consumer = setup.start();
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let counter = &watch.counter;
    let ids = produce_tasks(SHARED_AMQP_URL, &setup.queue, &["fact:4".to_owned()]);
    let status = wait_status_containing(
        &mut consumer,
        "gRPC server unavailable",
        Duration::from_secs(30),
    );
    assert!(status.contains("retrying"), "{status}");
    let _server = ServerOptions {
        listen: addr,
        ..ServerOptions::default()
    }
    .start();
    let seen = counter.wait_for_all(&ids, RESULTS_TIMEOUT);
    let document = &seen[&ids[0]].1;
    assert_eq!(document["result"]["result"], "24");
    assert!(document["attempts"].as_u64().unwrap() > 1, "{document}");
    assert!(consumer.stop(EXIT_TIMEOUT).success());
    let log = consumer.stderr();
    assert_eq!(
        log.matches("gRPC server unavailable").count(),
        1,
        "logged once per outage, not per retry:\n{log}"
    );
    assert!(log.contains("gRPC server reachable again"), "{log}");
}

/// Deleting the queue under a running consumer makes the broker cancel its subscription
/// (`basic.cancel`): the consumer says so once, with the reason, keeps its connection,
/// declares the queue again and subscribes again; a producer publishing to the queue
/// then gets its answer. What the broker sends on a cancel differs by version, so on
/// both brokers.
fn consumer_cancelled_by_the_broker_recovers(broker: &SharedBroker) {
    eprintln!("{}", broker.describe());
    let server = server();
    let setup = ConsumerSetup::new(broker.url, &[server.url()]);
    let watch = ResultWatch::start(broker.url, &setup.results_exchange);
    let amqp = &watch.amqp;
    let mut consumer = setup.start();
    let counter = &watch.counter;

    amqp.delete_queue(&setup.queue);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let consuming = format!("INFO consuming from {} on", setup.queue);
    // Subscribed a second time.
    while consumer.stderr().matches(&consuming).count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            consumer.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = consumer.stderr();
    let cancelled = format!(
        "the broker cancelled the subscription to {q}: queue {q} was deleted",
        q = setup.queue
    );
    assert_eq!(log.matches(&cancelled).count(), 1, "{log}");
    // The same connection: no reconnect, no outage line, nothing logged as an error.
    assert!(!log.contains(" ERROR "), "{log}");
    assert_eq!(
        log.matches("connected to RabbitMQ node").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("broker unavailable"), "{log}");
    // A producer declares the queue (as pika would, or labmq-produce) and publishes.
    let ids = produce_tasks(broker.url, &setup.queue, &["fact:5".to_owned()]);
    let seen = counter.wait_for_all(&ids, RESULTS_TIMEOUT);
    assert_eq!(seen[&ids[0]].1["result"]["result"], "120");
    assert!(consumer.try_exit_status().is_none(), "consumer exited");
    assert!(consumer.stop(EXIT_TIMEOUT).success());
}

/// A clean stop is quiet: SIGTERM while tasks flow (some done, some in flight, more
/// prefetched) drains, exits 0 and logs INFO lines only. Before, lapin closing the
/// dropped channels after the connection's close had begun logged `ERROR Connection
/// error error=invalid channel state: Closing` on every stop.
fn sigterm_drains_and_logs_nothing_above_info(broker: &SharedBroker) {
    eprintln!("{}", broker.describe());
    let server = server();
    let setup = ConsumerSetup::new(broker.url, &[server.url()]);
    let watch = ResultWatch::start(broker.url, &setup.results_exchange);
    let mut consumer = setup.start();
    produce_tasks(broker.url, &setup.queue, &mixed_tasks(2000));
    watch.counter.wait_for_count(200, RESULTS_TIMEOUT);
    consumer.terminate();
    let status = consumer.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "{status}\n{}", consumer.stderr());
    let log = consumer.stderr();
    for line in log.lines() {
        assert!(
            !line.contains(" ERROR ") && !line.contains(" WARN "),
            "a clean stop logged: {line}\n{log}"
        );
    }
    for said in ["draining in-flight tasks", "labmq-consumer stopped"] {
        assert!(log.contains(said), "{said:?} missing:\n{log}");
    }
}

crate::on_brokers!(
    shared: quorum_queue_type_declares_quorum_queues,
    consumer_cancelled_by_the_broker_recovers,
    sigterm_drains_and_logs_nothing_above_info,
);

/// At info, a busy consumer writes summaries, not a record per task: tasks by kind and
/// outcome add up to what was processed; failures are logged at warn up to a rate, and
/// every failure record held back is counted in a later record.
#[test]
fn info_log_summarizes_tasks_and_counts_held_back_failures() {
    let server = server();
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()])
        .with_extra("log_level = \"info\"\nlog_summary_secs = 1\n");
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let mut consumer = setup.start();

    produce_tasks(SHARED_AMQP_URL, &setup.queue, &mixed_tasks(400));
    // One message of 30 bad tasks: 30 failed results, logged in one burst.
    let bad: Vec<String> = (0..30).map(|i| format!("fact:x{i}")).collect();
    Amqp::connect(SHARED_AMQP_URL).publish(
        &setup.queue,
        bad.join(",").as_bytes(),
        BasicProperties::default().with_message_id("bad-list".into()),
    );
    watch.counter.wait_for_count(430, RESULTS_TIMEOUT);
    // SIGTERM: the last summary covers whatever the previous ones did not.
    assert!(consumer.stop(EXIT_TIMEOUT).success());
    let log = consumer.stderr();

    assert_eq!(
        log.matches("task processed").count(),
        0,
        "per-task records are debug"
    );
    let number_before = |line: &str, marker: &str| -> u64 {
        let head = &line[..line
            .find(marker)
            .unwrap_or_else(|| panic!("{marker} in {line}"))];
        head.split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a number before {marker:?} in {line}"))
    };
    let held = |line: &str| {
        if line.contains("failure record(s) held back") {
            number_before(
                &line.replace("earlier ", ""),
                " failure record(s) held back",
            )
        } else {
            0
        }
    };
    let failure_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("task failed; message dead-lettered"))
        .collect();
    let summaries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tasks in the last "))
        .collect();
    let ok: u64 = summaries.iter().map(|l| number_before(l, " ok, ")).sum();
    let failed: u64 = summaries
        .iter()
        .map(|l| number_before(l, " failed ("))
        .sum();
    assert_eq!(
        (ok, failed),
        (400, 30),
        "summaries add up:\n{}",
        summaries.join("\n")
    );
    assert!(
        summaries
            .iter()
            .all(|l| l.contains("p50 ") && l.contains("p99 "))
    );
    let held_back: u64 = failure_lines
        .iter()
        .chain(summaries.iter())
        .map(|l| held(l))
        .sum();
    assert!(
        failure_lines.len() as u64 <= 30 && held_back > 0,
        "30 failures at once exceed the warn budget: {} logged, {held_back} held back",
        failure_lines.len()
    );
    assert_eq!(
        failure_lines.len() as u64 + held_back,
        30,
        "every failure is logged or counted as held back\n{log}"
    );
    assert!(
        log.lines().count() < 120,
        "430 tasks made {} lines of log at info\n{log}",
        log.lines().count()
    );
}
