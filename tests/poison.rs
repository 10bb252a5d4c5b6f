//! Poison corpus (issue 11, consumer side): messages and brokers built to hurt the
//! consumer. For each, the bad message is dead-lettered with a reason (or refused at the
//! broker's edge), good messages published alongside are processed within 5 s, the
//! consumer's peak memory stays under a stated bound, and nothing loops.
//! Tests that change broker settings or add users run on a private RabbitMQ node.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use support::amqp::{Amqp, ConsumerSetup, ResultWatch, produce, unique, wait_status_containing};
use support::poison::{Behaviour, FakeBroker, add_user, peak_rss_kib, publish_raw};
use support::rabbit::{PrivateBroker, RABBITMQ4, Rabbit, SHARED_AMQP_URL, SharedBroker};
use support::{EXIT_TIMEOUT, spawn_server};

/// Good messages published next to a bad one must have their results within this.
const GOOD_WITHIN: Duration = Duration::from_secs(5);
/// The consumer's peak RSS bound for bad messages whose bodies are small (debug build;
/// it idles at about 20 MiB).
const SMALL_BODY_RSS_KIB: u64 = 256 * 1024;

/// Publishes `n` good `fact:` tasks and returns their ids.
fn publish_good(amqp: &Amqp, queue: &str, tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = format!("good-{tag}-{i}");
            amqp.publish(
                queue,
                format!("fact:{}", i + 3).as_bytes(),
                BasicProperties::default().with_message_id(id.as_str().into()),
            );
            id
        })
        .collect()
}

fn header_text(properties: &BasicProperties, key: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(key) {
        Some(AMQPValue::LongString(value)) => Some(value.to_string()),
        _ => None,
    }
}

/// Waits until `queue` holds `n` messages, then takes them.
fn take_dead(
    amqp: &Amqp,
    queue: &str,
    n: u32,
    timeout: Duration,
) -> Vec<(Vec<u8>, BasicProperties)> {
    let deadline = Instant::now() + timeout;
    while amqp.ready_count(queue) < n {
        assert!(
            Instant::now() < deadline,
            "{queue}: {} of {n} dead letters after {timeout:?}",
            amqp.ready_count(queue)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    amqp.drain(queue)
}

fn by_code<'a>(dead: &'a [(Vec<u8>, BasicProperties)], code: &str) -> Vec<&'a BasicProperties> {
    dead.iter()
        .map(|(_, p)| p)
        .filter(|p| header_text(p, "x-labmq-error-code").as_deref() == Some(code))
        .collect()
}

/// On main, a 254-byte message_id panicked while building the result's short string
/// ("ShortString exceeds maximum length"); the delivery was never acked and, at
/// prefetch 4, four such messages stopped the consumer.
#[test]
fn long_message_id_is_processed_and_good_messages_keep_flowing() {
    let server = spawn_server("");
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]).with_extra("prefetch = 4");
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let amqp = &watch.amqp;
    let mut consumer = setup.start();

    let mut expected = Vec::new();
    for i in 0..5 {
        let long_id = format!("{i}{}", "L".repeat(253));
        amqp.publish(
            &setup.queue,
            b"fact:1,fact:2",
            BasicProperties::default().with_message_id(long_id.as_str().into()),
        );
        let key = labmq::consumer::handle::message_key(Some(&long_id), b"");
        assert!(
            key.len() <= 200 && key.starts_with(&format!("{i}LLL")),
            "{key}"
        );
        expected.push(format!("{key}#1"));
        expected.push(format!("{key}#2"));
    }
    let published = Instant::now();
    let good = publish_good(amqp, &setup.queue, "long-id", 3);
    let seen = watch.counter.wait_for_all(&good, GOOD_WITHIN);
    let elapsed = published.elapsed();
    let seen_all = watch.counter.wait_for_all(&expected, GOOD_WITHIN);
    for id in &expected {
        assert_eq!(seen_all[id].1["ok"], true, "{}", seen_all[id].1);
    }
    for id in &good {
        assert_eq!(seen[id].1["ok"], true);
    }
    assert_eq!(amqp.ready_count(&setup.queue), 0);
    assert!(consumer.try_exit_status().is_none(), "consumer died");
    let log = consumer.stderr();
    assert!(!log.contains("panicked"), "{log}");
    eprintln!("long message_id: good results {elapsed:?} after publishing");
    assert!(consumer.stop(EXIT_TIMEOUT).success());
}

