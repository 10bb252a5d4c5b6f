//! Configuration in layers: built-in defaults < TOML file < `LABMQ_<DAEMON>_*` environment
//! < command-line flags. Unknown keys are rejected and every error names its key and source.
//!
//! Each daemon has its own environment prefix (`LABMQ_SERVER_`, `LABMQ_CONSUMER_`, …) so a
//! variable meant for one daemon can never be read as an unknown key by another.

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::broker::connection::DEFAULT_AMQP_URL;
use crate::broker::topology::{DEFAULT_QUEUE, DEFAULT_RESULTS_EXCHANGE, QueueType};
use crate::compute::{ab, factorial, letters};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Parse(String),
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

/// For loaders without command-line overrides.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NoOverrides {}

/// Where the TOML layer comes from: the daemon's default path, which may be absent, or a
/// path given with `--config`, which must exist.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub required: bool,
}

impl ConfigFile {
    pub fn new(explicit: Option<PathBuf>, default_path: &str) -> Self {
        match explicit {
            Some(path) => Self {
                path,
                required: true,
            },
            None => Self {
                path: PathBuf::from(default_path),
                required: false,
            },
        }
    }
}

/// A daemon's configuration type: its defaults come from `Default`, its checks beyond
/// types from `validate`.
pub trait DaemonConfig: Serialize + DeserializeOwned + Default {
    /// e.g. `LABMQ_SERVER_`.
    const ENV_PREFIX: &'static str;
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads `T` from all layers; `overrides` holds the command-line flags that were given
/// (fields left `None` must be skipped when serialised).
pub fn load<T: DaemonConfig>(
    file: &ConfigFile,
    overrides: impl Serialize,
) -> Result<T, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    figment = figment.merge(toml_layer(file)?);
    figment = figment
        .merge(Env::prefixed(T::ENV_PREFIX).split("__"))
        .merge(Serialized::defaults(overrides));
    let config: T = figment.extract()?;
    config.validate()?;
    Ok(config)
}

fn toml_layer(file: &ConfigFile) -> Result<figment::providers::Data<Toml>, ConfigError> {
    match std::fs::metadata(&file.path) {
        Ok(_) => {
            // Read it ourselves so a permission problem is reported, not skipped silently.
            std::fs::read_to_string(&file.path).map_err(|e| ConfigError::File {
                path: file.path.clone(),
                message: e.to_string(),
            })?;
            Ok(Toml::file_exact(&file.path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !file.required => {
            Ok(Toml::string(""))
        }
        Err(e) => Err(ConfigError::File {
            path: file.path.clone(),
            message: e.to_string(),
        }),
    }
}

fn check_log_level(level: &str) -> Result<(), ConfigError> {
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| ())
        .map_err(|e| ConfigError::Invalid {
            key: "log_level",
            message: format!("{level:?} is not a level or filter ({e})"),
        })
}

fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        message: message.into(),
    })
}

/// The broker settings every AMQP client has: the URL must parse, and a password file is
/// read now, so `--check-config` (run by the units as the service user) catches one the
/// service cannot read.
fn check_amqp(url: &str, password_file: &str) -> Result<(), ConfigError> {
    use crate::broker::connection::AmqpTarget;
    if let Err(e) = AmqpTarget::new(url, None, None) {
        return invalid("amqp_url", e.to_string());
    }
    if !password_file.is_empty() {
        if let Err(e) = AmqpTarget::new(url, None, Some(Path::new(password_file))) {
            return invalid("amqp_password_file", e.to_string());
        }
    }
    Ok(())
}

fn check_not_empty(values: &[(&'static str, &str)]) -> Result<(), ConfigError> {
    match values.iter().find(|(_, value)| value.is_empty()) {
        Some((key, _)) => invalid(key, "must not be empty"),
        None => Ok(()),
    }
}

/// `labmq-server` (`/etc/labmq/server.toml`, `LABMQ_SERVER_*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the gRPC listener binds to.
    pub listen: SocketAddr,
    /// `error|warn|info|debug|trace`, or a tracing filter; `RUST_LOG` wins when set.
    pub log_level: String,
    /// How long in-flight calls may run after SIGTERM before the server exits anyway.
    pub shutdown_grace_secs: u64,
    /// Largest `n` that `Factorial` accepts.
    pub max_factorial_n: u64,
    /// Largest text, in bytes, that `MostFrequentLetter` accepts.
    pub max_text_bytes: usize,
    /// Salt of the A/B hash; changing it reassigns users.
    pub ab_salt: String,
    /// Share of users, in percent, that land in group A.
    pub ab_a_percent: u8,
    /// Threads for heavy computations; 0 means one per CPU.
    pub compute_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            log_level: "info".into(),
            shutdown_grace_secs: 10,
            max_factorial_n: factorial::DEFAULT_MAX_FACTORIAL_N,
            max_text_bytes: letters::DEFAULT_MAX_TEXT_BYTES,
            ab_salt: ab::DEFAULT_AB_SALT.into(),
            ab_a_percent: ab::DEFAULT_A_PERCENT,
            compute_threads: 0,
        }
    }
}

