//! What a program tells the generic plumbing about itself: its name, config path and
//! environment prefix, how to check its config (with the [`ConfigError`] every config
//! error is, and helpers that name the key) and which log level it wants; and the
//! `--config` / `--check-config` / `--log-level` flags every daemon shares.

use std::marker::PhantomData;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("unknown key {key:?} in {origin}")]
    UnknownKey { key: String, origin: String },
    #[error("invalid value for key {key:?}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        // figment chains one error per bad key; an operator wants them all on one line.
        let all: Vec<String> = error.into_iter().map(|e| e.to_string()).collect();
        ConfigError::Parse(all.join("; "))
    }
}

/// `Err(Invalid)` naming `key`, for a service's `validate`.
pub fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        message: message.into(),
    })
}

/// Fails on the first of `values` that is empty, naming its key.
pub fn check_not_empty(values: &[(&'static str, &str)]) -> Result<(), ConfigError> {
    match values.iter().find(|(_, value)| value.is_empty()) {
        Some((key, _)) => invalid(key, "must not be empty"),
        None => Ok(()),
    }
}

/// Fails when `value` is 0, naming `key`.
pub fn check_positive(key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return invalid(key, "must be at least 1");
    }
    Ok(())
}

/// Fails when `value` lies outside `min..=max`, naming `key` and the range.
pub fn check_range<T>(key: &'static str, value: T, min: T, max: T) -> Result<(), ConfigError>
where
    T: PartialOrd + std::fmt::Display,
{
    if value < min || value > max {
        return invalid(key, format!("{value} is outside {min}..={max}"));
    }
    Ok(())
}

/// `log_level` must be a level or a tracing filter.
pub fn check_log_level(level: &str) -> Result<(), ConfigError> {
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| ())
        .map_err(|e| ConfigError::Invalid {
            key: "log_level",
            message: format!("{level:?} is not a level or filter ({e})"),
        })
}

/// A program's configuration type, which stands for the program: defaults from
/// `Default`, checks beyond types from `validate`.
pub trait Service: Serialize + DeserializeOwned + Default + Send + Sync + 'static {
    /// e.g. `labmq-server`: the prefix of its messages and its systemd unit's name.
    const NAME: &'static str;
    /// e.g. `/etc/labmq/server.toml`: read when present, unless `--config` says otherwise.
    const CONFIG_PATH: &'static str;
    /// e.g. `LABMQ_SERVER_`.
    const ENV_PREFIX: &'static str;
    /// Keys taken from the environment verbatim (secrets), see [`super::config`].
    const RAW_ENV_KEYS: &'static [&'static str] = &[];

    fn validate(&self) -> Result<(), ConfigError>;

    /// `error|warn|info|debug|trace` or a tracing filter.
    fn log_level(&self) -> &str;
}

/// `--config FILE`, `--check-config` and `--log-level LEVEL`, flattened into each
/// daemon's arguments; the help names the daemon's own default path.
#[derive(Debug, Clone)]
pub struct DaemonArgs<S> {
    pub config: Option<PathBuf>,
    pub check_config: bool,
    /// Overrides the `log_level` key.
    pub log_level: Option<String>,
    service: PhantomData<fn() -> S>,
}

impl<S: Service> FromArgMatches for DaemonArgs<S> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            config: matches.get_one::<PathBuf>("config").cloned(),
            check_config: matches.get_flag("check_config"),
            log_level: matches.get_one::<String>("log_level").cloned(),
            service: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl<S: Service> Args for DaemonArgs<S> {
    fn augment_args(command: Command) -> Command {
        command
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help(format!(
                        "Configuration file [default: {}, skipped if absent]",
                        S::CONFIG_PATH
                    )),
            )
            .arg(
                Arg::new("check_config")
                    .long("check-config")
                    .action(ArgAction::SetTrue)
                    .help(
                        "Validate the configuration, print one line and exit (0 valid, 78 invalid)",
                    ),
            )
            .arg(
                Arg::new("log_level")
                    .long("log-level")
                    .value_name("LEVEL")
                    .help("Log level or tracing filter (key `log_level`) [default: info]"),
            )
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}
