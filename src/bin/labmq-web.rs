use std::process::ExitCode;

use clap::Parser;
use labmq::cli::{WEB_CONFIG_PATH, WebArgs};
use labmq::daemon::config::{ConfigFile, WebConfig};
use labmq::daemon::run::Daemon;

fn main() -> ExitCode {
    let args = WebArgs::parse();
    Daemon {
        name: "labmq-web",
        file: ConfigFile::new(args.config, WEB_CONFIG_PATH),
        flags: args.flags,
        check_config: args.check_config,
    }
    .main(|config: WebConfig, shutdown| async move {
        labmq::web::run(&config, shutdown).await?;
        Ok(())
    })
}