impl crate::daemon::run::LogLevel for ServerConfig {
    fn log_level(&self) -> &str {
        &self.log_level
    }
}

impl DaemonConfig for ServerConfig {
    const ENV_PREFIX: &'static str = "LABMQ_SERVER_";

    fn validate(&self) -> Result<(), ConfigError> {
        check_log_level(&self.log_level)?;
        if self.ab_a_percent > 100 {
            return invalid("ab_a_percent", format!("{} is over 100", self.ab_a_percent));
        }
        check_not_empty(&[("ab_salt", &self.ab_salt)])?;
        if self.max_text_bytes == 0 {
            return invalid("max_text_bytes", "must be at least 1");
        }
        // Keeps the gRPC decoding limit (derived from it) well inside memory.
        if self.max_text_bytes > 256 * 1024 * 1024 {
            return invalid(
                "max_text_bytes",
                format!("{} is over 268435456 (256 MiB)", self.max_text_bytes),
            );
        }
        if self.max_factorial_n > 10_000_000 {
            return invalid(
                "max_factorial_n",
                format!(
                    "{} is over 10000000; larger results take minutes and hundreds of MB",
                    self.max_factorial_n
                ),
            );
        }
        Ok(())
    }
}

/// `labmq-consumer` (`/etc/labmq/consumer.toml`, `LABMQ_CONSUMER_*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// Broker URL; its password may be left out and given by `amqp_password(_file)`.
    pub amqp_url: String,
    /// Overrides the URL's password; best set from `/etc/labmq/consumer.env` as
    /// `LABMQ_CONSUMER_AMQP_PASSWORD`, never in a world-readable file.
    pub amqp_password: String,
    /// A file holding only the password (e.g. a systemd credential); wins over both.
    pub amqp_password_file: String,
    /// The task queue; its dead-letter queue is this name + ".dead".
    pub queue: String,
    /// `classic` (compatible with plain clients) or `quorum` (replicated, for clusters).
    pub queue_type: QueueType,
    /// Fanout exchange every result document is published to.
    pub results_exchange: String,
    /// gRPC servers; calls are spread over them and skip one that is down.
    pub grpc_targets: Vec<String>,
    /// Deliveries the broker may push ahead of acks.
    pub prefetch: u16,
    /// Tasks processed at once.
    pub concurrency: usize,
    /// Larger bodies are dead-lettered unread.
    pub max_body_bytes: usize,
    /// Deadline of one gRPC call.
    pub grpc_timeout_secs: u64,
    /// First and longest wait between retries of a task whose server is unavailable.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Longest wait between broker reconnection attempts.
    pub reconnect_max_secs: u64,
    /// After SIGTERM, how long in-flight tasks may finish before the rest are requeued.
    pub shutdown_grace_secs: u64,
    pub log_level: String,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            amqp_url: DEFAULT_AMQP_URL.into(),
            amqp_password: String::new(),
            amqp_password_file: String::new(),
            queue: DEFAULT_QUEUE.into(),
            queue_type: QueueType::Classic,
            results_exchange: DEFAULT_RESULTS_EXCHANGE.into(),
            grpc_targets: vec!["127.0.0.1:50051".into()],
            prefetch: 128,
            concurrency: 64,
            max_body_bytes: 2 * 1024 * 1024,
            grpc_timeout_secs: 30,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
            reconnect_max_secs: 10,
            shutdown_grace_secs: 20,
            log_level: "info".into(),
        }
    }
}

impl crate::daemon::run::LogLevel for ConsumerConfig {
    fn log_level(&self) -> &str {
        &self.log_level
    }
}

