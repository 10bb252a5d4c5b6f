//! Benchmark of labmq-server and the factorial core; run through `./bench`, which builds
//! in release, starts a server on a free 127.0.0.1 port, times GMP in Python, and passes
//! the address and GMP's figures here.
//!
//! `cargo run --release --example bench -- --server 127.0.0.1:PORT [--gmp 100000=0.012,...]`
//!
//! Every phase runs a fixed number of calls and is also bounded in time; a phase cut short
//! by its time limit is reported as such. Prints markdown tables on stdout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use labmq::compute::factorial_decimal;
use labmq::grpc::MAX_RESPONSE_BYTES;
use labmq::grpc::proto::message_service_client::MessageServiceClient;
use labmq::grpc::proto::{AbRequest, FactorialRequest, MessageRequest};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(about = "labmq benchmark (see ./bench)")]
struct Args {
    /// labmq-server address; only 127.0.0.1 / loopback addresses are accepted
    #[arg(long, value_name = "ADDR")]
    server: Option<SocketAddr>,
    /// Calls per sequential phase (one call at a time)
    #[arg(long, default_value_t = 5_000)]
    sequential: usize,
    /// Calls per concurrent phase
    #[arg(long, default_value_t = 20_000)]
    concurrent: usize,
    /// Calls in flight at once in the concurrent phases, all over one channel
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Runs per factorial; the best is reported
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Factorials to time, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "10000,50000,100000")]
    factorials: Vec<u64>,
    /// GMP's best time per n in seconds, e.g. 100000=0.0123 (comma-separated)
    #[arg(long, value_delimiter = ',', value_name = "N=SECS")]
    gmp: Vec<String>,
    /// Upper bound on each phase, in seconds
    #[arg(long, default_value_t = 60)]
    phase_timeout: u64,
}

/// One throughput phase's outcome.
struct Throughput {
    label: String,
    in_flight: usize,
    completed: u64,
    failed: u64,
    elapsed: Duration,
    cut_short: bool,
    /// Per-call latencies, sequential phases only.
    latencies: Vec<Duration>,
}

impl Throughput {
    fn per_second(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Clone, Copy)]
enum SmallCall {
    Process,
    Assign,
}

impl SmallCall {
    fn name(self) -> &'static str {
        match self {
            SmallCall::Process => "ProcessMessage(\"hello\")",
            SmallCall::Assign => "AssignAB(\"user42\")",
        }
    }

    async fn call(self, client: &mut MessageServiceClient<Channel>) -> Result<(), tonic::Status> {
        match self {
            SmallCall::Process => client
                .process_message(MessageRequest {
                    text: "hello".into(),
                })
                .await
                .map(drop),
            SmallCall::Assign => client
                .assign_ab(AbRequest {
                    user_id: "user42".into(),
                })
                .await
                .map(drop),
        }
    }
}

fn parse_gmp(items: &[String]) -> anyhow::Result<BTreeMap<u64, f64>> {
    items
        .iter()
        .map(|item| {
            let (n, secs) = item
                .split_once('=')
                .with_context(|| format!("--gmp {item:?}: expected N=SECONDS"))?;
            Ok((
                n.trim()
                    .parse()
                    .with_context(|| format!("--gmp {item:?}: n"))?,
                secs.trim()
                    .parse()
                    .with_context(|| format!("--gmp {item:?}: seconds"))?,
            ))
        })
        .collect()
}

