//! The common life of a daemon: load config, start logging, install signals, run, map the
//! outcome to an exit code. Every labmq daemon's `main` is one call to [`main`].

use std::future::Future;
use std::process::ExitCode;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::config::{self, ConfigFile, DaemonConfig};
use super::{logging, shutdown, systemd};

/// sysexits' EX_CONFIG; units set `RestartPreventExitStatus=78` so a bad config does not
/// restart in a loop.
pub const EXIT_CONFIG: u8 = 78;

/// What a daemon's config must expose to the shared runner.
pub trait LogLevel {
    fn log_level(&self) -> &str;
}

pub struct Daemon<F> {
    pub name: &'static str,
    pub file: ConfigFile,
    pub flags: F,
    pub check_config: bool,
}

impl<F: Serialize + Send + 'static> Daemon<F> {
    fn load<C: DaemonConfig>(&self) -> Result<C, config::ConfigError> {
        config::load::<C>(&self.file, &self.flags)
    }

    /// Runs `body` to completion on a multi-threaded runtime.
    pub fn main<C, B, Fut>(self, body: B) -> ExitCode
    where
        C: DaemonConfig + LogLevel + Send + 'static,
        B: FnOnce(C, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let name = self.name;
        let config: C = match self.load() {
            Ok(config) => config,
            Err(e) => {
                eprintln!("{name}: {e}");
                systemd::status(&format!("bad configuration: {e}"));
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        if self.check_config {
            println!(
                "{name}: configuration OK ({})",
                config::describe_source(&self.file)
            );
            return ExitCode::SUCCESS;
        }
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("{name}: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        runtime.block_on(async move {
            let log = match logging::init(config.log_level()) {
                Ok(log) => log,
                Err(e) => {
                    eprintln!("{name}: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let signals = match shutdown::install() {
                Ok(signals) => signals,
                Err(e) => {
                    tracing::error!("{name}: cannot install signal handlers: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut reload = signals.reload;
            let reread = move || self.load::<C>().map(|c| c.log_level().to_owned());
            tokio::spawn(async move {
                while reload.recv().await.is_some() {
                    systemd::reloading();
                    match reread().map_err(|e| e.to_string()).and_then(|level| {
                        log.set_level(&level)
                            .map(|()| level)
                            .map_err(|e| e.to_string())
                    }) {
                        Ok(level) => tracing::info!(log_level = %level, "configuration reloaded"),
                        Err(e) => tracing::warn!("reload failed, keeping the old log level: {e}"),
                    }
                    systemd::reloaded("running");
                }
            });
            match body(config, signals.shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{name}: {e:#}");
                    ExitCode::FAILURE
                }
            }
        })
    }
}
