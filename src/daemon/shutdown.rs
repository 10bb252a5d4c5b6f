//! One shutdown path: SIGTERM and SIGINT trip a single cancellation token that every loop
//! selects on; SIGHUP is delivered separately as a reload request.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub struct Signals {
    /// Cancelled on the first SIGTERM or SIGINT.
    pub shutdown: CancellationToken,
    /// One message per SIGHUP.
    pub reload: mpsc::Receiver<()>,
}

/// Installs the handlers; must run inside the tokio runtime.
pub fn install() -> std::io::Result<Signals> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let shutdown = CancellationToken::new();
    let (reload_tx, reload) = mpsc::channel(1);

    let token = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = terminate.recv() => {
                    tracing::info!("SIGTERM received, shutting down");
                    break;
                }
                _ = interrupt.recv() => {
                    tracing::info!("SIGINT received, shutting down");
                    break;
                }
                _ = hangup.recv() => {
                    // A full channel means a reload is already pending; one is enough.
                    let _ = reload_tx.try_send(());
                }
            }
        }
        token.cancel();
    });
    Ok(Signals { shutdown, reload })
}
