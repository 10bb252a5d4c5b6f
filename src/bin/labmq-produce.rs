use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use labmq::broker::connection::AmqpTarget;
use labmq::broker::produce::{ProduceError, Producer, wait_for_results};
use labmq::broker::topology::{DEFAULT_RESULTS_EXCHANGE, Topology};
use labmq::cli::{PRODUCE_CONFIG_PATH, ProduceArgs};
use labmq::daemon::config::{self, ConfigFile, ProduceConfig};
use labmq::task::{Task, parse_list};

const EXIT_TASK_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;
const EXIT_NOT_CONFIRMED: u8 = 4;
const EXIT_WAIT_TIMEOUT: u8 = 5;

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("labmq-produce: {message}");
    ExitCode::from(code)
}

/// Every task from the arguments, `-` standing for stdin; all must parse before any is sent.
fn read_tasks(arguments: &[String]) -> Result<Vec<Task>, String> {
    let mut inputs = Vec::new();
    for argument in arguments {
        if argument == "-" {
            for line in std::io::stdin().lock().lines() {
                inputs.push(line.map_err(|e| format!("reading standard input: {e}"))?);
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
        return Err(format!("{} (nothing was published)", errors.join("; ")));
    }
    if tasks.is_empty() {
        return Err("no tasks given".into());
    }
    Ok(tasks)
}

#[tokio::main]
async fn main() -> ExitCode {
    labmq::daemon::logging::init_cli();
    let args = ProduceArgs::parse();
    let tasks = match read_tasks(&args.tasks) {
        Ok(tasks) => tasks,
        Err(message) => return fail(EXIT_USAGE, message),
    };
    let file = ConfigFile::new(args.config.clone(), PRODUCE_CONFIG_PATH);
    let settings: ProduceConfig = match config::load(&file, config::NoOverrides {}) {
        Ok(settings) => settings,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let url = args.amqp_url.as_deref().unwrap_or(&settings.amqp_url);
    let password_file =
        (!settings.amqp_password_file.is_empty()).then(|| Path::new(&settings.amqp_password_file));
    let target = match AmqpTarget::new(url, None, password_file) {
        Ok(target) => target,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let topology = Topology {
        queue: args.queue.clone().unwrap_or(settings.queue),
        queue_type: settings.queue_type,
        results_exchange: DEFAULT_RESULTS_EXCHANGE.into(),
    };

    let producer = match Producer::connect(&target, &topology, "labmq-produce").await {
        Ok(producer) => producer,
        Err(e @ ProduceError::Unreachable(_)) => return fail(EXIT_UNREACHABLE, e),
        Err(e) => return fail(EXIT_NOT_CONFIRMED, e),
    };
    let mut replies = None;
    if args.wait {
        match producer.listen_for_results().await {
            Ok(consumer) => replies = Some(consumer),
            Err(e) => return fail(EXIT_UNREACHABLE, e),
        }
    }
    // A caller who bounds --wait means the whole command, also while a broker under a
    // resource alarm holds back confirms.
    let confirm_timeout = if args.wait {
        args.confirm_timeout.min(args.timeout)
    } else {
        args.confirm_timeout
    };
    let published = match producer
        .publish(&tasks, args.wait, Duration::from_secs(confirm_timeout))
        .await
    {
        Ok(published) => published,
        Err(e) => return fail(EXIT_NOT_CONFIRMED, e),
    };

    let mut status = ExitCode::SUCCESS;
    match replies.as_mut() {
        None => {
            if args.json {
                for p in &published {
                    println!("{}", serde_json::json!({ "id": p.id, "task": p.task }));
                }
            } else {
                println!(
                    "published {} task(s) to {} (confirmed by the broker)",
                    published.len(),
                    topology.queue
                );
            }
        }
        Some(replies) => {
            let outcome = wait_for_results(
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
            .await;
            if let Err(e) = outcome {
                producer.close().await;
                return fail(EXIT_WAIT_TIMEOUT, e);
            }
        }
    }
    producer.close().await;
    status
}