impl DaemonConfig for ConsumerConfig {
    const ENV_PREFIX: &'static str = "LABMQ_CONSUMER_";

    fn validate(&self) -> Result<(), ConfigError> {
        check_log_level(&self.log_level)?;
        check_amqp(&self.amqp_url, &self.amqp_password_file)?;
        check_not_empty(&[
            ("queue", &self.queue),
            ("results_exchange", &self.results_exchange),
        ])?;
        if self.grpc_targets.is_empty() {
            return invalid("grpc_targets", "needs at least one address");
        }
        for target in &self.grpc_targets {
            let uri = crate::rpc::client::normalize_target(target);
            if uri.parse::<tonic::transport::Uri>().is_err() {
                return invalid(
                    "grpc_targets",
                    format!("{target:?} is not host:port or a URL"),
                );
            }
        }
        if self.prefetch == 0 {
            return invalid("prefetch", "must be at least 1");
        }
        if self.concurrency == 0 {
            return invalid("concurrency", "must be at least 1");
        }
        if self.max_body_bytes == 0 {
            return invalid("max_body_bytes", "must be at least 1");
        }
        if self.grpc_timeout_secs == 0 {
            return invalid("grpc_timeout_secs", "must be at least 1");
        }
        if self.retry_initial_ms == 0 || self.retry_initial_ms > self.retry_max_ms {
            return invalid(
                "retry_initial_ms",
                "must be at least 1 and at most retry_max_ms",
            );
        }
        if self.reconnect_max_secs == 0 {
            return invalid("reconnect_max_secs", "must be at least 1");
        }
        Ok(())
    }
}

/// `labmq-web` (`/etc/labmq/web.toml`, `LABMQ_WEB_*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Address the HTTP listener binds to.
    pub listen: SocketAddr,
    /// Broker URL; its password may be left out and given by `amqp_password(_file)`.
    pub amqp_url: String,
    /// Overrides the URL's password; best set from `/etc/labmq/web.env` as
    /// `LABMQ_WEB_AMQP_PASSWORD`, never in a world-readable file.
    pub amqp_password: String,
    /// A file holding only the password (e.g. a systemd credential); wins over both.
    pub amqp_password_file: String,
    /// The task queue submitted tasks are published to.
    pub queue: String,
    /// Used when the task queue or the results queue does not exist yet.
    pub queue_type: QueueType,
    /// Fanout exchange the consumers publish result documents to.
    pub results_exchange: String,
    /// labmq-web's own durable queue bound to `results_exchange`: results published while
    /// labmq-web is down wait there.
    pub results_queue: String,
    /// SQLite database of the stored results (created if absent).
    pub database: String,
    /// Most tasks one submit may hold (form or API), after splitting comma lists.
    pub max_tasks_per_submit: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Submits accepted per minute, from all clients together (a token bucket that
    /// allows bursts of this size).
    pub submits_per_minute: u32,
    /// Results per page of the table and default `limit` of `/api/results`.
    pub page_size: usize,
    /// How long a submit waits for the broker's confirms.
    pub confirm_timeout_secs: u64,
    /// Longest wait between broker reconnection attempts.
    pub reconnect_max_secs: u64,
    pub log_level: String,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            amqp_url: DEFAULT_AMQP_URL.into(),
            amqp_password: String::new(),
            amqp_password_file: String::new(),
            queue: DEFAULT_QUEUE.into(),
            queue_type: QueueType::Classic,
            results_exchange: DEFAULT_RESULTS_EXCHANGE.into(),
            results_queue: "labmq-web.results".into(),
            database: "/var/lib/labmq-web/results.sqlite3".into(),
            max_tasks_per_submit: 100,
            max_body_bytes: 64 * 1024,
            submits_per_minute: 120,
            page_size: 50,
            confirm_timeout_secs: 10,
            reconnect_max_secs: 10,
            log_level: "info".into(),
        }
    }
}

impl crate::daemon::run::LogLevel for WebConfig {
    fn log_level(&self) -> &str {
        &self.log_level
    }
}

impl DaemonConfig for WebConfig {
    const ENV_PREFIX: &'static str = "LABMQ_WEB_";

