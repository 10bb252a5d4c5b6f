//! `labmq-call`: calls labmq-server directly for each task and prints one line per task.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::daemon::logging::error_chain;
use crate::grpc::client::{ClientOptions, ComputeClient};
use crate::task::parse_list;

/// Call labmq-server directly for each task and print one result line per task.
///
/// Tasks: fact:N (exact N!), freq:TEXT (most frequent letter), upper:TEXT (upper-case echo),
/// anything else is a user id for A/B assignment. An argument may hold a comma-separated list.
///
/// Exit status: 0 every task succeeded; 1 some task failed (its error is printed);
/// 2 usage error; 3 server unreachable. A call that fails on the way (UNAVAILABLE, e.g.
/// while the server restarts) is tried again twice, after 0.1 s and 0.4 s.
#[derive(Debug, Parser)]
#[command(name = "labmq-call", version)]
pub struct CallArgs {
    /// gRPC server address, host:port, http://host:port or https://host:port (a bare
    /// host:port is https when --grpc-ca is given)
    #[arg(
        long,
        env = "LABMQ_GRPC_TARGET",
        default_value = "127.0.0.1:50051",
        value_name = "ADDR"
    )]
    pub server: String,
    /// PEM CA certificate that signs the server's certificate (for https targets)
    #[arg(long, value_name = "FILE")]
    pub grpc_ca: Option<PathBuf>,
    /// PEM client certificate, for a server that requires mTLS (with --grpc-key)
    #[arg(long, value_name = "FILE", requires_all = ["grpc_key", "grpc_ca"])]
    pub grpc_cert: Option<PathBuf>,
    /// PEM private key of --grpc-cert, readable by its owner only
    #[arg(long, value_name = "FILE", requires = "grpc_cert")]
    pub grpc_key: Option<PathBuf>,
    /// Seconds to wait for the connection to be established
    #[arg(long, default_value_t = 3, value_name = "SECS")]
    pub connect_timeout: u64,
    /// Seconds to wait for each call
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
    /// Tasks, e.g. fact:6 freq:abracadabra user42 upper:hello, or "fact:5,fact:6"
    #[arg(required = true, value_name = "TASK")]
    pub tasks: Vec<String>,
}

const EXIT_TASK_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;

/// Runs `labmq-call` and returns its exit status.
pub async fn run(args: CallArgs) -> ExitCode {
    let tasks: Vec<_> = args.tasks.iter().flat_map(|arg| parse_list(arg)).collect();
    if tasks.is_empty() {
        eprintln!("labmq-call: no tasks given (arguments were empty)");
        return ExitCode::from(EXIT_USAGE);
    }
    let tls = match client_tls(&args) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("labmq-call: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(args.connect_timeout),
        request_timeout: Duration::from_secs(args.timeout),
        tls,
        ..ClientOptions::default()
    };
    let client = match ComputeClient::connect(std::slice::from_ref(&args.server), &options).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("labmq-call: {}", error_chain(&e));
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let mut status = ExitCode::SUCCESS;
    for (item, parsed) in tasks {
        let outcome = match parsed {
            Err(e) => Err(format!("invalid task: {e}")),
            Ok(task) => call_with_retries(&client, &task).await.map_err(|e| {
                if e.is_transient() {
                    status = ExitCode::from(EXIT_UNREACHABLE);
                }
                e.to_string()
            }),
        };
        match outcome {
            Ok(output) => println!("{item} => {output}"),
            Err(message) => {
                println!("{item} => error: {message}");
                if status == ExitCode::SUCCESS {
                    status = ExitCode::from(EXIT_TASK_FAILED);
                }
            }
        }
    }
    status
}

/// Waits before each retry of a call that failed on the way (UNAVAILABLE and the like):
/// a server that restarts closes its connections, and a call sent on one just then was
/// never run. Every labmq method is a pure function, so a retry is safe.
const RETRY_WAITS: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];

async fn call_with_retries(
    client: &ComputeClient,
    task: &crate::task::Task,
) -> Result<crate::task::TaskOutput, crate::grpc::client::CallError> {
    let mut waits = RETRY_WAITS.iter();
    loop {
        match client.run(task).await {
            Err(e) if e.is_transient() => match waits.next() {
                Some(wait) => tokio::time::sleep(*wait).await,
                None => return Err(e),
            },
            outcome => return outcome,
        }
    }
}

fn client_tls(
    args: &CallArgs,
) -> Result<Option<tonic::transport::ClientTlsConfig>, crate::tls::TlsError> {
    use crate::tls::KeyedPath;
    let Some(ca) = &args.grpc_ca else {
        return Ok(None);
    };
    let identity = args.grpc_cert.as_deref().zip(args.grpc_key.as_deref());
    crate::tls::client_config(
        KeyedPath {
            key: "--grpc-ca",
            path: ca,
        },
        identity.map(|(cert, key)| {
            (
                KeyedPath {
                    key: "--grpc-cert",
                    path: cert,
                },
                KeyedPath {
                    key: "--grpc-key",
                    path: key,
                },
            )
        }),
    )
    .map(Some)
}
