//! Test-side AMQP: a plain lapin client to publish raw bodies, inspect queues and count
//! result documents, plus helpers to run labmq-consumer and labmq-produce against a broker.

use std::collections::HashMap;
use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;
use tokio::runtime::Runtime;

use super::{COMMAND_TIMEOUT, Daemon, DaemonSpec, READY_TIMEOUT, isolated_command};

pub const CONSUMER_BIN: &str = env!("CARGO_BIN_EXE_labmq-consumer");
pub const PRODUCE_BIN: &str = env!("CARGO_BIN_EXE_labmq-produce");

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("labmq-test-{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime for the test AMQP client")
}

/// A blocking AMQP client with one confirm-mode channel.
pub struct Amqp {
    rt: Runtime,
    connection: Connection,
    channel: Channel,
}

impl Amqp {
    pub fn connect(url: &str) -> Self {
        let rt = runtime();
        let (connection, channel) = rt.block_on(async {
            let connection = Connection::connect(url, ConnectionProperties::default())
                .await
                .unwrap_or_else(|e| {
                    panic!("test client cannot reach RabbitMQ at {url}: {e}; start it with `rabbitmq-server -detached`")
                });
            let channel = connection.create_channel().await.expect("open channel");
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("confirm mode");
            (connection, channel)
        });
        Self {
            rt,
            connection,
            channel,
        }
    }

    pub fn declare_queue(&self, queue: &str, arguments: FieldTable) {
        self.rt.block_on(async {
            labmq::amqp::topology::declare_queue(&self.channel, queue, arguments)
                .await
                .unwrap_or_else(|e| panic!("declare {queue}: {e}"));
        });
    }

    /// A durable queue bound to the (durable fanout) results exchange, declared before
    /// any task is published so no result can slip past it.
    pub fn bind_results(&self, exchange: &str, queue: &str) {
        let topology = labmq::amqp::topology::Topology {
            queue: queue.to_owned(),
            queue_type: labmq::amqp::topology::QueueType::Classic,
            results_exchange: exchange.to_owned(),
        };
        self.rt.block_on(async {
            topology
                .declare_results_queue(&self.channel, queue, None)
                .await
                .unwrap_or_else(|e| panic!("bind results queue {queue} to {exchange}: {e}"));
        });
    }

    /// Publishes `body` to `queue` on the default exchange and waits for the confirm.
    pub fn publish(&self, queue: &str, body: &[u8], properties: BasicProperties) {
        self.publish_routed("", queue, body, properties);
    }

    /// Publishes `body` to `exchange` (routing key "") and waits for the confirm.
    pub fn publish_to_exchange(&self, exchange: &str, body: &[u8], properties: BasicProperties) {
        self.publish_routed(exchange, "", body, properties);
    }

    fn publish_routed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        self.rt.block_on(async {
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
                .expect("publish");
            assert!(confirm.await.expect("confirm").is_ack(), "publish nacked");
        });
    }

    /// Messages ready in `queue` (a passive declare).
    pub fn ready_count(&self, queue: &str) -> u32 {
        self.rt.block_on(async {
            let channel = self.connection.create_channel().await.expect("channel");
            let queue = labmq::amqp::topology::inspect_queue(&channel, queue)
                .await
                .unwrap_or_else(|e| panic!("queue {queue} should exist: {e}"));
            let _ = channel.close(200, "".into()).await;
            queue.message_count()
        })
    }

    /// Takes every ready message off `queue` (acked), with its properties.
    pub fn drain(&self, queue: &str) -> Vec<(Vec<u8>, BasicProperties)> {
        self.rt.block_on(async {
            let mut messages = Vec::new();
            while let Some(message) = self
                .channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .expect("basic.get")
            {
                let delivery = message.delivery;
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                messages.push((delivery.data, delivery.properties));
            }
            messages
        })
    }

    pub fn delete_queue(&self, queue: &str) {
        self.rt.block_on(async {
            let _ = self
                .channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
        });
    }
}

