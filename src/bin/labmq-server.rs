use std::process::ExitCode;

use clap::Parser;
use labmq::cli::{SERVER_CONFIG_PATH, ServerArgs};
use labmq::daemon::config::{ConfigFile, ServerConfig};
use labmq::daemon::run::Daemon;

fn main() -> ExitCode {
    let args = ServerArgs::parse();
    Daemon {
        name: "labmq-server",
        file: ConfigFile::new(args.config, SERVER_CONFIG_PATH),
        flags: args.flags,
        check_config: args.check_config,
    }
    .main(|config: ServerConfig, shutdown| async move {
        labmq::rpc::server::run(&config, shutdown).await?;
        Ok(())
    })
}