/// lapin cannot even parse a delivery whose message_id is not UTF-8 (an AMQP short
/// string, which lapin holds as a Rust String): the connection fails, the broker
/// requeues the message at the head of the queue, and on main every reconnect died on it
/// again, forever. Now the consumer takes it off the queue with its own minimal client
/// and dead-letters it; the good messages behind it are processed.
#[test]
fn message_id_with_invalid_utf8_is_dead_lettered() {
    let server = spawn_server("");
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let amqp = &watch.amqp;
    amqp.declare_queue(&setup.queue, FieldTable::default());
    let mut consumer = setup.start();

    // Good messages before it too: their results are in flight when the connection dies.
    let mut good = publish_good(amqp, &setup.queue, "utf8-id-before", 50);
    publish_raw(
        RABBITMQ4.port(),
        &setup.queue,
        b"bad-\xff\xfe-id",
        b"fact:4",
    );
    let published = Instant::now();
    good.extend(publish_good(amqp, &setup.queue, "utf8-id-after", 50));
    let seen = watch.counter.wait_for_all(&good, GOOD_WITHIN);
    let elapsed = published.elapsed();
    for id in &good {
        assert_eq!(seen[id].1["ok"], true);
    }
    let dead_queue = format!("{}.dead", setup.queue);
    let dead = take_dead(amqp, &dead_queue, 1, Duration::from_secs(10));
    assert_eq!(dead.len(), 1);
    let (body, properties) = &dead[0];
    assert_eq!(body, b"fact:4");
    assert_eq!(
        header_text(properties, "x-labmq-error-code").as_deref(),
        Some("UNPARSABLE_PROPERTIES")
    );
    let raw = header_text(properties, "x-labmq-original-properties-hex").unwrap();
    assert!(raw.contains(&labmq_hex(b"bad-\xff\xfe-id")), "{raw}");
    assert_eq!(amqp.ready_count(&setup.queue), 0);
    let log = consumer.stderr();
    assert_eq!(
        log.matches("broker unavailable; reconnecting").count(),
        1,
        "one lost connection, not a loop: {log}"
    );
    assert!(consumer.try_exit_status().is_none(), "consumer died");
    eprintln!("invalid UTF-8 message_id: good results {elapsed:?} after publishing");
    assert!(consumer.stop(EXIT_TIMEOUT).success());
    amqp.delete_queue(&dead_queue);
}

