//! Every RabbitMQ file labmq ships in `packaging/rabbitmq/` boots real RabbitMQ 4.0 and 4.3
//! nodes (private ones, `tests/rabbitmq4`'s roots) and does what it says; each test runs
//! once per version, named for it (`rabbitmq4_0::…`, `rabbitmq4_3::…`), and prints the
//! version the node reported.
//!
//! - `20-labmq.conf`: a body over 4 MiB is refused at publish, one of 4 MiB is taken.
//! - `30-cluster.conf` (its node names rewritten to the test's): three blank nodes form a
//!   cluster by `classic_config` peer discovery alone, the first booted first as in
//!   `docker-compose.cluster.yml`, and a queue declared without `x-queue-type` is a quorum
//!   queue with a member on each node.
//! - `labmq-definitions.json`, applied by the script of `docker-compose.yml`'s
//!   `rabbitmq-policies` service (`rabbitmqctl import_definitions` once the node is up,
//!   until `list_policies` shows both) to a node booted as the Docker image boots it (the user from `RABBITMQ_DEFAULT_USER`, no guest): the user stays,
//!   `list_policies` shows both policies as the file has them, a quorum `task_queue` made
//!   before the import (by a plain client, as the previous labmq release or pika would) gets
//!   them in place with its task, a task returned 21 times (get, then the connection closes,
//!   as a crashing pika consumer does) lands in `task_queue.dead` with
//!   `x-first-death-reason: delivery_limit`, and stays there through 25 more returns.
//! - Why the file is not loaded at boot: a blank node importing it at boot does not boot
//!   (no vhost `/`), and one importing it with vhost `/` added creates no default user.
//! - On the host's RabbitMQ 3.10 (`rabbitmq3::…`), what the docs tell 3.x users: the file
//!   is refused (delivery-limit -1), its `labmq-task-queue` alone is taken by `set_policy`.

mod support;

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use support::rabbit::{NodeFiles, PrivateBroker, Rabbit};

const LABMQ_CONF: &str = include_str!("../packaging/rabbitmq/20-labmq.conf");
const CLUSTER_CONF: &str = include_str!("../packaging/rabbitmq/30-cluster.conf");
const DEFINITIONS: &str = include_str!("../packaging/rabbitmq/labmq-definitions.json");
const COMPOSE: &str = include_str!("../docker-compose.yml");

/// How long a node may take to boot (a 4.x node takes about 5 s) or a cluster to settle.
const NODE_TIMEOUT: Duration = Duration::from_secs(120);
/// The queue delivery limit of `labmq-task-queue`, and so the returns a task survives.
const DELIVERY_LIMIT: u32 = 20;

