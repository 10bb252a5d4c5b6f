//! Several broker nodes: the consumer given every node of a real 3-node RabbitMQ cluster
//! (quorum queues) fails over without losing a task, and a queue declared with other
//! arguments is refused with an error that names both sides.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use support::amqp::{
    Amqp, CONSUMER_BIN, ConsumerSetup, ResultCounter, mixed_tasks, produce_tasks, unique,
    wait_status_containing,
};
use support::cluster::{Cluster, message_count};
use support::rabbit::{Rabbit, SharedBroker};
use support::{Daemon, DaemonSpec, READY_TIMEOUT, ServerOptions, send_signal};

const TASKS: usize = 10_000;
/// How long one failover may take before the test calls it a hang.
const RESUME_TIMEOUT: Duration = Duration::from_secs(60);

/// A quorum task queue, and a consumer declaring it classic (the default): the consumer
/// keeps retrying, and its log names the queue, what it asked, what the broker has and
/// the fix. The broker's words differ by version, so on both brokers.
fn declare_mismatch_names_the_queue_both_sides_and_the_fix(broker: &SharedBroker) {
    eprintln!("{}", broker.describe());
    let setup = ConsumerSetup::new(broker.url, &["127.0.0.1:1".to_owned()]);
    let amqp = Amqp::connect(broker.url);
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    amqp.declare_queue(&setup.queue, quorum);
    let mut consumer = setup.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = consumer.stderr();
        if log.contains("was refused because the queue exists with other arguments") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "no declare error within 30 s\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let line = log
        .lines()
        .find(|line| line.contains("was refused because the queue exists with other arguments"))
        .unwrap_or_default();
    for needle in [
        setup.queue.as_str(),
        // What we asked.
        "no arguments (classic queue)",
        // What the queue has, in the broker's words.
        "x-queue-type",
        "quorum",
        // How to fix it.
        "queue_type",
        "rabbitmqctl delete_queue",
        "PRECONDITION_FAILED",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
    eprintln!("{line}");
    assert!(!line.contains("guest:guest"), "{line}");
    assert!(
        consumer.try_exit_status().is_none(),
        "the consumer must keep retrying, not exit\n{log}"
    );
    assert!(consumer.stop(support::EXIT_TIMEOUT).success());
}

crate::on_brokers!(shared: declare_mismatch_names_the_queue_both_sides_and_the_fix);

/// The port of the node named by the consumer's last "connected to RabbitMQ node" line.
fn serving_port(consumer: &Daemon) -> Option<u16> {
    let log = consumer.stderr();
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("connected to RabbitMQ node amqp://"))?;
    let url = &line[line.find("connected to RabbitMQ node amqp://")? + 27..];
    let host_port = url.split('@').nth(1)?.split('/').next()?;
    host_port.rsplit(':').next()?.parse().ok()
}

