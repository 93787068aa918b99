//! Running as a systemd service: readiness and watchdog notifications,
//! signals, config reload and orderly shutdown.
//!
//! - [`Notifier`] is the seam to the service manager: [`SdNotifier`] sends
//!   `sd_notify` datagrams, [`RecordingNotifier`] records them for tests.
//! - The monitor (not a timer) pings the watchdog after each completed cycle
//!   and on its own watchdog tick, so a hung libvirt call stops the pings
//!   and systemd restarts the agent.
//! - [`run`] waits for signals: SIGHUP re-reads and validates the config
//!   ([`load_checked`]) and hands the result to the monitor; SIGTERM/SIGINT
//!   let the current cycle finish, persist state and return.

use crate::config::Config;
use crate::host::Host;
use crate::monitor::{Handle, Status};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

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
/// At most a day: the monitor's timers are computed from it.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d.min(crate::config::MAX_DURATION))
}

/// Command-line settings that override the file and must survive a reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub libvirt_uri: Option<String>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(uri) = &self.libvirt_uri {
            cfg.agent.libvirt_uri.clone_from(uri);
        }
    }
}

/// Reads the config file, applies the overrides and checks the budgets
/// against this host: what start-up and SIGHUP both do. The error is one
/// line naming the file, the key and the problem.
pub fn load_checked(path: &Path, overrides: &Overrides) -> Result<Config, String> {
    let mut cfg = Config::load(path).map_err(|e| e.to_string())?;
    overrides.apply(&mut cfg);
    let mut host = Host::new().map_err(|e| e.to_string())?;
    cfg.check_host(&host.refresh()).map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Settings a reload cannot change in a running agent (they are bound at
/// start): the differences, for a warning.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.agent, &new.agent);
    let mut out = Vec::new();
    if a.libvirt_uri != b.libvirt_uri {
        out.push("agent.libvirt_uri");
    }
    if a.state_dir != b.state_dir {
        out.push("agent.state_dir");
    }
    if a.socket != b.socket {
        out.push("api.socket");
    }
    if a.api_group != b.api_group {
        out.push("api.group");
    }
    if a.metrics_listen != b.metrics_listen {
        out.push("agent.metrics_listen");
    }
    if a.resync_interval != b.resync_interval {
        out.push("agent.resync_interval");
    }
    if a.audit_max_bytes != b.audit_max_bytes {
        out.push("agent.audit_max_size");
    }
    if a.audit_keep != b.audit_keep {
        out.push("agent.audit_keep");
    }
    out
}

/// Puts the running values of the settings bound at start (see
/// [`restart_only_changes`]) into a reloaded config: the new values take
/// effect on restart; until then the agent and its status show the ones
/// in use (a reload that changed `agent.libvirt_uri` showed the new URI
/// while the old connection ran).
pub fn keep_restart_only(old: &Config, new: &mut Config) {
    let (a, b) = (&old.agent, &mut new.agent);
    b.libvirt_uri.clone_from(&a.libvirt_uri);
    b.state_dir.clone_from(&a.state_dir);
    b.socket.clone_from(&a.socket);
    b.api_group.clone_from(&a.api_group);
    b.metrics_listen = a.metrics_listen;
    b.resync_interval = a.resync_interval;
    b.audit_max_bytes = a.audit_max_bytes;
    b.audit_keep = a.audit_keep;
}

/// One-line summary of a status, for `STATUS=` and logs.
pub fn summary(st: &Status) -> String {
    let mut s = format!("cycle {}", st.cycle);
    if let Some(plan) = &st.plan {
        let managed: usize = plan.pools.iter().map(|p| p.members.len()).sum();
        s.push_str(&format!(
            ": {} pools, {} members, {} unmanaged",
            plan.pools.len(),
            managed,
            plan.unmanaged.len()
        ));
    }
    if let Some(c) = &st.last_cycle {
        s.push_str(&format!(
            "; {} changes, {} failed, {:.0} ms",
            c.actions - c.failed,
            c.failed,
            c.duration_ms
        ));
    }
    s.push_str(match st.mode {
        crate::config::Mode::Enforce => "; enforce",
        crate::config::Mode::Observe => "; observe",
    });
    if st.paused {
        s.push_str(" (paused)");
    }
    if st.libvirt.connected {
        s.push_str("; libvirt up");
    } else {
        s.push_str("; libvirt DOWN");
        if let Some(e) = &st.libvirt.error {
            s.push_str(&format!(" ({e})"));
        }
    }
    if let Some(e) = &st.config_error {
        s.push_str(&format!("; config error: {e}"));
    }
    // STATUS= is one line.
    s.replace('\n', " ")
}

/// How long shutdown waits for the cycle in progress before giving up on
/// it (below the unit's `TimeoutStopSec=30s`, so state is still persisted).
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// What a reload swapped in (see [`reload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The file read.
    pub file: PathBuf,
    /// Changed settings that apply only on restart (kept as they were).
    pub restart_only: Vec<String>,
}

