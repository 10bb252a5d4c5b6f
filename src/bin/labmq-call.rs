use std::process::ExitCode;

use clap::Parser;
use labmq::cli::call::{CallArgs, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    labmq::daemon::logging::init_cli();
    run(CallArgs::parse()).await
}
