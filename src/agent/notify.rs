//! The seam to the service manager: [`Notifier`] sends readiness, status
//! and watchdog notices; [`SdNotifier`] speaks `sd_notify(3)`,
//! [`RecordingNotifier`] records them for tests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A message to the service manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Start-up (or a reload) finished.
    Ready,
    /// A reload started (sent with `MONOTONIC_USEC`).
    Reloading,
    /// Shutdown started.
    Stopping,
    /// The monitor loop made progress.
    Watchdog,
    /// One-line state for `systemctl status`.
    Status(String),
}

/// Where notifications go.
pub trait Notifier: Send + Sync {
    /// Sends the notices in one message.
    fn notify(&self, notices: &[Notice]);
}

/// Sends nothing (the `--once` run, tests that don't look).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNotifier;

impl Notifier for NoNotifier {
    fn notify(&self, _: &[Notice]) {}
}

/// `sd_notify(3)` to `$NOTIFY_SOCKET`; does nothing when it is unset.
#[derive(Debug, Default, Clone, Copy)]
pub struct SdNotifier;

impl Notifier for SdNotifier {
    fn notify(&self, notices: &[Notice]) {
        use sd_notify::NotifyState as S;
        let mono = if notices.contains(&Notice::Reloading) {
            sd_notify::NotifyState::monotonic_usec_now().ok()
        } else {
            None
        };
        let mut states: Vec<S<'_>> = notices
            .iter()
            .map(|n| match n {
                Notice::Ready => S::Ready,
                Notice::Reloading => S::Reloading,
                Notice::Stopping => S::Stopping,
                Notice::Watchdog => S::Watchdog,
                Notice::Status(s) => S::Status(s),
            })
            .collect();
        states.extend(mono);
        if let Err(e) = sd_notify::notify(&states) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }
}

/// Records every notice with the time it was sent (for tests).
#[derive(Debug, Default)]
pub struct RecordingNotifier {
    log: Mutex<Vec<(Instant, Notice)>>,
}

impl RecordingNotifier {
    pub fn new() -> Arc<RecordingNotifier> {
        Arc::new(RecordingNotifier::default())
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<(Instant, Notice)> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Times of the watchdog pings so far.
    pub fn pings(&self) -> Vec<Instant> {
        self.events()
            .into_iter()
            .filter(|(_, n)| *n == Notice::Watchdog)
            .map(|(t, _)| t)
            .collect()
    }
}

impl Notifier for RecordingNotifier {
    fn notify(&self, notices: &[Notice]) {
        let now = Instant::now();
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.extend(notices.iter().map(|n| (now, n.clone())));
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this PID).
/// At most a day: the reconciler's timers are computed from it.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d.min(crate::core::config::MAX_DURATION))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorder_records_in_order() {
        let r = RecordingNotifier::new();
        r.notify(&[Notice::Ready, Notice::Watchdog]);
        r.notify(&[Notice::Watchdog]);
        assert_eq!(r.pings().len(), 2);
        assert_eq!(r.events()[0].1, Notice::Ready);
    }
}
