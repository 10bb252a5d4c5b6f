//! `labmq-server`'s configuration (`/etc/labmq/server.toml`, `LABMQ_SERVER_*`) and
//! command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser};
use serde::{Deserialize, Serialize};

use crate::compute::{ab, factorial, frequent_letter};
use crate::daemon::metrics::parse_listen;
use crate::daemon::service::{ConfigError, check_log_level, check_not_empty, check_range, invalid};
use crate::daemon::service::{DaemonArgs, Service};
use crate::tls::configured as set;

/// `labmq-server` (`/etc/labmq/server.toml`, `LABMQ_SERVER_*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
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
    /// Heavy calls that may wait for a compute thread; beyond it, `RESOURCE_EXHAUSTED`.
    pub max_waiting_calls: usize,
    /// Calls in flight at once over all connections; beyond it, `RESOURCE_EXHAUSTED`.
    pub max_calls_in_flight: usize,
    /// Tasks one `ComputeBatch` call may hold; more are refused with `INVALID_ARGUMENT`.
    pub max_batch_tasks: usize,
    /// Time limit of one call, waiting included.
    pub request_timeout_secs: u64,
    /// Open client connections; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Calls in flight on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// How long a new connection may take to send the HTTP/2 preface.
    pub handshake_timeout_secs: u64,
    /// Seconds of silence on a connection before the server pings it.
    pub keepalive_interval_secs: u64,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout_secs: u64,
    /// PEM certificate chain; with `tls_key_file`, gRPC is served over TLS only. Empty:
    /// plaintext.
    pub tls_cert_file: PathBuf,
    /// PEM private key of `tls_cert_file`, readable by its owner only.
    pub tls_key_file: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate it signed (mTLS).
    pub tls_client_ca_file: PathBuf,
    /// Address of the Prometheus `/metrics` listener (plain HTTP); empty: none.
    pub metrics_listen: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            log_level: "info".into(),
            shutdown_grace_secs: 10,
            max_factorial_n: factorial::DEFAULT_MAX_FACTORIAL_N,
            max_text_bytes: frequent_letter::DEFAULT_MAX_TEXT_BYTES,
            ab_salt: ab::DEFAULT_AB_SALT.into(),
            ab_a_percent: ab::DEFAULT_A_PERCENT,
            compute_threads: 0,
            max_waiting_calls: 128,
            max_calls_in_flight: 256,
            max_batch_tasks: 256,
            request_timeout_secs: 60,
            max_connections: 256,
            max_concurrent_streams: 100,
            handshake_timeout_secs: 10,
            keepalive_interval_secs: 60,
            keepalive_timeout_secs: 20,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            tls_client_ca_file: PathBuf::new(),
            metrics_listen: String::new(),
        }
    }
}

