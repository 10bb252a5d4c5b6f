//! Daemon plumbing shared by every labmq service: configuration layers, logging,
//! systemd notifications and the one shutdown path.

pub mod config;
pub mod logging;
pub mod run;
pub mod shutdown;
pub mod systemd;
