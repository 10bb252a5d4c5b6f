//! `labmq-consumer`'s configuration (`/etc/labmq/consumer.toml`, `LABMQ_CONSUMER_*`) and
//! command line.

use std::path::PathBuf;

use clap::{Args, Parser};
use serde::{Deserialize, Serialize};

use crate::amqp::settings::{AmqpSettings, AmqpTlsFlags, PASSWORD_KEY};
use crate::daemon::metrics::parse_listen;
use crate::daemon::service::{ConfigError, check_log_level, check_positive, check_range, invalid};
use crate::daemon::service::{DaemonArgs, Service};
use crate::grpc::client::normalize_target;
use crate::tls::{KeyedPath, TlsError, configured};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumerConfig {
    /// Broker, queue and results exchange (keys `amqp_url`, `queue`, …).
    #[serde(flatten)]
    pub amqp: AmqpSettings,
    /// A durable queue bound to `results_exchange` that keeps every result for callers
    /// who collect them later; empty (the default) declares none, and then a result
    /// published while no queue is bound is confirmed and dropped by the broker.
    pub results_queue: String,
    /// Results `results_queue` keeps at most; beyond it the oldest are dropped.
    pub results_queue_max_length: u32,
    /// gRPC servers; calls are spread over them and skip one that is down.
    pub grpc_targets: Vec<String>,
    /// PEM CA that signs the servers' certificates; set, bare `host:port` targets are
    /// `https://`. Empty: plaintext (an `https://` target then is an error).
    pub grpc_ca_file: PathBuf,
    /// PEM client certificate for servers that require mTLS (with `grpc_key_file`).
    pub grpc_cert_file: PathBuf,
    /// PEM private key of `grpc_cert_file`, readable by its owner only.
    pub grpc_key_file: PathBuf,
    /// Deliveries the broker may push ahead of acks.
    pub prefetch: u16,
    /// Tasks processed at once.
    pub concurrency: usize,
    /// Channels in confirm mode that results are published on, round-robin: the broker
    /// runs each channel as one process, so one channel serialises every publish and
    /// confirm of the consumer.
    pub publish_channels: u16,
    /// HTTP/2 connections to each gRPC server, calls spread round-robin over them: one
    /// connection carries at most the server's max_concurrent_streams calls at once,
    /// and all its frames go through one I/O task.
    pub grpc_connections: u16,
    /// Small tasks (factorials up to 2000, texts up to 1 KiB) sent to a server in one
    /// `ComputeBatch` call at most; 1 sends every task as a call of its own.
    pub grpc_batch_max_tasks: u16,
    /// Larger bodies are dead-lettered unread.
    pub max_body_bytes: usize,
    /// A body with more tasks is dead-lettered before any runs.
    pub max_tasks_per_message: usize,
    /// Result documents of one body may weigh this much in all; a body whose results
    /// would (or do) weigh more is dead-lettered, so one message cannot exhaust memory.
    pub max_result_bytes_per_message: usize,
    /// Calls for one task that the server got but did not answer (deadline exceeded,
    /// overloaded, died mid-call) before the message is dead-lettered. Outages, where the
    /// call never reached a server, do not count: those tasks wait.
    pub max_attempts: u32,
    /// Deliveries of one message, as the broker counts them in `x-delivery-count`
    /// (quorum queues), before the consumer dead-letters it unprocessed (DELIVERY_LIMIT):
    /// a quorum queue drops a message at its own delivery limit (20 by default on
    /// RabbitMQ 4) unless it has a dead-letter target, and every consumer killed or
    /// stopped while holding the message may count as a delivery. Keep it at or below the
    /// queue's delivery-limit; classic queues have no count, so it never applies to them.
    pub delivery_limit: u32,
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
    /// Seconds between the info-level summaries of processed tasks (each task itself is
    /// logged at debug).
    pub log_summary_secs: u64,
    /// Address of the Prometheus `/metrics` listener (plain HTTP); empty: none.
    pub metrics_listen: String,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            amqp: AmqpSettings::default(),
            results_queue: String::new(),
            results_queue_max_length: 100_000,
            grpc_targets: vec!["127.0.0.1:50051".into()],
            grpc_ca_file: PathBuf::new(),
            grpc_cert_file: PathBuf::new(),
            grpc_key_file: PathBuf::new(),
            prefetch: 256,
            concurrency: 128,
            publish_channels: 2,
            grpc_connections: 1,
            grpc_batch_max_tasks: 64,
            max_body_bytes: 2 * 1024 * 1024,
            max_tasks_per_message: 1000,
            max_result_bytes_per_message: 8 * 1024 * 1024,
            max_attempts: 5,
            delivery_limit: 20,
            grpc_timeout_secs: 30,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
            reconnect_max_secs: 10,
            shutdown_grace_secs: 20,
            log_level: "info".into(),
            log_summary_secs: 60,
            metrics_listen: String::new(),
        }
    }
}

