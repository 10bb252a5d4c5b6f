//! The consumer's state as operators see it: one `STATUS=` line for systemd, and one log
//! line per change of state (never one per retry).

use std::sync::Mutex;

use crate::daemon::systemd;

#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    broker: String,
    grpc_down: Option<String>,
}

pub struct StatusBoard {
    state: Mutex<State>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                broker: "starting".into(),
                grpc_down: None,
            }),
        }
    }
}

impl StatusBoard {
    fn update(&self, change: impl FnOnce(&mut State)) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let before = state.clone();
        change(&mut state);
        if *state != before {
            systemd::status(&render(&state));
        }
    }

    /// What the broker side is doing, e.g. "consuming from task_queue".
    pub fn broker(&self, text: impl Into<String>) {
        let text = text.into();
        self.update(|s| s.broker = text);
    }

    /// A gRPC call failed transiently; logs only the first failure of an outage.
    pub fn grpc_unavailable(&self, error: &str) {
        self.update(|s| {
            if s.grpc_down.is_none() {
                tracing::warn!(
                    error,
                    "gRPC server unavailable; holding tasks and retrying with backoff"
                );
            }
            s.grpc_down = Some(error.to_owned());
        });
    }

    pub fn grpc_available(&self) {
        self.update(|s| {
            if s.grpc_down.take().is_some() {
                tracing::info!("gRPC server reachable again; resuming");
            }
        });
    }

    pub fn line(&self) -> String {
        self.state.lock().map(|s| render(&s)).unwrap_or_default()
    }
}

fn render(state: &State) -> String {
    match &state.grpc_down {
        None => state.broker.clone(),
        Some(error) => format!(
            "{}; gRPC server unavailable, retrying ({error})",
            state.broker
        ),
    }
}
