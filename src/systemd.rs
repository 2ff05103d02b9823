//! The service manager protocol (sd_notify): READY once the first round is done,
//! RELOADING/READY around each reload, STOPPING on shutdown, and watchdog keep-alives
//! only while every rule keeps polling. Every call is a no-op without `NOTIFY_SOCKET`,
//! so the same binary runs under Docker or a terminal.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::server::HEALTH_SLACK;
use crate::status::Observer;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// `RELOADING=1` with `MONOTONIC_USEC`, which systemd 253+ requires with it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Sends READY=1 once every rule has finished its first poll, then feeds the watchdog
/// (if `WatchdogSec=` is set) at half its period while the daemon is healthy. Runs
/// until `stop`.
pub async fn run(observer: Arc<Observer>, stop: CancellationToken) {
    while observer.first_round().is_err() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    ready(&format!("{} rules running", observer.statuses().len()));
    let Some(period) = sd_notify::watchdog_enabled() else {
        stop.cancelled().await;
        return;
    };
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => match observer.health(HEALTH_SLACK) {
                Ok(()) => send(&[NotifyState::Watchdog]),
                // No keep-alive: if this lasts, systemd restarts us, as intended.
                Err(why) => warn!(%why, "unhealthy; withholding the watchdog keep-alive"),
            },
        }
    }
}
