//! `labmq-produce`: publishes tasks to the task queue with publisher confirms and, with
//! `--wait`, prints each task's result from direct reply-to.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::amqp::AmqpError;
use crate::amqp::producer::{ProduceError, Producer, wait_for_results};
use crate::amqp::settings::{AmqpSettings, AmqpTlsFlags, AmqpUrls, PASSWORD_KEY};
use crate::daemon::config::{self, ConfigFile};
use crate::daemon::logging::error_chain;
use crate::daemon::service::ConfigError;
use crate::daemon::service::Service;
use crate::task::{Task, parse_list};

/// `labmq-produce`'s configuration (`/etc/labmq/produce.toml`, `LABMQ_PRODUCE_*`): the
/// shared broker settings; `--amqp-url` and `LABMQ_AMQP_URL` win over its `amqp_url`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProduceConfig {
    #[serde(flatten)]
    pub amqp: AmqpSettings,
}

impl Service for ProduceConfig {
    const NAME: &'static str = "labmq-produce";
    const CONFIG_PATH: &'static str = "/etc/labmq/produce.toml";
    const ENV_PREFIX: &'static str = "LABMQ_PRODUCE_";
    const RAW_ENV_KEYS: &'static [&'static str] = &[PASSWORD_KEY];

    /// Nothing here: the file's settings are checked in [`produce`], after the command
    /// line's overrides (a file's TLS keys may be meant for an `--amqp-url amqps://…`).
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    fn log_level(&self) -> &str {
        "warn"
    }
}

/// Publish tasks to RabbitMQ for labmq-consumer, with publisher confirms.
///
/// Tasks: fact:N, freq:TEXT, upper:TEXT, anything else is a user id (A/B). An argument may
/// hold a comma-separated list; "-" reads tasks from standard input, one per line. Each task
/// becomes its own persistent message on the task queue.
///
/// Broker URL: --amqp-url, else LABMQ_AMQP_URL, else amqp_url in /etc/labmq/produce.toml,
/// else amqp://guest:guest@127.0.0.1:5672/%2f. amqps:// URLs use TLS: --amqp-ca names the
/// CA of the broker's certificate (default: the system's roots), --amqp-cert and --amqp-key
/// a client certificate (needed for ?auth_mechanism=external). Keep the password out of the URL on the
/// command line (any local user can read a process's arguments): give a URL without it,
/// e.g. amqp://app@broker:5672/%2f, and --password-file FILE.
///
/// Exit status: 0 every task confirmed (and, with --wait, succeeded); 1 with --wait, some
/// task's result is an error; 2 usage error or invalid task (nothing published);
/// 3 broker unreachable; 4 some publish not confirmed (nacked, returned or timed out);
/// 5 --wait timed out before every result arrived.
#[derive(Debug, Parser)]
#[command(name = "labmq-produce", version)]
pub struct ProduceArgs {
    /// Broker URL (the password is never printed); repeat for each node of a cluster:
    /// the first that answers, in a shuffled order, takes the tasks
    #[arg(
        long = "amqp-url",
        env = "LABMQ_AMQP_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub amqp_url: Vec<String>,
    /// File holding only the broker password (trailing newline ignored); wins over a
    /// password in the URL and over amqp_password/amqp_password_file of the config file.
    /// The way to give a password without putting it in the command line.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    #[command(flatten)]
    pub amqp_tls: AmqpTlsFlags,
    /// Configuration file with the broker settings (amqp_url, amqp_password_file, queue,
    /// queue_type, results_exchange) [default: /etc/labmq/produce.toml, skipped if absent]
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
    /// Seconds to wait for the connection to the broker
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub connect_timeout: u64,
    /// Print result documents as JSON lines (with --wait), or published ids as JSON lines
    #[arg(long)]
    pub json: bool,
    /// Tasks, e.g. fact:6 freq:abracadabra user42, "fact:5,fact:6", or - for stdin
    #[arg(required = true, value_name = "TASK")]
    pub tasks: Vec<String>,
}

const EXIT_TASK_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;
const EXIT_NOT_CONFIRMED: u8 = 4;
const EXIT_WAIT_TIMEOUT: u8 = 5;

/// Why labmq-produce stops early; [`Failure::exit_code`] is the one place that maps a
/// failure to the exit status documented above.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Produce(#[from] ProduceError),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_)
            | Failure::Config(_)
            | Failure::Produce(ProduceError::Broker(
                AmqpError::BadUrl { .. } | AmqpError::PasswordFile { .. } | AmqpError::Tls(_),
            )) => EXIT_USAGE,
            Failure::Produce(ProduceError::Unreachable(_) | ProduceError::RepliesClosed) => {
                EXIT_UNREACHABLE
            }
            Failure::Produce(ProduceError::Broker(e)) if e.is_connect() => EXIT_UNREACHABLE,
            Failure::Produce(ProduceError::WaitTimeout { .. }) => EXIT_WAIT_TIMEOUT,
            Failure::Produce(ProduceError::Broker(_) | ProduceError::NotConfirmed { .. }) => {
                EXIT_NOT_CONFIRMED
            }
        }
    }
}

