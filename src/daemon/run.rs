//! The common life of a daemon: load config, start logging, install signals, run, map the
//! outcome to an exit code. Every labmq daemon's `main` is one call to [`run`].

use std::future::Future;
use std::process::ExitCode;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::config::{self, ConfigFile};
use super::logging::{self, LogControl};
use super::service::{DaemonArgs, Service};
use super::{shutdown, systemd};

/// sysexits' EX_CONFIG; units set `RestartPreventExitStatus=78` so a bad config does not
/// restart in a loop.
pub const EXIT_CONFIG: u8 = 78;

/// Loads `S`'s configuration (with `flags` as the command-line layer) and runs `body` to
/// completion on a multi-threaded runtime. Exit status: 0 clean stop, 1 runtime failure,
/// 78 bad configuration; `--check-config` stops after loading.
pub fn run<S, F, B, Fut>(args: DaemonArgs<S>, flags: F, body: B) -> ExitCode
where
    S: Service,
    F: Serialize + Send + 'static,
    B: FnOnce(S, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let name = S::NAME;
    let file = ConfigFile::new(args.config, S::CONFIG_PATH);
    let flags = Overrides {
        flags,
        log_level: args.log_level,
    };
    let config: S = match config::load(&file, &flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{name}: {e}");
            systemd::status(&format!("bad configuration: {e}"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        println!("{name}: configuration OK ({})", file.describe());
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
        let reloader = Reloader {
            file,
            flags,
            running: config::as_dict(&config),
            log,
            service: std::marker::PhantomData::<fn() -> S>,
        };
        let mut reload = signals.reload;
        tokio::spawn(async move {
            while reload.recv().await.is_some() {
                systemd::reloading();
                reloader.reload();
                // READY=1 again, with the daemon's own status line, not a generic one.
                systemd::reloaded();
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

/// The command-line layer: the program's own flags and the shared `--log-level`.
#[derive(Serialize)]
struct Overrides<F> {
    #[serde(flatten)]
    flags: F,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,
}

/// SIGHUP: the configuration is read again; `log_level` is applied at once, any other
/// changed key is named as needing a restart (the running daemon keeps its old value).
struct Reloader<S, F> {
    file: ConfigFile,
    flags: F,
    /// The configuration the daemon runs with, to tell what a reload changed.
    running: figment::value::Dict,
    log: LogControl,
    service: std::marker::PhantomData<fn() -> S>,
}

impl<S: Service, F: Serialize> Reloader<S, F> {
    fn reload(&self) {
        let new: S = match config::load(&self.file, &self.flags) {
            Ok(new) => new,
            Err(e) => {
                tracing::warn!("reload failed, keeping the running configuration: {e}");
                return;
            }
        };
        let level = new.log_level().to_owned();
        if let Err(e) = self.log.set_level(&level) {
            tracing::warn!("reload: cannot apply log_level {level:?}: {e}");
            return;
        }
        let needs_restart: Vec<String> =
            config::changed_keys(&self.running, &config::as_dict(&new))
                .into_iter()
                .filter(|key| key != "log_level")
                .collect();
        if needs_restart.is_empty() {
            tracing::info!(log_level = %level, "reloaded: log_level is {level}");
        } else {
            tracing::warn!(
                log_level = %level,
                "reloaded: log_level is {level}; changed keys that take effect only after a restart: {}",
                needs_restart.join(", ")
            );
        }
    }
}
