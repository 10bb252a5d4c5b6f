use std::process::ExitCode;

use clap::Parser;
use labmq::cli::produce::{ProduceArgs, run};

#[tokio::main]
async fn main() -> ExitCode {
    labmq::daemon::logging::init_cli();
    run(ProduceArgs::parse()).await
}
