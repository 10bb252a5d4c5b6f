//! Benchmark of the asynchronous pipeline on RabbitMQ; run through `./bench`, which builds
//! the release binaries and passes their directory here.
//!
//! `cargo run --release --example bench_pipeline -- --bin-dir target/release`
//!
//! In one run, against the broker at `--amqp-url` (loopback only):
//! (a) raw broker rate: N persistent messages published with confirms (at most
//!     `--publish-window` unconfirmed) and consumed with acks on another connection, no
//!     processing;
//! (b) relay bound: the same feeder, and a relay on its own connection consumes with
//!     prefetch `--relay-prefetch`, keeps `--relay-in-flight` messages in flight, and for
//!     each publishes a `--result-bytes` persistent result with a confirm to a second
//!     queue before acking it, while a third connection drains the results: no gRPC, no
//!     parsing;
//! (c) labmq end to end: the same feeder publishes N mixed tasks into labmq-consumer's
//!     queue; timed until the last result document, drained by the third connection
//!     from a queue bound to the results exchange (labmq-consumer + labmq-server with
//!     their defaults). (b) and (c) alternate `--runs` times; the ratio (c)/(b) is taken
//!     within each run and its median reported. Peak RSS (VmHWM) of both daemons is read
//!     after the last run;
//! (d) latency of `labmq-produce --wait` for single tasks on the idle pipeline, the
//!     whole command (process start, connect, publish, result) timed;
//! (e) what any one-shot AMQP client pays before its first publish, as floors for (d):
//!     the bare AMQP 0-9-1 handshake over a plain socket (no client library), and lapin's
//!     connect + channel + close.
//! Every phase is bounded in time and deletes its queues. Prints markdown on stdout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use futures_util::StreamExt;
use labmq::amqp::producer::{Producer, wait_for_results};
use labmq::amqp::settings::AmqpTarget;
use labmq::amqp::topology::{
    DEAD_LETTER_SUFFIX, QueueType, Topology, declare_queue, inspect_queue,
};
use labmq::task::Task;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

#[derive(Debug, Parser)]
#[command(about = "labmq pipeline benchmark (see ./bench)")]
struct Args {
    /// Directory with release builds of labmq-server, labmq-consumer, labmq-produce
    #[arg(long, value_name = "DIR")]
    bin_dir: PathBuf,
    /// Broker; must be on loopback
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Messages (a, b) and tasks (c) per phase
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Runs of (b) and (c), alternating; the median ratio (c)/(b) is reported
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Unconfirmed publishes the feeder keeps in flight (a, b, c)
    #[arg(long, default_value_t = 500)]
    publish_window: usize,
    /// Prefetch of the relay's consuming channel (b)
    #[arg(long, default_value_t = 300)]
    relay_prefetch: u16,
    /// Messages the relay processes at once (b)
    #[arg(long, default_value_t = 300)]
    relay_in_flight: usize,
    /// Size of each result the relay publishes (b)
    #[arg(long, default_value_t = 200)]
    result_bytes: usize,
    /// Single-task `labmq-produce --wait` runs for the latency phase (d)
    #[arg(long, default_value_t = 200)]
    latency_runs: usize,
    /// Extra consumer.toml line for (c), e.g. `prefetch = 300`; repeatable (for
    /// experiments: the published figures use the defaults)
    #[arg(long, value_name = "LINE")]
    consumer_set: Vec<String>,
    /// Only (a), (b) and (c): skip the latency phases
    #[arg(long)]
    throughput_only: bool,
    /// Upper bound on each phase, in seconds
    #[arg(long, default_value_t = 120)]
    phase_timeout: u64,
}

fn unique(name: &str) -> String {
    format!("labmq-bench-{name}-{}", uuid::Uuid::new_v4().simple())
}

async fn channel(connection: &Connection, prefetch: u16) -> anyhow::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    Ok(channel)
}

