//! labmq-web's state for `STATUS=` and `/healthz`.

use std::net::SocketAddr;
use std::sync::Mutex;

use crate::daemon::systemd;

/// What the daemon is doing, for `STATUS=` and `/healthz`: the listener's address and the
/// state of the results consumer. A change sends one `STATUS=` line (the outage itself is
/// logged by the session driver).
pub struct Status {
    listen: Mutex<Option<SocketAddr>>,
    broker: Mutex<(bool, String)>,
    /// The last failed write of results, until one succeeds.
    database: Mutex<Option<String>>,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            listen: Mutex::new(None),
            broker: Mutex::new((false, "broker: starting".into())),
            database: Mutex::new(None),
        }
    }
}

impl Status {
    pub fn set_listen(&self, addr: SocketAddr) {
        if let Ok(mut listen) = self.listen.lock() {
            *listen = Some(addr);
        }
    }

    /// Records the broker side's state; `connected` is what `/healthz` reports.
    pub fn broker(&self, connected: bool, text: impl Into<String>) {
        let text = text.into();
        let changed = match self.broker.lock() {
            Ok(mut broker) if *broker != (connected, text.clone()) => {
                *broker = (connected, text);
                true
            }
            _ => false,
        };
        if changed {
            systemd::status(&self.line());
        }
    }

    /// Records whether the last write of results failed (`Some(error)`) or worked.
    pub fn database_write(&self, failure: Option<String>) {
        let changed = match self.database.lock() {
            Ok(mut database) if *database != failure => {
                *database = failure;
                true
            }
            _ => false,
        };
        if changed {
            systemd::status(&self.line());
        }
    }

    /// The error of the last write of results, if it failed.
    pub fn database_failure(&self) -> Option<String> {
        self.database.lock().ok().and_then(|d| d.clone())
    }

    /// `(connected, description)` of the broker side.
    pub fn broker_state(&self) -> (bool, String) {
        self.broker
            .lock()
            .map(|b| b.clone())
            .unwrap_or((false, "unknown".into()))
    }

    /// `serving on ADDR; broker: …`.
    pub fn line(&self) -> String {
        let listen = self.listen.lock().ok().and_then(|l| *l);
        let mut broker = self.broker_state().1;
        if let Some(error) = self.database_failure() {
            broker = format!("{broker}; database failing: {error}");
        }
        match listen {
            Some(addr) => format!("serving on {addr}; {broker}"),
            None => broker,
        }
    }
}
