//! `labmq-web`'s configuration (`/etc/labmq/web.toml`, `LABMQ_WEB_*`) and command line.

use std::net::SocketAddr;

use std::time::Duration;

use clap::{Args, Parser};
use serde::{Deserialize, Serialize};

use crate::amqp::settings::{AmqpSettings, AmqpTlsFlags, PASSWORD_KEY};
use crate::daemon::service::{
    ConfigError, check_log_level, check_not_empty, check_positive, invalid,
};
use crate::daemon::service::{DaemonArgs, Service};

/// How long connecting to the broker may take (the ingest's sessions and each submit's
/// publisher).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `labmq-web` (`/etc/labmq/web.toml`, `LABMQ_WEB_*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebConfig {
    /// Address the HTTP listener binds to.
    pub listen: SocketAddr,
    /// Broker, task queue (submits go there) and results exchange (keys `amqp_url`,
    /// `queue`, …).
    #[serde(flatten)]
    pub amqp: AmqpSettings,
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
    /// Submits accepted per minute from one client (its IP address; an IPv6 client by
    /// its /64), so one client cannot spend the whole `submits_per_minute`.
    pub submits_per_minute_per_client: u32,
    /// Most clients whose submit budget is remembered; the least recently seen is
    /// forgotten first.
    pub rate_limit_clients: usize,
    /// Host names (the `Host` header without its port) the page and API answer to,
    /// besides `localhost` and IP addresses: a guard against DNS rebinding. `"*"` turns
    /// the check off.
    pub allowed_hosts: Vec<String>,
    /// Most HTTP connections open at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (also the idle time of a
    /// kept-alive connection), in seconds.
    pub header_timeout_secs: u64,
    /// How long a client may take to send a request's body, in seconds.
    pub body_timeout_secs: u64,
    /// Most results kept in the database; older ones are deleted (0: no limit).
    pub retention_max_rows: u64,
    /// Results stored longer ago than this are deleted, in days (0: no limit).
    pub retention_max_days: u64,
    /// How often retention runs, in seconds.
    pub retention_interval_secs: u64,
    /// `x-max-length` of `results_queue` (with `x-overflow = drop-head`): results that
    /// pile up while labmq-web is stopped are bounded, the oldest dropped first.
    pub results_queue_max_length: u32,
    /// After SIGTERM, how long requests in flight and the results consumer may take to
    /// finish before they are cut off, in seconds.
    pub shutdown_grace_secs: u64,
    /// Results per page of the table and default `limit` of `/api/results`.
    pub page_size: usize,
    /// How long a submit waits for the broker's confirms.
    pub confirm_timeout_secs: u64,
    /// Longest wait between broker reconnection attempts.
    pub reconnect_max_secs: u64,
    pub log_level: String,
    /// Serve Prometheus metrics at `/metrics` on `listen` (behind the same host check).
    pub metrics: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            amqp: AmqpSettings::default(),
            results_queue: "labmq-web.results".into(),
            database: "/var/lib/labmq-web/results.sqlite3".into(),
            max_tasks_per_submit: 100,
            max_body_bytes: 64 * 1024,
            submits_per_minute: 120,
            submits_per_minute_per_client: 30,
            rate_limit_clients: 4096,
            allowed_hosts: Vec::new(),
            max_connections: 256,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            retention_max_rows: 1_000_000,
            retention_max_days: 90,
            retention_interval_secs: 300,
            results_queue_max_length: 100_000,
            shutdown_grace_secs: 10,
            page_size: 50,
            confirm_timeout_secs: 10,
            reconnect_max_secs: 10,
            log_level: "info".into(),
            metrics: false,
        }
    }
}

impl Service for WebConfig {
    const NAME: &'static str = "labmq-web";
    const CONFIG_PATH: &'static str = "/etc/labmq/web.toml";
    const ENV_PREFIX: &'static str = "LABMQ_WEB_";
    const RAW_ENV_KEYS: &'static [&'static str] = &[PASSWORD_KEY];

    fn validate(&self) -> Result<(), ConfigError> {
        check_log_level(&self.log_level)?;
        self.amqp.validate()?;
        check_not_empty(&[
            ("results_queue", &self.results_queue),
            ("database", &self.database),
        ])?;
        if self.results_queue == self.amqp.queue {
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
        if self.submits_per_minute_per_client == 0 {
            return invalid("submits_per_minute_per_client", "must be at least 1");
        }
        if !(1..=1_000_000).contains(&self.rate_limit_clients) {
            return invalid("rate_limit_clients", "must be between 1 and 1000000");
        }
        for host in &self.allowed_hosts {
            if host.is_empty() || host.contains(['/', ' ', '@']) {
                return invalid(
                    "allowed_hosts",
                    format!("{host:?} is not a host name (no port, scheme or path)"),
                );
            }
        }
        if !(1..=65_536).contains(&self.max_connections) {
            return invalid("max_connections", "must be between 1 and 65536");
        }
        check_positive("header_timeout_secs", self.header_timeout_secs)?;
        check_positive("body_timeout_secs", self.body_timeout_secs)?;
        check_positive("retention_interval_secs", self.retention_interval_secs)?;
        if self.retention_max_days > 36_500 {
            return invalid("retention_max_days", "must be at most 36500 (0: no limit)");
        }
        if self.results_queue_max_length == 0 {
            return invalid("results_queue_max_length", "must be at least 1");
        }
        if self.shutdown_grace_secs > 300 {
            return invalid("shutdown_grace_secs", "must be at most 300");
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

    fn log_level(&self) -> &str {
        &self.log_level
    }
}

/// The labmq web page and JSON API: submit tasks, browse their results.
///
/// GET / shows a form that publishes tasks to the task queue (with publisher confirms)
/// and a table of stored results that updates itself. Results come from labmq-web's own
/// durable queue bound to the results exchange and are stored in SQLite, one row per
/// result id. JSON API: POST /api/tasks, GET /api/results, GET /api/results/ID,
/// GET /healthz. Configuration layers, later wins: defaults, the TOML file
/// (/etc/labmq/web.toml or --config), LABMQ_WEB_* environment variables, command-line
/// flags. READY=1 once the HTTP listener is bound (stored results can be browsed without
/// a broker); the status line says whether the broker is connected. SIGTERM stops
/// cleanly; SIGHUP re-reads log_level. Exit status: 0 clean stop, 1 runtime failure
/// (e.g. address in use, database not writable), 78 bad configuration.
#[derive(Debug, Parser)]
#[command(name = "labmq-web", version)]
pub struct WebArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs<WebConfig>,
    #[command(flatten)]
    pub flags: WebFlags,
}

/// Flags that override configuration keys of the same name.
#[derive(Debug, Clone, Args, Serialize)]
pub struct WebFlags {
    /// Address to listen on (key `listen`) [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Broker URL; repeat for each node of a cluster (key `amqp_url`) [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long = "amqp-url", value_name = "URL")]
    #[serde(rename = "amqp_url", skip_serializing_if = "Vec::is_empty")]
    pub amqp_url: Vec<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub amqp_tls: AmqpTlsFlags,
    /// SQLite database file (key `database`) [default: /var/lib/labmq-web/results.sqlite3]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use crate::daemon::config::tests::shipped_file_matches_defaults;
    use crate::daemon::config::{ConfigFile, NoOverrides, load};
    use figment::Jail;

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
}
