//! The consumer's state as operators see it: one `STATUS=` line for systemd, and one log
//! line per change of state (never one per retry).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::daemon::systemd;

#[derive(Debug)]
struct State {
    broker: String,
    /// The first error of the current gRPC outage, if there is one.
    grpc_down: Option<String>,
    /// When `grpc_down` last changed. A call that started before it reports on the
    /// previous state (e.g. an answer that was already on its way when the server died)
    /// and must not flip the state back.
    grpc_changed_at: Instant,
    /// Deliveries whose handling panicked since start (each was dead-lettered).
    panics: u64,
}

pub struct StatusBoard {
    state: Mutex<State>,
    notifier: Notifier,
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                broker: "starting".into(),
                grpc_down: None,
                grpc_changed_at: Instant::now(),
                panics: 0,
            }),
            notifier: Notifier::spawn(),
        }
    }
}

impl StatusBoard {
    /// What the broker side is doing, e.g. "consuming from task_queue".
    pub fn broker(&self, text: impl Into<String>) {
        let text = text.into();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.broker != text {
            state.broker = text;
            self.notifier.post(render(&state));
        }
    }

    /// A gRPC call that started at `call_started` failed transiently; logs only the first
    /// failure of an outage.
    pub fn grpc_unavailable(&self, error: &str, call_started: Instant) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.grpc_down.is_some() || call_started < state.grpc_changed_at {
            return;
        }
        tracing::warn!(
            error,
            "gRPC server unavailable; holding tasks and retrying with backoff"
        );
        state.grpc_down = Some(error.to_owned());
        state.grpc_changed_at = Instant::now();
        self.notifier.post(render(&state));
    }

    /// A gRPC call that started at `call_started` got an answer.
    pub fn grpc_available(&self, call_started: Instant) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.grpc_down.is_none() || call_started < state.grpc_changed_at {
            return;
        }
        tracing::info!("gRPC server reachable again; resuming");
        state.grpc_down = None;
        state.grpc_changed_at = Instant::now();
        self.notifier.post(render(&state));
    }

    /// Handling one delivery panicked: counted, and shown in the status line from then
    /// on, since a panic is a bug an operator should hear about.
    pub fn panicked(&self) -> u64 {
        let Ok(mut state) = self.state.lock() else {
            return 0;
        };
        state.panics += 1;
        self.notifier.post(render(&state));
        state.panics
    }

    pub fn line(&self) -> String {
        self.state.lock().map(|s| render(&s)).unwrap_or_default()
    }
}

fn render(state: &State) -> String {
    let mut line = match &state.grpc_down {
        None => state.broker.clone(),
        Some(error) => format!(
            "{}; gRPC server unavailable, retrying ({error})",
            state.broker
        ),
    };
    if state.panics > 0 {
        line.push_str(&format!(
            "; {} message(s) dead-lettered after a panic",
            state.panics
        ));
    }
    line
}

/// Sends STATUS= lines from a thread of its own, newest only, so no task (and no lock
/// holder) ever waits on the service manager's socket.
struct Notifier {
    latest: Arc<(Mutex<Option<String>>, Condvar)>,
}

impl Notifier {
    fn spawn() -> Self {
        let latest = Arc::new((Mutex::new(None::<String>), Condvar::new()));
        let shared = latest.clone();
        let spawned = std::thread::Builder::new()
            .name("labmq-status".into())
            .spawn(move || {
                let (slot, wake) = &*shared;
                loop {
                    let line = {
                        let Ok(mut pending) = slot.lock() else {
                            return;
                        };
                        loop {
                            if let Some(line) = pending.take() {
                                break line;
                            }
                            pending = match wake.wait(pending) {
                                Ok(pending) => pending,
                                Err(_) => return,
                            };
                        }
                    };
                    systemd::status(&line);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no status thread; systemd will not see status changes");
        }
        Self { latest }
    }

    fn post(&self, line: String) {
        let (slot, wake) = &*self.latest;
        if let Ok(mut pending) = slot.lock() {
            *pending = Some(line);
            wake.notify_one();
        }
    }
}