/// A reload asked for through the API (`POST /v1/reload`): the reply is
/// what [`reload`] gave, `Err` with the reason when the file was refused.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<ReloadReport, String>>;

/// What [`run`] needs.
pub struct ServiceParts {
    pub handle: Handle,
    /// The monitor task.
    pub monitor: tokio::task::JoinHandle<()>,
    /// Cancels the monitor (and anything else that watches it: the API).
    pub shutdown: CancellationToken,
    pub notifier: Arc<dyn Notifier>,
    pub config_path: PathBuf,
    pub overrides: Overrides,
    /// Applies a reloaded `log_level`.
    pub log: Option<crate::observability::LogControl>,
    /// Reloads asked for through the API (besides SIGHUP).
    pub reloads: Option<tokio::sync::mpsc::Receiver<ReloadRequest>>,
}

/// Waits until the monitor has published its first cycle.
pub async fn first_cycle(handle: &Handle) {
    let mut rx = handle.status.clone();
    // Err only if the monitor is gone; then there is nothing to wait for.
    let _ = rx.wait_for(|st| st.cycle > 0).await;
}

/// Sends READY=1 with the current status line.
pub fn ready(notifier: &dyn Notifier, handle: &Handle) {
    notifier.notify(&[Notice::Ready, Notice::Status(summary(&handle.status()))]);
}

/// Handles one reload (SIGHUP or the API): RELOADING=1, validate, hand
/// the result to the monitor (which swaps it in or records the refusal),
/// READY=1. Returns what was swapped in, or why the file was refused.
pub async fn reload(parts: &ServiceParts) -> Result<ReloadReport, String> {
    parts.notifier.notify(&[Notice::Reloading]);
    let mut result = load_checked(&parts.config_path, &parts.overrides);
    let mut report = ReloadReport {
        file: parts.config_path.clone(),
        restart_only: Vec::new(),
    };
    match &mut result {
        Ok(new) => {
            let old = parts.handle.config();
            let fixed = restart_only_changes(&old, new);
            if !fixed.is_empty() {
                tracing::warn!(keys = ?fixed, "these settings change only on restart");
            }
            report.restart_only = fixed.iter().map(|k| k.to_string()).collect();
            keep_restart_only(&old, new);
            if new.pools.is_empty() && !old.pools.is_empty() {
                tracing::warn!(
                    dropped = ?old.pools.keys().collect::<Vec<_>>(),
                    "the reloaded config has no pools: their members are unmanaged from now on"
                );
            }
            if old.agent.log_level != new.agent.log_level {
                if let Some(log) = &parts.log {
                    if let Err(e) = log.set_level(new.agent.log_level.as_deref()) {
                        tracing::warn!(error = %e, "log_level not applied");
                    }
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "reload refused: keeping the running config"),
    }
    let outcome = match &result {
        Ok(_) => Ok(report),
        Err(e) => Err(e.clone()),
    };
    parts.handle.reload_checked(result).await;
    parts.notifier.notify(&[
        Notice::Ready,
        Notice::Status(summary(&parts.handle.status())),
    ]);
    outcome
}

/// Signal loop until SIGTERM/SIGINT, then the orderly stop: STOPPING=1,
/// cancel (the API stops accepting, the monitor finishes its cycle), wait
/// up to [`STOP_GRACE`], persist the runtime state.
pub async fn run(mut parts: ServiceParts) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut reloads = parts.reloads.take();
    loop {
        // A reload waits for the monitor to take it; a hung monitor must
        // not make the agent deaf to SIGTERM.
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tokio::select! {
                    _ = reload(&parts) => {}
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                }
            }
            req = async {
                match reloads.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(reply) = req else {
                    reloads = None;
                    continue;
                };
                tokio::select! {
                    r = reload(&parts) => { let _ = reply.send(r); }
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                }
            }
        }
    }
    stop(parts).await;
    Ok(())
}

