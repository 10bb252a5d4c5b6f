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

/// Default config path of `labmq-consumer`.
pub const CONSUMER_CONFIG_PATH: &str = "/etc/labmq/consumer.toml";
/// Default config path of `labmq-produce`.
pub const PRODUCE_CONFIG_PATH: &str = "/etc/labmq/produce.toml";

/// The labmq queue consumer: takes tasks from RabbitMQ, calls labmq-server, publishes results.
///
/// Every task is acked only after its result is confirmed by the broker; tasks whose gRPC
/// server is unavailable are retried with backoff; bad messages get an error result and go
/// to the dead-letter queue (QUEUE.dead). Configuration layers, later wins: defaults, the
/// TOML file (/etc/labmq/consumer.toml or --config), LABMQ_CONSUMER_* environment variables,
/// command-line flags. SIGTERM drains in-flight tasks and requeues the rest; SIGHUP re-reads
/// log_level. Exit status: 0 clean stop, 1 runtime failure, 78 bad configuration.
#[derive(Debug, Parser)]
#[command(name = "labmq-consumer", version)]
pub struct ConsumerArgs {
    /// Configuration file [default: /etc/labmq/consumer.toml, skipped if absent]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print one line and exit (0 valid, 78 invalid)
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub flags: ConsumerFlags,
}

/// Flags that override configuration keys of the same name.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ConsumerFlags {
    /// Broker URL (key `amqp_url`) [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amqp_url: Option<String>,
    /// Task queue (key `queue`) [default: task_queue]
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// gRPC server address; repeat for several (key `grpc_targets`) [default: 127.0.0.1:50051]
    #[arg(long = "grpc-target", value_name = "ADDR")]
    #[serde(rename = "grpc_targets", skip_serializing_if = "Vec::is_empty")]
    pub grpc_targets: Vec<String>,
    /// Tasks processed at once (key `concurrency`) [default: 64]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Deliveries prefetched ahead of acks (key `prefetch`) [default: 128]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<u16>,
    /// Log level or tracing filter (key `log_level`) [default: info]
    #[arg(long, value_name = "LEVEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

/// Publish tasks to RabbitMQ for labmq-consumer, with publisher confirms.
///
/// Tasks: fact:N, freq:TEXT, upper:TEXT, anything else is a user id (A/B). An argument may
/// hold a comma-separated list; "-" reads tasks from standard input, one per line. Each task
/// becomes its own persistent message on the task queue.
///
/// Broker URL: --amqp-url, else LABMQ_AMQP_URL, else amqp_url in /etc/labmq/produce.toml,
/// else amqp://guest:guest@127.0.0.1:5672/%2f.
///
/// Exit status: 0 every task confirmed (and, with --wait, succeeded); 1 with --wait, some
/// task's result is an error; 2 usage error or invalid task (nothing published);
/// 3 broker unreachable; 4 some publish not confirmed (nacked, returned or timed out);
/// 5 --wait timed out before every result arrived.
#[derive(Debug, Parser)]
#[command(name = "labmq-produce", version)]
pub struct ProduceArgs {
    /// Broker URL (the password is never printed)
    #[arg(
        long,
        env = "LABMQ_AMQP_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub amqp_url: Option<String>,
    /// Configuration file with amqp_url, amqp_password_file, queue, queue_type
    /// [default: /etc/labmq/produce.toml, skipped if absent]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Task queue [default: task_queue, or `queue` from the config file]
    #[arg(long, value_name = "NAME")]
    pub queue: Option<String>,
    /// Wait for each task's result and print it
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait for all results with --wait (the wait for confirms too, when shorter
    /// than --confirm-timeout)
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
    /// Seconds to wait for the broker to confirm the publishes
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub confirm_timeout: u64,
    /// Print result documents as JSON lines (with --wait), or published ids as JSON lines
    #[arg(long)]
    pub json: bool,
    /// Tasks, e.g. fact:6 freq:abracadabra user42, "fact:5,fact:6", or - for stdin
    #[arg(required = true, value_name = "TASK")]
    pub tasks: Vec<String>,
}

/// Default config path of `labmq-web`.
pub const WEB_CONFIG_PATH: &str = "/etc/labmq/web.toml";

/// The labmq web page and JSON API: submit tasks, browse their results.
///
/// GET / shows a form that publishes tasks to the task queue (with publisher confirms)
/// and a table of stored results that updates itself. Results come from labmq-web's own
/// durable queue bound to the results exchange and are stored in SQLite, one row per
/// result id. JSON API: POST /api/tasks, GET /api/results, GET /api/results/ID,
/// GET /healthz. Configuration layers, later wins: defaults, the TOML file
/// (/etc/labmq/web.toml or --config), LABMQ_WEB_* environment variables, command-line
/// flags. READY=1 once the HTTP listener is bound (stored results can be browsed without
/// a broker); the status line says whether the broker is connected. SIGTERM stops
/// cleanly; SIGHUP re-reads log_level. Exit status: 0 clean stop, 1 runtime failure
/// (e.g. address in use, database not writable), 78 bad configuration.
#[derive(Debug, Parser)]
#[command(name = "labmq-web", version)]
pub struct WebArgs {
    /// Configuration file [default: /etc/labmq/web.toml, skipped if absent]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print one line and exit (0 valid, 78 invalid)
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub flags: WebFlags,
}

/// Flags that override configuration keys of the same name.
#[derive(Debug, Clone, Args, Serialize)]
pub struct WebFlags {
    /// Address to listen on (key `listen`) [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Broker URL (key `amqp_url`) [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amqp_url: Option<String>,
    /// SQLite database file (key `database`) [default: /var/lib/labmq-web/results.sqlite3]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Log level or tracing filter (key `log_level`) [default: info]
    #[arg(long, value_name = "LEVEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}
