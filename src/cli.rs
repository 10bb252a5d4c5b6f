//! Command-line definitions of every binary, kept in the library so man pages and shell
//! completions can be generated from the same source.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser};
use serde::Serialize;

/// Default config path of `labmq-server`.
pub const SERVER_CONFIG_PATH: &str = "/etc/labmq/server.toml";

/// The labmq gRPC compute service (package `message`, service `MessageService`).
///
/// Configuration layers, later wins: built-in defaults, the TOML file
/// (/etc/labmq/server.toml or --config), LABMQ_SERVER_* environment variables
/// (e.g. LABMQ_SERVER_LISTEN=0.0.0.0:50051), command-line flags.
/// SIGTERM/SIGINT drain in-flight calls and exit 0; SIGHUP re-reads log_level.
/// Exit status: 0 clean stop, 1 runtime failure (e.g. address in use), 78 bad configuration.
#[derive(Debug, Parser)]
#[command(name = "labmq-server", version)]
pub struct ServerArgs {
    /// Configuration file [default: /etc/labmq/server.toml, skipped if absent]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print one line and exit (0 valid, 78 invalid)
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub flags: ServerFlags,
}

/// Flags that override configuration keys of the same name.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ServerFlags {
    /// Address to listen on (key `listen`) [default: 127.0.0.1:50051]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Log level or tracing filter (key `log_level`) [default: info]
    #[arg(long, value_name = "LEVEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

/// Call labmq-server directly for each task and print one result line per task.
///
/// Tasks: fact:N (exact N!), freq:TEXT (most frequent letter), upper:TEXT (upper-case echo),
/// anything else is a user id for A/B assignment. An argument may hold a comma-separated list.
///
/// Exit status: 0 every task succeeded; 1 some task failed (its error is printed);
/// 2 usage error; 3 server unreachable.
#[derive(Debug, Parser)]
#[command(name = "labmq-call", version)]
pub struct CallArgs {
    /// gRPC server address, host:port or http://host:port
    #[arg(
        long,
        env = "LABMQ_GRPC_TARGET",
        default_value = "127.0.0.1:50051",
        value_name = "ADDR"
    )]
    pub server: String,
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
