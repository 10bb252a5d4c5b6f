//! Fault tests: things are killed and restarted in the middle of a stream of tasks, and
//! every task must still get its result (duplicates are allowed and reported). The broker
//! restart runs on a private RabbitMQ node; the others use their own queues on the shared
//! broker.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use support::amqp::{
    ConsumerSetup, ResultWatch, mixed_tasks, produce, produce_tasks, wait_status_containing,
};
use support::metrics::{Exposition, metrics_addr, scrape};
use support::rabbit::{PrivateBroker, Rabbit, SHARED_AMQP_URL};
use support::{
    Daemon, EXIT_TIMEOUT, READY_TIMEOUT, Server, ServerOptions, free_addr, send_signal,
    spawn_server,
};

const ALL_RESULTS_TIMEOUT: Duration = Duration::from_secs(300);

/// Asserts every result is a success and reports duplicates on stderr.
fn check_all_ok(name: &str, seen: &HashMap<String, (u32, Value)>, expected: usize) {
    assert_eq!(seen.len(), expected, "{name}: distinct results");
    let failed: Vec<&Value> = seen
        .values()
        .map(|(_, d)| d)
        .filter(|d| d["ok"] != true)
        .collect();
    assert!(
        failed.is_empty(),
        "{name}: {} failed, e.g. {}",
        failed.len(),
        failed[0]
    );
    let duplicates: u32 = seen.values().map(|(n, _)| n - 1).sum();
    eprintln!("{name}: {expected} tasks, {expected} results, {duplicates} duplicate deliveries");
}

#[test]
fn broker_restarted_mid_stream_of_10000_loses_nothing() {
    let broker = PrivateBroker::start(Rabbit::V4_0);
    let url = broker.url();
    let server = spawn_server("");
    let setup = ConsumerSetup::new(&url, &[server.url()]);
    let watch = ResultWatch::start(&url, &setup.results_exchange);
    let mut consumer = setup.start();
    let counter = &watch.counter;

    let ids = produce_tasks(&url, &setup.queue, &mixed_tasks(10_000));
    counter.wait_for_count(2_000, ALL_RESULTS_TIMEOUT);
    broker.stop_app();
    wait_status_containing(&mut consumer, "reconnecting", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    broker.start_app();
    let seen = counter.wait_for_all(&ids, ALL_RESULTS_TIMEOUT);
    check_all_ok("broker restart", &seen, 10_000);
    assert!(consumer.stop(EXIT_TIMEOUT).success());
    let log = consumer.stderr();
    assert!(log.contains("broker unavailable; reconnecting"), "{log}");
}

#[test]
fn disk_alarm_produce_wait_exits_4_within_its_timeout() {
    let broker = PrivateBroker::start(Rabbit::V4_0);
    let url = broker.url();
    let queue = support::amqp::unique("alarm");
    broker.set_disk_alarm(true);
    // The broker withholds the confirm; --timeout bounds the whole command, so the
    // answer comes after 2 s, not after --confirm-timeout (30 s).
    let (code, _, stderr) = produce(
        &url,
        &["--queue", &queue, "--wait", "--timeout", "2", "fact:5"],
        "",
    );
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("1 of 1 tasks were not confirmed by the broker: fact:5")
            && stderr.contains("no confirm within 2s"),
        "{stderr}"
    );
    broker.set_disk_alarm(false);
    let (code, stdout, stderr) = produce(&url, &["--queue", &queue, "fact:5"], "");
    assert_eq!(
        code, 0,
        "publishing works again once the alarm clears: {stderr}"
    );
    assert!(stdout.contains("confirmed by the broker"), "{stdout}");
}

