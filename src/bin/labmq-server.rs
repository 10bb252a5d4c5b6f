use std::process::ExitCode;

use clap::Parser;
use labmq::server::ServerArgs;

fn main() -> ExitCode {
    let args = ServerArgs::parse();
    labmq::daemon::run::run(args.daemon, args.flags, |config, shutdown| async move {
        labmq::server::run(&config, shutdown).await?;
        Ok(())
    })
}
