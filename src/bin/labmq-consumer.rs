use std::process::ExitCode;

use clap::Parser;
use labmq::cli::{CONSUMER_CONFIG_PATH, ConsumerArgs};
use labmq::daemon::config::{ConfigFile, ConsumerConfig};
use labmq::daemon::run::Daemon;

fn main() -> ExitCode {
    let args = ConsumerArgs::parse();
    Daemon {
        name: "labmq-consumer",
        file: ConfigFile::new(args.config, CONSUMER_CONFIG_PATH),
        flags: args.flags,
        check_config: args.check_config,
    }
    .main(|config: ConsumerConfig, shutdown| async move {
        labmq::broker::consume::run(&config, shutdown).await?;
        Ok(())
    })
}
