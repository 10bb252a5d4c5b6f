use std::process::ExitCode;

use clap::Parser;
use labmq::web::WebArgs;

fn main() -> ExitCode {
    let args = WebArgs::parse();
    labmq::daemon::run::run(args.daemon, args.flags, |config, shutdown| async move {
        labmq::web::run(&config, shutdown).await?;
        Ok(())
    })
}