impl Service for ConsumerConfig {
    const NAME: &'static str = "labmq-consumer";
    const CONFIG_PATH: &'static str = "/etc/labmq/consumer.toml";
    const ENV_PREFIX: &'static str = "LABMQ_CONSUMER_";
    const RAW_ENV_KEYS: &'static [&'static str] = &[PASSWORD_KEY];

    fn validate(&self) -> Result<(), ConfigError> {
        check_log_level(&self.log_level)?;
        self.amqp.validate()?;
        if !self.results_queue.is_empty() {
            let topology = self.amqp.topology();
            if self.results_queue == topology.queue
                || self.results_queue == topology.dead_letter_queue()
            {
                return invalid(
                    "results_queue",
                    "must differ from the task queue and its dead-letter queue",
                );
            }
        }
        check_positive(
            "results_queue_max_length",
            self.results_queue_max_length.into(),
        )?;
        if self.grpc_targets.is_empty() {
            return invalid("grpc_targets", "needs at least one address");
        }
        for target in &self.grpc_targets {
            if normalize_target(target)
                .parse::<tonic::transport::Uri>()
                .is_err()
            {
                return invalid(
                    "grpc_targets",
                    format!("{target:?} is not host:port or a URL"),
                );
            }
        }
        self.validate_grpc_tls()?;
        check_positive("prefetch", self.prefetch.into())?;
        check_positive("concurrency", self.concurrency as u64)?;
        check_range("publish_channels", self.publish_channels, 1, 64)?;
        check_range("grpc_connections", self.grpc_connections, 1, 64)?;
        // labmq-server's max_batch_tasks is 256 by default; a larger batch it refuses
        // (the tasks then go one call each), so more buys nothing.
        check_range("grpc_batch_max_tasks", self.grpc_batch_max_tasks, 1, 1024)?;
        check_positive("max_body_bytes", self.max_body_bytes as u64)?;
        check_positive("max_tasks_per_message", self.max_tasks_per_message as u64)?;
        check_positive(
            "max_result_bytes_per_message",
            self.max_result_bytes_per_message as u64,
        )?;
        check_positive("max_attempts", self.max_attempts.into())?;
        check_range("delivery_limit", self.delivery_limit, 1, 10_000)?;
        check_positive("grpc_timeout_secs", self.grpc_timeout_secs)?;
        if self.retry_initial_ms == 0 || self.retry_initial_ms > self.retry_max_ms {
            return invalid(
                "retry_initial_ms",
                "must be at least 1 and at most retry_max_ms",
            );
        }
        check_positive("reconnect_max_secs", self.reconnect_max_secs)?;
        check_range("log_summary_secs", self.log_summary_secs, 1, 86_400)?;
        if let Err(e) = parse_listen(&self.metrics_listen) {
            return invalid("metrics_listen", e);
        }
        Ok(())
    }

    fn log_level(&self) -> &str {
        &self.log_level
    }
}

