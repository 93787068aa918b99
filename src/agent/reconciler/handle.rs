//! What the rest of the agent holds of the reconciler: the [`Control`]
//! seam the API depends on, and [`Handle`], its implementation over the
//! running loop (watch channels out, a command queue in).

use super::scope::Scope;
use crate::agent::audit::AuditLog;
use crate::agent::load::LoadError;
use crate::agent::report::{Counters, Report};
use crate::agent::samples::Samples;
use crate::agent::state::RuntimeState;
use crate::core::config::Config;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};

/// A future the [`Control`] trait returns (boxed: the trait is used as an
/// object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the API needs of the agent: the last report, the config and
/// runtime state in force, and a way to ask for a cycle. Never waits on
/// libvirt. [`Handle`] implements it over the running reconciler; tests
/// put a fixed report behind it.
pub trait Control: Send + Sync + 'static {
    /// The last published report.
    fn report(&self) -> Arc<Report>;
    /// Published reports as they come (to wait for a later cycle).
    fn reports(&self) -> watch::Receiver<Arc<Report>>;
    /// The file config in force.
    fn config(&self) -> Arc<Config>;
    /// The counters as of the last cycle.
    fn counters(&self) -> Arc<Counters>;
    /// Runtime changes: writers lock, change, save, then ask for a cycle.
    fn runtime(&self) -> &Mutex<RuntimeState>;
    /// Recent decisions and errors.
    fn audit(&self) -> &AuditLog;
    /// Asks for a cycle that looks at `scope`; with `wait`, resolves to
    /// the report of the cycle that ran it (`None`: the loop stopped).
    fn request_cycle(&self, scope: Scope, wait: bool) -> BoxFuture<'_, Option<Arc<Report>>>;
    /// The pools' recent history, when kept.
    fn samples(&self) -> Option<&Samples> {
        None
    }
}

/// Requests to the reconciler loop.
pub enum Command {
    /// Run a cycle now; reply with the report it published.
    Reconcile(Scope, Option<oneshot::Sender<Arc<Report>>>),
    /// The outcome of re-reading the config file: a validated config to
    /// swap in, or why the new file was refused (the running config stays
    /// and the error stays in [`Report::config_error`] until a good
    /// reload). Replies once the loop has taken it.
    Reload(Result<Box<Config>, LoadError>, Option<oneshot::Sender<()>>),
}

/// What the API and the service layer hold of a running reconciler.
#[derive(Clone)]
pub struct Handle {
    pub(super) reports: watch::Receiver<Arc<Report>>,
    pub(super) runtime: Arc<Mutex<RuntimeState>>,
    pub(super) config: watch::Receiver<Arc<Config>>,
    pub(super) counters: watch::Receiver<Arc<Counters>>,
    pub(super) audit: AuditLog,
    pub(super) cmd: mpsc::Sender<Command>,
    /// Set when a scoped cycle is asked for: a full observation running
    /// gives up so that it goes first.
    pub(super) preempt: Arc<AtomicBool>,
    /// The pools' history, fed by the publishing step.
    pub(super) samples: Samples,
}

impl Handle {
    /// The file config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// The last published report (never waits on libvirt).
    pub fn report(&self) -> Arc<Report> {
        self.reports.borrow().clone()
    }

    /// Published reports as they come.
    pub fn reports(&self) -> watch::Receiver<Arc<Report>> {
        self.reports.clone()
    }

    /// The counters as of the last cycle.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.borrow().clone()
    }

    /// Runtime changes (see [`Control::runtime`]).
    pub fn runtime(&self) -> &Arc<Mutex<RuntimeState>> {
        &self.runtime
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Asks for a full cycle now; with `wait`, returns the report that
    /// cycle published.
    pub async fn reconcile(&self, wait: bool) -> Option<Arc<Report>> {
        self.reconcile_scope(Scope::All, wait).await
    }

    /// Asks for a cycle that looks at `scope` (see [`Scope`]); with `wait`,
    /// returns the report of the cycle that ran it (a full one, maybe).
    pub async fn reconcile_scope(&self, scope: Scope, wait: bool) -> Option<Arc<Report>> {
        let scoped = matches!(scope, Scope::Domains(_));
        if wait {
            let (tx, rx) = oneshot::channel();
            self.cmd
                .send(Command::Reconcile(scope, Some(tx)))
                .await
                .ok()?;
            // Queued first, flagged second: a full observation that gives
            // up finds the request waiting.
            if scoped {
                self.preempt.store(true, Ordering::Release);
            }
            rx.await.ok()
        } else {
            // A full queue: make sure a cycle runs without waiting for room.
            if let Err(mpsc::error::TrySendError::Full(_)) =
                self.cmd.try_send(Command::Reconcile(scope.clone(), None))
            {
                let cmd = self.cmd.clone();
                tokio::spawn(async move {
                    let _ = cmd.send(Command::Reconcile(scope, None)).await;
                });
            } else if scoped {
                self.preempt.store(true, Ordering::Release);
            }
            None
        }
    }

    /// Sends a validated config to swap in.
    pub async fn reload(&self, cfg: Config) -> bool {
        self.reload_checked(Ok(cfg)).await
    }

    /// Sends the outcome of a reload (a validated config, or why it was
    /// refused) and waits until the loop has taken it.
    pub async fn reload_checked(&self, result: Result<Config, LoadError>) -> bool {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Reload(result.map(Box::new), Some(tx));
        self.cmd.send(cmd).await.is_ok() && rx.await.is_ok()
    }
}

impl Control for Handle {
    fn report(&self) -> Arc<Report> {
        Handle::report(self)
    }

    fn reports(&self) -> watch::Receiver<Arc<Report>> {
        Handle::reports(self)
    }

    fn config(&self) -> Arc<Config> {
        Handle::config(self)
    }

    fn counters(&self) -> Arc<Counters> {
        Handle::counters(self)
    }

    fn runtime(&self) -> &Mutex<RuntimeState> {
        &self.runtime
    }

    fn audit(&self) -> &AuditLog {
        &self.audit
    }

    fn request_cycle(&self, scope: Scope, wait: bool) -> BoxFuture<'_, Option<Arc<Report>>> {
        Box::pin(self.reconcile_scope(scope, wait))
    }

    fn samples(&self) -> Option<&Samples> {
        Some(&self.samples)
    }
}