#[test]
fn grpc_server_down_for_10s_mid_stream_loses_nothing() {
    let addr = free_addr();
    let server_options = ServerOptions {
        listen: addr.to_string(),
        ..ServerOptions::default()
    };
    let mut server = server_options.start();
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let mut consumer = setup.start();
    let counter = &watch.counter;

    let ids = produce_tasks(SHARED_AMQP_URL, &setup.queue, &mixed_tasks(5_000));
    counter.wait_for_count(1_000, ALL_RESULTS_TIMEOUT);
    send_signal(server.daemon.pid(), libc::SIGKILL);
    let _ = server.daemon.wait_exit(EXIT_TIMEOUT);
    wait_status_containing(
        &mut consumer,
        "gRPC server unavailable",
        Duration::from_secs(30),
    );
    // Tasks in flight when the server died are retried, not answered: once the results
    // published before the kill have been counted, nothing more may arrive.
    let during_outage = counter.wait_until_quiet(Duration::from_secs(2), Duration::from_secs(60));
    assert!(
        during_outage < 5_000,
        "all results arrived before the outage; the test proved nothing"
    );
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        counter.distinct(),
        during_outage,
        "results kept coming with the server down"
    );
    let _server = server_options.start();
    let seen = counter.wait_for_all(&ids, ALL_RESULTS_TIMEOUT);
    check_all_ok("gRPC outage", &seen, 5_000);
    assert!(consumer.stop(EXIT_TIMEOUT).success());
    // One outage: one line when it starts and one when it ends, whatever the retries.
    let log = consumer.stderr();
    assert_eq!(log.matches("gRPC server unavailable;").count(), 1, "{log}");
    assert_eq!(
        log.matches("gRPC server reachable again").count(),
        1,
        "{log}"
    );
}

/// RabbitMQ takes back a delivery that a consumer holds unacked longer than
/// `consumer_timeout` (30 min by default; 3 s here): 3.10 and 4.0 close the consumer's
/// channel (`PRECONDITION_FAILED - delivery acknowledgement … timed out`), 4.3 cancels the
/// consumer (`basic.cancel`) and keeps the channel. Either way a task waiting that long for
/// its gRPC server is redelivered to the consumer, which subscribes again: not lost, and
/// answered once the server starts. A quorum queue: 4.3 times out consumers of quorum
/// queues only.
fn a_task_held_past_consumer_timeout_is_redelivered_not_lost(rabbit: Rabbit) {
    let broker = PrivateBroker::start_with(rabbit, "consumer_timeout = 3000");
    let url = broker.url();
    let addr = free_addr();
    let server_options = ServerOptions {
        listen: addr.to_string(),
        ..ServerOptions::default()
    };
    let setup = ConsumerSetup::new(&url, &[format!("http://{addr}")])
        .with_extra("queue_type = \"quorum\"\n")
        .with_grace(2);
    let watch = ResultWatch::start(&url, &setup.results_exchange);
    let mut consumer = setup.start();
    let ids = produce_tasks(&url, &setup.queue, &["fact:7".to_owned()]);
    wait_status_containing(
        &mut consumer,
        "gRPC server unavailable",
        Duration::from_secs(30),
    );
    let told = if rabbit == Rabbit::V4_3 {
        "the broker cancelled the subscription"
    } else {
        "acknowledgement"
    };
    // The broker checks delivery timeouts periodically: allow it a generous while.
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    while !consumer.stderr().contains(told) {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker never timed out the held delivery ({told:?} not logged)\n{}",
            consumer.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        watch.counter.distinct(),
        0,
        "no result while the server is down"
    );
    let _server = server_options.start();
    let seen = watch.counter.wait_for_all(&ids, ALL_RESULTS_TIMEOUT);
    check_all_ok("consumer_timeout", &seen, 1);
    assert!(consumer.stop(EXIT_TIMEOUT).success());
    let log = consumer.stderr();
    if rabbit == Rabbit::V4_3 {
        // The reason names the consumer timeout among the causes of a cancel.
        assert!(log.contains("is held past consumer_timeout"), "{log}");
    }
}

/// Who declared the quorum task queue a held task sits in.
#[derive(Debug, Clone, Copy)]
enum DeclaredBy {
    /// labmq-consumer itself, with `queue_type = "quorum"`.
    Labmq,
    /// A plain client, as pika would (`x-queue-type = quorum`, no dead-letter target),
    /// or an earlier labmq: the consumer uses it as it is.
    PlainClient,
    /// Nobody asked for quorum: the vhost's `default_queue_type` is quorum and the
    /// consumer declares the queue with no type (`queue_type = "classic"`, the default).
    VhostDefault,
}

