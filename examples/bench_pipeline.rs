//! Benchmark of the asynchronous pipeline on RabbitMQ; run through `./bench`, which builds
//! the release binaries and passes their directory here.
//!
//! `cargo run --release --example bench_pipeline -- --bin-dir target/release`
//!
//! In one run, against the broker at `--amqp-url` (loopback only):
//! (a) raw broker rate: N persistent messages published with confirms and consumed with
//!     acks, no processing;
//! (b) relay bound: the same, but a relay consumes each message, publishes a ~200-byte
//!     persistent result with a confirm to a second queue, then acks, while a third
//!     consumer drains the results: no gRPC, no parsing;
//! (c) labmq end to end: N mixed tasks from `labmq-produce -` until the last result
//!     document is on the results exchange (labmq-consumer + labmq-server);
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
use tokio::io::AsyncWriteExt;

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
    /// Single-task `labmq-produce --wait` runs for the latency phase (d)
    #[arg(long, default_value_t = 200)]
    latency_runs: usize,
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

/// Publishes `count` bodies to `queue` with confirms, keeping many in flight.
async fn publish_confirmed(channel: &Channel, queue: &str, count: usize) -> anyhow::Result<()> {
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for i in 0..count {
        let body = format!("fact:{}", i % 30);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                persistent(),
            )
            .await?;
        pending.push(confirm);
        if pending.len() >= 2048
            && let Some(confirmation) = pending.next().await
        {
            ensure!(confirmation?.is_ack(), "publish nacked");
        }
    }
    while let Some(confirmation) = pending.next().await {
        ensure!(confirmation?.is_ack(), "publish nacked");
    }
    Ok(())
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

/// (a) publish with confirms while a consumer acks; time until the last ack.
async fn raw_rate(connection: &Connection, count: usize) -> anyhow::Result<Duration> {
    let queue = unique("raw");
    let publisher = channel(connection, 0).await?;
    declare_queue(&publisher, &queue, FieldTable::default()).await?;
    let consumer_channel = channel(connection, 1000).await?;
    let started = Instant::now();
    let drained = tokio::spawn(drain(consumer_channel, queue.clone(), count));
    publish_confirmed(&publisher, &queue, count).await?;
    drained.await??;
    let elapsed = started.elapsed();
    delete(&publisher, &queue).await;
    Ok(elapsed)
}

/// (b) publisher → q1 → relay (publish result with confirm, then ack) → q2 → drainer.
async fn relay_bound(connection: &Connection, count: usize) -> anyhow::Result<Duration> {
    let (tasks, results) = (unique("relay-in"), unique("relay-out"));
    let publisher = channel(connection, 0).await?;
    declare_queue(&publisher, &tasks, FieldTable::default()).await?;
    declare_queue(&publisher, &results, FieldTable::default()).await?;
    let relay_in = channel(connection, 256).await?;
    let relay_out = channel(connection, 0).await?;
    let drainer = channel(connection, 1000).await?;
    let result_body = Arc::new(vec![b'r'; 200]);

    let started = Instant::now();
    let drained = tokio::spawn(drain(drainer, results.clone(), count));
    let relay = {
        let (tasks, results) = (tasks.clone(), results.clone());
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
    publish_confirmed(&publisher, &tasks, count).await?;
    relay.await??;
    drained.await??;
    let elapsed = started.elapsed();
    delete(&publisher, &tasks).await;
    delete(&publisher, &results).await;
    Ok(elapsed)
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
    _server: Daemon,
    _consumer: Daemon,
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
             grpc_targets = [\"127.0.0.1:{port}\"]\nlog_level = \"warn\"\n",
            args.amqp_url
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
        _server: server,
        _consumer: consumer,
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

fn mixed_tasks(count: usize) -> String {
    (0..count)
        .map(|i| match i % 4 {
            0 => format!("fact:{}\n", i % 30),
            1 => format!("freq:abracadabra{i}\n"),
            2 => format!("user{i}\n"),
            _ => format!("upper:hello{i}\n"),
        })
        .collect()
}

/// (c) labmq-produce → consumer → server → results exchange, until the last result.
async fn labmq_end_to_end(
    args: &Args,
    connection: &Connection,
    pipeline: &Pipeline,
) -> anyhow::Result<Duration> {
    let watcher = channel(connection, 1000).await?;
    let results = unique("results-q");
    Topology {
        queue: pipeline.queue.clone(),
        queue_type: QueueType::Classic,
        results_exchange: pipeline.results_exchange.clone(),
    }
    .declare_results_queue(&watcher, &results, None)
    .await?;
    let input = mixed_tasks(args.messages);

    let started = Instant::now();
    let drained = tokio::spawn(drain(watcher.clone(), results.clone(), args.messages));
    let mut produce = tokio::process::Command::new(args.bin_dir.join("labmq-produce"))
        .args([
            "--amqp-url",
            &args.amqp_url,
            "--queue",
            &pipeline.queue,
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("start labmq-produce")?;
    let mut stdin = produce.stdin.take().context("produce stdin")?;
    stdin.write_all(input.as_bytes()).await?;
    drop(stdin);
    ensure!(produce.wait().await?.success(), "labmq-produce failed");
    drained.await??;
    let elapsed = started.elapsed();
    delete(&watcher, &results).await;
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
    let connection = Connection::connect(&args.amqp_url, ConnectionProperties::default())
        .await
        .context("connect to RabbitMQ")?;

    let raw = bounded(timeout, "(a) raw broker rate", raw_rate(&connection, n)).await?;
    let relay = bounded(timeout, "(b) relay bound", relay_bound(&connection, n)).await?;
    let pipeline = start_pipeline(&args).await?;
    wait_consuming(&connection, &pipeline.queue).await?;
    let labmq = bounded(
        timeout,
        "(c) labmq end to end",
        labmq_end_to_end(&args, &connection, &pipeline),
    )
    .await?;
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
    remove_pipeline(&connection, pipeline).await?;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let (raw_rate, relay_rate, labmq_rate) = (rate(raw), rate(relay), rate(labmq));

    println!("### Pipeline over RabbitMQ ({n} messages per phase, persistent, confirmed)\n");
    println!("| phase | time | msg/s | vs (b) relay bound |");
    println!("|---|---:|---:|---:|");
    println!(
        "| (a) raw broker: publish + consume with acks | {:.0} ms | {raw_rate:.0} | {:.2}× |",
        ms(raw),
        raw_rate / relay_rate
    );
    println!(
        "| (b) relay bound: consume, publish result with confirm, ack; drain | {:.0} ms | {relay_rate:.0} | 1.00× |",
        ms(relay)
    );
    println!(
        "| (c) labmq: `labmq-produce -` → consumer → server → results | {:.0} ms | {labmq_rate:.0} | **{:.2}×** |",
        ms(labmq),
        labmq_rate / relay_rate
    );
    println!();
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
        "Targets: (c) ≥ 60 % of (b): {} ({:.0} %); (d) p50 ≤ 5 ms: {} ({:.2} ms; with an open connection {:.2} ms).",
        if labmq_rate >= 0.6 * relay_rate {
            "met"
        } else {
            "MISSED"
        },
        100.0 * labmq_rate / relay_rate,
        if percentile(&latencies, 0.5) <= Duration::from_millis(5) {
            "met"
        } else {
            "MISSED"
        },
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&connected, 0.5))
    );
    let _ = connection.close(200, "".into()).await;
    Ok(())
}