/// The orderly stop (also used by tests without signals).
pub async fn stop(parts: ServiceParts) {
    tracing::info!("stopping");
    parts
        .notifier
        .notify(&[Notice::Stopping, Notice::Status("stopping".into())]);
    parts.shutdown.cancel();
    if tokio::time::timeout(STOP_GRACE, parts.monitor)
        .await
        .is_err()
    {
        tracing::error!(grace = ?STOP_GRACE, "the cycle in progress did not finish; stopping without it");
    }
    let state_dir = parts.handle.config().agent.state_dir.clone();
    let runtime = parts
        .handle
        .runtime
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match runtime.save(&state_dir) {
        Ok(()) => tracing::info!(dir = %state_dir.display(), "state saved"),
        Err(e) => tracing::error!(error = %e, "cannot save state"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::monitor::LibvirtStatus;

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn summary_is_one_line_and_says_what_is_wrong() {
        let st = Status {
            cycle: 7,
            mode: crate::config::Mode::Observe,
            paused: true,
            libvirt: LibvirtStatus {
                uri: "qemu:///system".into(),
                connected: false,
                error: Some("no socket\nat all".into()),
            },
            host: None,
            last_cycle: None,
            plan: None,
            domains: Vec::new(),
            results: Vec::new(),
            config_error: Some("reload refused: bad".into()),
            memory: Default::default(),
        };
        let s = summary(&st);
        assert_eq!(
            s,
            "cycle 7; observe (paused); libvirt DOWN (no socket at all); config error: reload refused: bad"
        );
    }

    #[test]
    fn restart_only_settings_are_named() {
        let a = cfg("[agent]\ninterval = \"5s\"\n");
        let b = cfg("[agent]\ninterval = \"9s\"\nlibvirt_uri = \"test:///default\"\nresync_interval = \"1m\"\naudit_max_size = \"1MiB\"\naudit_keep = 9\n[api]\nsocket = \"/tmp/x.sock\"\n");
        assert_eq!(restart_only_changes(&a, &a), Vec::<&str>::new());
        assert_eq!(
            restart_only_changes(&a, &b),
            vec![
                "agent.libvirt_uri",
                "api.socket",
                "agent.resync_interval",
                "agent.audit_max_size",
                "agent.audit_keep"
            ]
        );
        // Swapped in, they keep their running values; the rest is new.
        let mut kept = b.clone();
        keep_restart_only(&a, &mut kept);
        assert_eq!(restart_only_changes(&a, &kept), Vec::<&str>::new());
        assert_eq!(kept.agent.libvirt_uri, a.agent.libvirt_uri);
        assert_eq!(kept.agent.interval, b.agent.interval);
    }

    #[test]
    fn overrides_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[agent]\nlibvirt_uri = \"qemu:///system\"\n").unwrap();
        let o = Overrides {
            libvirt_uri: Some("test:///default".into()),
        };
        assert_eq!(
            load_checked(&f, &o).unwrap().agent.libvirt_uri,
            "test:///default"
        );
        std::fs::write(&f, "[agent]\nspeed = 1\n").unwrap();
        let e = load_checked(&f, &o).unwrap_err();
        assert!(e.contains("c.toml") && e.contains("speed"), "{e}");
    }

    #[test]
    fn the_recorder_records_in_order() {
        let r = RecordingNotifier::new();
        r.notify(&[Notice::Ready, Notice::Watchdog]);
        r.notify(&[Notice::Watchdog]);
        assert_eq!(r.pings().len(), 2);
        assert_eq!(r.events()[0].1, Notice::Ready);
    }
}