fn labmq_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies of bad messages must reach the dead-letter queue whatever properties the
/// publisher set: a foreign `user_id` (publisher confirms would fail with
/// PRECONDITION_FAILED, closing the channel, requeueing the message forever), an
/// `expiration` (the copy would vanish), headers near the frame limit (the copy's
/// content header would overflow the frame). Also, on a node with `max_message_size`,
/// a 100 MiB body is refused at the broker's edge and never reaches the consumer.
#[test]
fn dead_letter_copies_survive_hostile_properties_on_a_private_node() {
    let broker = PrivateBroker::start_with(
        Rabbit::V4_0,
        include_str!("../packaging/rabbitmq/20-labmq.conf"),
    );
    let url = broker.url();
    add_user(&broker, "mallory", "mallory-pw");
    let server = spawn_server("");
    let setup = ConsumerSetup::new(&url, &[server.url()]);
    let watch = ResultWatch::start(&url, &setup.results_exchange);
    let amqp = &watch.amqp;
    let mut consumer = setup.start();
    let dead_queue = format!("{}.dead", setup.queue);

    let mallory = Amqp::connect(&format!(
        "amqp://mallory:mallory-pw@127.0.0.1:{}/%2f",
        broker.port
    ));
    mallory.publish(
        &setup.queue,
        b"fact:abc",
        BasicProperties::default()
            .with_message_id("p-user-id".into())
            .with_user_id("mallory".into()),
    );
    amqp.publish(
        &setup.queue,
        b"fact:abc",
        BasicProperties::default()
            .with_message_id("p-expiration".into())
            .with_expiration("2000".into()),
    );
    let mut big_headers = FieldTable::default();
    big_headers.insert(
        "padding".into(),
        AMQPValue::LongString("h".repeat(127 * 1024).into()),
    );
    amqp.publish(
        &setup.queue,
        b"fact:abc",
        BasicProperties::default()
            .with_message_id("p-headers".into())
            .with_headers(big_headers),
    );
    let good = publish_good(amqp, &setup.queue, "props", 3);
    let published = Instant::now();
    let seen = watch.counter.wait_for_all(&good, GOOD_WITHIN);
    for id in &good {
        assert_eq!(seen[id].1["ok"], true);
    }
    let bad = ["p-user-id", "p-expiration", "p-headers"].map(String::from);
    let seen = watch.counter.wait_for_all(&bad, GOOD_WITHIN);
    for id in &bad {
        assert_eq!(seen[id].1["error"]["code"], "INVALID_TASK");
    }
    eprintln!(
        "hostile properties: all results {:?} after publishing",
        published.elapsed()
    );
    // Past the original expiration: the copies must still be there.
    std::thread::sleep(Duration::from_secs(3));
    let dead = take_dead(amqp, &dead_queue, 3, Duration::from_secs(10));
    let dead: HashMap<String, &BasicProperties> = dead
        .iter()
        .map(|(_, p)| (p.message_id().as_ref().unwrap().to_string(), p))
        .collect();
    assert_eq!(dead.len(), 3, "{:?}", dead.keys());
    let user = dead["p-user-id"];
    assert!(user.user_id().is_none());
    assert_eq!(
        header_text(user, "x-labmq-original-user-id").as_deref(),
        Some("mallory")
    );
    let expiring = dead["p-expiration"];
    assert!(expiring.expiration().is_none());
    assert_eq!(
        header_text(expiring, "x-labmq-original-expiration").as_deref(),
        Some("2000")
    );
    let headers = dead["p-headers"];
    assert!(header_text(headers, "x-labmq-headers-dropped").is_some());
    assert_eq!(
        header_text(headers, "x-labmq-error-code").as_deref(),
        Some("INVALID_TASK")
    );

    // 100 MiB: refused by the broker (max_message_size), so the consumer never holds it.
    let (code, _, stderr) = produce(
        &url,
        &["--queue", &setup.queue, "--json", "-"],
        &format!("upper:{}", "x".repeat(100 * 1024 * 1024)),
    );
    assert_ne!(code, 0, "a 100 MiB publish was accepted: {stderr}");
    let good = publish_good(amqp, &setup.queue, "after-100mib", 3);
    watch.counter.wait_for_all(&good, GOOD_WITHIN);

    let log = consumer.stderr();
    assert!(!log.contains("could not publish the result"), "{log}");
    assert!(
        !log.contains("broker unavailable"),
        "no reconnect loop: {log}"
    );
    assert_eq!(amqp.ready_count(&setup.queue), 0);
    let peak = peak_rss_kib(consumer.pid());
    eprintln!("hostile properties: consumer peak RSS {} MiB", peak / 1024);
    assert!(peak < SMALL_BODY_RSS_KIB, "peak RSS {peak} KiB");
    assert!(consumer.stop(EXIT_TIMEOUT).success());
}

/// A reply is best effort: a requester's queue that rejects publishes (full, with
/// `x-overflow = reject-publish`) or does not exist never fails or requeues the message.
#[test]
fn refused_replies_are_logged_and_never_requeue_the_message() {
    let server = spawn_server("");
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let amqp = &watch.amqp;
    let full = unique("full-replies");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    amqp.declare_queue(&full, arguments);
    let mut consumer = setup.start();

    amqp.publish(
        &setup.queue,
        b"fact:5",
        BasicProperties::default()
            .with_message_id("reply-full".into())
            .with_reply_to(full.as_str().into()),
    );
    amqp.publish(
        &setup.queue,
        b"fact:6",
        BasicProperties::default()
            .with_message_id("reply-missing".into())
            .with_reply_to(unique("no-such-queue").as_str().into()),
    );
    let good = publish_good(amqp, &setup.queue, "replies", 3);
    let mut ids = good.clone();
    ids.extend(["reply-full".to_owned(), "reply-missing".to_owned()]);
    let seen = watch.counter.wait_for_all(&ids, GOOD_WITHIN);
    for id in &ids {
        assert_eq!(seen[id].1["ok"], true, "{}", seen[id].1);
    }
    // Settled once: no requeue, so no second result, and the queue is empty.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(amqp.ready_count(&setup.queue), 0);
    let again = watch.counter.wait_for_all(&ids, GOOD_WITHIN);
    assert_eq!(again["reply-full"].0, 1, "the message was redone");
    let log = consumer.stderr();
    assert!(log.contains(&format!("reply to {full} refused")), "{log}");
    assert!(!log.contains("requeued"), "{log}");
    assert!(consumer.stop(EXIT_TIMEOUT).success());
    amqp.delete_queue(&full);
}