/// One `#[test]` per RabbitMQ 4.x version for each named function, which takes the
/// version: `rabbitmq4_0::NAME` and `rabbitmq4_3::NAME`.
macro_rules! on_rabbitmq4 {
    ($($name:ident),+ $(,)?) => {
        mod rabbitmq4_0 {
            $(#[test] fn $name() { super::$name(super::Rabbit::V4_0) })+
        }
        mod rabbitmq4_3 {
            $(#[test] fn $name() { super::$name(super::Rabbit::V4_3) })+
        }
    };
}

on_rabbitmq4!(
    labmq_conf_refuses_bodies_over_4_mib,
    cluster_conf_forms_a_cluster_whose_default_queue_type_is_quorum,
    definitions_dead_letter_a_task_at_the_delivery_limit_and_keep_the_default_user,
    definitions_loaded_at_boot_would_lose_the_default_user,
);

/// RabbitMQ 3.x (the host's 3.10), for what docs/deploy-cluster.md tells its users.
mod rabbitmq3 {
    #[test]
    fn definitions_are_refused_but_the_task_queue_policy_alone_is_taken() {
        super::definitions_on_rabbitmq3(super::Rabbit::Host)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn connect(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let channel = connection.create_channel().await.expect("open a channel");
    (connection, channel)
}

/// `{"x-queue-type": "quorum"}`, what a plain client (pika) declares a quorum queue with.
fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

async fn declare_durable(channel: &Channel, queue: &str, arguments: FieldTable) {
    labmq::amqp::topology::declare_queue(channel, queue, arguments)
        .await
        .unwrap_or_else(|e| panic!("declare {queue}: {e}"));
}

/// Ready messages in `queue`, by a passive declare on a channel of its own.
async fn ready(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.expect("open a channel");
    let declared = labmq::amqp::topology::inspect_queue(&channel, queue)
        .await
        .unwrap_or_else(|e| panic!("queue {queue} should exist: {e}"));
    let _ = channel.close(200, "".into()).await;
    declared.message_count()
}

/// A header of a delivery, if it has it.
fn header(properties: &BasicProperties, name: &str) -> Option<AMQPValue> {
    properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(name).cloned())
}

fn header_number(properties: &BasicProperties, name: &str) -> Option<i64> {
    match header(properties, name)? {
        AMQPValue::LongLongInt(n) => Some(n),
        AMQPValue::LongInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::ShortShortInt(n) => Some(n.into()),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        other => panic!("header {name} is {other:?}, not a number"),
    }
}

fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    match header(properties, name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        other => panic!("header {name} is {other:?}, not a string"),
    }
}

/// Private nodes stopped (and their directories removed) when dropped, also when a test
/// fails half-way.
struct Nodes(Vec<NodeFiles>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &self.0 {
            // `rabbitmqctl stop PID_FILE` waits for a pid file that a node never booted
            // would never write.
            if node.dir.join("pid").exists() {
                node.stop();
            }
            node.remove();
        }
    }
}

/// What docker-compose's healthchecks run, `rabbitmq-diagnostics -q ping`: the node's
/// runtime is up and answers, which it does while it is still booting (waiting for its
/// peers, for one).
fn pings(files: &NodeFiles) -> bool {
    files
        .rabbit
        .command("rabbitmq-diagnostics")
        .args(["-q", "-n", &files.name, "ping"])
        .output()
        .expect("run rabbitmq-diagnostics")
        .status
        .success()
}

/// A node's files with a listener of its own, `loopback_users = none` and `extra` in its
/// `rabbitmq.conf`.
fn node_files(rabbit: Rabbit, prefix: &str, extra: &str) -> NodeFiles {
    let files = NodeFiles::new(
        rabbit,
        prefix,
        "",
        "listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n",
    );
    append_conf(&files, extra);
    files
}

fn append_conf(files: &NodeFiles, extra: &str) {
    let path = files.dir.join("rabbitmq.conf");
    let mut conf = std::fs::read_to_string(&path).expect("read rabbitmq.conf");
    conf.push_str(extra);
    conf.push('\n');
    std::fs::write(&path, conf).expect("write rabbitmq.conf");
    files.chown();
}

/// Copies `text` into the node's directory as `name`; returns its path as the node (and
/// its rabbitmqctl) see it.
fn put_file(files: &NodeFiles, name: &str, text: &str) -> String {
    std::fs::write(files.dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
    files.chown();
    files.node_path(name)
}

/// The node's log files, concatenated.
fn node_log(files: &NodeFiles) -> String {
    let mut text = String::new();
    if let Ok(entries) = std::fs::read_dir(files.dir.join("log")) {
        for entry in entries.flatten() {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    text
}

fn describe(files: &NodeFiles) -> String {
    format!(
        "RabbitMQ {} ({:?}, node {})",
        files.rabbit.version_of(&files.name),
        files.rabbit,
        files.name
    )
}

/// `20-labmq.conf`: `max_message_size = 4194304` refuses a body of 4 MiB + 1 byte at
/// publish (the broker closes the channel) and takes one of exactly 4 MiB.
fn labmq_conf_refuses_bodies_over_4_mib(rabbit: Rabbit) {
    let broker = PrivateBroker::start_with(rabbit, LABMQ_CONF);
    let version = rabbit.version_of(&broker.node);
    let limit = 4 * 1024 * 1024;
    let setting = broker.ctl(&["eval", "application:get_env(rabbit, max_message_size)."]);
    assert_eq!(
        setting.trim(),
        format!("{{ok,{limit}}}"),
        "RabbitMQ {version}: max_message_size from 20-labmq.conf"
    );
    runtime().block_on(async {
        let (connection, channel) = connect(&broker.url()).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let queue = "labmq-conf-size";
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare an exclusive queue");
        let at_limit = vec![b'a'; limit];
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &at_limit,
                BasicProperties::default(),
            )
            .await
            .expect("publish 4 MiB");
        assert!(
            confirm.await.expect("confirm of 4 MiB").is_ack(),
            "RabbitMQ {version}: a body of exactly 4 MiB was not taken"
        );
        assert_eq!(ready(&connection, queue).await, 1);

        let over = vec![b'a'; limit + 1];
        let refused = match channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &over,
                BasicProperties::default(),
            )
            .await
        {
            Ok(confirm) => confirm.await.map(|c| c.is_ack()),
            Err(e) => Err(e),
        };
        let error = match refused {
            Err(e) => e.to_string(),
            Ok(acked) => panic!(
                "RabbitMQ {version}: a body of 4 MiB + 1 byte was answered (ack {acked}) instead of refused"
            ),
        };
        assert!(
            error.contains("PRECONDITION_FAILED") && error.contains(&limit.to_string()),
            "RabbitMQ {version}: a body of 4 MiB + 1 byte: {error}"
        );
        assert_eq!(
            ready(&connection, queue).await,
            1,
            "the refused body reached the queue"
        );
        eprintln!("RabbitMQ {version} ({rabbit:?}) with 20-labmq.conf: 4 MiB taken, 4 MiB + 1 refused: {error}");
        let _ = connection.close(200, "".into()).await;
    });
}

/// `30-cluster.conf`, its `rabbit@rabbit-1..3` rewritten to three private nodes, started
/// as `docker-compose.cluster.yml` starts them: the first, then the other two once the
/// first passes the healthcheck (`rabbitmq-diagnostics ping`). They form one cluster by
/// `classic_config` peer discovery alone (nothing calls `join_cluster`): on 4.x a blank
/// node listing three nodes waits until it reaches another one (a 4.3.6 node alone gave
/// up and booted by itself after 99 s on the test machine), so the first finishes its
/// boot only once the others run. A durable queue declared without `x-queue-type` is a quorum
/// queue with a member on each node.
fn cluster_conf_forms_a_cluster_whose_default_queue_type_is_quorum(rabbit: Rabbit) {
    let nodes = Nodes((0..3).map(|_| node_files(rabbit, "labmqcf", "")).collect());
    let mut conf = CLUSTER_CONF.to_owned();
    for (i, node) in nodes.0.iter().enumerate() {
        let listed = format!("rabbit@rabbit-{}", i + 1);
        assert!(
            conf.contains(&listed),
            "30-cluster.conf does not list {listed}"
        );
        conf = conf.replace(&listed, &node.name);
    }
    assert!(
        !conf.contains("rabbit@"),
        "30-cluster.conf lists nodes other than rabbit@rabbit-1..3:\n{conf}"
    );
    for node in &nodes.0 {
        append_conf(node, &conf);
    }
    let started = Instant::now();
    let first = &nodes.0[0];
    first.boot();
    let deadline = Instant::now() + NODE_TIMEOUT;
    while !pings(first) {
        assert!(
            Instant::now() < deadline,
            "{rabbit:?}: {} does not answer ping after {NODE_TIMEOUT:?}; log in {}",
            first.name,
            first.dir.display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for node in &nodes.0[1..] {
        node.boot();
    }
    for node in &nodes.0 {
        node.wait_serving(NODE_TIMEOUT);
    }
    let mut names: Vec<&str> = nodes.0.iter().map(|n| n.name.as_str()).collect();
    names.sort_unstable();
    for node in &nodes.0 {
        let deadline = Instant::now() + NODE_TIMEOUT;
        loop {
            let status: Value =
                serde_json::from_str(&node.ctl(&["cluster_status", "--formatter", "json"]))
                    .expect("cluster_status as JSON");
            let mut running: Vec<&str> = status["running_nodes"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            running.sort_unstable();
            if running == names {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {} sees running nodes {running:?}, want {names:?}",
                describe(node),
                node.name
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let formed = started.elapsed();
    let version = describe(&nodes.0[0]);

    let queue = "labmq-conf-default-type";
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", nodes.0[1].port);
    runtime().block_on(async {
        let (connection, channel) = connect(&url).await;
        declare_durable(&channel, queue, FieldTable::default()).await;
        let _ = connection.close(200, "".into()).await;
    });
    let listing = nodes.0[0].ctl(&[
        "list_queues",
        "-q",
        "--formatter",
        "json",
        "name",
        "type",
        "members",
    ]);
    let queues: Value = serde_json::from_str(&listing).expect("list_queues as JSON");
    let found = queues
        .as_array()
        .and_then(|all| all.iter().find(|q| q["name"] == queue))
        .unwrap_or_else(|| panic!("{version}: {queue} not listed: {listing}"));
    assert_eq!(
        found["type"], "quorum",
        "{version}: a queue declared without x-queue-type: {found}"
    );
    let mut members: Vec<&str> = found["members"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    members.sort_unstable();
    assert_eq!(members, names, "{version}: members of {queue}");
    eprintln!(
        "{version}: 3 nodes clustered by classic_config peer discovery in {formed:.1?} (the first started, the other two once it answered ping), {queue} declared without x-queue-type is a quorum queue on all three"
    );
}

/// The policies of `labmq-definitions.json`, as the file has them, checked against what
/// was decided (issue 22), so that an edit of the file is a deliberate one.
fn file_policies() -> Value {
    let file: Value = serde_json::from_str(DEFINITIONS).expect("labmq-definitions.json is JSON");
    let object = file.as_object().expect("an object");
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["_comment", "policies"],
        "labmq-definitions.json: only policies (and a comment): users or vhosts in it would reset those of the broker it is imported into"
    );
    let policies = file["policies"].clone();
    assert_eq!(
        policies,
        json!([
            {
                "vhost": "/",
                "name": "labmq-task-queue",
                "pattern": "^task_queue$",
                "apply-to": "queues",
                "priority": 0,
                "definition": {
                    "dead-letter-exchange": "",
                    "dead-letter-routing-key": "task_queue.dead",
                    "dead-letter-strategy": "at-least-once",
                    "overflow": "reject-publish",
                    "delivery-limit": DELIVERY_LIMIT
                }
            },
            {
                "vhost": "/",
                "name": "labmq-dead-letters",
                "pattern": "^task_queue\\.dead$",
                "apply-to": "queues",
                "priority": 0,
                "definition": {"delivery-limit": -1}
            }
        ])
    );
    policies
}

/// The node's policies as `list_policies` shows them: name -> (pattern, apply-to,
/// definition).
fn listed_policies(files: &NodeFiles) -> Vec<(String, String, String, Value)> {
    let listing = files.ctl(&["list_policies", "-q", "--formatter", "json"]);
    let listed: Value = serde_json::from_str(&listing).expect("list_policies as JSON");
    let mut policies: Vec<_> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            // A JSON object, or its text (as 4.0 and 4.3 print it).
            let definition = match &p["definition"] {
                Value::String(text) => serde_json::from_str(text).expect("definition JSON"),
                other => other.clone(),
            };
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["pattern"].as_str().unwrap_or_default().to_owned(),
                p["apply-to"].as_str().unwrap_or_default().to_owned(),
                definition,
            )
        })
        .collect();
    policies.sort_by(|a, b| a.0.cmp(&b.0));
    policies
}

/// Waits until `list_queues name policy` shows each of `queues` with its policy.
fn wait_policies_applied(files: &NodeFiles, queues: &[(&str, &str)]) {
    let deadline = Instant::now() + NODE_TIMEOUT;
    loop {
        let listing = files.ctl(&["list_queues", "-q", "--no-table-headers", "name", "policy"]);
        let applied = queues.iter().all(|(queue, policy)| {
            listing.lines().any(|line| {
                let mut columns = line.split('\t').map(str::trim);
                columns.next() == Some(queue) && columns.next() == Some(policy)
            })
        });
        if applied {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: policies not applied as {queues:?}: {listing}",
            describe(files)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Takes one message off `queue` with `basic.get` (unacked) on a new connection, then
/// closes that connection, as a pika consumer that crashes holding a task would: the
/// broker returns the message to the queue. `None` when the queue has none ready.
async fn get_and_close(url: &str, queue: &str) -> Option<(Vec<u8>, BasicProperties)> {
    let (connection, channel) = connect(url).await;
    let message = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap_or_else(|e| panic!("basic.get from {queue}: {e}"));
    let _ = connection.close(200, "".into()).await;
    message.map(|m| (m.delivery.data, m.delivery.properties))
}

/// The next delivery of the one task, from `task_queue` or else from `task_queue.dead`,
/// waiting (bounded) while a return is still on its way back to the queue.
async fn next_delivery(url: &str, check: &Connection) -> (&'static str, Vec<u8>, BasicProperties) {
    let deadline = Instant::now() + NODE_TIMEOUT;
    loop {
        if let Some((body, properties)) = get_and_close(url, "task_queue").await {
            return ("task_queue", body, properties);
        }
        // The count may run ahead of what a basic.get finds for a moment (the dead
        // letter being confirmed into the queue): then look again.
        if ready(check, "task_queue.dead").await > 0
            && let Some((body, properties)) = get_and_close(url, "task_queue.dead").await
        {
            return ("task_queue.dead", body, properties);
        }
        assert!(
            Instant::now() < deadline,
            "the task is neither in task_queue nor in task_queue.dead after {NODE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The shell script of docker-compose.yml's `rabbitmq-policies` service, as compose hands
/// it to `sh -ec` (`$$` is compose's escape for `$`), made to run against `files`' node:
/// the node name, the definitions file and its marker file rewritten to the node's, and
/// `exec sleep infinity` (idling, healthy) to `exit 0`. packaging/check-compose checks
/// that docker-compose.cluster.yml runs the same script.
fn compose_policies_script(files: &NodeFiles, definitions: &str) -> String {
    let lines = COMPOSE
        .lines()
        .skip_while(|line| *line != "  rabbitmq-policies:")
        .skip_while(|line| *line != "      - |")
        .skip(1);
    let mut script = String::new();
    for line in lines {
        match line.strip_prefix("        ") {
            Some(text) => script.push_str(text),
            None if line.trim().is_empty() => {}
            None => break,
        }
        script.push('\n');
    }
    assert!(
        !script.is_empty(),
        "docker-compose.yml: no `rabbitmq-policies:` service with a `command: [sh, -ec, |script]`"
    );
    let marker = files.node_path("labmq-policies-set");
    let mut script = script.replace("$$", "$");
    for (from, to) in [
        ("rabbit@labmq-rabbitmq", files.name.as_str()),
        ("/etc/rabbitmq/labmq-definitions.json", definitions),
        ("/tmp/labmq-policies-set", marker.as_str()),
        ("exec sleep infinity", "exit 0"),
    ] {
        assert!(
            script.contains(from),
            "rabbitmq-policies' script in docker-compose.yml has no {from:?}:\n{script}"
        );
        script = script.replace(from, to);
    }
    script
}

/// `labmq-definitions.json` as docker-compose.yml applies it: the node boots as the
/// Docker image boots it (RabbitMQ creates `RABBITMQ_DEFAULT_USER` itself, no guest, and
/// `20-labmq.conf`), a plain client has a quorum `task_queue` (and `task_queue.dead`)
/// with one task in it, as the previous labmq release leaves them; then what the
/// `rabbitmq-policies` service runs. The policies apply to the existing queues in place:
/// the task stays, the same declaration is still accepted, the user still logs in. The
/// task then survives being taken and returned (get, connection closed) 21 times: it is
/// dead-lettered at the delivery limit instead of dropped, and in `task_queue.dead` it
/// survives 25 more returns (no delivery limit there).
fn definitions_dead_letter_a_task_at_the_delivery_limit_and_keep_the_default_user(rabbit: Rabbit) {
    let expected_policies = file_policies();
    let nodes = Nodes(vec![node_files(rabbit, "labmqdef", LABMQ_CONF)]);
    let node = &nodes.0[0];
    let (user, password) = ("labmq", "compose-password");
    node.boot_with_env(&[
        ("RABBITMQ_DEFAULT_USER", user),
        ("RABBITMQ_DEFAULT_PASS", password),
    ]);
    node.wait_serving(NODE_TIMEOUT);
    let version = describe(node);
    let users = node.ctl(&["list_users", "-q", "--no-table-headers"]);
    let names: Vec<&str> = users.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(
        names,
        [user],
        "{version}: the user of RABBITMQ_DEFAULT_USER, and no guest: {users}"
    );
    let url = format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", node.port);
    let rt = runtime();
    let task = b"fact:20".to_vec();
    let check = rt.block_on(async {
        let (connection, channel) = connect(&url).await;
        declare_durable(&channel, "task_queue", quorum()).await;
        declare_durable(&channel, "task_queue.dead", quorum()).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let confirm = channel
            .basic_publish(
                "".into(),
                "task_queue".into(),
                BasicPublishOptions::default(),
                &task,
                BasicProperties::default().with_message_id(ShortString::from("task-1")),
            )
            .await
            .expect("publish the task");
        assert!(confirm.await.expect("confirm").is_ack());
        connection
    });

    // What rabbitmq-policies runs once the node is healthy.
    let path = put_file(node, "labmq-definitions.json", DEFINITIONS);
    let script = compose_policies_script(node, &path);
    let mut command = node.rabbit.command("sh");
    command.args(["-ec", &script]);
    let ran = support::output_within(command, NODE_TIMEOUT);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(
        ran.status.success() && said.contains("labmq policies set"),
        "{version}: docker-compose.yml's rabbitmq-policies script ({}):\n{said}",
        ran.status
    );
    assert!(
        node.dir.join("labmq-policies-set").exists(),
        "{version}: rabbitmq-policies' healthcheck file was not made"
    );

    wait_policies_applied(
        node,
        &[
            ("task_queue", "labmq-task-queue"),
            ("task_queue.dead", "labmq-dead-letters"),
        ],
    );
    let listed = listed_policies(node);
    let mut expected: Vec<_> = expected_policies
        .as_array()
        .expect("policies")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["pattern"].as_str().unwrap_or_default().to_owned(),
                p["apply-to"].as_str().unwrap_or_default().to_owned(),
                p["definition"].clone(),
            )
        })
        .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(listed, expected, "{version}: list_policies");
    let users_after = node.ctl(&["list_users", "-q", "--no-table-headers"]);
    assert_eq!(
        users_after, users,
        "{version}: import_definitions changed the users"
    );

    rt.block_on(async {
        assert_eq!(
            ready(&check, "task_queue").await,
            1,
            "{version}: the task queued before the policies"
        );
        // The previous release's declaration (or pika's) is still equivalent.
        let (connection, channel) = connect(&url).await;
        declare_durable(&channel, "task_queue", quorum()).await;
        let _ = connection.close(200, "".into()).await;

        let mut counts = Vec::new();
        let dead = loop {
            let (queue, body, properties) = next_delivery(&url, &check).await;
            assert_eq!(body, task, "{version}: another body from {queue}");
            if queue == "task_queue.dead" {
                break properties;
            }
            counts.push(header_number(&properties, "x-delivery-count").unwrap_or(0));
            assert!(
                counts.len() <= DELIVERY_LIMIT as usize + 1,
                "{version}: delivered {} times from task_queue, past its delivery limit ({DELIVERY_LIMIT}); x-delivery-count {counts:?}",
                counts.len()
            );
        };
        assert_eq!(
            counts.len(),
            DELIVERY_LIMIT as usize + 1,
            "{version}: deliveries from task_queue before it was dead-lettered (x-delivery-count {counts:?})"
        );
        assert_eq!(
            header_text(&dead, "x-first-death-reason").as_deref(),
            Some("delivery_limit"),
            "{version}: {dead:?}"
        );
        assert_eq!(
            header_text(&dead, "x-first-death-queue").as_deref(),
            Some("task_queue"),
            "{version}: {dead:?}"
        );
        assert_eq!(
            dead.message_id().as_ref().map(|id| id.as_str()),
            Some("task-1"),
            "{version}: {dead:?}"
        );
        assert_eq!(ready(&check, "task_queue").await, 0);

        // Browsing the dead letters never drops one: returned 25 times more, counted.
        let mut last_count = None;
        for _ in 0..25 {
            let (queue, body, properties) = next_delivery(&url, &check).await;
            assert_eq!(
                (queue, body.as_slice()),
                ("task_queue.dead", task.as_slice()),
                "{version}: the dead letter moved"
            );
            last_count = header_number(&properties, "x-delivery-count");
        }
        assert!(
            last_count.is_some_and(|n| n > i64::from(DELIVERY_LIMIT)),
            "{version}: the broker did not count the returns from task_queue.dead (x-delivery-count {last_count:?}), so this proves nothing about its delivery limit"
        );
        assert_eq!(ready(&check, "task_queue.dead").await, 1);
        eprintln!(
            "{version}: policies imported over a quorum task_queue holding a task, user {user} kept; the task delivered {} times (x-delivery-count {:?}..{:?}), then in task_queue.dead with x-first-death-reason delivery_limit; 25 more returns from task_queue.dead (x-delivery-count now {}), still there",
            counts.len(),
            counts.first().copied().unwrap_or_default(),
            counts.last().copied().unwrap_or_default(),
            last_count.unwrap_or_default()
        );
        let _ = check.close(200, "".into()).await;
    });
}

/// Why docker-compose.yml applies the file after boot: RabbitMQ skips creating its
/// default user and vhost on a blank node that has definitions to import at boot
/// (`definitions.local.path`). With the file as shipped the node does not even boot (its
/// policies need vhost `/`); with vhost `/` added it boots, and nobody can log in
/// (`RABBITMQ_DEFAULT_USER` was not created).
fn definitions_loaded_at_boot_would_lose_the_default_user(rabbit: Rabbit) {
    let env = [
        ("RABBITMQ_DEFAULT_USER", "labmq"),
        ("RABBITMQ_DEFAULT_PASS", "compose-password"),
    ];
    let at_boot = |files: &NodeFiles, definitions: &str| {
        let path = put_file(files, "labmq-definitions.json", definitions);
        append_conf(
            files,
            &format!(
                "definitions.import_backend = local_filesystem\ndefinitions.local.path = {path}"
            ),
        );
    };

    // As shipped: the boot stops.
    let nodes = Nodes(vec![node_files(rabbit, "labmqboot", "")]);
    let failing = &nodes.0[0];
    at_boot(failing, DEFINITIONS);
    failing.boot_with_env(&env);
    let deadline = Instant::now() + NODE_TIMEOUT;
    let log = loop {
        let log = node_log(failing);
        if log.contains("BOOT FAILED") {
            break log;
        }
        assert!(
            !failing
                .rabbit
                .ctl(&failing.name, &["await_startup", "--timeout", "1"])
                .status
                .success(),
            "{:?}: a blank node importing labmq-definitions.json at boot booted: RabbitMQ now creates vhost / first, revisit docs/deploy-cluster.md (Policies)",
            rabbit
        );
        assert!(
            Instant::now() < deadline,
            "{rabbit:?}: neither booted nor failed within {NODE_TIMEOUT:?}; log in {}",
            failing.dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        log.contains("Will not seed default virtual host and user")
            && log.contains("Please create virtual host \\\"/\\\" prior to importing definitions"),
        "{rabbit:?}: the boot failed for another reason:\n{log}"
    );
    drop(nodes);

    // With vhost / in the file: it boots, without the user.
    let mut with_vhost: Value = serde_json::from_str(DEFINITIONS).expect("JSON");
    with_vhost["vhosts"] = json!([{"name": "/"}]);
    let nodes = Nodes(vec![node_files(rabbit, "labmqboot", "")]);
    let node = &nodes.0[0];
    at_boot(node, &with_vhost.to_string());
    node.boot_with_env(&env);
    node.wait_serving(NODE_TIMEOUT);
    let version = describe(node);
    let users = node.ctl(&["list_users", "-q", "--no-table-headers"]);
    assert_eq!(
        users.trim(),
        "",
        "{version}: users after a boot-time import: RabbitMQ now creates the default user, revisit docs/deploy-cluster.md (Policies)"
    );
    let deadline = Instant::now() + NODE_TIMEOUT;
    while listed_policies(node).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "{version}: the policies imported at boot are not listed: {:?}",
            listed_policies(node)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "{version}: importing labmq-definitions.json at boot stops a blank node's boot (no vhost /); with vhost / added it boots with no user at all (RABBITMQ_DEFAULT_USER ignored)"
    );
}

/// RabbitMQ 3.x refuses `labmq-definitions.json` (`delivery-limit` -1 is 4.0's), so
/// docs/deploy-cluster.md gives 3.10-3.13 the first policy alone, by `rabbitmqctl
/// set_policy` with the file's definition: taken as it is.
fn definitions_on_rabbitmq3(rabbit: Rabbit) {
    let policies = file_policies();
    let nodes = Nodes(vec![node_files(rabbit, "labmqdef3", "")]);
    let node = &nodes.0[0];
    node.boot();
    node.wait_serving(NODE_TIMEOUT);
    let version = describe(node);
    let path = put_file(node, "labmq-definitions.json", DEFINITIONS);
    let refused = rabbit.ctl(&node.name, &["import_definitions", &path]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        !refused.status.success() && said.contains("-1 is not a valid delivery limit"),
        "{version}: import_definitions of labmq-definitions.json ({}): {said}",
        refused.status
    );
    let task_queue = &policies[0];
    assert_eq!(task_queue["name"], "labmq-task-queue");
    let definition = task_queue["definition"].to_string();
    node.ctl(&[
        "set_policy",
        "--apply-to",
        "queues",
        "labmq-task-queue",
        "^task_queue$",
        &definition,
    ]);
    let listed = listed_policies(node);
    assert_eq!(
        listed,
        [(
            "labmq-task-queue".to_owned(),
            "^task_queue$".to_owned(),
            "queues".to_owned(),
            task_queue["definition"].clone()
        )],
        "{version}: list_policies"
    );
    eprintln!(
        "{version}: labmq-definitions.json refused (-1 is not a valid delivery limit); labmq-task-queue alone set with set_policy {definition}"
    );
}
