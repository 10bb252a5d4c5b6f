//! The reconnecting session driver that labmq-consumer and labmq-web's results ingest
//! both run: connect (bounded in time, raced against shutdown), hand the connection to
//! the program's [`Session`], close it (bounded) when the session ends, and after a loss
//! wait with backoff and start again, until shutdown.
//!
//! Outages are logged once: the first failure of an outage at warn, repeats of the same
//! error at debug. A session that served for [`HEALTHY_AFTER`] resets the backoff, so
//! the next outage starts with short waits again.

use std::future::Future;
use std::time::{Duration, Instant};

use lapin::Connection;
use tokio_util::sync::CancellationToken;

use super::AmqpError;
use super::settings::AmqpTarget;
use crate::daemon::backoff;
use crate::daemon::logging::error_chain;

/// How long each broker operation of a closing session may take, so a broker that stopped
/// answering cannot keep the process from exiting (the broker requeues whatever is
/// unacked when the connection goes anyway).
pub const CLOSE_BOUND: Duration = Duration::from_secs(5);
/// A session that lasted this long was healthy: the next outage starts a fresh backoff.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// The first wait before a reconnect.
const FIRST_DELAY: Duration = Duration::from_millis(500);

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was requested and the session has finished its own drain.
    Shutdown,
    /// The connection or subscription was lost after the session was set up.
    Lost(String),
}

/// What the driver reports about the link, for a program's status line.
#[derive(Debug, Clone, Copy)]
pub enum Link<'a> {
    Connecting,
    /// Waiting to reconnect after `reason`.
    Reconnecting {
        reason: &'a str,
    },
}

/// A program's work on one connection.
pub trait Session: Send {
    /// Sets up (topology, prefetch, consume) and works until `shutdown` (after draining
    /// in-flight work) or until the connection is lost. An `Err` means setting up failed.
    fn run(
        &mut self,
        connection: &Connection,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<SessionEnd, AmqpError>> + Send;

    /// The link changed state; the session itself reports when it is serving.
    fn link(&self, _state: Link<'_>) {}
}

/// Settings of the driver.
pub struct Driver<'a> {
    pub target: &'a AmqpTarget,
    /// The connection's name in the management UI: the program's name.
    pub client_name: &'a str,
    pub connect_timeout: Duration,
    /// The longest wait between reconnects.
    pub reconnect_max: Duration,
}

impl Driver<'_> {
    /// Runs sessions until `shutdown`.
    pub async fn run(&self, session: &mut impl Session, shutdown: &CancellationToken) {
        let mut delays = backoff::delays(FIRST_DELAY, self.reconnect_max);
        let mut outage: Option<String> = None;
        let broker = self.target.redacted();
        while !shutdown.is_cancelled() {
            session.link(Link::Connecting);
            let connected = tokio::select! {
                () = shutdown.cancelled() => break,
                connected = self.target.connect(self.client_name, self.connect_timeout) => connected,
            };
            let started = Instant::now();
            let end = match connected {
                Ok(connection) => {
                    // Which node serves, for operators following a failover (the
                    // password is never part of it).
                    let node = self.target.serving();
                    tracing::info!(node = %node, nodes = self.target.node_count(), "connected to RabbitMQ node {node}");
                    let end = session.run(&connection, shutdown).await;
                    close(&connection, self.client_name).await;
                    end
                }
                Err(e) => Err(e),
            };
            let reason = match end {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::Lost(reason)) => {
                    let reason = format!("lost node {}: {reason}", self.target.serving());
                    // It was serving: whatever comes next is a new outage.
                    outage = None;
                    if started.elapsed() >= HEALTHY_AFTER {
                        delays = backoff::delays(FIRST_DELAY, self.reconnect_max);
                    }
                    reason
                }
                Err(e) => error_chain(&e),
            };
            if outage.as_deref() != Some(reason.as_str()) {
                tracing::warn!(broker = %broker, error = %reason, "broker unavailable; reconnecting with backoff: {reason}");
            } else {
                tracing::debug!(error = %reason, "reconnect attempt failed");
            }
            session.link(Link::Reconnecting { reason: &reason });
            outage = Some(reason);
            let delay = delays.next().unwrap_or(self.reconnect_max);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Runs one closing step with [`CLOSE_BOUND`], logging a failure or time-out.
pub async fn bounded_step<T>(what: &str, step: impl Future<Output = Result<T, lapin::Error>>) {
    match tokio::time::timeout(CLOSE_BOUND, step).await {
        Ok(Ok(_)) => tracing::debug!("{what}: done"),
        Ok(Err(e)) => tracing::debug!(error = %e, "{what} failed"),
        Err(_) => tracing::warn!("{what}: no answer from the broker within {CLOSE_BOUND:?}"),
    }
}

async fn close(connection: &Connection, client_name: &str) {
    if !connection.status().connected() {
        return;
    }
    bounded_step(
        "closing the broker connection",
        connection.close(200, format!("{client_name} closing").into()),
    )
    .await;
}
