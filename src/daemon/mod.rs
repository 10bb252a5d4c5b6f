//! Generic daemon plumbing, shared by every labmq program and importing none of them:
//!
//! - [`service`]: the [`Service`](service::Service) trait a program's config implements
//!   (name, config path, env prefix, validation, log level) and the shared
//!   `--config`/`--check-config` flags;
//! - [`config`]: the figment loader (defaults < TOML < environment < flags, unknown keys
//!   rejected, secrets read raw);
//! - [`run`]: the runner every daemon's `main` calls: config, logging, signals, SIGHUP
//!   reload, exit codes;
//! - [`logging`], [`shutdown`], [`systemd`]: journald or stderr logs, the one cancellation
//!   token, sd_notify;
//! - [`backoff`]: the capped, jittered delays of retries and reconnects;
//! - [`http`]: the bounded HTTP/1 listener (connection cap, header timeout, bounded
//!   shutdown) of labmq-web and of the metrics exporter;
//! - [`metrics`]: the Prometheus registry (with the `process_*` metrics) and the
//!   `/metrics` exporter behind `metrics_listen`.

pub(crate) mod backoff;
pub(crate) mod config;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod run;
pub mod service;
pub(crate) mod shutdown;
pub(crate) mod systemd;
