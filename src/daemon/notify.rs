//! systemd notifications through `sd-notify` (each does nothing where `NOTIFY_SOCKET` is
//! unset): READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

use sd_notify::NotifyState;
use tracing::debug;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed.");
    }
}

/// The state is open, the server listens and the scheduler runs.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A line for `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The scheduler loop is alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The drain is done; the process exits.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("Stopped")]);
}
