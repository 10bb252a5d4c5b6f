//! systemd notifications (sd_notify): READY, STOPPING, RELOADING, STATUS and watchdog pings,
//! and the listening socket of socket activation. Outside systemd (`NOTIFY_SOCKET` and
//! `LISTEN_FDS` unset) every call is a no-op.
//!
//! The last `STATUS=` line is remembered, so that the end of a reload (which systemd
//! reports with READY=1) can repeat the daemon's own status instead of replacing it.

use std::sync::Mutex;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

static LAST_STATUS: Mutex<String> = Mutex::new(String::new());

fn remember(status: &str) {
    if let Ok(mut last) = LAST_STATUS.lock() {
        status.clone_into(&mut last);
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

pub fn ready(status: &str) {
    remember(status);
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping(status: &str) {
    remember(status);
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    remember(status);
    send(&[NotifyState::Status(status)]);
}

/// Sent before re-reading config on SIGHUP; `reloaded` ends it.
pub fn reloading() {
    // systemd >= 253 wants MONOTONIC_USEC with RELOADING=1; older ones ignore it.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Ends a reload, repeating the last status line.
pub fn reloaded() {
    let last = LAST_STATUS.lock().map(|s| s.clone()).unwrap_or_default();
    send(&[NotifyState::Ready, NotifyState::Status(&last)]);
}

/// Pings the watchdog at half its interval while `shutdown` is not cancelled, when the unit
/// sets `WatchdogSec=`. The pings come from the runtime, so a wedged runtime stops them and
/// systemd restarts the service.
pub fn spawn_watchdog(shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = interval / 2;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    });
}

/// The listening TCP socket systemd passed to this process (socket activation,
/// `LISTEN_FDS`), or `None` when it passed none. systemd keeps that socket open while the
/// service restarts, so connections made meanwhile wait in its backlog instead of being
/// refused.
pub fn activated_tcp_listener() -> Result<Option<std::net::TcpListener>, ActivationError> {
    let mut fds = listenfd::ListenFd::from_env();
    match fds.len() {
        0 => Ok(None),
        1 => {
            let listener = fds
                .take_tcp_listener(0)
                .map_err(ActivationError::NotTcp)?
                .ok_or(ActivationError::Count(0))?;
            listener
                .set_nonblocking(true)
                .map_err(ActivationError::NotTcp)?;
            Ok(Some(listener))
        }
        count => Err(ActivationError::Count(count)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error(
        "systemd passed {0} sockets (LISTEN_FDS); exactly one ListenStream= is expected in the socket unit"
    )]
    Count(usize),
    #[error("the socket systemd passed is not a listening TCP socket (ListenStream=HOST:PORT)")]
    NotTcp(#[source] std::io::Error),
}