    fn validate(&self) -> Result<(), ConfigError> {
        check_log_level(&self.log_level)?;
        check_amqp(&self.amqp_url, &self.amqp_password_file)?;
        check_not_empty(&[
            ("queue", &self.queue),
            ("results_exchange", &self.results_exchange),
            ("results_queue", &self.results_queue),
            ("database", &self.database),
        ])?;
        if self.results_queue == self.queue {
            return invalid("results_queue", "must differ from queue (the task queue)");
        }
        if self.max_tasks_per_submit == 0 {
            return invalid("max_tasks_per_submit", "must be at least 1");
        }
        if self.max_tasks_per_submit > 100_000 {
            return invalid("max_tasks_per_submit", "must be at most 100000");
        }
        if self.max_body_bytes < 256 {
            return invalid("max_body_bytes", "must be at least 256");
        }
        if self.max_body_bytes > 64 * 1024 * 1024 {
            return invalid("max_body_bytes", "must be at most 67108864 (64 MiB)");
        }
        if self.submits_per_minute == 0 {
            return invalid("submits_per_minute", "must be at least 1");
        }
        if self.page_size == 0 || self.page_size > 1000 {
            return invalid("page_size", "must be between 1 and 1000");
        }
        if self.confirm_timeout_secs == 0 {
            return invalid("confirm_timeout_secs", "must be at least 1");
        }
        if self.reconnect_max_secs == 0 {
            return invalid("reconnect_max_secs", "must be at least 1");
        }
        Ok(())
    }
}

/// `labmq-produce` (`/etc/labmq/produce.toml`, `LABMQ_PRODUCE_*`); `--amqp-url` and
/// `LABMQ_AMQP_URL` win over it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProduceConfig {
    pub amqp_url: String,
    pub amqp_password_file: String,
    pub queue: String,
    /// Used only when the queue does not exist yet and the producer declares it.
    pub queue_type: QueueType,
}

impl Default for ProduceConfig {
    fn default() -> Self {
        Self {
            amqp_url: DEFAULT_AMQP_URL.into(),
            amqp_password_file: String::new(),
            queue: DEFAULT_QUEUE.into(),
            queue_type: QueueType::Classic,
        }
    }
}

impl DaemonConfig for ProduceConfig {
    const ENV_PREFIX: &'static str = "LABMQ_PRODUCE_";

    fn validate(&self) -> Result<(), ConfigError> {
        check_amqp(&self.amqp_url, &self.amqp_password_file)?;
        check_not_empty(&[("queue", &self.queue)])
    }
}

