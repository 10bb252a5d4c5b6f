//! Wire compatibility with plain pika clients: a pika producer's bodies are processed by
//! labmq-consumer, and a pika consumer reads what labmq-produce publishes, on RabbitMQ
//! 3.10 and 4.0 (queue declarations and their defaults differ by version).

mod support;

use std::process::Command;

use serde_json::Value;
use support::amqp::{ConsumerSetup, produce};
use support::rabbit::SharedBroker;
use support::{COMMAND_TIMEOUT, output_within, spawn_server};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/pika_compat.py");

fn require_pika() {
    let check = Command::new("python3")
        .args(["-c", "import pika"])
        .output()
        .expect("python3 is needed for the pika compatibility tests");
    assert!(
        check.status.success(),
        "the Python package pika is missing: pip install pika\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

fn python(args: &[&str]) -> String {
    let mut command = Command::new("python3");
    command.arg(SCRIPT).args(args);
    let output = output_within(command, COMMAND_TIMEOUT);
    assert!(
        output.status.success(),
        "pika script {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A pika producer's plain bodies are processed, with the task queue declared by both
/// sides: classic (pika's `durable=True`, no arguments) and quorum (pika's
/// `{"x-queue-type": "quorum"}`; labmq puts its dead-letter setup in a policy, not in
/// queue arguments, so such a declaration still matches the queue labmq made).
fn pika_producer_bodies_are_processed(broker: &SharedBroker) {
    require_pika();
    eprintln!("{}", broker.describe());
    let server = spawn_server("");
    for queue_type in ["classic", "quorum"] {
        let setup = ConsumerSetup::new(broker.url, &[server.url()])
            .with_extra(&format!("queue_type = {queue_type:?}\n"));
        // The consumer declares the queue first; pika then re-declares it, which the
        // broker only accepts if both declarations are identical.
        let _consumer = setup.start();
        let stdout = python(&[
            "produce",
            broker.url,
            &setup.queue,
            &setup.results_exchange,
            queue_type,
        ]);
        let json = stdout.lines().last().expect("results line");
        let seen: Value = serde_json::from_str(json).expect("results JSON");
        assert_eq!(
            seen["fact:6"]["result"]["result"], "720",
            "{queue_type}: {seen}"
        );
        assert_eq!(seen["freq:abracadabra"]["result"]["letter"], "a");
        assert_eq!(seen["user42"]["kind"], "ab");
        assert_eq!(
            seen["upper:привет"]["result"]["processed_text"],
            "Processed by server: ПРИВЕТ"
        );
        for document in seen.as_object().expect("object").values() {
            assert_eq!(document["ok"], true, "{document}");
            assert!(
                document["id"].as_str().unwrap().starts_with("sha256-"),
                "an id derived from the body when message_id is absent: {document}"
            );
        }
    }
}

fn pika_consumer_reads_labmq_produce_messages(broker: &SharedBroker) {
    require_pika();
    eprintln!("{}", broker.describe());
    let queue = support::amqp::unique("pika-reads");
    let (code, _, stderr) = produce(
        broker.url,
        &["--queue", &queue, "fact:6", "freq:abracadabra", "user42"],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    let stdout = python(&["consume", broker.url, &queue, "3"]);
    let messages: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let bodies: Vec<&str> = messages
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["fact:6", "freq:abracadabra", "user42"]);
    for message in &messages {
        assert_eq!(message["content_type"], "text/plain");
        assert_eq!(message["delivery_mode"], 2);
        assert!(
            message["message_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty())
        );
    }
    support::amqp::Amqp::connect(broker.url).delete_queue(&queue);
}

crate::on_brokers!(
    shared: pika_producer_bodies_are_processed,
    pika_consumer_reads_labmq_produce_messages,
);
