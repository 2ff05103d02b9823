//! The only place that knows about Unix signals: SIGHUP becomes [`Control::Reload`],
//! SIGTERM and SIGINT become [`Control::Shutdown`]. Everything downstream consumes the
//! messages, so tests drive the supervisor exactly as signals do.

use futures::StreamExt;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;

/// What the supervisor is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Read and validate the rule file; apply it if valid.
    Reload,
    /// Stop polling and drain; a second one aborts.
    Shutdown,
}

/// Registers the handlers and forwards signals as [`Control`] messages until the
/// receiver is dropped. Once registered, SIGTERM and SIGINT no longer kill the process:
/// the supervisor must exit on its own.
pub fn forward() -> std::io::Result<mpsc::Receiver<Control>> {
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(signal) = signals.next().await {
            let control = if signal == SIGHUP { Control::Reload } else { Control::Shutdown };
            if tx.send(control).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