/// Runs `labmq-produce` and returns its exit status.
pub async fn run(args: ProduceArgs) -> ExitCode {
    match produce(&args).await {
        Ok(status) => status,
        Err(failure) => {
            eprintln!("labmq-produce: {}", error_chain(&failure));
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Every task from the arguments, `-` standing for stdin; all must parse before any is sent.
fn read_tasks(arguments: &[String]) -> Result<Vec<Task>, Failure> {
    let mut inputs = Vec::new();
    for argument in arguments {
        if argument == "-" {
            for line in std::io::stdin().lock().lines() {
                inputs.push(
                    line.map_err(|e| Failure::Usage(format!("reading standard input: {e}")))?,
                );
            }
        } else {
            inputs.push(argument.clone());
        }
    }
    let mut tasks = Vec::new();
    let mut errors = Vec::new();
    for (item, parsed) in inputs.iter().flat_map(|input| parse_list(input)) {
        match parsed {
            Ok(task) => tasks.push(task),
            Err(e) => errors.push(format!("invalid task {item:?}: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(Failure::Usage(format!(
            "{} (nothing was published)",
            errors.join("; ")
        )));
    }
    if tasks.is_empty() {
        return Err(Failure::Usage("no tasks given".into()));
    }
    Ok(tasks)
}

async fn produce(args: &ProduceArgs) -> Result<ExitCode, Failure> {
    let tasks = read_tasks(&args.tasks)?;
    let file = ConfigFile::new(args.config.clone(), ProduceConfig::CONFIG_PATH);
    let mut settings = config::load::<ProduceConfig>(&file, config::NoOverrides {})?.amqp;
    if !args.amqp_url.is_empty() {
        settings.amqp_url = AmqpUrls(args.amqp_url.clone());
    }
    if let Some(queue) = &args.queue {
        settings.queue.clone_from(queue);
    }
    if let Some(file) = &args.password_file {
        settings.amqp_password_file = file.display().to_string();
    }
    args.amqp_tls.apply(&mut settings);
    // The flags are checked as the file's keys were (TLS files, EXTERNAL).
    settings.validate()?;
    let target = settings.target().map_err(ProduceError::Broker)?;
    let topology = settings.topology();

    let connect_timeout = Duration::from_secs(args.connect_timeout);
    let producer = Producer::connect(&target, &topology, "labmq-produce", connect_timeout).await?;
    let status = publish_and_wait(args, &producer, &tasks, &topology.queue).await?;
    // Only after success: a broker that holds back confirms (a resource alarm blocks the
    // connection) would not answer a close either, and exiting drops the socket anyway.
    producer.close().await;
    Ok(status)
}

async fn publish_and_wait(
    args: &ProduceArgs,
    producer: &Producer,
    tasks: &[Task],
    queue: &str,
) -> Result<ExitCode, Failure> {
    let mut replies = if args.wait {
        Some(
            producer
                .listen_for_results()
                .await
                .map_err(ProduceError::Unreachable)?,
        )
    } else {
        None
    };
    // A caller who bounds --wait means the whole command, also while a broker under a
    // resource alarm holds back confirms.
    let confirm_timeout = if args.wait {
        args.confirm_timeout.min(args.timeout)
    } else {
        args.confirm_timeout
    };
    let published = producer
        .publish(tasks, args.wait, Duration::from_secs(confirm_timeout))
        .await?;

    let mut status = ExitCode::SUCCESS;
    match replies.as_mut() {
        None => {
            if args.json {
                for p in &published {
                    println!("{}", serde_json::json!({ "id": p.id, "task": p.task }));
                }
            } else {
                println!(
                    "published {} task(s) to {queue} (confirmed by the broker)",
                    published.len(),
                );
            }
        }
        Some(replies) => {
            wait_for_results(
                replies,
                &published,
                Duration::from_secs(args.timeout),
                |document| {
                    if !document.ok {
                        status = ExitCode::from(EXIT_TASK_FAILED);
                    }
                    if args.json {
                        println!("{}", String::from_utf8_lossy(&document.to_json()));
                    } else {
                        println!("{}", document.summary());
                    }
                },
            )
            .await?;
        }
    }
    Ok(status)
}