async fn connect(addr: SocketAddr, deadline: Duration) -> anyhow::Result<Channel> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    let started = Instant::now();
    // The server was just started by ./bench: wait until its health check says SERVING.
    loop {
        let attempt = async {
            let channel = endpoint.connect().await?;
            let reply = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?
                .into_inner();
            anyhow::ensure!(reply.status == ServingStatus::Serving as i32, "not serving");
            Ok(channel)
        };
        match attempt.await {
            Ok(channel) => return Ok(channel),
            Err(e) if started.elapsed() > deadline => {
                bail!("labmq-server at {addr} not serving after {deadline:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn sequential(
    client: &MessageServiceClient<Channel>,
    call: SmallCall,
    count: usize,
    limit: Duration,
) -> Throughput {
    let mut client = client.clone();
    let mut latencies = Vec::with_capacity(count);
    let mut failed = 0;
    let started = Instant::now();
    let mut cut_short = false;
    for _ in 0..count {
        if started.elapsed() > limit {
            cut_short = true;
            break;
        }
        let t = Instant::now();
        match call.call(&mut client).await {
            Ok(()) => latencies.push(t.elapsed()),
            Err(_) => failed += 1,
        }
    }
    Throughput {
        label: call.name().into(),
        in_flight: 1,
        completed: latencies.len() as u64,
        failed,
        elapsed: started.elapsed(),
        cut_short,
        latencies,
    }
}

async fn concurrent(
    client: &MessageServiceClient<Channel>,
    call: SmallCall,
    count: usize,
    in_flight: usize,
    limit: Duration,
) -> Throughput {
    let next = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let mut client = client.clone();
            let (next, completed, failed) = (next.clone(), completed.clone(), failed.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < count && Instant::now() < deadline {
                    match call.call(&mut client).await {
                        Ok(()) => completed.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let completed = completed.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    Throughput {
        label: call.name().into(),
        in_flight,
        completed,
        failed,
        elapsed: started.elapsed(),
        cut_short: completed + failed < count as u64,
        latencies: Vec::new(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(rank).copied()
}

fn micros(d: Option<Duration>) -> String {
    d.map_or_else(|| "–".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e6))
}

fn ms(secs: f64) -> String {
    format!("{:.2}", secs * 1e3)
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

struct FactorialTiming {
    n: u64,
    digits: usize,
    in_process: f64,
    grpc: Option<f64>,
}

/// Best of `runs` wall-clock seconds of `factorial_decimal(n)` on this thread.
fn time_in_process(n: u64, runs: usize, limit: Duration) -> anyhow::Result<(usize, f64)> {
    let signed = i64::try_from(n).context("n too large")?;
    let started = Instant::now();
    let mut best = f64::INFINITY;
    let mut digits = 0;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let result = factorial_decimal(signed, u64::MAX)?;
        best = best.min(t.elapsed().as_secs_f64());
        digits = result.len();
        if started.elapsed() > limit {
            break;
        }
    }
    Ok((digits, best))
}

async fn time_grpc(
    client: &MessageServiceClient<Channel>,
    n: u64,
    runs: usize,
    limit: Duration,
) -> anyhow::Result<(usize, f64)> {
    let mut client = client.clone();
    let signed = i64::try_from(n).context("n too large")?;
    let started = Instant::now();
    let mut best = f64::INFINITY;
    let mut digits = 0;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let result = client
            .factorial(FactorialRequest { n: signed })
            .await
            .with_context(|| format!("Factorial({n}) over gRPC"))?
            .into_inner()
            .result;
        best = best.min(t.elapsed().as_secs_f64());
        digits = result.len();
        if started.elapsed() > limit {
            break;
        }
    }
    Ok((digits, best))
}

fn print_throughput(rows: &[Throughput], total_requested: (usize, usize)) {
    println!(
        "| Call | In flight | Calls | Failed | Seconds | Calls/s | p50 µs | p99 µs |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let mut sorted = row.latencies.clone();
        sorted.sort_unstable();
        let requested = if row.in_flight == 1 {
            total_requested.0
        } else {
            total_requested.1
        };
        let calls = if row.cut_short {
            format!(
                "{} of {} (time limit)",
                thousands(row.completed),
                thousands(requested as u64)
            )
        } else {
            thousands(row.completed)
        };
        println!(
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} |",
            row.label,
            row.in_flight,
            calls,
            row.failed,
            row.elapsed.as_secs_f64(),
            thousands(row.per_second().round() as u64),
            micros(percentile(&sorted, 0.50)),
            micros(percentile(&sorted, 0.99)),
        );
    }
}

fn print_factorials(rows: &[FactorialTiming], gmp: &BTreeMap<u64, f64>) {
    println!(
        "| n | Digits | labmq in-process ms | labmq via gRPC ms | GMP ms | in-process / GMP | gRPC / GMP |\n\
         |---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let gmp_secs = gmp.get(&row.n).copied();
        let ratio = |ours: Option<f64>| match (ours, gmp_secs) {
            (Some(ours), Some(gmp)) if gmp > 0.0 => format!("{:.2}×", ours / gmp),
            _ => "–".into(),
        };
        println!(
            "| {}! | {} | {} | {} | {} | {} | {} |",
            thousands(row.n),
            thousands(row.digits as u64),
            ms(row.in_process),
            row.grpc.map_or_else(|| "–".into(), ms),
            gmp_secs.map_or_else(|| "–".into(), ms),
            ratio(Some(row.in_process)),
            ratio(row.grpc),
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.server.filter(|addr| !addr.ip().is_loopback()) {
        bail!("--server {addr}: this benchmark only targets loopback addresses");
    }
    let gmp = parse_gmp(&args.gmp)?;
    let limit = Duration::from_secs(args.phase_timeout);

    // In-process factorials first, on an otherwise idle process.
    let mut factorials = Vec::new();
    for &n in &args.factorials {
        let (digits, in_process) = time_in_process(n, args.runs, limit)?;
        factorials.push(FactorialTiming {
            n,
            digits,
            in_process,
            grpc: None,
        });
    }

    let mut throughput = Vec::new();
    if let Some(addr) = args.server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let channel = connect(addr, Duration::from_secs(30)).await?;
            let client =
                MessageServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
            for call in [SmallCall::Process, SmallCall::Assign] {
                // Warm up the connection and both sides' allocators.
                let _ = sequential(&client, call, 500, limit).await;
                throughput.push(sequential(&client, call, args.sequential, limit).await);
                throughput
                    .push(concurrent(&client, call, args.concurrent, args.in_flight, limit).await);
            }
            for timing in &mut factorials {
                let (digits, secs) = time_grpc(&client, timing.n, args.runs, limit).await?;
                anyhow::ensure!(
                    digits == timing.digits,
                    "{}! over gRPC has {digits} digits, in-process {}",
                    timing.n,
                    timing.digits
                );
                timing.grpc = Some(secs);
            }
            anyhow::Ok(())
        })?;
    }

    if !throughput.is_empty() {
        println!(
            "### Unary calls over one channel (HTTP/2 connection) to 127.0.0.1\n\n\
             Sequential: one call at a time, p50/p99 per call. Concurrent: {} calls in flight.\n",
            args.in_flight
        );
        print_throughput(&throughput, (args.sequential, args.concurrent));
        println!();
    }
    println!(
        "### Exact factorial as a decimal string, best of {} runs\n\n\
         In-process: `labmq::compute::factorial_decimal`. Via gRPC: a `Factorial` call, \
         response decoded. GMP: `gmpy2.fac(n).digits()` in the same run.\n",
        args.runs
    );
    print_factorials(&factorials, &gmp);
    println!();

    println!("### Targets\n");
    let slowest_concurrent = throughput
        .iter()
        .filter(|t| t.in_flight > 1)
        .map(Throughput::per_second)
        .fold(None, |best: Option<f64>, x| {
            Some(best.map_or(x, |b| b.min(x)))
        });
    match slowest_concurrent {
        Some(slowest) => println!(
            "- ≥ 20,000 concurrent small calls/s (each call kind): {} — slowest kind {} calls/s",
            if slowest >= 20_000.0 { "met" } else { "MISSED" },
            thousands(slowest.round() as u64)
        ),
        None => println!("- ≥ 20,000 concurrent small calls/s: not measured (no --server)"),
    }
    let target_n = 100_000;
    match (
        factorials.iter().find(|t| t.n == target_n),
        gmp.get(&target_n),
    ) {
        (Some(ours), Some(&gmp)) => {
            let ratio = ours.in_process / gmp;
            println!(
                "- 100000! within 1.5× GMP (in-process): {} — {ratio:.2}×",
                if ratio <= 1.5 { "met" } else { "MISSED" }
            );
        }
        _ => println!("- 100000! within 1.5× GMP: not measured (no GMP figure for 100000)"),
    }
    Ok(())
}