async fn delete(channel: &Channel, queue: &str) {
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Publishes `bodies` to `queue` (default exchange), persistent, with confirms, keeping at
/// most `window` unconfirmed.
async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    bodies: impl Iterator<Item = Vec<u8>>,
    window: usize,
) -> anyhow::Result<()> {
    let mut pending = std::collections::VecDeque::with_capacity(window);
    for body in bodies {
        if pending.len() >= window.max(1)
            && let Some(confirm) = pending.pop_front()
        {
            let confirm: lapin::PublisherConfirm = confirm;
            ensure!(confirm.await?.is_ack(), "publish nacked");
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                persistent(),
            )
            .await?;
        pending.push_back(confirm);
    }
    for confirm in pending {
        ensure!(confirm.await?.is_ack(), "publish nacked");
    }
    Ok(())
}

fn fact_bodies(count: usize) -> impl Iterator<Item = Vec<u8>> {
    (0..count).map(|i| format!("fact:{}", i % 30).into_bytes())
}

/// Consumes `count` messages from `queue` with acks; returns when all are acked.
async fn drain(channel: Channel, queue: String, count: usize) -> anyhow::Result<()> {
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut seen = 0;
    while seen < count {
        let delivery = consumer.next().await.context("consumer ended")??;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        seen += 1;
    }
    Ok(())
}

/// The bench's three connections: the feeder publishes, the relay relays (b), the
/// drainer consumes what comes out (a, b, c).
struct Connections {
    feeder: Connection,
    relay: Connection,
    drainer: Connection,
}

const DRAIN_PREFETCH: u16 = 1000;

/// (a) publish with confirms while a consumer acks; time until the last ack.
async fn raw_rate(c: &Connections, args: &Args) -> anyhow::Result<Duration> {
    let count = args.messages;
    let queue = unique("raw");
    let publisher = channel(&c.feeder, 0).await?;
    declare_queue(&publisher, &queue, FieldTable::default()).await?;
    let consumer_channel = channel(&c.drainer, DRAIN_PREFETCH).await?;
    let started = Instant::now();
    let drained = tokio::spawn(drain(consumer_channel, queue.clone(), count));
    publish_confirmed(&publisher, &queue, fact_bodies(count), args.publish_window).await?;
    drained.await??;
    let elapsed = started.elapsed();
    delete(&publisher, &queue).await;
    let _ = publisher.close(200, "".into()).await;
    Ok(elapsed)
}

/// (b) feeder → q1 → relay (publish result with confirm, then ack) → q2 → drainer.
async fn relay_bound(c: &Connections, args: &Args) -> anyhow::Result<Duration> {
    let count = args.messages;
    let (tasks, results) = (unique("relay-in"), unique("relay-out"));
    let publisher = channel(&c.feeder, 0).await?;
    declare_queue(&publisher, &tasks, FieldTable::default()).await?;
    declare_queue(&publisher, &results, FieldTable::default()).await?;
    let relay_in = channel(&c.relay, args.relay_prefetch).await?;
    let relay_out = channel(&c.relay, 0).await?;
    let drainer = channel(&c.drainer, DRAIN_PREFETCH).await?;
    let result_body = Arc::new(vec![b'r'; args.result_bytes]);
    let slots = Arc::new(tokio::sync::Semaphore::new(args.relay_in_flight.max(1)));

    let started = Instant::now();
    let drained = tokio::spawn(drain(drainer, results.clone(), count));
    let relay = {
        let (tasks, results) = (tasks.clone(), results.clone());
        let relay_in = relay_in.clone();
        let relay_out = relay_out.clone();
        tokio::spawn(async move {
            let mut consumer = relay_in
                .basic_consume(
                    tasks.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let mut handled = 0;
            let mut in_flight = tokio::task::JoinSet::new();
            while handled < count {
                let slot = slots.clone().acquire_owned().await?;
                let delivery = consumer.next().await.context("relay consumer ended")??;
                handled += 1;
                let (out, results, body) =
                    (relay_out.clone(), results.clone(), result_body.clone());
                in_flight.spawn(async move {
                    let confirm = out
                        .basic_publish(
                            "".into(),
                            results.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            persistent(),
                        )
                        .await?;
                    ensure!(confirm.await?.is_ack(), "relay publish nacked");
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    drop(slot);
                    Ok::<(), anyhow::Error>(())
                });
                while let Some(done) = in_flight.try_join_next() {
                    done??;
                }
            }
            while let Some(done) = in_flight.join_next().await {
                done??;
            }
            Ok::<(), anyhow::Error>(())
        })
    };
    publish_confirmed(&publisher, &tasks, fact_bodies(count), args.publish_window).await?;
    relay.await??;
    drained.await??;
    let elapsed = started.elapsed();
    delete(&publisher, &tasks).await;
    delete(&publisher, &results).await;
    for channel in [publisher, relay_in, relay_out] {
        let _ = channel.close(200, "".into()).await;
    }
    Ok(elapsed)
}

/// CPU seconds (user + system) process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    (field(11) + field(12)) / ticks
}

