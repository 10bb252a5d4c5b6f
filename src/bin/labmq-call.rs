use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use labmq::cli::CallArgs;
use labmq::rpc::client::{ClientOptions, ComputeClient};
use labmq::task::parse_list;

const EXIT_TASK_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    labmq::daemon::logging::init_cli();
    let args = CallArgs::parse();
    let tasks: Vec<_> = args.tasks.iter().flat_map(|arg| parse_list(arg)).collect();
    if tasks.is_empty() {
        eprintln!("labmq-call: no tasks given (arguments were empty)");
        return ExitCode::from(EXIT_USAGE);
    }
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(args.connect_timeout),
        request_timeout: Duration::from_secs(args.timeout),
    };
    let client = match ComputeClient::connect(std::slice::from_ref(&args.server), &options).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("labmq-call: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let mut status = ExitCode::SUCCESS;
    for (item, parsed) in tasks {
        let outcome = match parsed {
            Err(e) => Err(format!("invalid task: {e}")),
            Ok(task) => client.run(&task).await.map_err(|e| {
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