/// One message must not exhaust the consumer: 10,000 `fact:100000` (4.5 GB of results)
/// is refused by `max_tasks_per_message` before any call, 100 of them (45 MB) by
/// `max_result_bytes_per_message`, each dead-lettered with a reason naming the key.
#[test]
fn oversized_work_is_dead_lettered_before_it_runs() {
    let server = spawn_server("");
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let amqp = &watch.amqp;
    let mut consumer = setup.start();

    let many = vec!["fact:100000"; 10_000].join(",");
    amqp.publish(
        &setup.queue,
        many.as_bytes(),
        BasicProperties::default().with_message_id("p-10000-tasks".into()),
    );
    let heavy = vec!["fact:100000"; 100].join(",");
    amqp.publish(
        &setup.queue,
        heavy.as_bytes(),
        BasicProperties::default().with_message_id("p-45mb-results".into()),
    );
    let published = Instant::now();
    let good = publish_good(amqp, &setup.queue, "limits", 3);
    let mut ids = good.clone();
    ids.extend(["p-10000-tasks".to_owned(), "p-45mb-results".to_owned()]);
    let seen = watch.counter.wait_for_all(&ids, GOOD_WITHIN);
    let elapsed = published.elapsed();
    let many = &seen["p-10000-tasks"].1;
    assert_eq!(many["error"]["code"], "TOO_MANY_TASKS", "{many}");
    let reason = many["error"]["message"].as_str().unwrap();
    assert!(
        reason.contains("max_tasks_per_message") && reason.contains("1000"),
        "{reason}"
    );
    let heavy = &seen["p-45mb-results"].1;
    assert_eq!(heavy["error"]["code"], "RESULT_TOO_LARGE", "{heavy}");
    let reason = heavy["error"]["message"].as_str().unwrap();
    assert!(reason.contains("max_result_bytes_per_message"), "{reason}");
    assert_eq!(heavy["attempts"], 0, "refused before any call");

    let dead_queue = format!("{}.dead", setup.queue);
    let dead = take_dead(amqp, &dead_queue, 2, Duration::from_secs(10));
    assert_eq!(by_code(&dead, "TOO_MANY_TASKS").len(), 1);
    assert_eq!(by_code(&dead, "RESULT_TOO_LARGE").len(), 1);
    let peak = peak_rss_kib(consumer.pid());
    eprintln!(
        "limits: dead-lettered within {elapsed:?}; consumer peak RSS {} MiB",
        peak / 1024
    );
    assert!(peak < SMALL_BODY_RSS_KIB, "peak RSS {peak} KiB");
    assert!(consumer.stop(EXIT_TIMEOUT).success());
    amqp.delete_queue(&dead_queue);
}

/// A task every server times out on is tried `max_attempts` times, then dead-lettered
/// with the last error; it is not retried forever.
#[test]
fn calls_the_server_got_are_capped_by_max_attempts() {
    let server = spawn_server("");
    // 100000! takes the debug-built server over a second: every call hits the deadline.
    let setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()])
        .with_extra("grpc_timeout_secs = 1\nmax_attempts = 2");
    let watch = ResultWatch::start(SHARED_AMQP_URL, &setup.results_exchange);
    let amqp = &watch.amqp;
    let mut consumer = setup.start();

    amqp.publish(
        &setup.queue,
        b"fact:100000",
        BasicProperties::default().with_message_id("p-deadline".into()),
    );
    let good = publish_good(amqp, &setup.queue, "deadline", 3);
    let seen = watch.counter.wait_for_all(&good, GOOD_WITHIN);
    for id in &good {
        assert_eq!(seen[id].1["ok"], true);
    }
    let started = Instant::now();
    let seen = watch
        .counter
        .wait_for_all(&["p-deadline".to_owned()], Duration::from_secs(30));
    let document = &seen["p-deadline"].1;
    let code = document["error"]["code"].as_str().unwrap();
    assert!(
        ["DEADLINE_EXCEEDED", "CANCELLED"].contains(&code),
        "{document}"
    );
    let reason = document["error"]["message"].as_str().unwrap();
    assert!(reason.contains("max_attempts = 2"), "{reason}");
    assert_eq!(document["attempts"], 2, "{document}");
    let dead_queue = format!("{}.dead", setup.queue);
    let dead = take_dead(amqp, &dead_queue, 1, Duration::from_secs(10));
    assert_eq!(dead.len(), 1);
    eprintln!(
        "max_attempts: dead-lettered {:?} after the good results",
        started.elapsed()
    );
    assert!(consumer.stop(EXIT_TIMEOUT).success());
    amqp.delete_queue(&dead_queue);
}