/// A task held while its gRPC server is down, its consumer stopped by `signal` and
/// started again 25 times, each time while it holds the task. Every such return may count
/// as a delivery towards the quorum queue's delivery limit (20 by default on RabbitMQ 4,
/// none on 3.x), beyond which RabbitMQ 4 drops a message that has no dead-letter target.
/// RabbitMQ 4.3 counts a closed connection (SIGKILL) but not the consumer's `basic.nack`
/// of a drain (SIGTERM); 3.10 and 4.0 count both. labmq-consumer reads the count
/// (`x-delivery-count`) and at `delivery_limit` (20) dead-letters the message itself,
/// unprocessed, with DELIVERY_LIMIT. Afterwards the task is in the queue or in `.dead`,
/// never gone, and is answered once the server runs (requeued from `.dead`).
fn held_task_survives_25_stops(rabbit: Rabbit, signal: libc::c_int, declared_by: DeclaredBy) {
    let broker = PrivateBroker::start(rabbit);
    let mut url = broker.url();
    let mut extra = String::new();
    match declared_by {
        DeclaredBy::Labmq | DeclaredBy::PlainClient => extra.push_str("queue_type = \"quorum\"\n"),
        DeclaredBy::VhostDefault => {
            broker.ctl(&[
                "add_vhost",
                "quorum-default",
                "--default-queue-type",
                "quorum",
            ]);
            broker.ctl(&[
                "set_permissions",
                "-p",
                "quorum-default",
                "guest",
                ".*",
                ".*",
                ".*",
            ]);
            url = url.replace("/%2f", "/quorum-default");
        }
    }
    let addr = free_addr();
    let setup = ConsumerSetup::new(&url, &[format!("http://{addr}")])
        .with_extra(&extra)
        .with_grace(1);
    let watch = ResultWatch::start(&url, &setup.results_exchange);
    let amqp = &watch.amqp;
    if let DeclaredBy::PlainClient = declared_by {
        let mut quorum = FieldTable::default();
        quorum.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        amqp.declare_queue(&setup.queue, quorum);
    }
    let dead_queue = format!("{}.dead", setup.queue);
    let ids = {
        // The consumer declares the queue (and its dead-letter queue) before the task
        // is published.
        let mut first = setup.start();
        let ids = produce_tasks(&url, &setup.queue, &["fact:7".to_owned()]);
        wait_holding(&mut first, &watch);
        stop_with(&mut first, signal);
        ids
    };
    let signal_name = if signal == libc::SIGKILL {
        "SIGKILL"
    } else {
        "SIGTERM"
    };
    for _ in 1..25 {
        let mut consumer = setup.start();
        wait_holding(&mut consumer, &watch);
        stop_with(&mut consumer, signal);
    }
    // One copy of the task, in the queue or in its dead-letter queue.
    let queued = amqp.ready_count(&setup.queue);
    let dead = amqp.ready_count(&dead_queue);
    assert_eq!(
        queued + dead,
        1,
        "{rabbit:?}, {signal_name}, {declared_by:?}: {queued} in {}, {dead} in {dead_queue}",
        setup.queue
    );
    let counted = !(rabbit == Rabbit::V4_3 && signal == libc::SIGTERM);
    if counted {
        // Each stop was a delivery: dead-lettered by the consumer at the 20th.
        assert_eq!(dead, 1, "{rabbit:?}, {signal_name}: not dead-lettered");
        let seen = watch.counter.wait_for_all(&ids, ALL_RESULTS_TIMEOUT);
        let document = &seen[&ids[0]].1;
        assert_eq!(document["ok"], false, "{document}");
        assert_eq!(document["error"]["code"], "DELIVERY_LIMIT", "{document}");
        assert!(
            document["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("delivery_limit (20)")),
            "{document}"
        );
        assert!(document["attempts"].as_u64() >= Some(19), "{document}");
        // Requeued from the dead-letter queue as an operator would: the same body and
        // message id, without the broker's count.
        let taken = amqp.drain(&dead_queue);
        let (body, properties) = &taken[0];
        let header = properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-labmq-error-code").cloned());
        assert_eq!(
            header,
            Some(AMQPValue::LongString("DELIVERY_LIMIT".into())),
            "{properties:?}"
        );
        amqp.publish(
            &setup.queue,
            body,
            BasicProperties::default().with_message_id(ids[0].as_str().into()),
        );
        eprintln!(
            "{rabbit:?}, {signal_name}, {declared_by:?}: dead-lettered at delivery 20 (DELIVERY_LIMIT), requeued"
        );
    } else {
        // RabbitMQ 4.3 does not count a basic.nack: the task waits in the queue.
        assert_eq!(queued, 1, "{rabbit:?}, {signal_name}: not in the queue");
        assert_eq!(
            watch.counter.distinct(),
            0,
            "a result came while the server was down"
        );
        eprintln!(
            "{rabbit:?}, {signal_name}, {declared_by:?}: 25 drains not counted, still queued"
        );
    }
    let _server = ServerOptions {
        listen: addr.to_string(),
        ..ServerOptions::default()
    }
    .start();
    let mut consumer = setup.start();
    let deadline = std::time::Instant::now() + ALL_RESULTS_TIMEOUT;
    loop {
        let latest = watch.counter.wait_for_all(&ids, ALL_RESULTS_TIMEOUT)[&ids[0]]
            .1
            .clone();
        if latest["ok"] == true {
            assert_eq!(latest["result"]["result"], "5040", "{latest}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never answered: {latest}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(consumer.stop(EXIT_TIMEOUT).success());
    assert_eq!(
        amqp.ready_count(&setup.queue) + amqp.ready_count(&dead_queue),
        0
    );
}

/// Waits until `consumer` holds the task (its call failed: the server is down) or has
/// dead-lettered it (its result arrived).
fn wait_holding(consumer: &mut Daemon, watch: &ResultWatch) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let holding = |message: &String| {
        support::notify_field(message, "STATUS")
            .is_some_and(|s| s.contains("gRPC server unavailable"))
    };
    // The status that said it consumes may say so already.
    if consumer.notify.messages().iter().any(holding) {
        return;
    }
    loop {
        if watch.counter.distinct() > 0 {
            return;
        }
        if consumer
            .notify
            .recv(Duration::from_millis(100))
            .is_some_and(|m| holding(&m))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the consumer neither held nor dead-lettered the task within 30 s\n{}",
            consumer.stderr()
        );
    }
}

fn stop_with(consumer: &mut Daemon, signal: libc::c_int) {
    send_signal(consumer.pid(), signal);
    let status = consumer.wait_exit(EXIT_TIMEOUT);
    if signal == libc::SIGTERM {
        assert!(
            status.success(),
            "SIGTERM exit: {status}\n{}",
            consumer.stderr()
        );
    }
}

fn held_task_survives_25_sigkills(rabbit: Rabbit) {
    let declared_by = match rabbit {
        Rabbit::Host => DeclaredBy::Labmq,
        Rabbit::V4_0 => DeclaredBy::PlainClient,
        Rabbit::V4_3 => DeclaredBy::VhostDefault,
    };
    held_task_survives_25_stops(rabbit, libc::SIGKILL, declared_by);
}

fn held_task_survives_25_sigterms(rabbit: Rabbit) {
    held_task_survives_25_stops(rabbit, libc::SIGTERM, DeclaredBy::Labmq);
}

crate::on_brokers!(
    private: a_task_held_past_consumer_timeout_is_redelivered_not_lost,
    held_task_survives_25_sigkills,
    held_task_survives_25_sigterms,
);

/// labmq-consumer is ready (READY=1) once it has started, whether or not the broker
/// answers: with the broker down it says what it waits for in its status line, and
/// `labmq_consumer_consuming` is 0; once the broker is up it consumes (the metric is 1)
/// and tasks flow. So `systemctl start` and a boot never wait for the broker
/// (packaging/e2e checks that on booted systems); before, READY=1 came only once
/// consuming.
#[test]
fn consumer_is_ready_while_the_broker_is_down_and_says_what_it_waits_for() {
    let broker = PrivateBroker::start(Rabbit::V4_0);
    broker.stop_app();
    let server = spawn_server("");
    let setup = ConsumerSetup::new(&broker.url(), &[server.url()])
        .with_extra("metrics_listen = \"127.0.0.1:0\"\n");
    let mut consumer = setup.spawn();
    let shown = format!("RabbitMQ at amqp://guest@127.0.0.1:{}/%2f", broker.port);
    let ready = consumer.wait_ready(READY_TIMEOUT);
    assert!(ready.contains(&format!("connecting to {shown}")), "{ready}");
    let waiting = wait_status_containing(
        &mut consumer,
        &format!("waiting for {shown}: "),
        Duration::from_secs(30),
    );
    assert!(
        waiting.to_lowercase().contains("connection refused"),
        "{waiting}"
    );
    assert!(!waiting.contains("guest:guest"), "{waiting}");
    let metrics = metrics_addr(&mut consumer, READY_TIMEOUT);
    let down = Exposition::parse(&scrape(metrics));
    assert_eq!(
        down.value("labmq_consumer_consuming", &[]),
        0.0,
        "{}",
        down.text
    );
    assert_eq!(down.value("labmq_consumer_broker_connected", &[]), 0.0);

    broker.start_app();
    wait_status_containing(&mut consumer, "consuming from", Duration::from_secs(60));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while Exposition::parse(&scrape(metrics)).value("labmq_consumer_consuming", &[]) != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "labmq_consumer_consuming never 1"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, stdout, stderr) = produce(
        &broker.url(),
        &["--queue", &setup.queue, "--wait", "fact:5"],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "fact:5 => 120");
    assert!(consumer.stop(EXIT_TIMEOUT).success());
}

/// A consumer with 5,000 mixed tasks published, 1,000 of whose results have arrived.
struct MidStream {
    _server: Server,
    setup: ConsumerSetup,
    watch: ResultWatch,
    consumer: Daemon,
    ids: Vec<String>,
}

fn mid_stream_of_5000() -> MidStream {
    let server = spawn_server("");
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let consumer = setup.start();
    let ids = produce_tasks(SHARED_AMQP_URL, &setup.queue, &mixed_tasks(5_000));
    watch.counter.wait_for_count(1_000, ALL_RESULTS_TIMEOUT);
    MidStream {
        _server: server,
        setup,
        watch,
        consumer,
        ids,
    }
}

impl MidStream {
    /// Starts a new consumer and asserts that every task gets a successful result.
    fn restart_and_check(&self, name: &str) {
        let mut restarted = self.setup.start();
        let seen = self
            .watch
            .counter
            .wait_for_all(&self.ids, ALL_RESULTS_TIMEOUT);
        check_all_ok(name, &seen, 5_000);
        assert!(restarted.stop(EXIT_TIMEOUT).success());
    }
}

#[test]
fn consumer_sigkilled_mid_stream_then_restarted_loses_nothing() {
    let mut stream = mid_stream_of_5000();
    send_signal(stream.consumer.pid(), libc::SIGKILL);
    let _ = stream.consumer.wait_exit(EXIT_TIMEOUT);
    stream.restart_and_check("consumer SIGKILL");
}

#[test]
fn consumer_sigtermed_mid_stream_drains_exits_0_and_loses_nothing() {
    let mut stream = mid_stream_of_5000();
    let consumer = &mut stream.consumer;
    consumer.terminate();
    consumer.wait_notify("STOPPING", "1", Duration::from_secs(30));
    let status = consumer.wait_exit(EXIT_TIMEOUT);
    assert!(
        status.success(),
        "SIGTERM exit: {status}\n{}",
        consumer.stderr()
    );
    let log = consumer.stderr();
    assert!(log.contains("draining in-flight tasks"), "{log}");
    assert!(
        stream.watch.counter.distinct() < 5_000,
        "the stream should not be finished yet"
    );
    stream.restart_and_check("consumer SIGTERM");
}

#[test]
fn poison_bodies_are_dead_lettered_with_reason_and_good_tasks_complete() {
    let server = spawn_server("");
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let amqp = &watch.amqp;
    let mut consumer = setup.start();
    let counter = &watch.counter;

    let huge = vec![b'a'; 10 * 1024 * 1024];
    let poison: Vec<(&str, Vec<u8>, &str)> = vec![
        ("p-fact-abc", b"fact:abc".to_vec(), "INVALID_TASK"),
        ("p-fact-neg", b"fact:-5".to_vec(), "INVALID_ARGUMENT"),
        ("p-fact-big", b"fact:99999999".to_vec(), "INVALID_ARGUMENT"),
        ("p-freq-empty", b"freq:".to_vec(), "INVALID_TASK"),
        ("p-freq-digits", b"freq:123".to_vec(), "INVALID_ARGUMENT"),
        ("p-empty", Vec::new(), "EMPTY_BODY"),
        ("p-utf8", b"fact:\xff\xfe6".to_vec(), "INVALID_UTF8"),
        ("p-huge", huge, "BODY_TOO_LARGE"),
    ];
    amqp.declare_queue(&setup.queue, FieldTable::default());
    let mut good_ids = Vec::new();
    for (i, (id, body, _)) in poison.iter().enumerate() {
        amqp.publish(
            &setup.queue,
            body,
            BasicProperties::default().with_message_id((*id).into()),
        );
        let good = format!("good-{i}");
        amqp.publish(
            &setup.queue,
            format!("fact:{i}").as_bytes(),
            BasicProperties::default().with_message_id(good.as_str().into()),
        );
        good_ids.push(good);
    }
    let mut all_ids: Vec<String> = poison.iter().map(|(id, _, _)| (*id).to_owned()).collect();
    all_ids.extend(good_ids.iter().cloned());
    let seen = counter.wait_for_all(&all_ids, ALL_RESULTS_TIMEOUT);

    for id in &good_ids {
        assert_eq!(seen[id].1["ok"], true, "{}", seen[id].1);
    }
    for (id, _, code) in &poison {
        let document = &seen[*id].1;
        assert_eq!(document["ok"], false, "{document}");
        assert_eq!(document["error"]["code"], *code, "{id}: {document}");
        assert!(!document["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(
        seen["p-fact-big"].1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("100000")
    );
    assert!(seen["p-huge"].1["task"].as_str().unwrap().len() < 2_000);

    let dead_queue = format!("{}.dead", setup.queue);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while amqp.ready_count(&dead_queue) < poison.len() as u32 {
        assert!(std::time::Instant::now() < deadline, "dead letters missing");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dead = amqp.drain(&dead_queue);
    assert_eq!(dead.len(), poison.len());
    for (body, properties) in &dead {
        let id = properties
            .message_id()
            .as_ref()
            .expect("original message_id kept")
            .to_string();
        let (_, original, code) = poison
            .iter()
            .find(|(p, _, _)| *p == id)
            .expect("a poison id");
        assert_eq!(body, original, "{id}: body kept as published");
        let headers = properties.headers().as_ref().expect("headers");
        let header = |key: &str| match headers.inner().get(key) {
            Some(AMQPValue::LongString(value)) => value.to_string(),
            other => panic!("{id}: header {key} is {other:?}"),
        };
        assert_eq!(header("x-labmq-error-code"), *code);
        assert!(!header("x-labmq-error-reason").is_empty());
        assert_eq!(header("x-labmq-original-queue"), setup.queue);
    }
    // Nothing left behind: the task queue is empty and the consumer still runs.
    assert_eq!(amqp.ready_count(&setup.queue), 0);
    assert!(consumer.try_exit_status().is_none(), "consumer died");
    assert!(consumer.stop(EXIT_TIMEOUT).success());
    amqp.delete_queue(&dead_queue);
}