/// The broker's process (RabbitMQ's Erlang VM), if it runs on this machine.
fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == "beam.smp").then_some(pid)
        })
}

/// CPU seconds of the processes that take part in a phase.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    broker: f64,
    bench: f64,
    consumer: f64,
    server: f64,
}

impl Cpu {
    fn now(broker: Option<u32>, pipeline: Option<&Pipeline>) -> Self {
        Self {
            broker: broker.map_or(0.0, cpu_seconds),
            bench: cpu_seconds(std::process::id()),
            consumer: pipeline.map_or(0.0, |p| cpu_seconds(p.consumer.0.id())),
            server: pipeline.map_or(0.0, |p| cpu_seconds(p.server.0.id())),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            broker: self.broker - before.broker,
            bench: self.bench - before.bench,
            consumer: self.consumer - before.consumer,
            server: self.server - before.server,
        }
    }
}

/// The peak resident set (VmHWM) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kib * 1024)
}

/// A child process killed (SIGTERM, then reaped) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) only sends a signal.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Pipeline {
    server: Daemon,
    consumer: Daemon,
    queue: String,
    results_exchange: String,
    _dir: tempfile::TempDir,
}

async fn start_pipeline(args: &Args) -> anyhow::Result<Pipeline> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let queue = unique("tasks");
    let results_exchange = unique("results");
    std::fs::write(dir.path().join("server.toml"), "log_level = \"warn\"\n")?;
    std::fs::write(
        dir.path().join("consumer.toml"),
        format!(
            "amqp_url = {:?}\nqueue = {queue:?}\nresults_exchange = {results_exchange:?}\n\
             grpc_targets = [\"127.0.0.1:{port}\"]\nlog_level = \"warn\"\n{}\n",
            args.amqp_url,
            args.consumer_set.join("\n")
        ),
    )?;
    let server = Daemon(
        Command::new(args.bin_dir.join("labmq-server"))
            .arg("--config")
            .arg(dir.path().join("server.toml"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stderr(Stdio::null())
            .spawn()
            .context("start labmq-server")?,
    );
    wait_port(port).await?;
    let consumer = Daemon(
        Command::new(args.bin_dir.join("labmq-consumer"))
            .arg("--config")
            .arg(dir.path().join("consumer.toml"))
            .stderr(Stdio::null())
            .spawn()
            .context("start labmq-consumer")?,
    );
    Ok(Pipeline {
        server,
        consumer,
        queue,
        results_exchange,
        _dir: dir,
    })
}

/// Stops the pipeline's daemons, then deletes the queues and the exchange its consumer
/// declared, so runs leave nothing durable on the broker.
async fn remove_pipeline(connection: &Connection, pipeline: Pipeline) -> anyhow::Result<()> {
    let queue = pipeline.queue.clone();
    let results_exchange = pipeline.results_exchange.clone();
    drop(pipeline);
    let cleanup = channel(connection, 1).await?;
    delete(&cleanup, &queue).await;
    delete(&cleanup, &format!("{queue}{DEAD_LETTER_SUFFIX}")).await;
    let _ = cleanup
        .exchange_delete(
            results_exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
    Ok(())
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("labmq-server did not listen on port {port}")
}

/// Waits until the consumer has declared the results exchange and subscribed.
async fn wait_consuming(connection: &Connection, queue: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        let probe = connection.create_channel().await?;
        if let Ok(q) = inspect_queue(&probe, queue).await {
            let _ = probe.close(200, "".into()).await;
            if q.consumer_count() > 0 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("labmq-consumer did not start consuming {queue}")
}

/// The bench's task mix, one task per message, as `labmq-produce -` would send it.
fn mixed_tasks(count: usize) -> impl Iterator<Item = Vec<u8>> {
    (0..count).map(|i| {
        match i % 4 {
            0 => format!("fact:{}", i % 30),
            1 => format!("freq:abracadabra{i}"),
            2 => format!("user{i}"),
            _ => format!("upper:hello{i}"),
        }
        .into_bytes()
    })
}

/// (c) feeder → task queue → labmq-consumer → labmq-server → results exchange → drainer.
async fn labmq_end_to_end(
    args: &Args,
    c: &Connections,
    pipeline: &Pipeline,
) -> anyhow::Result<Duration> {
    let watcher = channel(&c.drainer, DRAIN_PREFETCH).await?;
    let results = unique("results-q");
    Topology {
        queue: pipeline.queue.clone(),
        queue_type: QueueType::Classic,
        results_exchange: pipeline.results_exchange.clone(),
    }
    .declare_results_queue(&watcher, &results, None)
    .await?;
    let publisher = channel(&c.feeder, 0).await?;

    let started = Instant::now();
    let drained = tokio::spawn(drain(watcher.clone(), results.clone(), args.messages));
    publish_confirmed(
        &publisher,
        &pipeline.queue,
        mixed_tasks(args.messages),
        args.publish_window,
    )
    .await?;
    drained.await??;
    let elapsed = started.elapsed();
    delete(&watcher, &results).await;
    let _ = publisher.close(200, "".into()).await;
    Ok(elapsed)
}

/// (d) one `labmq-produce --wait TASK` after another; the whole command is timed.
async fn wait_latency(args: &Args, pipeline: &Pipeline) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(args.latency_runs);
    let tasks = ["fact:6", "freq:abracadabra", "user42", "upper:hello"];
    for i in 0..args.latency_runs + 10 {
        let started = Instant::now();
        let output = tokio::process::Command::new(args.bin_dir.join("labmq-produce"))
            .args(["--amqp-url", &args.amqp_url, "--queue", &pipeline.queue])
            .args(["--wait", "--timeout", "10", tasks[i % tasks.len()]])
            .output()
            .await?;
        let elapsed = started.elapsed();
        ensure!(
            output.status.success(),
            "labmq-produce --wait failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The first runs warm caches and connections on the broker side.
        if i >= 10 {
            latencies.push(elapsed);
        }
    }
    latencies.sort();
    Ok(latencies)
}

/// (d') the same round trip on one open connection: publish one task with `reply_to`,
/// wait for its result; what a long-lived client of the pipeline sees.
async fn connected_latency(args: &Args, pipeline: &Pipeline) -> anyhow::Result<Vec<Duration>> {
    let target = AmqpTarget::new(std::slice::from_ref(&args.amqp_url), None, None)?;
    let topology = Topology {
        queue: pipeline.queue.clone(),
        queue_type: QueueType::Classic,
        results_exchange: pipeline.results_exchange.clone(),
    };
    let producer =
        Producer::connect(&target, &topology, "labmq-bench", Duration::from_secs(10)).await?;
    let mut replies = producer.listen_for_results().await?;
    let tasks = [
        Task::Factorial(6),
        Task::FrequentLetter("abracadabra".into()),
        Task::Ab("user42".into()),
        Task::Upper("hello".into()),
    ];
    let mut latencies = Vec::with_capacity(args.latency_runs);
    for i in 0..args.latency_runs + 10 {
        let started = Instant::now();
        let task = std::slice::from_ref(&tasks[i % tasks.len()]);
        let published = producer
            .publish(task, true, Duration::from_secs(10))
            .await?;
        wait_for_results(&mut replies, &published, Duration::from_secs(10), |_| {}).await?;
        if i >= 10 {
            latencies.push(started.elapsed());
        }
    }
    producer.close().await;
    latencies.sort();
    Ok(latencies)
}

/// (e) open a connection and a channel and close them again, `runs` times after 10
/// warm-up runs, with `open_close`; sorted durations.
async fn connection_floor<F, Fut>(runs: usize, mut open_close: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut durations = Vec::with_capacity(runs);
    for i in 0..runs + 10 {
        let started = Instant::now();
        open_close().await?;
        if i >= 10 {
            durations.push(started.elapsed());
        }
    }
    durations.sort();
    Ok(durations)
}

async fn lapin_open_close(url: &str) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    // Kept until the connection closes: a dropped channel starts closing on its own.
    let _channel = connection.create_channel().await?;
    connection.close(200, "".into()).await?;
    Ok(())
}

/// The AMQP 0-9-1 handshake written out over a plain socket (protocol header,
/// Start/StartOk, Tune/TuneOk, Open/OpenOk, Channel.Open/OpenOk, Close/CloseOk): what the
/// broker itself needs per connection, with no client library in the way.
mod bare_amqp {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use anyhow::{Context, ensure};

    const FRAME_METHOD: u8 = 1;
    const FRAME_END: u8 = 0xCE;

    fn short_string(out: &mut Vec<u8>, s: &str) {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }

    fn method(channel: u16, class: u16, method: u16, arguments: &[u8]) -> Vec<u8> {
        let mut payload = Vec::with_capacity(4 + arguments.len());
        payload.extend_from_slice(&class.to_be_bytes());
        payload.extend_from_slice(&method.to_be_bytes());
        payload.extend_from_slice(arguments);
        let mut frame = vec![FRAME_METHOD];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(FRAME_END);
        frame
    }

    /// Reads one frame and checks it is the method `(class, method)`; returns its
    /// arguments.
    fn expect(socket: &mut TcpStream, class: u16, method: u16) -> anyhow::Result<Vec<u8>> {
        let mut header = [0u8; 7];
        socket.read_exact(&mut header)?;
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        socket.read_exact(&mut payload)?;
        ensure!(
            header[0] == FRAME_METHOD && payload.len() >= 5,
            "unexpected frame"
        );
        let got = (
            u16::from_be_bytes([payload[0], payload[1]]),
            u16::from_be_bytes([payload[2], payload[3]]),
        );
        ensure!(
            got == (class, method),
            "expected method {class}.{method}, got {}.{}",
            got.0,
            got.1
        );
        Ok(payload[4..size].to_vec())
    }

    pub fn open_close(uri: &lapin::uri::AMQPUri) -> anyhow::Result<()> {
        let authority = &uri.authority;
        let mut socket = TcpStream::connect((authority.host.as_str(), authority.port))
            .context("connect to the broker")?;
        socket.set_nodelay(true)?;
        socket.write_all(b"AMQP\x00\x00\x09\x01")?;
        expect(&mut socket, 10, 10)?; // Connection.Start
        let mut start_ok = Vec::new();
        start_ok.extend_from_slice(&0u32.to_be_bytes()); // empty client properties
        short_string(&mut start_ok, "PLAIN");
        let response = format!(
            "\0{}\0{}",
            authority.userinfo.username, authority.userinfo.password
        );
        start_ok.extend_from_slice(&(response.len() as u32).to_be_bytes());
        start_ok.extend_from_slice(response.as_bytes());
        short_string(&mut start_ok, "en_US");
        socket.write_all(&method(0, 10, 11, &start_ok))?;
        let tune = expect(&mut socket, 10, 30)?; // Connection.Tune
        ensure!(tune.len() >= 8, "short Connection.Tune");
        let mut tune_ok = tune[..6].to_vec(); // channel-max, frame-max as offered
        tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        let mut open = Vec::new();
        short_string(&mut open, &uri.vhost);
        short_string(&mut open, "");
        open.push(0);
        let mut frames = method(0, 10, 31, &tune_ok);
        frames.extend(method(0, 10, 40, &open));
        socket.write_all(&frames)?;
        expect(&mut socket, 10, 41)?; // Connection.OpenOk
        socket.write_all(&method(1, 20, 10, &[0]))?;
        expect(&mut socket, 20, 11)?; // Channel.OpenOk
        let mut close = Vec::new();
        close.extend_from_slice(&200u16.to_be_bytes());
        short_string(&mut close, "");
        close.extend_from_slice(&[0, 0, 0, 0]);
        socket.write_all(&method(0, 10, 50, &close))?;
        expect(&mut socket, 10, 51)?; // Connection.CloseOk
        Ok(())
    }
}

/// Time to start and finish the CLI when there is nothing to do, as a floor for (d).
async fn cli_floor(bin_dir: &Path) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..20 {
        let started = Instant::now();
        tokio::process::Command::new(bin_dir.join("labmq-produce"))
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .await?;
        best = best.min(started.elapsed());
    }
    Ok(best)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn bounded<T>(
    timeout: Duration,
    what: &str,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(timeout, work)
        .await
        .with_context(|| format!("{what} did not finish within {timeout:?}"))?
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let host = args
        .amqp_url
        .split('@')
        .nth(1)
        .unwrap_or(&args.amqp_url)
        .to_owned();
    ensure!(
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]"),
        "the benchmark only talks to a broker on loopback, not {host}"
    );
    let timeout = Duration::from_secs(args.phase_timeout);
    let n = args.messages;
    let connect = || Connection::connect(&args.amqp_url, ConnectionProperties::default());
    let connections = Connections {
        feeder: connect().await.context("connect to RabbitMQ")?,
        relay: connect().await.context("connect to RabbitMQ")?,
        drainer: connect().await.context("connect to RabbitMQ")?,
    };
    let connection = &connections.drainer;

    let raw = bounded(
        timeout,
        "(a) raw broker rate",
        raw_rate(&connections, &args),
    )
    .await?;
    let pipeline = start_pipeline(&args).await?;
    wait_consuming(connection, &pipeline.queue).await?;
    // (b) and (c) alternate, so each ratio compares two phases taken moments apart on a
    // machine whose speed drifts.
    let mut pairs = Vec::with_capacity(args.runs);
    let broker = broker_pid();
    let (mut relay_cpu, mut labmq_cpu) = (Cpu::default(), Cpu::default());
    let add = |sum: &mut Cpu, d: Cpu| {
        sum.broker += d.broker;
        sum.bench += d.bench;
        sum.consumer += d.consumer;
        sum.server += d.server;
    };
    for run in 1..=args.runs.max(1) {
        let before = Cpu::now(broker, Some(&pipeline));
        let relay = bounded(timeout, "(b) relay bound", relay_bound(&connections, &args)).await?;
        let middle = Cpu::now(broker, Some(&pipeline));
        add(&mut relay_cpu, middle.since(before));
        let labmq = bounded(
            timeout,
            "(c) labmq end to end",
            labmq_end_to_end(&args, &connections, &pipeline),
        )
        .await?;
        add(
            &mut labmq_cpu,
            Cpu::now(broker, Some(&pipeline)).since(middle),
        );
        eprintln!(
            "bench_pipeline: run {run}: (b) {:.0} msg/s, (c) {:.0} tasks/s, (c)/(b) {:.2}",
            n as f64 / relay.as_secs_f64(),
            n as f64 / labmq.as_secs_f64(),
            relay.as_secs_f64() / labmq.as_secs_f64()
        );
        pairs.push((relay, labmq));
    }
    let peak_server = peak_rss(pipeline.server.0.id())?;
    let peak_consumer = peak_rss(pipeline.consumer.0.id())?;
    let throughput_tasks = n * pairs.len();
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let mut ratios: Vec<f64> = pairs
        .iter()
        .map(|(relay, labmq)| rate(*labmq) / rate(*relay))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let mid = ratios.len() / 2;
    let median_ratio = if ratios.len().is_multiple_of(2) {
        (ratios[mid - 1] + ratios[mid]) / 2.0
    } else {
        ratios[mid]
    };
    let defaults = labmq::consumer::ConsumerConfig::default();
    println!(
        "### Pipeline over RabbitMQ ({n} messages per phase, persistent, confirmed; (b) and (c) alternate {} times)\n",
        pairs.len()
    );
    println!(
        "Settings: the feeder (a, b, c) publishes persistent messages on its own connection \
         with at most {} unconfirmed. The relay (b), on a second connection, consumes with \
         prefetch {}, keeps {} messages in flight, and for each publishes a {}-byte \
         persistent result with a confirm before acking it. A third connection drains the \
         results (prefetch {DRAIN_PREFETCH}, an ack each). labmq (c) runs with its defaults: \
         labmq-consumer prefetch {}, concurrency {}, {} publishing channel(s), {} gRPC \
         connection(s) per server; the same task mix as `./bench` (`fact:0..29`, \
         `freq:abracadabraN`, `userN`, `upper:helloN`), one task per message.{}\n",
        args.publish_window,
        args.relay_prefetch,
        args.relay_in_flight,
        args.result_bytes,
        defaults.prefetch,
        defaults.concurrency,
        defaults.publish_channels,
        defaults.grpc_connections,
        if args.consumer_set.is_empty() {
            String::new()
        } else {
            format!(
                " Not the defaults but, in consumer.toml: `{}`.",
                args.consumer_set.join("`, `")
            )
        }
    );
    println!("| run | (b) relay bound | (c) labmq end to end | (c) / (b) |");
    println!("|---|---:|---:|---:|");
    for (i, (relay, labmq)) in pairs.iter().enumerate() {
        println!(
            "| {} | {:.0} msg/s ({:.0} ms) | {:.0} tasks/s ({:.0} ms) | {:.2} |",
            i + 1,
            rate(*relay),
            ms(*relay),
            rate(*labmq),
            ms(*labmq),
            rate(*labmq) / rate(*relay)
        );
    }
    println!("| **median** | | | **{median_ratio:.2}** |");
    println!();
    println!(
        "(a) raw broker, publish + consume with acks, no relay: {:.0} msg/s ({:.0} ms).",
        rate(raw),
        ms(raw)
    );
    println!();
    let per_10k = |cpu: f64| cpu * 10_000.0 / throughput_tasks as f64;
    println!(
        "CPU seconds per 10,000 messages, summed over the runs (the broker is shared with \
         whatever else runs on the machine): (b) broker {:.2}, bench (feeder, relay, \
         drainer) {:.2}; (c) broker {:.2}, bench (feeder, drainer) {:.2}, labmq-consumer \
         {:.2}, labmq-server {:.2}.",
        per_10k(relay_cpu.broker),
        per_10k(relay_cpu.bench),
        per_10k(labmq_cpu.broker),
        per_10k(labmq_cpu.bench),
        per_10k(labmq_cpu.consumer),
        per_10k(labmq_cpu.server),
    );
    println!();
    println!("| daemon | peak RSS (VmHWM) over {throughput_tasks} tasks | limit |");
    println!("|---|---:|---:|");
    println!(
        "| labmq-server | {:.1} MiB | 32 MiB |",
        peak_server as f64 / 1048576.0
    );
    println!(
        "| labmq-consumer | {:.1} MiB | 32 MiB |",
        peak_consumer as f64 / 1048576.0
    );
    println!();
    if args.throughput_only {
        remove_pipeline(connection, pipeline).await?;
        println!(
            "Target: (c) ≥ 80 % of (b), median over the runs: {} ({:.0} %).",
            if median_ratio >= 0.8 { "met" } else { "MISSED" },
            100.0 * median_ratio
        );
        return Ok(());
    }
    let latencies = bounded(
        timeout,
        "(d) --wait latency",
        wait_latency(&args, &pipeline),
    )
    .await?;
    let connected = bounded(
        timeout,
        "(d') connected latency",
        connected_latency(&args, &pipeline),
    )
    .await?;
    let floor = cli_floor(&args.bin_dir).await?;
    let uri: lapin::uri::AMQPUri = args
        .amqp_url
        .parse()
        .map_err(|e| anyhow::anyhow!("--amqp-url: {e}"))?;
    let bare = bounded(
        timeout,
        "(e) bare AMQP handshake",
        connection_floor(args.latency_runs, || {
            let uri = uri.clone();
            async move { tokio::task::spawn_blocking(move || bare_amqp::open_close(&uri)).await? }
        }),
    )
    .await?;
    let with_lapin = bounded(
        timeout,
        "(e) lapin connect + channel + close",
        connection_floor(args.latency_runs, || lapin_open_close(&args.amqp_url)),
    )
    .await?;
    remove_pipeline(connection, pipeline).await?;

    println!(
        "(d) `labmq-produce --wait TASK`, whole command, {} runs on the idle pipeline: \
         p50 **{:.2} ms**, p99 {:.2} ms, min {:.2} ms (process start alone: {:.2} ms).",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 0.0)),
        ms(floor)
    );
    println!(
        "(d') the same single tasks from a client with an open connection (publish with \
         reply_to, wait for the result), {} runs: p50 **{:.2} ms**, p99 {:.2} ms.",
        connected.len(),
        ms(percentile(&connected, 0.5)),
        ms(percentile(&connected, 0.99))
    );
    let one_shot_floor = floor + percentile(&bare, 0.5) + percentile(&connected, 0.5);
    println!(
        "(e) opening a connection and a channel and closing them, {} runs each: bare AMQP \
         handshake over a plain socket (no client library) p50 **{:.2} ms**, p99 {:.2} ms; \
         lapin (connect + create_channel + close) p50 **{:.2} ms**, p99 {:.2} ms.",
        bare.len(),
        ms(percentile(&bare, 0.5)),
        ms(percentile(&bare, 0.99)),
        ms(percentile(&with_lapin, 0.5)),
        ms(percentile(&with_lapin, 0.99))
    );
    println!(
        "Floor for (d) in this run, for any one-shot client: process start + bare handshake \
         + (d') = {:.2} + {:.2} + {:.2} = **{:.2} ms**; (d) is {:.2}× that floor.",
        ms(floor),
        ms(percentile(&bare, 0.5)),
        ms(percentile(&connected, 0.5)),
        ms(one_shot_floor),
        ms(percentile(&latencies, 0.5)) / ms(one_shot_floor)
    );
    println!();
    println!(
        "Targets: (c) ≥ 80 % of (b), median over the runs: {} ({:.0} %); peak RSS < 32 MiB: {}; (d) p50 ≤ 5 ms: {} ({:.2} ms; with an open connection {:.2} ms).",
        if median_ratio >= 0.8 { "met" } else { "MISSED" },
        100.0 * median_ratio,
        if peak_server.max(peak_consumer) < 32 << 20 {
            "met"
        } else {
            "MISSED"
        },
        if percentile(&latencies, 0.5) <= Duration::from_millis(5) {
            "met"
        } else {
            "MISSED"
        },
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&connected, 0.5))
    );
    for connection in [
        &connections.feeder,
        &connections.relay,
        &connections.drainer,
    ] {
        let _ = connection.close(200, "".into()).await;
    }
    Ok(())
}