/// The largest body the broker takes by default — RabbitMQ 3.10's max_message_size is 128
/// MiB (a 100 MiB body here), 4.x's 16 MiB (a 15 MiB body), both over max_body_bytes (2
/// MiB) — is dead-lettered unread with BODY_TOO_LARGE, good messages flowing, the
/// consumer's peak memory a small multiple of the body. The limit differs by version, so
/// on both brokers.
fn largest_default_body_is_dead_lettered_with_bounded_memory(broker: &SharedBroker) {
    eprintln!("{}", broker.describe());
    let mib = if broker.rabbit == Rabbit::Host {
        100
    } else {
        15
    };
    let server = spawn_server("");
    let setup = ConsumerSetup::new(broker.url, &[server.url()]);
    let watch = ResultWatch::start(broker.url, &setup.results_exchange);
    let amqp = &watch.amqp;
    let mut consumer = setup.start();
    let before = peak_rss_kib(consumer.pid());

    let huge = vec![b'x'; mib * 1024 * 1024];
    amqp.publish(
        &setup.queue,
        &huge,
        BasicProperties::default().with_message_id("p-huge".into()),
    );
    drop(huge);
    let good = publish_good(amqp, &setup.queue, "huge", 3);
    let seen = watch.counter.wait_for_all(&good, GOOD_WITHIN);
    for id in &good {
        assert_eq!(seen[id].1["ok"], true);
    }
    let seen = watch
        .counter
        .wait_for_all(&["p-huge".to_owned()], GOOD_WITHIN);
    assert_eq!(seen["p-huge"].1["error"]["code"], "BODY_TOO_LARGE");
    let dead_queue = format!("{}.dead", setup.queue);
    let deadline = Instant::now() + Duration::from_secs(30);
    while amqp.ready_count(&dead_queue) < 1 {
        assert!(Instant::now() < deadline, "no dead letter");
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak = peak_rss_kib(consumer.pid());
    eprintln!(
        "{mib} MiB body: consumer peak RSS {} MiB (idle {} MiB)",
        peak / 1024,
        before / 1024
    );
    // The body once as received, once being republished, plus the idle process.
    let bound = before + (3 * mib as u64 + 20) * 1024;
    assert!(peak < bound, "peak RSS {peak} KiB, over {bound} KiB");
    assert_eq!(amqp.ready_count(&setup.queue), 0);
    assert!(consumer.stop(EXIT_TIMEOUT).success());
    amqp.delete_queue(&dead_queue);
}

crate::on_brokers!(shared: largest_default_body_is_dead_lettered_with_bounded_memory);

/// A "broker" that accepts and never speaks, one that hangs up mid-handshake, and one
/// that completes the handshake and then never opens a channel (on main the consumer
/// waited for it forever, silently): the
/// consumer logs one line per outage, says so in STATUS, keeps retrying, and exits on
/// SIGTERM within shutdown_grace_secs + 5 s; labmq-produce fails within its connect
/// timeout with exit status 3 and one clear line.
#[test]
fn silent_and_hanging_up_brokers_are_outages_not_hangs() {
    for behaviour in [
        Behaviour::SilentAfterOpen,
        Behaviour::Silent,
        Behaviour::HangUpInHandshake,
    ] {
        let fake = FakeBroker::start(behaviour);
        let setup = ConsumerSetup::new(&fake.url(), &["127.0.0.1:1".to_owned()]);
        let mut consumer = setup.spawn();
        // Ready at once; connecting and setting up are bounded by 10 s each (and closing
        // the failed connection by 5 s more) before the first retry is reported.
        consumer.wait_ready(support::READY_TIMEOUT);
        wait_status_containing(
            &mut consumer,
            "waiting for RabbitMQ at",
            Duration::from_secs(30),
        );
        std::thread::sleep(Duration::from_secs(12));
        let log = consumer.stderr();
        assert_eq!(
            log.matches("broker unavailable; reconnecting").count(),
            1,
            "{behaviour:?}: one line per outage\n{log}"
        );
        let stopping = Instant::now();
        // The test config's shutdown_grace_secs is 10.
        let status = consumer.stop(Duration::from_secs(15));
        assert!(status.success(), "{behaviour:?}: {status}");
        eprintln!(
            "{behaviour:?}: consumer exited {:?} after SIGTERM",
            stopping.elapsed()
        );

        let started = Instant::now();
        let (code, stdout, stderr) =
            produce(&fake.url(), &["--connect-timeout", "2", "fact:1"], "");
        assert_eq!(code, 3, "{behaviour:?}: {stdout} {stderr}");
        assert!(
            stderr.contains("cannot connect to RabbitMQ") || stderr.contains("no answer within 2s"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        eprintln!(
            "{behaviour:?}: labmq-produce exited 3 after {:?}",
            started.elapsed()
        );
    }
}
