use std::process::ExitCode;

use clap::Parser;
use labmq::consumer::ConsumerArgs;

fn main() -> ExitCode {
    let args = ConsumerArgs::parse();
    labmq::daemon::run::run(args.daemon, args.flags, |config, shutdown| async move {
        labmq::consumer::run(&config, shutdown).await?;
        Ok(())
    })
}