/// Waits for a "connected to RabbitMQ node" line naming another node than `not`.
fn wait_serving_elsewhere(consumer: &Daemon, not: u16) -> u16 {
    let deadline = Instant::now() + RESUME_TIMEOUT;
    loop {
        if let Some(port) = serving_port(consumer).filter(|&port| port != not) {
            return port;
        }
        assert!(
            Instant::now() < deadline,
            "consumer did not connect to another node within {RESUME_TIMEOUT:?}\n{}",
            consumer.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Results in the results queue, asked of any node in `urls` that answers.
fn results_so_far(urls: &[String], queue: &str) -> Option<u32> {
    urls.iter().find_map(|url| message_count(url, queue))
}

/// Waits until results grow past `baseline`; the time since `since` is the time to resume.
fn wait_resumed(urls: &[String], queue: &str, baseline: u32, since: Instant) -> Duration {
    loop {
        if results_so_far(urls, queue).is_some_and(|n| n > baseline) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < RESUME_TIMEOUT,
            "no new result within {RESUME_TIMEOUT:?} (still {baseline})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_results_at_least(urls: &[String], queue: &str, n: u32) -> u32 {
    let deadline = Instant::now() + RESUME_TIMEOUT;
    loop {
        if let Some(now) = results_so_far(urls, queue).filter(|&now| now >= n) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} results within {RESUME_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 10,000 tasks in a quorum queue on a 3-node cluster, a consumer given all three URLs
/// and two labmq-servers. Mid-stream: the node the consumer is connected to is stopped
/// (it fails over), one labmq-server is killed, the node is restarted; then the node
/// leading the task queue is stopped and restarted; then the consumer's node and the
/// leader are stopped together (one node of three left) and both restarted. Every task has a result, duplicates
/// are counted, the consumer never exits, and each time to resume is printed.
#[test]
fn three_node_cluster_failover_mid_stream_loses_nothing() {
    let started = Instant::now();
    let cluster = Cluster::start(Rabbit::V4_0, 3);
    let urls = cluster.urls();
    eprintln!("cluster of 3 up in {:?}", started.elapsed());
    let mut first_server = ServerOptions::default().start();
    let second_server = ServerOptions::default().start();
    let results_queue = unique("cluster-results");
    let setup = ConsumerSetup::new(&urls[0], &[first_server.url(), second_server.url()])
        .with_extra(&format!(
            "queue_type = \"quorum\"\nresults_queue = {results_queue:?}\nconcurrency = 2\nprefetch = 4\n"
        ));
    let list: Vec<String> = urls.iter().map(|url| format!("{url:?}")).collect();
    let toml = setup.toml().replacen(
        &format!("amqp_url = {:?}", setup.amqp_url),
        &format!("amqp_url = [{}]", list.join(", ")),
        1,
    );
    let dir = tempfile::tempdir().expect("consumer dir");
    let config = dir.path().join("consumer.toml");
    std::fs::write(&config, toml).expect("write consumer.toml");
    let mut consumer = DaemonSpec::new(CONSUMER_BIN)
        .arg("--config")
        .arg(config.as_os_str())
        .spawn_in(dir);
    consumer.wait_ready(READY_TIMEOUT);
    wait_status_containing(&mut consumer, "consuming from", READY_TIMEOUT);

    let first_port = serving_port(&consumer).expect("a 'connected to RabbitMQ node' line");
    let node = cluster.by_port(first_port);
    let ids = produce_tasks(&node.url(), &setup.queue, &mixed_tasks(TASKS));
    let produced_at = Instant::now();
    wait_results_at_least(&urls, &results_queue, 500);

    // 1. The node serving the consumer.
    let baseline = results_so_far(&urls, &results_queue).unwrap_or(0);
    let stopped_at = Instant::now();
    node.stop();
    let others: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.port != first_port)
        .map(|n| n.url())
        .collect();
    let baseline = results_so_far(&others, &results_queue).unwrap_or(baseline);
    assert!(
        (baseline as usize) < TASKS,
        "every task was done before the node stopped; the test proved nothing"
    );
    let new_port = wait_serving_elsewhere(&consumer, first_port);
    let resume_node = wait_resumed(&others, &results_queue, baseline, stopped_at);
    eprintln!(
        "node serving the consumer ({first_port}) stopped at {baseline} results: consumer on {new_port}, results resumed after {resume_node:?}"
    );

    // One of the two labmq-servers dies mid-stream.
    let before_kill = results_so_far(&others, &results_queue).unwrap_or(0);
    send_signal(first_server.daemon.pid(), libc::SIGKILL);
    let _ = first_server.daemon.wait_exit(support::EXIT_TIMEOUT);
    let killed_at = Instant::now();
    let resume_server = wait_resumed(&others, &results_queue, before_kill + 100, killed_at);
    eprintln!("labmq-server killed at {before_kill} results: 100 more after {resume_server:?}");

    let restarted_at = Instant::now();
    node.boot();
    node.wait_serving();
    eprintln!("node {first_port} back in {:?}", restarted_at.elapsed());

    // 2. The node leading the task queue.
    let via = cluster.by_port(new_port);
    let leader = cluster.leader_of(&setup.queue, via);
    let leader_port = leader.port;
    let rest: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.port != leader_port)
        .map(|n| n.url())
        .collect();
    let baseline = results_so_far(&urls, &results_queue).unwrap_or(0);
    let stopped_at = Instant::now();
    leader.stop();
    let baseline = results_so_far(&rest, &results_queue).unwrap_or(baseline);
    assert!(
        (baseline as usize) < TASKS,
        "every task was done before the leader stopped; the test proved nothing"
    );
    let resume_leader = wait_resumed(&rest, &results_queue, baseline, stopped_at);
    eprintln!(
        "task queue leader ({leader_port}, consumer on {new_port}) stopped at {baseline} results: results resumed after {resume_leader:?}"
    );
    let restarted_at = Instant::now();
    leader.boot();
    leader.wait_serving();
    eprintln!("node {leader_port} back in {:?}", restarted_at.elapsed());

    // 3. As the issue puts it: the consumer's node, then the queue's leader, so one node
    // of three is left (a minority: the quorum queues stop), then both restarted.
    let serving = serving_port(&consumer).expect("a 'connected to RabbitMQ node' line");
    let first = cluster.by_port(serving);
    let baseline = results_so_far(&urls, &results_queue).unwrap_or(0);
    assert!(
        (baseline as usize) < TASKS,
        "every task was done before the double stop; the test proved nothing"
    );
    first.stop();
    let survivors: Vec<&support::cluster::ClusterNode> =
        cluster.nodes.iter().filter(|n| n.port != serving).collect();
    // The leader may still be reported on the stopped node until a new one is elected.
    let deadline = Instant::now() + RESUME_TIMEOUT;
    let second = loop {
        let leader = cluster.leader_of(&setup.queue, survivors[0]);
        if leader.port != serving {
            break leader;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader after {RESUME_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let second_port = second.port;
    second.stop();
    let last: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.port != serving && n.port != second_port)
        .map(|n| n.url())
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    let during = results_so_far(&last, &results_queue);
    assert!(
        consumer.try_exit_status().is_none(),
        "the consumer exited with one node of three left\n{}",
        consumer.stderr()
    );
    let restarted_at = Instant::now();
    first.boot();
    second.boot();
    first.wait_serving();
    second.wait_serving();
    let back = restarted_at.elapsed();
    let baseline = results_so_far(&urls, &results_queue)
        .unwrap_or(baseline)
        .max(during.unwrap_or(0));
    let resume_both = wait_resumed(&urls, &results_queue, baseline, restarted_at);
    eprintln!(
        "consumer's node ({serving}) then leader ({second_port}) stopped, one node left ({} results readable there after 5 s); both restarted: nodes back in {back:?}, results resumed {resume_both:?} after the restart began",
        during.map_or_else(|| "no".to_owned(), |n| n.to_string())
    );

    let counter = ResultCounter::start(&urls[0], &results_queue);
    let seen: HashMap<String, (u32, Value)> = counter.wait_for_all(&ids, Duration::from_secs(120));
    let failed = seen.values().filter(|(_, d)| d["ok"] != true).count();
    let duplicates: u32 = seen.values().map(|(n, _)| n - 1).sum();
    eprintln!(
        "cluster failover: {TASKS} tasks, {} results, 0 lost, {duplicates} duplicates, {failed} failed, all done {:?} after publishing; test took {:?}",
        seen.len(),
        produced_at.elapsed(),
        started.elapsed()
    );
    assert_eq!(seen.len(), TASKS);
    assert_eq!(failed, 0, "every task succeeds");
    assert!(
        consumer.try_exit_status().is_none(),
        "the consumer exited\n{}",
        consumer.stderr()
    );
    let log = consumer.stderr();
    assert!(!log.contains("guest:guest"), "password in the log\n{log}");
    assert!(consumer.stop(support::EXIT_TIMEOUT).success());
    drop(second_server);
}