/// Returns the path with a note that it was absent, for `--check-config` output.
pub fn describe_source(file: &ConfigFile) -> String {
    if Path::new(&file.path).exists() {
        file.path.display().to_string()
    } else {
        format!(
            "{} (absent; defaults and environment only)",
            file.path.display()
        )
    }
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; fine in tests.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load_server(path: &str) -> Result<ServerConfig, ConfigError> {
        load::<ServerConfig>(
            &ConfigFile {
                path: path.into(),
                required: false,
            },
            NoOverrides {},
        )
    }

    #[test]
    fn defaults_without_file() {
        Jail::expect_with(|_| {
            let config = load_server("absent.toml").unwrap();
            assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
            assert_eq!(config.max_factorial_n, 100_000);
            assert_eq!(config.ab_a_percent, 50);
            Ok(())
        });
    }

    #[test]
    fn layers_apply_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "server.toml",
                "listen = \"127.0.0.1:6000\"\nmax_factorial_n = 10\n",
            )?;
            jail.set_env("LABMQ_SERVER_MAX_FACTORIAL_N", "20");
            #[derive(Serialize)]
            struct Flags {
                listen: &'static str,
            }
            let config: ServerConfig = load(
                &ConfigFile {
                    path: "server.toml".into(),
                    required: true,
                },
                Flags {
                    listen: "127.0.0.1:7000",
                },
            )
            .unwrap();
            assert_eq!(config.max_factorial_n, 20, "env beats file");
            assert_eq!(
                config.listen.to_string(),
                "127.0.0.1:7000",
                "flag beats file"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file("server.toml", "listn = \"127.0.0.1:1\"\n")?;
            let err = load_server("server.toml").unwrap_err().to_string();
            assert!(err.contains("listn"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_env_key_is_named() {
        Jail::expect_with(|jail| {
            jail.set_env("LABMQ_SERVER_BOGUS", "1");
            let err = load_server("absent.toml").unwrap_err().to_string();
            assert!(err.contains("bogus"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_value_is_named_with_source() {
        Jail::expect_with(|jail| {
            jail.create_file("server.toml", "max_factorial_n = \"lots\"\n")?;
            let err = load_server("server.toml").unwrap_err().to_string();
            assert!(err.contains("max_factorial_n"), "{err}");
            assert!(err.contains("server.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_address_is_named() {
        Jail::expect_with(|jail| {
            jail.set_env("LABMQ_SERVER_LISTEN", "localhost");
            let err = load_server("absent.toml").unwrap_err().to_string();
            assert!(err.contains("LISTEN"), "{err}");
            assert!(err.contains("LABMQ_SERVER_"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn semantic_checks_name_the_key() {
        Jail::expect_with(|jail| {
            jail.create_file("server.toml", "ab_a_percent = 101\n")?;
            let err = load_server("server.toml").unwrap_err().to_string();
            assert!(err.contains("ab_a_percent"), "{err}");
            jail.create_file("server.toml", "log_level = \"loud[\"\n")?;
            let err = load_server("server.toml").unwrap_err().to_string();
            assert!(err.contains("log_level"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        Jail::expect_with(|_| {
            let err = load::<ServerConfig>(
                &ConfigFile {
                    path: "nope.toml".into(),
                    required: true,
                },
                NoOverrides {},
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("nope.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn malformed_toml_is_reported() {
        Jail::expect_with(|jail| {
            jail.create_file("server.toml", "listen = \n")?;
            let err = load_server("server.toml").unwrap_err().to_string();
            assert!(err.contains("server.toml"), "{err}");
            Ok(())
        });
    }

    /// The shipped /etc files list every key, commented out, with its real default.
    fn shipped_file_matches_defaults<T: DaemonConfig>(shipped: &str) {
        let uncommented: String = shipped
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| {
                line.split_once(" = ")
                    .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let from_file: T = Figment::from(Toml::string(&uncommented))
            .extract()
            .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let as_toml = |config: &T| serde_json::to_value(config).unwrap();
        assert_eq!(as_toml(&from_file), as_toml(&T::default()));
        let keys = serde_json::to_value(T::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            assert!(
                uncommented.contains(&format!("{key} = ")),
                "key {key} missing from the shipped file"
            );
        }
    }

    #[test]
    fn unreadable_password_file_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "consumer.toml",
                "amqp_password_file = \"/nonexistent/pw\"\n",
            )?;
            let err = load::<ConsumerConfig>(
                &ConfigFile {
                    path: "consumer.toml".into(),
                    required: true,
                },
                NoOverrides {},
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("amqp_password_file"), "{err}");
            assert!(err.contains("/nonexistent/pw"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn shipped_server_toml_lists_every_key_with_its_default() {
        shipped_file_matches_defaults::<ServerConfig>(include_str!(
            "../../packaging/etc/server.toml"
        ));
    }

    #[test]
    fn shipped_web_toml_lists_every_key_with_its_default() {
        shipped_file_matches_defaults::<WebConfig>(include_str!("../../packaging/etc/web.toml"));
    }

    #[test]
    fn web_config_checks_name_the_key() {
        Jail::expect_with(|jail| {
            let load_web = || {
                load::<WebConfig>(
                    &ConfigFile {
                        path: "web.toml".into(),
                        required: true,
                    },
                    NoOverrides {},
                )
            };
            jail.create_file("web.toml", "")?;
            let config = load_web().unwrap();
            assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(config.results_queue, "labmq-web.results");
            jail.create_file("web.toml", "max_tasks_per_submit = 0\n")?;
            let err = load_web().unwrap_err().to_string();
            assert!(err.contains("max_tasks_per_submit"), "{err}");
            jail.create_file("web.toml", "results_queue = \"task_queue\"\n")?;
            let err = load_web().unwrap_err().to_string();
            assert!(err.contains("results_queue"), "{err}");
            jail.create_file("web.toml", "")?;
            jail.set_env("LABMQ_WEB_SUBMITS_PER_MINUTE", "5");
            assert_eq!(load_web().unwrap().submits_per_minute, 5);
            Ok(())
        });
    }

    #[test]
    fn shipped_consumer_toml_lists_every_key_with_its_default() {
        shipped_file_matches_defaults::<ConsumerConfig>(include_str!(
            "../../packaging/etc/consumer.toml"
        ));
    }
}