impl ConsumerConfig {
    /// Where to serve `/metrics`, if anywhere (`validate` has checked the value).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        parse_listen(&self.metrics_listen).ok().flatten()
    }

    fn validate_grpc_tls(&self) -> Result<(), ConfigError> {
        let ca = configured(&self.grpc_ca_file);
        if ca.is_none() {
            if let Some(target) = self
                .grpc_targets
                .iter()
                .find(|t| t.trim().starts_with("https://"))
            {
                return invalid(
                    "grpc_ca_file",
                    format!("must be set for the https target {target:?} in grpc_targets"),
                );
            }
            if configured(&self.grpc_cert_file).is_some() {
                return invalid("grpc_ca_file", "must be set with grpc_cert_file (mTLS)");
            }
        }
        crate::tls::check_files(
            ("grpc_cert_file", configured(&self.grpc_cert_file)),
            ("grpc_key_file", configured(&self.grpc_key_file)),
            ("grpc_ca_file", ca),
        )
    }

    /// The TLS side of the gRPC client, `None` for plaintext.
    pub fn grpc_tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, TlsError> {
        let Some(ca) = configured(&self.grpc_ca_file) else {
            return Ok(None);
        };
        let identity = configured(&self.grpc_cert_file)
            .zip(configured(&self.grpc_key_file))
            .map(|(cert, key)| {
                (
                    KeyedPath {
                        key: "grpc_cert_file",
                        path: cert,
                    },
                    KeyedPath {
                        key: "grpc_key_file",
                        path: key,
                    },
                )
            });
        crate::tls::client_config(
            KeyedPath {
                key: "grpc_ca_file",
                path: ca,
            },
            identity,
        )
        .map(Some)
    }
}

/// The labmq queue consumer: takes tasks from RabbitMQ, calls labmq-server, publishes results.
///
/// Every task is acked only after its result is confirmed by the broker; tasks whose gRPC
/// server is unavailable are retried with backoff; bad messages get an error result and go
/// to the dead-letter queue (QUEUE.dead). Configuration layers, later wins: defaults, the
/// TOML file (/etc/labmq/consumer.toml or --config), LABMQ_CONSUMER_* environment variables,
/// command-line flags. SIGTERM drains in-flight tasks and requeues the rest; SIGHUP re-reads
/// log_level. Exit status: 0 clean stop, 1 runtime failure, 78 bad configuration.
#[derive(Debug, Parser)]
#[command(name = "labmq-consumer", version)]
pub struct ConsumerArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs<ConsumerConfig>,
    #[command(flatten)]
    pub flags: ConsumerFlags,
}