/// Counts result documents by id on a results queue, in a background thread that
/// reconnects when the broker goes away, so it keeps counting across broker restarts.
pub struct ResultCounter {
    counts: Arc<Mutex<HashMap<String, (u32, Value)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ResultCounter {
    pub fn start(url: &str, queue: &str) -> Self {
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (counts, stop, url, queue) = (
                counts.clone(),
                stop.clone(),
                url.to_owned(),
                queue.to_owned(),
            );
            std::thread::spawn(move || {
                let rt = runtime();
                while !stop.load(Ordering::Relaxed) {
                    rt.block_on(count_until_error(&url, &queue, &counts, &stop));
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        Self {
            counts,
            stop,
            thread: Some(thread),
        }
    }

    /// Distinct result ids seen so far.
    pub fn distinct(&self) -> usize {
        self.counts.lock().expect("counts").len()
    }

    /// Waits until `ids` all have a result; panics naming what is missing after `timeout`.
    pub fn wait_for_all(&self, ids: &[String], timeout: Duration) -> HashMap<String, (u32, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let snapshot = self.counts.lock().expect("counts").clone();
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| !snapshot.contains_key(*id))
                .collect();
            if missing.is_empty() {
                return snapshot;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} results missing after {timeout:?}, e.g. {:?}",
                missing.len(),
                ids.len(),
                &missing[..missing.len().min(5)]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until no new result id has arrived for `quiet`, and returns the count then.
    /// The counter acks one delivery at a time, so it can lag thousands of results behind
    /// what was published; this is how a test learns what had really been published.
    /// Panics if results still keep coming after `timeout`.
    pub fn wait_until_quiet(&self, quiet: Duration, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut last = self.distinct();
        let mut last_change = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.distinct();
            if now != last {
                last = now;
                last_change = Instant::now();
            } else if last_change.elapsed() >= quiet {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "results kept coming for {timeout:?} ({now} so far)"
            );
        }
    }

    /// Waits until at least `n` distinct results arrived.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.distinct() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} results after {timeout:?}",
                self.distinct()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ResultCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn count_until_error(
    url: &str,
    queue: &str,
    counts: &Mutex<HashMap<String, (u32, Value)>>,
    stop: &AtomicBool,
) {
    let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let Ok(mut consumer) = labmq::amqp::topology::subscribe(&channel, queue).await else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
        let delivery = match next {
            Err(_) => continue,
            Ok(Some(Ok(delivery))) => delivery,
            Ok(_) => return,
        };
        let document: Value = serde_json::from_slice(&delivery.data).expect("result is JSON");
        let id = document["id"]
            .as_str()
            .expect("result has an id")
            .to_owned();
        // The latest document of an id: a task dead-lettered, requeued and then
        // answered shows its answer.
        counts
            .lock()
            .expect("counts")
            .entry(id)
            .and_modify(|(n, latest)| {
                *n += 1;
                *latest = document.clone();
            })
            .or_insert((1, document));
        if delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = connection.close(200, "".into()).await;
}

/// Everything a test consumer needs; `extra` is appended to its TOML config.
#[derive(Debug)]
pub struct ConsumerSetup {
    pub amqp_url: String,
    pub queue: String,
    pub results_exchange: String,
    pub grpc_targets: Vec<String>,
    /// `shutdown_grace_secs` (10).
    pub shutdown_grace_secs: u64,
    pub extra: String,
}

impl ConsumerSetup {
    pub fn new(amqp_url: &str, grpc_targets: &[String]) -> Self {
        super::rabbit::say_broker(amqp_url);
        Self {
            amqp_url: amqp_url.to_owned(),
            queue: unique("tasks"),
            results_exchange: unique("results"),
            grpc_targets: grpc_targets.to_vec(),
            shutdown_grace_secs: 10,
            extra: String::new(),
        }
    }

    /// Appends `extra` to the consumer's TOML config.
    pub fn with_extra(mut self, extra: &str) -> Self {
        self.extra = extra.to_owned();
        self
    }

    /// Sets `shutdown_grace_secs`.
    pub fn with_grace(mut self, secs: u64) -> Self {
        self.shutdown_grace_secs = secs;
        self
    }

    pub fn toml(&self) -> String {
        let targets: Vec<String> = self.grpc_targets.iter().map(|t| format!("{t:?}")).collect();
        format!(
            "amqp_url = {:?}\nqueue = {:?}\nresults_exchange = {:?}\ngrpc_targets = [{}]\nretry_initial_ms = 50\nretry_max_ms = 1000\nreconnect_max_secs = 1\nshutdown_grace_secs = {}\n{}\n",
            self.amqp_url,
            self.queue,
            self.results_exchange,
            targets.join(", "),
            self.shutdown_grace_secs,
            self.extra
        )
    }

    pub fn spawn(&self) -> Daemon {
        let dir = tempfile::tempdir().expect("consumer temp dir");
        let path = dir.path().join("consumer.toml");
        std::fs::write(&path, self.toml()).expect("write consumer.toml");
        DaemonSpec::new(CONSUMER_BIN)
            .arg("--config")
            .arg(path.as_os_str())
            .spawn_in(dir)
    }

    /// Spawns a consumer and waits until it consumes: READY=1 first (it comes once the
    /// consumer has started, whether or not the broker answers), then a status saying
    /// `consuming from`.
    pub fn start(&self) -> Daemon {
        let mut daemon = self.spawn();
        daemon.wait_ready(READY_TIMEOUT);
        wait_status_containing(&mut daemon, "consuming from", READY_TIMEOUT);
        daemon
    }
}

/// Deletes what a test consumer declared on its broker (task queue, dead letters, results
/// exchange), so test runs do not pile up durable objects on the shared broker.
impl Drop for ConsumerSetup {
    fn drop(&mut self) {
        delete_best_effort(
            &self.amqp_url,
            vec![
                self.queue.clone(),
                format!(
                    "{}{}",
                    self.queue,
                    labmq::amqp::topology::DEAD_LETTER_SUFFIX
                ),
            ],
            vec![self.results_exchange.clone()],
        );
    }
}

/// Deletes `queues`, then `exchanges`, each on a channel of its own (one already gone
/// closes only its channel). Best effort: the broker may be gone already (a private node
/// stopped first), and it runs in drops, which must not panic.
pub fn delete_best_effort(url: &str, queues: Vec<String>, exchanges: Vec<String>) {
    let url = url.to_owned();
    // Its own thread and runtime: the drop may run inside a test's runtime.
    let _ = std::thread::spawn(move || {
        let rt = runtime();
        rt.block_on(async {
            let cleanup = async {
                let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
                for queue in &queues {
                    let channel = connection.create_channel().await?;
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for exchange in &exchanges {
                    let channel = connection.create_channel().await?;
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
                connection.close(200, "".into()).await
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), cleanup).await;
        });
    })
    .join();
}

/// Runs labmq-produce with `args`, feeding `stdin`; returns (exit code, stdout, stderr).
pub fn produce(url: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    // An empty config file of its own, so /etc/labmq/produce.toml is never read.
    let dir = tempfile::tempdir().expect("temp dir for produce.toml");
    let config = dir.path().join("produce.toml");
    std::fs::write(&config, "").expect("write produce.toml");
    let mut command = isolated_command(PRODUCE_BIN, &[("LABMQ_AMQP_URL", url)]);
    command
        .arg("--config")
        .arg(&config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start labmq-produce");
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(output) => output.expect("labmq-produce output"),
        Err(_) => {
            super::send_signal(pid, libc::SIGKILL);
            panic!("labmq-produce {args:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
    };
    let _ = writer.join();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Publishes `tasks` (one per line) with `labmq-produce --json -` and returns their ids.
pub fn produce_tasks(url: &str, queue: &str, tasks: &[String]) -> Vec<String> {
    let (code, stdout, stderr) =
        produce(url, &["--queue", queue, "--json", "-"], &tasks.join("\n"));
    assert_eq!(code, 0, "labmq-produce failed: {stderr}");
    let ids: Vec<String> = stdout
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("produce --json line");
            value["id"].as_str().expect("id").to_owned()
        })
        .collect();
    assert_eq!(ids.len(), tasks.len(), "one id per task");
    ids
}

/// A cheap mix of every kind, `n` tasks.
pub fn mixed_tasks(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("fact:{}", i % 30),
            1 => format!("freq:abracadabra{i}"),
            2 => format!("user{i}"),
            _ => format!("upper:hello{i}"),
        })
        .collect()
}

/// Waits for a `STATUS=` notification containing `needle`; returns the status text.
pub fn wait_status_containing(daemon: &mut Daemon, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(message) = daemon.notify.recv(Duration::from_millis(200))
            && let Some(status) = super::notify_field(&message, "STATUS")
            && status.contains(needle)
        {
            return status.to_owned();
        }
    }
    panic!(
        "{} sent no STATUS containing {needle:?} within {timeout:?}; got {:?}\n{}",
        daemon.name,
        daemon.notify.messages(),
        daemon.stderr()
    );
}

/// A durable queue bound to a results exchange, with a [`ResultCounter`] on it; the queue
/// is deleted when the watch is dropped. Start it before the consumer so no result slips by.
pub struct ResultWatch {
    pub amqp: Amqp,
    pub queue: String,
    pub counter: ResultCounter,
}

impl ResultWatch {
    pub fn start(url: &str, results_exchange: &str) -> Self {
        let amqp = Amqp::connect(url);
        let queue = unique("results-q");
        amqp.bind_results(results_exchange, &queue);
        let counter = ResultCounter::start(url, &queue);
        Self {
            amqp,
            queue,
            counter,
        }
    }
}

impl Drop for ResultWatch {
    fn drop(&mut self) {
        self.amqp.delete_queue(&self.queue);
    }
}