impl Service for ServerConfig {
    const NAME: &'static str = "labmq-server";
    const CONFIG_PATH: &'static str = "/etc/labmq/server.toml";
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
        check_range("compute_threads", self.compute_threads, 0, 1024)?;
        check_range("max_waiting_calls", self.max_waiting_calls, 0, 100_000)?;
        // Requests are decoded whole: this times max_text_bytes bounds their memory.
        check_range("max_calls_in_flight", self.max_calls_in_flight, 1, 100_000)?;
        // A batch's answers are bounded per task (texts by the request, factorials by
        // BATCH_FACTORIAL_MAX_N), so this bounds a batch's answer.
        check_range("max_batch_tasks", self.max_batch_tasks, 1, 10_000)?;
        check_range("request_timeout_secs", self.request_timeout_secs, 1, 86_400)?;
        // Each connection is a file descriptor; the unit's LimitNOFILE must leave room.
        check_range("max_connections", self.max_connections, 1, 1_000_000)?;
        check_range(
            "max_concurrent_streams",
            self.max_concurrent_streams,
            1,
            10_000,
        )?;
        check_range(
            "handshake_timeout_secs",
            self.handshake_timeout_secs,
            1,
            3_600,
        )?;
        check_range(
            "keepalive_interval_secs",
            self.keepalive_interval_secs,
            1,
            86_400,
        )?;
        check_range(
            "keepalive_timeout_secs",
            self.keepalive_timeout_secs,
            1,
            3_600,
        )?;
        if set(&self.tls_client_ca_file).is_some() && set(&self.tls_cert_file).is_none() {
            return invalid(
                "tls_client_ca_file",
                "client certificates need TLS: set tls_cert_file and tls_key_file too",
            );
        }
        crate::tls::check_files(
            ("tls_cert_file", set(&self.tls_cert_file)),
            ("tls_key_file", set(&self.tls_key_file)),
            ("tls_client_ca_file", set(&self.tls_client_ca_file)),
        )?;
        let metrics = match parse_listen(&self.metrics_listen) {
            Ok(metrics) => metrics,
            Err(e) => return invalid("metrics_listen", e),
        };
        if metrics.is_some_and(|addr| addr == self.listen && addr.port() != 0) {
            return invalid(
                "metrics_listen",
                format!("{} is the gRPC listen address too", self.listen),
            );
        }
        Ok(())
    }

    fn log_level(&self) -> &str {
        &self.log_level
    }
}

impl ServerConfig {
    /// Where to serve `/metrics`, if anywhere (`validate` has checked the value).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        parse_listen(&self.metrics_listen).ok().flatten()
    }
}

/// The labmq gRPC compute service (package `message`, service `MessageService`).
///
/// Configuration layers, later wins: built-in defaults, the TOML file
/// (/etc/labmq/server.toml or --config), LABMQ_SERVER_* environment variables
/// (e.g. LABMQ_SERVER_LISTEN=0.0.0.0:50051), command-line flags.
/// SIGTERM/SIGINT drain in-flight calls and exit 0; SIGHUP re-reads log_level and the
/// TLS certificate, key and client CA files (rotation without a restart).
/// Exit status: 0 clean stop, 1 runtime failure (e.g. address in use), 78 bad configuration.
#[derive(Debug, Parser)]
#[command(name = "labmq-server", version)]
pub struct ServerArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs<ServerConfig>,
    #[command(flatten)]
    pub flags: ServerFlags,
}

/// Flags that override configuration keys of the same name.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ServerFlags {
    /// Address to listen on (key `listen`) [default: 127.0.0.1:50051]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain to serve gRPC over TLS (key `tls_cert_file`)
    #[arg(long = "tls-cert", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert, mode 600 (key `tls_key_file`)
    #[arg(long = "tls-key", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA that must sign client certificates: requires mTLS (key `tls_client_ca_file`)
    #[arg(long = "tls-client-ca", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (key `metrics_listen`) [default: off]
    #[arg(long = "metrics-listen", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; fine in tests.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use crate::daemon::config::tests::shipped_file_matches_defaults;
    use crate::daemon::config::{ConfigFile, NoOverrides, load};
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
            for (key, value) in [
                ("max_connections", "0"),
                ("max_concurrent_streams", "0"),
                ("handshake_timeout_secs", "0"),
                ("keepalive_interval_secs", "0"),
                ("keepalive_timeout_secs", "0"),
                ("request_timeout_secs", "0"),
                ("max_waiting_calls", "100001"),
                ("max_calls_in_flight", "0"),
                ("max_batch_tasks", "0"),
                ("max_batch_tasks", "10001"),
                ("compute_threads", "1025"),
            ] {
                jail.create_file("server.toml", &format!("{key} = {value}\n"))?;
                let err = load_server("server.toml").unwrap_err().to_string();
                assert!(err.contains(key) && err.contains(value), "{err}");
            }
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

    #[test]
    fn shipped_server_toml_lists_every_key_with_its_default() {
        shipped_file_matches_defaults::<ServerConfig>(include_str!(
            "../../packaging/etc/server.toml"
        ));
    }
}