/// Flags that override configuration keys of the same name.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ConsumerFlags {
    /// Broker URL; repeat for each node of a cluster (key `amqp_url`) [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long = "amqp-url", value_name = "URL")]
    #[serde(rename = "amqp_url", skip_serializing_if = "Vec::is_empty")]
    pub amqp_url: Vec<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub amqp_tls: AmqpTlsFlags,
    /// Task queue (key `queue`) [default: task_queue]
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// gRPC server address; repeat for several (key `grpc_targets`) [default: 127.0.0.1:50051]
    #[arg(long = "grpc-target", value_name = "ADDR")]
    #[serde(rename = "grpc_targets", skip_serializing_if = "Vec::is_empty")]
    pub grpc_targets: Vec<String>,
    /// PEM CA of the gRPC servers' certificates, for https targets (key `grpc_ca_file`)
    #[arg(long = "grpc-ca", value_name = "FILE")]
    #[serde(rename = "grpc_ca_file", skip_serializing_if = "Option::is_none")]
    pub grpc_ca_file: Option<PathBuf>,
    /// PEM client certificate for mTLS (key `grpc_cert_file`)
    #[arg(long = "grpc-cert", value_name = "FILE")]
    #[serde(rename = "grpc_cert_file", skip_serializing_if = "Option::is_none")]
    pub grpc_cert_file: Option<PathBuf>,
    /// PEM private key of --grpc-cert, mode 600 (key `grpc_key_file`)
    #[arg(long = "grpc-key", value_name = "FILE")]
    #[serde(rename = "grpc_key_file", skip_serializing_if = "Option::is_none")]
    pub grpc_key_file: Option<PathBuf>,
    /// Tasks processed at once (key `concurrency`) [default: 128]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Deliveries prefetched ahead of acks (key `prefetch`) [default: 256]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<u16>,
    /// Serve Prometheus metrics at http://ADDR/metrics (key `metrics_listen`) [default: off]
    #[arg(long = "metrics-listen", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use crate::daemon::config::tests::shipped_file_matches_defaults;
    use crate::daemon::config::{ConfigFile, NoOverrides, load};
    use figment::Jail;

    fn load_consumer() -> Result<ConsumerConfig, ConfigError> {
        load::<ConsumerConfig>(
            &ConfigFile {
                path: "consumer.toml".into(),
                required: true,
            },
            NoOverrides {},
        )
    }

    #[test]
    fn unreadable_password_file_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "consumer.toml",
                "amqp_password_file = \"/nonexistent/pw\"\n",
            )?;
            let err = load_consumer().unwrap_err().to_string();
            assert!(err.contains("amqp_password_file"), "{err}");
            assert!(err.contains("/nonexistent/pw"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn shared_amqp_keys_stay_top_level_and_unknown_keys_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "consumer.toml",
                "amqp_url = \"amqp://u@broker:5673/%2f\"\nqueue = \"jobs\"\nprefetch = 7\n",
            )?;
            let config = load_consumer().unwrap();
            assert_eq!(config.amqp.amqp_url.0, ["amqp://u@broker:5673/%2f"]);
            assert_eq!(config.amqp.queue, "jobs");
            assert_eq!(config.prefetch, 7);
            jail.create_file("consumer.toml", "amqp_uri = \"amqp://h\"\n")?;
            let err = load_consumer().unwrap_err().to_string();
            assert!(
                err.contains("amqp_uri") && err.contains("consumer.toml"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn passwords_are_never_echoed() {
        Jail::expect_with(|jail| {
            jail.create_file("consumer.toml", "amqp_password = 12345678\n")?;
            let err = load_consumer().unwrap_err().to_string();
            assert!(err.contains("amqp_password"), "{err}");
            assert!(!err.contains("12345678"), "{err}");
            jail.create_file("consumer.toml", "")?;
            jail.set_env("LABMQ_CONSUMER_AMQP_PASSWORD", "12345678");
            assert_eq!(
                load_consumer().unwrap().amqp.amqp_password.expose(),
                "12345678"
            );
            Ok(())
        });
    }

    #[test]
    fn bad_shared_value_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file("consumer.toml", "queue_type = \"stream\"\n")?;
            let err = load_consumer().unwrap_err().to_string();
            assert!(err.contains("stream"), "{err}");
            jail.create_file("consumer.toml", "queue = \"\"\n")?;
            let err = load_consumer().unwrap_err().to_string();
            assert!(err.contains("queue"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn publish_channels_and_grpc_connections_outside_1_to_64_are_named() {
        Jail::expect_with(|jail| {
            for key in ["publish_channels", "grpc_connections"] {
                for value in ["0", "65"] {
                    jail.create_file("consumer.toml", &format!("{key} = {value}\n"))?;
                    let err = load_consumer().unwrap_err().to_string();
                    assert!(err.contains(key) && err.contains("1..=64"), "{err}");
                }
                jail.create_file("consumer.toml", &format!("{key} = 64\n"))?;
                assert!(load_consumer().is_ok(), "{key} = 64");
            }
            for value in ["0", "1025"] {
                jail.create_file(
                    "consumer.toml",
                    &format!("grpc_batch_max_tasks = {value}\n"),
                )?;
                let err = load_consumer().unwrap_err().to_string();
                assert!(
                    err.contains("grpc_batch_max_tasks") && err.contains("1..=1024"),
                    "{err}"
                );
            }
            jail.create_file("consumer.toml", "grpc_batch_max_tasks = 1\n")?;
            assert!(load_consumer().is_ok(), "grpc_batch_max_tasks = 1");
            Ok(())
        });
    }

    #[test]
    fn shipped_consumer_toml_lists_every_key_with_its_default() {
        shipped_file_matches_defaults::<ConsumerConfig>(include_str!(
            "../../packaging/etc/consumer.toml"
        ));
    }

    #[test]
    fn amqp_url_is_a_string_or_a_list_in_the_file_and_the_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "consumer.toml",
                "amqp_url = [\"amqp://u@a:5672/%2f\", \"amqp://u@b:5672/%2f\"]\n",
            )?;
            let config = load_consumer().unwrap();
            assert_eq!(
                config.amqp.amqp_url.0,
                ["amqp://u@a:5672/%2f", "amqp://u@b:5672/%2f"]
            );
            jail.create_file("consumer.toml", "")?;
            jail.set_env(
                "LABMQ_CONSUMER_AMQP_URL",
                r#"["amqp://u@c:5672/%2f","amqp://u@d:5672/%2f"]"#,
            );
            let config = load_consumer().unwrap();
            assert_eq!(
                config.amqp.amqp_url.0,
                ["amqp://u@c:5672/%2f", "amqp://u@d:5672/%2f"]
            );
            jail.set_env("LABMQ_CONSUMER_AMQP_URL", "amqp://u:pw@e:5672/%2f");
            let config = load_consumer().unwrap();
            assert_eq!(config.amqp.amqp_url.0, ["amqp://u:pw@e:5672/%2f"]);
            jail.set_env("LABMQ_CONSUMER_AMQP_URL", "[]");
            let err = load_consumer().unwrap_err().to_string();
            assert!(err.contains("amqp_url"), "{err}");
            jail.set_env("LABMQ_CONSUMER_AMQP_URL", "[\"amqp://u@a:nope/\"]");
            let err = load_consumer().unwrap_err().to_string();
            assert!(err.contains("amqp_url") && err.contains("@a:nope"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn repeated_amqp_url_flags_override_the_list() {
        let args = ConsumerArgs::try_parse_from([
            "labmq-consumer",
            "--amqp-url",
            "amqp://a",
            "--amqp-url",
            "amqp://b",
        ])
        .unwrap();
        assert_eq!(args.flags.amqp_url, ["amqp://a", "amqp://b"]);
        let json = serde_json::to_value(&args.flags).unwrap();
        assert_eq!(
            json["amqp_url"],
            serde_json::json!(["amqp://a", "amqp://b"])
        );
        let none = ConsumerArgs::try_parse_from(["labmq-consumer"]).unwrap();
        assert!(
            serde_json::to_value(&none.flags)
                .unwrap()
                .get("amqp_url")
                .is_none()
        );
    }

    #[test]
    fn amqp_tls_flags_and_environment_set_their_keys() {
        let args = ConsumerArgs::try_parse_from([
            "labmq-consumer",
            "--amqp-ca",
            "/etc/labmq/tls/rabbitmq-ca.crt",
            "--amqp-cert",
            "/etc/labmq/tls/consumer.crt",
            "--amqp-key",
            "/etc/labmq/tls/consumer.key",
        ])
        .unwrap();
        let json = serde_json::to_value(&args.flags).unwrap();
        assert_eq!(json["amqp_ca_file"], "/etc/labmq/tls/rabbitmq-ca.crt");
        assert_eq!(json["amqp_cert_file"], "/etc/labmq/tls/consumer.crt");
        assert_eq!(json["amqp_key_file"], "/etc/labmq/tls/consumer.key");
        let none = ConsumerArgs::try_parse_from(["labmq-consumer"]).unwrap();
        let json = serde_json::to_value(&none.flags).unwrap();
        assert!(json.get("amqp_ca_file").is_none(), "{json}");

        Jail::expect_with(|jail| {
            jail.create_file("consumer.toml", "")?;
            jail.set_env("LABMQ_CONSUMER_AMQP_CA_FILE", "/nonexistent/ca.crt");
            let err = load_consumer().unwrap_err().to_string();
            // Read from the environment, then refused: every URL is plain amqp://.
            assert!(
                err.contains("amqp_ca_file") && err.contains("plain amqp://"),
                "{err}"
            );
            Ok(())
        });
    }
}
