//! Running as a systemd service: readiness and watchdog notifications,
//! signals, config reload and orderly shutdown.
//!
//! - [`Notifier`](crate::agent::notify::Notifier) is the seam to the
//!   service manager.
//! - The reconciler (not a timer) pings the watchdog after each completed cycle
//!   and on its own watchdog tick, so a hung libvirt call stops the pings
//!   and systemd restarts the agent.
//! - [`run`] waits for signals: SIGHUP re-reads and validates the config
//!   ([`crate::agent::load::load_checked`], then against the runtime state:
//!   [`crate::agent::reload_runtime`]) and hands the result to the
//!   reconciler; SIGTERM/SIGINT
//!   let the current cycle finish, persist state and return.

use crate::agent::load::{
    keep_restart_only, load_for_host, restart_only_changes, LoadError, Overrides,
};
use crate::agent::notify::{Notice, Notifier};
use crate::agent::reconciler::Handle;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    /// Runtime state entries that do not fit the new file, set aside
    /// (see [`crate::agent::reload_runtime`]).
    pub set_aside: Option<crate::agent::reload_runtime::SetAsideOnReload>,
}

/// A reload asked for through the API (`POST /v1/reload`): the reply is
/// what [`reload`] gave, `Err` with the reason when the file was refused.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<ReloadReport, LoadError>>;

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
    pub log: Option<crate::agent::observability::LogControl>,
    /// Reloads asked for through the API (besides SIGHUP).
    pub reloads: Option<tokio::sync::mpsc::Receiver<ReloadRequest>>,
}

/// Waits until the monitor has published its first cycle.
pub async fn first_cycle(handle: &Handle) {
    let mut rx = handle.reports();
    // Err only if the reconciler is gone; then there is nothing to wait for.
    let _ = rx.wait_for(|st| st.cycle > 0).await;
}

/// Sends READY=1 with the current status line.
pub fn ready(notifier: &dyn Notifier, handle: &Handle) {
    notifier.notify(&[Notice::Ready, Notice::Status(handle.report().summary())]);
}

/// Handles one reload (SIGHUP or the API): RELOADING=1, validate, hand
/// the result to the monitor (which swaps it in or records the refusal),
/// READY=1. Returns what was swapped in, or why the file was refused.
pub async fn reload(parts: &ServiceParts) -> Result<ReloadReport, LoadError> {
    parts.notifier.notify(&[Notice::Reloading]);
    let old = parts.handle.config();
    let mut report = ReloadReport {
        file: parts.config_path.clone(),
        restart_only: Vec::new(),
        set_aside: None,
    };
    // The settings bound at start keep their running values (the state
    // directory among them, where entries are set aside).
    let result = match load_for_host(&parts.config_path, &parts.overrides) {
        Ok((mut new, alloc)) => {
            let fixed = restart_only_changes(&old, &new);
            if !fixed.is_empty() {
                tracing::warn!(keys = ?fixed, "these settings change only on restart");
            }
            report.restart_only = fixed.iter().map(|k| k.to_string()).collect();
            keep_restart_only(&old, &mut new);
            runtime_fits(parts, new, alloc).map(|(new, aside)| {
                report.set_aside = aside;
                new
            })
        }
        Err(e) => Err(e),
    };
    match &result {
        Ok(new) => {
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
        Notice::Status(parts.handle.report().summary()),
    ]);
    outcome
}

/// The reloaded config against the runtime state (see
/// [`crate::agent::reload_runtime`]): refused when the runtime pools no
/// longer fit beside the file's; entries that do not fit the new file set
/// aside, logged and recorded in the audit log.
fn runtime_fits(
    parts: &ServiceParts,
    new: crate::core::config::Config,
    alloc: crate::core::config::Allocatable,
) -> Result<
    (
        crate::core::config::Config,
        Option<crate::agent::reload_runtime::SetAsideOnReload>,
    ),
    LoadError,
> {
    use crate::agent::reload_runtime::{apply, ReloadStateError};
    // Inline, as the orderly stop saves: a reload is rare, and the file
    // is written only when something is set aside.
    match apply(parts.handle.runtime(), &new, &alloc) {
        Ok(None) => Ok((new, None)),
        Ok(Some(aside)) => {
            for p in &aside.problems {
                tracing::warn!(kept_in = %aside.file.display(), problem = %p, "runtime state entry set aside: it does not fit the reloaded config");
            }
            let ev =
                crate::agent::audit::Event::now(crate::agent::audit::EventKind::StateSetAside {
                    file: aside.file.display().to_string(),
                    problems: aside.problems.clone(),
                });
            if let Err(e) = parts.handle.audit().append(&[ev]) {
                tracing::warn!(error = %e, "cannot write the audit log");
            }
            Ok((new, Some(aside)))
        }
        Err(ReloadStateError::DoesNotFit(e)) => Err(LoadError::Runtime(Arc::new(e))),
        Err(e @ ReloadStateError::State(_)) => {
            tracing::error!(error = %e, "runtime state entries that do not fit the reloaded config stay in state.json, left out of every cycle");
            Ok((new, None))
        }
    }
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
        .runtime()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match runtime.save(&state_dir) {
        Ok(()) => tracing::info!(dir = %state_dir.display(), "state saved"),
        Err(e) => tracing::error!(error = %e, "cannot save state"),
    }
}
