//! The monitor loop: every `interval` (and at once on an API change),
//! observe → plan → enforce → publish.
//!
//! The monitor owns the mutable agent state (history, first-seen times,
//! the file config); the API reads the published [`Status`] and sends
//! [`Command`]s. libvirt runs on the [`HvWorker`] thread.

use crate::audit::{AuditLog, Event, EventKind};
use crate::config::{Config, Mode};
use crate::host::Host;
use crate::libvirt::calls::CallCounts;
use crate::libvirt::events::{self, EventReceiver, HvEvent};
use crate::libvirt::worker::HvWorker;
use crate::libvirt::HvError;
use crate::membership::Membership;
use crate::metrics::Counters;
use crate::model::{Action, DomainObs, HostCapacity, Snapshot};
use crate::planner::{self, Guard, History, Outcome, Plan, PlanInput};
use crate::service::{NoNotifier, Notice, Notifier};
use crate::state::RuntimeState;
use crate::state::VcpuHolds;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// The libvirt connection as last seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LibvirtStatus {
    pub uri: String,
    pub connected: bool,
    /// The last connection error, while disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Facts about the last finished cycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleInfo {
    /// Wall-clock end of the cycle, seconds since the Unix epoch.
    pub finished_at: u64,
    pub duration_ms: f64,
    /// Of which spent reading domains from libvirt.
    #[serde(default)]
    pub observe_ms: f64,
    /// Of which spent planning (the pure planner).
    #[serde(default)]
    pub plan_ms: f64,
    /// Of which spent enforcing: the libvirt writes (stats periods and
    /// actions) with their safety checks. The rest of `duration_ms` is
    /// bookkeeping and publishing (status, audit log).
    #[serde(default)]
    pub enforce_ms: f64,
    /// libvirt calls that only read, made by this cycle (counted since the
    /// previous cycle ended; see `virtpool_libvirt_calls_total`).
    #[serde(default)]
    pub libvirt_reads: u64,
    /// libvirt calls that change a domain, made by this cycle (each
    /// attempt: a setter retried without `--config` counts twice).
    #[serde(default)]
    pub libvirt_writes: u64,
    pub actions: usize,
    pub failed: usize,
    /// A scoped cycle: the UUIDs of the domains it re-observed and
    /// enforced (the others kept their last observation). Absent for a
    /// full cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Vec<String>>,
}

/// The outcome of one enforcement action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub action: Action,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the agent publishes after every cycle; the API serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Number of cycles run (0 before the first).
    pub cycle: u64,
    pub mode: Mode,
    pub paused: bool,
    pub libvirt: LibvirtStatus,
    pub host: Option<HostCapacity>,
    pub last_cycle: Option<CycleInfo>,
    /// The last plan (with the actual values it was made from).
    pub plan: Option<Plan>,
    /// Every domain as last observed.
    pub domains: Vec<DomainObs>,
    /// The outcome of the last cycle's actions.
    pub results: Vec<ActionOutcome>,
    /// The last config (or runtime state) error, if the last load failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
    /// What the planner remembers between cycles, so a dry run plans like
    /// the next cycle will (not part of the JSON).
    #[serde(skip)]
    pub memory: PlannerMemory,
}

/// The planner's memory as of a published cycle: the history (cooldowns,
/// held vCPU changes, pressure reclaim) and the clock it is kept in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlannerMemory {
    pub history: Arc<History>,
    /// When the monitor's clock started (`now` = seconds since then).
    pub clock: Option<Instant>,
}

impl PlannerMemory {
    /// The planner's `now` at this moment.
    pub fn now(&self) -> u64 {
        self.clock.map_or(0, |c| c.elapsed().as_secs())
    }
}

/// Which domains a requested cycle must look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every domain: a full cycle.
    All,
    /// Only these domains (UUIDs) changed: a scoped cycle re-observes and
    /// enforces them alone, the others keep their last observation and
    /// wait for the next full cycle. The monitor runs a full cycle instead
    /// when a scoped one can't be trusted (see `Monitor::scoped_uuids`).
    Domains(Vec<String>),
}

impl Scope {
    /// The scope that covers both.
    pub fn merge(self, other: Scope) -> Scope {
        match (self, other) {
            (Scope::Domains(mut a), Scope::Domains(b)) => {
                for u in b {
                    if !a.contains(&u) {
                        a.push(u);
                    }
                }
                Scope::Domains(a)
            }
            _ => Scope::All,
        }
    }
}

/// The cycle a batch of libvirt events asks for: scoped to the domains
/// they name (a domain new to the last observation, or gone from libvirt,
/// turns it into a full cycle, see `Monitor::scoped_uuids`); full when the
/// connection closed.
fn event_scope(batch: &[HvEvent]) -> Scope {
    let mut uuids: Vec<String> = Vec::new();
    for e in batch {
        match e {
            HvEvent::Domain(d) => {
                if !uuids.contains(&d.uuid) {
                    uuids.push(d.uuid.clone());
                }
            }
            HvEvent::ConnectionClosed(_) => return Scope::All,
        }
    }
    if uuids.is_empty() {
        Scope::All
    } else {
        Scope::Domains(uuids)
    }
}

/// A scoped cycle covers at most this share of the domains (but always
/// one); beyond it, a full cycle.
const SCOPED_MAX_SHARE: usize = 10;

/// How many domains a scoped cycle may cover out of `total`.
fn scoped_limit(total: usize) -> usize {
    (total / SCOPED_MAX_SHARE).max(1)
}

/// The domains outside `scope` that have actions in the plan and share a
/// pool with a domain in it.
fn pool_neighbours_with_actions(plan: &Plan, scope: &[String]) -> Vec<String> {
    let with_actions: HashSet<&str> = plan.actions.iter().map(|a| a.uuid()).collect();
    let mut out: Vec<String> = Vec::new();
    for p in &plan.pools {
        if !p
            .members
            .iter()
            .any(|m| scope.iter().any(|s| **s == *m.uuid))
        {
            continue;
        }
        for m in &p.members {
            if with_actions.contains(&*m.uuid)
                && !scope.iter().any(|s| **s == *m.uuid)
                && !out.iter().any(|s| **s == *m.uuid)
            {
                out.push(m.uuid.to_string());
            }
        }
    }
    out
}

/// Requests to the monitor.
pub enum Command {
    /// Run a cycle now; reply with the status it published.
    Reconcile(Scope, Option<oneshot::Sender<Arc<Status>>>),
    /// The outcome of re-reading the config file: a validated config to
    /// swap in, or why the new file was refused (the running config stays
    /// and the error stays in [`Status::config_error`] until a good
    /// reload). Replies once the monitor has taken it.
    Reload(Result<Box<Config>, String>, Option<oneshot::Sender<()>>),
}

/// What the API and the service layer hold.
#[derive(Clone)]
pub struct Handle {
    pub status: watch::Receiver<Arc<Status>>,
    /// Runtime changes; writers lock, change, save, then ask for a reconcile.
    pub runtime: Arc<Mutex<RuntimeState>>,
    /// The file config in force (changes on reload).
    pub config: watch::Receiver<Arc<Config>>,
    /// Running counters for metrics, published after every cycle.
    pub counters: watch::Receiver<Arc<Counters>>,
    /// Recent decisions and errors (`GET /v1/events`).
    pub audit: AuditLog,
    cmd: mpsc::Sender<Command>,
    /// Set when a scoped cycle is asked for: a full observation running
    /// gives up so that it goes first (see [`Monitor::run`]).
    preempt: Arc<AtomicBool>,
}

impl Handle {
    /// The file config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// The last published status (never waits on libvirt).
    pub fn status(&self) -> Arc<Status> {
        self.status.borrow().clone()
    }

    /// Asks for a cycle now; with `wait`, returns the status that cycle published.
    pub async fn reconcile(&self, wait: bool) -> Option<Arc<Status>> {
        self.reconcile_scope(Scope::All, wait).await
    }

    /// Asks for a cycle that looks at `scope` (see [`Scope`]); with `wait`,
    /// returns the status of the cycle that ran it (a full one, maybe).
    pub async fn reconcile_scope(&self, scope: Scope, wait: bool) -> Option<Arc<Status>> {
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

    /// The counters as of the last cycle.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.borrow().clone()
    }

    /// Sends a validated config to swap in.
    pub async fn reload(&self, cfg: Config) -> bool {
        self.reload_checked(Ok(cfg)).await
    }

    /// Sends the outcome of a reload (a validated config, or why it was
    /// refused) and waits until the monitor has taken it.
    pub async fn reload_checked(&self, result: Result<Config, String>) -> bool {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Reload(result.map(Box::new), Some(tx));
        self.cmd.send(cmd).await.is_ok() && rx.await.is_ok()
    }
}

/// Optional collaborators of a [`Monitor`].
#[derive(Clone)]
pub struct MonitorOptions {
    /// Plan and report, change nothing (overrides `agent.mode`).
    pub observe_only: bool,
    /// Receives `STATUS=` after every cycle and `WATCHDOG=1` pings.
    pub notifier: Arc<dyn Notifier>,
    /// The systemd watchdog interval: with it the monitor pings after every
    /// cycle and wakes at least every half interval to ping. A hung cycle
    /// pings no more.
    pub watchdog: Option<Duration>,
    /// Where events are written.
    pub audit: AuditLog,
    /// Where held vCPU changes are saved (`state_dir`); `None`: kept in
    /// memory only.
    pub holds_dir: Option<PathBuf>,
    /// The held vCPU changes saved by an earlier run (see
    /// [`VcpuHolds`]): they hold from the first cycle on.
    pub holds: VcpuHolds,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            observe_only: false,
            notifier: Arc::new(NoNotifier),
            watchdog: None,
            audit: AuditLog::memory(),
            holds_dir: None,
            holds: VcpuHolds::default(),
        }
    }
}

/// Backoff between reconnect attempts: 1 s doubling to 60 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60))
}

/// What the monitor keeps about an active domain.
#[derive(Debug, Clone, Copy)]
struct Active {
    /// When it was first seen active, on the agent's clock.
    since: Instant,
    /// Its balloon stats period is set (or cannot be).
    stats_period_set: bool,
}

/// The monitor's own state.
pub struct Monitor {
    hv: HvWorker,
    host: Host,
    config: Config,
    runtime: Arc<Mutex<RuntimeState>>,
    /// Shared with the published status until it changes (no copy per
    /// cycle when nothing is recorded).
    history: Arc<History>,
    /// Each active domain (by the observation's UUID string, shared).
    active: HashMap<Arc<str>, Active>,
    /// Compiled membership rules and the pools they were built from.
    membership: Option<(BTreeMap<String, crate::config::Pool>, Membership)>,
    start: Instant,
    cycle: u64,
    failures: u32,
    status_tx: watch::Sender<Arc<Status>>,
    config_tx: watch::Sender<Arc<Config>>,
    cmd_rx: mpsc::Receiver<Command>,
    observe_only: bool,
    notifier: Arc<dyn Notifier>,
    watchdog: Option<Duration>,
    audit: AuditLog,
    counters: Counters,
    counters_tx: watch::Sender<Arc<Counters>>,
    /// Why the last reload was refused, until a good one.
    reload_error: Option<String>,
    /// Audit events waiting for the end of the cycle.
    pending: Vec<Event>,
    /// Unadmitted members (pool, UUID) already reported.
    unadmitted: HashSet<(String, String)>,
    /// Whether libvirt was reachable in the last cycle (None before the first).
    was_connected: Option<bool>,
    /// libvirt lifecycle events: each (debounced) batch runs a cycle.
    events: Option<EventReceiver>,
    /// The effective config of the last full cycle that observed libvirt
    /// (a scoped cycle needs the same).
    last_full: Option<Config>,
    /// Time this cycle spent waiting for libvirt reads, planning and
    /// enforcing (for `last_cycle`).
    observe_time: Duration,
    plan_time: Duration,
    enforce_time: Duration,
    /// The libvirt call counts when the last cycle ended.
    calls_at_publish: CallCounts,
    /// Where held vCPU changes are saved, and what the file holds now.
    holds_dir: Option<PathBuf>,
    saved_holds: VcpuHolds,
    /// Shared with [`Handle`]: a scoped cycle is waiting.
    preempt: Arc<AtomicBool>,
    /// Events received and not yet acted on, and when their debounce
    /// window closes (kept here, not in a future: a cycle asked meanwhile
    /// takes them along instead of dropping them).
    event_batch: Vec<HvEvent>,
    event_deadline: Option<tokio::time::Instant>,
}

/// The next libvirt event; never ready without a receiver. Cancel-safe
/// (an event is either returned or still queued).
async fn next_event(rx: &mut Option<EventReceiver>) -> Option<HvEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Monitor {
    /// Also runs a cycle at once on libvirt events (see [`events`]).
    pub fn with_events(mut self, rx: EventReceiver) -> Monitor {
        self.events = Some(rx);
        self
    }

    /// Builds a monitor and the handle the API uses.
    pub fn new(
        hv: HvWorker,
        host: Host,
        config: Config,
        runtime: RuntimeState,
        observe_only: bool,
    ) -> (Monitor, Handle) {
        Monitor::with_options(
            hv,
            host,
            config,
            runtime,
            MonitorOptions {
                observe_only,
                ..MonitorOptions::default()
            },
        )
    }

    /// Builds a monitor with its collaborators.
    pub fn with_options(
        hv: HvWorker,
        host: Host,
        config: Config,
        runtime: RuntimeState,
        opts: MonitorOptions,
    ) -> (Monitor, Handle) {
        let observe_only = opts.observe_only;
        let initial = Status {
            cycle: 0,
            mode: if observe_only {
                Mode::Observe
            } else {
                config.agent.mode
            },
            paused: runtime.paused,
            libvirt: LibvirtStatus {
                uri: config.agent.libvirt_uri.clone(),
                connected: false,
                error: None,
            },
            host: None,
            last_cycle: None,
            plan: None,
            domains: Vec::new(),
            results: Vec::new(),
            config_error: None,
            memory: PlannerMemory::default(),
        };
        let (status_tx, status) = watch::channel(Arc::new(initial));
        let (cmd, cmd_rx) = mpsc::channel(64);
        let runtime = Arc::new(Mutex::new(runtime));
        let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
        let (counters_tx, counters) = watch::channel(Arc::new(Counters::default()));
        let preempt = Arc::new(AtomicBool::new(false));
        let handle = Handle {
            preempt: preempt.clone(),
            config: config_rx,
            status,
            runtime: runtime.clone(),
            counters,
            audit: opts.audit.clone(),
            cmd,
        };
        let m = Monitor {
            hv,
            host,
            config,
            runtime,
            history: Arc::new(History {
                vcpu_pending: opts.holds.to_pending(0),
                ..History::default()
            }),
            active: HashMap::new(),
            membership: None,
            start: Instant::now(),
            cycle: 0,
            failures: 0,
            status_tx,
            config_tx,
            cmd_rx,
            observe_only,
            notifier: opts.notifier,
            watchdog: opts.watchdog.filter(|w| !w.is_zero()),
            audit: opts.audit,
            counters: Counters::default(),
            counters_tx,
            reload_error: None,
            pending: Vec::new(),
            unadmitted: HashSet::new(),
            was_connected: None,
            events: None,
            last_full: None,
            observe_time: Duration::ZERO,
            plan_time: Duration::ZERO,
            enforce_time: Duration::ZERO,
            calls_at_publish: CallCounts::default(),
            holds_dir: opts.holds_dir,
            saved_holds: opts.holds,
            preempt,
            event_batch: Vec::new(),
            event_deadline: None,
        };
        (m, handle)
    }

    fn mode(&self) -> Mode {
        if self.observe_only {
            Mode::Observe
        } else {
            self.config.agent.mode
        }
    }

    /// Runs cycles until `shutdown`; finishes the cycle in progress first.
    ///
    /// With a watchdog interval, pings after every cycle and on a tick of
    /// half the interval — but only from here, between cycles: while a
    /// cycle hangs (a libvirt call that never returns) the loop is not here
    /// and the pings stop.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.agent.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut wd_tick = self.watchdog.map(|w| {
            let mut t = tokio::time::interval(w / 2);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            t
        });
        self.pending.push(Event::now(EventKind::Started {
            version: env!("CARGO_PKG_VERSION").into(),
        }));
        loop {
            let down = !self.status_tx.borrow().libvirt.connected && self.cycle > 0;
            let retry = backoff(self.failures.saturating_sub(1));
            let deadline = self.event_deadline;
            let mut replies = Vec::new();
            let mut scope = Scope::All;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(Command::Reconcile(s, r)) => {
                        scope = s;
                        replies.extend(r);
                        // Requests that piled up meanwhile share this cycle;
                        // reloads among them are taken first (and a config
                        // change makes the cycle a full one).
                        while let Ok(next) = self.cmd_rx.try_recv() {
                            match next {
                                Command::Reconcile(s, r) => {
                                    scope = scope.merge(s);
                                    replies.extend(r);
                                }
                                Command::Reload(result, ack) => {
                                    self.take_reload(result, ack, &mut tick);
                                }
                            }
                        }
                    }
                    Some(Command::Reload(result, ack)) => self.take_reload(result, ack, &mut tick),
                    None => break,
                },
                _ = tick.tick() => {}
                _ = tokio::time::sleep(retry), if down => {}
                _ = async {
                    match wd_tick.as_mut() {
                        Some(t) => { t.tick().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    // Between cycles, so the loop is alive: ping without a
                    // cycle, unless the libvirt thread is gone for good.
                    if self.hv.is_alive() {
                        self.notifier.notify(&[Notice::Watchdog]);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if deadline.is_some() => {
                    // The debounce window closed: a cycle for these events.
                    if let Some(s) = self.take_event_scope() {
                        scope = s;
                    }
                }
                ev = next_event(&mut self.events) => match ev {
                    Some(e) => {
                        self.note_event(e);
                        continue;
                    }
                    None => { self.events = None; continue; }
                },
            }
            // A full cycle due while domain events wait (a tick or a
            // request inside their debounce window): their domains go
            // first, in a cycle of their own, as when they interrupt a
            // full observation. Otherwise events waiting join whatever
            // cycle runs now.
            let st = if matches!(scope, Scope::All) && self.events_go_first() {
                self.after_preemption(scope, &mut tick).await
            } else {
                if let Some(s) = self.take_event_scope() {
                    scope = scope.merge(s);
                }
                match self.cycle_inner(scope.clone(), true).await {
                    Some(st) => st,
                    None => self.after_preemption(scope, &mut tick).await,
                }
            };
            for r in replies {
                let _ = r.send(st.clone());
            }
        }
        self.pending.push(Event::now(EventKind::Stopping));
        self.flush_events();
        // Close the connection (and wait for it) off the runtime's workers.
        self.hv.close().await;
    }

    /// A full cycle gave up its observation for a scoped cycle asked
    /// meanwhile: runs the scoped requests waiting first (reloads among
    /// them are taken), then the full cycle, no longer preemptible, which
    /// also answers the full requests that were waiting. Returns the full
    /// cycle's status.
    async fn after_preemption(
        &mut self,
        full: Scope,
        tick: &mut tokio::time::Interval,
    ) -> Arc<Status> {
        let mut scoped: Option<Scope> = None;
        let mut scoped_replies = Vec::new();
        let mut full_replies = Vec::new();
        while let Ok(next) = self.cmd_rx.try_recv() {
            match next {
                Command::Reconcile(Scope::All, r) => full_replies.extend(r),
                Command::Reconcile(s, r) => {
                    scoped = Some(match scoped {
                        Some(f) => f.merge(s),
                        None => s,
                    });
                    scoped_replies.extend(r);
                }
                Command::Reload(result, ack) => self.take_reload(result, ack, tick),
            }
        }
        // Or a domain event gave the observation pause: its batch (after
        // the usual debounce) joins the scoped cycle.
        self.drain_events();
        if let Some(deadline) = self.event_deadline {
            tokio::time::sleep_until(deadline).await;
            self.drain_events();
        }
        if let Some(Scope::Domains(uuids)) = self.take_event_scope() {
            tracing::debug!(
                domains = uuids.len(),
                "domain events go before the full cycle"
            );
            let s = Scope::Domains(uuids);
            scoped = Some(match scoped {
                Some(f) => f.merge(s),
                None => s,
            });
        }
        if let Some(s) = scoped {
            tracing::debug!(
                scoped = scoped_replies.len(),
                full = full_replies.len(),
                "full observation gave way to a scoped cycle"
            );
            let st = self.cycle(s).await;
            tracing::debug!(
                cycle = st.cycle,
                "scoped cycle after a full observation gave way"
            );
            for r in scoped_replies {
                let _ = r.send(st.clone());
            }
        }
        let st = self.cycle(full).await;
        for r in full_replies {
            let _ = r.send(st.clone());
        }
        st
    }

    /// Adds a received event to the batch; the first opens the debounce
    /// window.
    fn note_event(&mut self, e: HvEvent) {
        if self.event_batch.is_empty() {
            self.event_deadline = Some(tokio::time::Instant::now() + events::DEBOUNCE);
        }
        self.event_batch.push(e);
    }

    /// Moves the events already queued into the batch.
    fn drain_events(&mut self) {
        let mut got = Vec::new();
        if let Some(rx) = self.events.as_mut() {
            while let Ok(e) = rx.try_recv() {
                got.push(e);
            }
        }
        for e in got {
            self.note_event(e);
        }
    }

    /// The scope of the events waiting, if any (and forgets them).
    fn take_event_scope(&mut self) -> Option<Scope> {
        self.event_deadline = None;
        if self.event_batch.is_empty() {
            return None;
        }
        let batch = std::mem::take(&mut self.event_batch);
        tracing::debug!(events = ?batch, "libvirt event: cycle now");
        Some(event_scope(&batch))
    }

    /// Takes a reload outcome, restarts `tick` on a new interval, acks.
    fn take_reload(
        &mut self,
        result: Result<Box<Config>, String>,
        ack: Option<oneshot::Sender<()>>,
        tick: &mut tokio::time::Interval,
    ) {
        if let Some(new_interval) = self.reload(result) {
            *tick = tokio::time::interval(new_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        }
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }

    /// Takes a reload outcome. Returns the new interval if it changed.
    fn reload(&mut self, result: Result<Box<Config>, String>) -> Option<Duration> {
        let file = self.config.source.display().to_string();
        match result {
            Ok(cfg) => {
                let old_interval = self.config.agent.interval;
                self.config = *cfg;
                self.config_tx.send_replace(Arc::new(self.config.clone()));
                self.reload_error = None;
                self.counters.reloads_ok += 1;
                self.counters.last_reload_ok = Some(true);
                self.pending.push(Event::now(EventKind::ConfigReload {
                    file,
                    ok: true,
                    error: None,
                }));
                tracing::info!(file = %self.config.source.display(), "config reloaded");
                (self.config.agent.interval != old_interval).then_some(self.config.agent.interval)
            }
            Err(e) => {
                self.counters.reloads_refused += 1;
                self.counters.last_reload_ok = Some(false);
                self.pending.push(Event::now(EventKind::ConfigReload {
                    file,
                    ok: false,
                    error: Some(e.clone()),
                }));
                self.reload_error = Some(e);
                None
            }
        }
    }

    /// Writes pending events to the audit log.
    fn flush_events(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.pending);
        if let Err(e) = self.audit.append_owned(events) {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    }

    /// Runs one full cycle: observe → plan → enforce → publish. Returns the
    /// published status.
    pub async fn cycle_once(&mut self) -> Arc<Status> {
        self.cycle(Scope::All).await
    }

    /// The domains a scoped cycle may look at, or `None` when it must be a
    /// full one: no full cycle yet, libvirt down at the last cycle, the
    /// effective config (pools, mode) or the pause changed since the last
    /// full cycle, a domain not in the last observation, or more than a
    /// tenth of the domains (one is always allowed).
    fn scoped_uuids(&self, scope: Scope, effective: &Config, paused: bool) -> Option<Vec<String>> {
        let Scope::Domains(uuids) = scope else {
            return None;
        };
        if uuids.is_empty() || self.last_full.as_ref() != Some(effective) {
            return None;
        }
        if self.status_tx.borrow().paused != paused {
            return None;
        }
        self.scopable(&uuids).then_some(uuids)
    }

    /// Whether a cycle scoped to `uuids` can run on the last published
    /// status: libvirt connected, a plan made, and the domains few enough
    /// (see [`scoped_limit`]) and all in the last observation.
    fn scopable(&self, uuids: &[String]) -> bool {
        let prev = self.status_tx.borrow();
        if !prev.libvirt.connected || prev.plan.is_none() {
            return false;
        }
        if uuids.len() > scoped_limit(prev.domains.len()) {
            return false;
        }
        let known: HashSet<&str> = prev.domains.iter().map(|d| &*d.uuid).collect();
        uuids.iter().all(|u| known.contains(u.as_str()))
    }

    /// Whether the domain events waiting (queued or in their debounce
    /// window) call for a cycle of their own before a full one.
    fn events_go_first(&mut self) -> bool {
        self.drain_events();
        if self.event_batch.is_empty() {
            return false;
        }
        match event_scope(&self.event_batch) {
            Scope::Domains(uuids) => self.scopable(&uuids),
            Scope::All => false,
        }
    }

    /// Re-observes the scoped domains and puts them into the last published
    /// observation. `None` when one is gone or libvirt fails (then a full
    /// cycle observes, and reports the failure).
    async fn observe_scoped(&mut self, uuids: &[String]) -> Option<Vec<DomainObs>> {
        let t = Instant::now();
        let fresh = self.hv.observe_domains(uuids.to_vec()).await;
        self.observe_time += t.elapsed();
        let fresh = match fresh {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "scoped observation failed: full cycle");
                return None;
            }
        };
        let mut fresh: HashMap<String, DomainObs> =
            fresh.into_iter().map(|d| (d.uuid.to_string(), d)).collect();
        if uuids.iter().any(|u| !fresh.contains_key(u)) {
            tracing::debug!("a scoped domain is gone: full cycle");
            return None;
        }
        let prev = self.status_tx.borrow().clone();
        let mut merged = prev.domains.clone();
        for d in &mut merged {
            if let Some(f) = fresh.remove(&*d.uuid) {
                *d = f;
            }
        }
        Some(merged)
    }

    /// Runs one cycle over `scope` (see [`Scope`]): observe → plan →
    /// enforce → publish. A scoped cycle observes and enforces only its
    /// domains, plans the whole host with the others as last observed.
    /// Returns the published status.
    pub async fn cycle(&mut self, scope: Scope) -> Arc<Status> {
        self.cycle_inner(scope, false)
            .await
            .expect("a cycle that may not give way always publishes")
    }

    /// [`Monitor::cycle`]; with `preemptible`, a full cycle's observation
    /// gives up when a scoped cycle is asked for meanwhile (`None`: nothing
    /// published, the cycle number not used).
    async fn cycle_inner(&mut self, scope: Scope, preemptible: bool) -> Option<Arc<Status>> {
        let t0 = Instant::now();
        self.cycle += 1;
        let host = self.host.refresh();
        let runtime = match self.runtime.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut status = Status {
            cycle: self.cycle,
            mode: self.mode(),
            paused: runtime.paused,
            libvirt: LibvirtStatus {
                uri: self.config.agent.libvirt_uri.clone(),
                connected: true,
                error: None,
            },
            host: Some(host),
            last_cycle: None,
            plan: None,
            domains: Vec::new(),
            results: Vec::new(),
            config_error: self
                .reload_error
                .as_ref()
                .map(|e| format!("reload refused (running the previous config): {e}")),
            memory: PlannerMemory::default(),
        };

        let effective = match runtime.effective(&self.config) {
            Ok(c) => c,
            Err(problems) => {
                let msg = problems.join("; ");
                tracing::error!(error = %msg, "runtime state does not fit the config; using the config file alone");
                status.config_error = Some(match status.config_error.take() {
                    Some(prev) => format!("{prev}; {msg}"),
                    None => msg,
                });
                self.config.clone()
            }
        };

        let mut scoped = self.scoped_uuids(scope, &effective, runtime.paused);
        let now = self.start.elapsed().as_secs();
        let enforce = self.mode() == Mode::Enforce && !runtime.paused;
        // Globs are compiled once per pool set, not every cycle.
        if self
            .membership
            .as_ref()
            .is_none_or(|(p, _)| *p != effective.pools)
        {
            let m = Membership::new(&effective.pools);
            self.membership = Some((effective.pools.clone(), m));
        }
        // A scoped cycle widens its scope once to the other domains with
        // actions in its domains' pools (a raised reservation takes from
        // them first), re-observed; when that is too many, a full cycle.
        let mut widened = false;
        let (mut snapshot, mut plan) = loop {
            let merged = match &scoped {
                Some(uuids) => self.observe_scoped(uuids).await,
                None => None,
            };
            if merged.is_none() {
                scoped = None;
            }
            let observed = match merged {
                Some(d) => Ok(d),
                None if preemptible && !widened => {
                    let t = Instant::now();
                    self.preempt.store(false, Ordering::Release);
                    let r = self.hv.observe_until(self.preempt.clone()).await;
                    match r {
                        Ok(Some(d)) => {
                            self.observe_time += t.elapsed();
                            Ok(d)
                        }
                        Ok(None) => {
                            self.cycle -= 1;
                            return None;
                        }
                        Err(e) => {
                            self.observe_time += t.elapsed();
                            Err(e)
                        }
                    }
                }
                None => {
                    let t = Instant::now();
                    let r = self.hv.observe().await;
                    self.observe_time += t.elapsed();
                    r
                }
            };
            let domains = match observed {
                Ok(d) => {
                    if self.failures > 0 {
                        tracing::info!(uri = %self.config.agent.libvirt_uri, "libvirt connection restored");
                    }
                    self.failures = 0;
                    if self.was_connected == Some(false) {
                        self.pending.push(Event::in_cycle(
                            EventKind::LibvirtRestored {
                                uri: self.config.agent.libvirt_uri.clone(),
                            },
                            self.cycle,
                        ));
                    }
                    if scoped.is_none() {
                        self.last_full = Some(effective.clone());
                    }
                    d
                }
                Err(e) => {
                    self.last_full = None;
                    self.failures = self.failures.saturating_add(1);
                    tracing::warn!(uri = %self.config.agent.libvirt_uri, error = %e, retry_in = ?backoff(self.failures - 1), "cannot observe libvirt");
                    status.libvirt.connected = false;
                    status.libvirt.error = Some(e.to_string());
                    // Handles are stale after a reconnect: forget per-connection facts.
                    for a in self.active.values_mut() {
                        a.stats_period_set = false;
                    }
                    let prev = self.status_tx.borrow().clone();
                    status.domains = prev.domains.clone();
                    status.plan = prev.plan.clone();
                    return Some(self.publish(status, t0).await);
                }
            };
            let domains = self.track_active(domains);
            let snapshot = Snapshot { host, domains };
            let membership = &self.membership.as_ref().expect("set just above").1;
            let t = Instant::now();
            let plan = planner::plan_with(
                &PlanInput {
                    config: &effective,
                    snapshot: &snapshot,
                    reservations: &runtime.reservations,
                    history: &self.history,
                    now,
                    paused: runtime.paused,
                },
                membership,
            );
            self.plan_time += t.elapsed();
            let Some(uuids) = scoped.as_mut() else {
                break (snapshot, plan);
            };
            let extra = pool_neighbours_with_actions(&plan, uuids);
            if extra.is_empty() || widened {
                break (snapshot, plan);
            }
            widened = true;
            uuids.extend(extra);
            if uuids.len() > scoped_limit(snapshot.domains.len()) {
                tracing::debug!(domains = uuids.len(), "scope too wide: full cycle");
                scoped = None;
            }
        };
        // Only what is enforced goes into the history: in a scoped cycle,
        // the scoped domains' part of the plan.
        let in_scope: Option<HashSet<String>> =
            scoped.as_ref().map(|u| u.iter().cloned().collect());
        if enforce {
            match &in_scope {
                None => {
                    if self.history.reclaim != plan.reclaim {
                        Arc::make_mut(&mut self.history).record_plan(&plan);
                    }
                }
                Some(scope) => {
                    for u in scope {
                        let want = plan.reclaim.get(u);
                        if self.history.reclaim.get(u) == want {
                            continue;
                        }
                        let history = Arc::make_mut(&mut self.history);
                        match want {
                            Some(v) => history.reclaim.insert(u.clone(), *v),
                            None => history.reclaim.remove(u),
                        };
                    }
                }
            }
        }

        if enforce {
            let stats: Vec<&DomainObs> = snapshot
                .domains
                .iter()
                .filter(|d| in_scope.as_ref().is_none_or(|s| s.contains(&*d.uuid)))
                .collect();
            let t = Instant::now();
            self.set_stats_periods(&stats).await;
            let (enforced, results) = self.enforce(plan, now, in_scope.as_ref()).await;
            self.enforce_time += t.elapsed();
            plan = enforced;
            status.results = results;
            // Publish what the domains have now, not what they had
            // (changed in place: a steady cycle copies nothing).
            let mut applied = Vec::new();
            if status.results.iter().any(|r| r.ok) {
                let mut by_uuid: HashMap<&str, usize> = HashMap::new();
                for (i, d) in snapshot.domains.iter().enumerate() {
                    by_uuid.insert(&*d.uuid, i);
                }
                for r in status.results.iter().filter(|r| r.ok) {
                    if let Some(&i) = by_uuid.get(r.action.uuid()) {
                        applied.push((i, &r.action));
                    }
                }
            }
            if !applied.is_empty() {
                for (i, action) in applied {
                    snapshot.domains[i].apply(action);
                }
                plan.refresh_actuals(&snapshot.domains);
            }
            let lost = status.results.iter().find_map(|r| {
                r.error
                    .clone()
                    .filter(|e| e.starts_with("libvirt connection lost"))
            });
            if let Some(e) = lost {
                status.libvirt.connected = false;
                status.libvirt.error = Some(e);
            }
        }
        let alive: HashSet<&str> = snapshot.domains.iter().map(|d| &*d.uuid).collect();
        if !self.history.all_alive(|u| alive.contains(u)) {
            Arc::make_mut(&mut self.history).retain(|u| alive.contains(u));
        }
        if !self.history.vcpu_pending.is_empty() {
            Arc::make_mut(&mut self.history).observe(&snapshot.domains);
        }
        self.save_holds().await;
        self.note_unadmitted(&plan);
        status.plan = Some(plan);
        status.domains = snapshot.domains;
        Some(self.publish_scoped(status, t0, scoped).await)
    }

    /// Saves the held vCPU changes when they changed (a timeout was
    /// recorded, or a held domain restarted or went away), on a blocking
    /// thread (the write is fsynced). A failed write is logged and tried
    /// again after the next cycle.
    async fn save_holds(&mut self) {
        let Some(dir) = self.holds_dir.clone() else {
            return;
        };
        let now = VcpuHolds::from_pending(&self.history.vcpu_pending);
        if now.holds == self.saved_holds.holds {
            return;
        }
        let saved = tokio::task::spawn_blocking(move || now.save(&dir).map(|()| now))
            .await
            .unwrap_or_else(|e| {
                Err(crate::state::StateError::Write {
                    file: crate::state::HOLDS_FILE.into(),
                    source: std::io::Error::other(e),
                })
            });
        match saved {
            Ok(now) => {
                tracing::debug!(held = now.holds.len(), "vCPU holds saved");
                self.saved_holds = now;
            }
            Err(e) => {
                tracing::error!(error = %e, "vCPU holds not saved: a restarted agent would forget them");
            }
        }
    }

    /// Reports members that became unadmitted (once each, until admitted).
    fn note_unadmitted(&mut self, plan: &Plan) {
        let mut now = HashSet::new();
        for p in &plan.pools {
            // Shut-off members are never admitted (they hold nothing): not news.
            for m in p
                .members
                .iter()
                .filter(|m| !m.admitted && m.state.is_active())
            {
                let key = (p.name.clone(), m.uuid.to_string());
                if !self.unadmitted.contains(&key) {
                    tracing::warn!(pool = %p.name, domain = %m.name, note = m.note.as_deref().unwrap_or(""), "member not admitted: its floors do not fit the budget");
                    self.pending.push(Event::in_cycle(
                        EventKind::Unadmitted {
                            pool: p.name.clone(),
                            domain: m.name.to_string(),
                            uuid: m.uuid.to_string(),
                            note: m.note.clone(),
                        },
                        self.cycle,
                    ));
                }
                now.insert(key);
            }
        }
        self.unadmitted = now;
    }

    /// Publishes the status and counters, writes the cycle's events,
    /// reports to the service manager (STATUS=, and WATCHDOG=1: a cycle
    /// finished, so the loop is alive).
    async fn publish(&mut self, status: Status, t0: Instant) -> Arc<Status> {
        self.publish_scoped(status, t0, None).await
    }

    /// [`Monitor::publish`], noting the scope of a scoped cycle.
    async fn publish_scoped(
        &mut self,
        mut status: Status,
        t0: Instant,
        scope: Option<Vec<String>>,
    ) -> Arc<Status> {
        let failed = status.results.iter().filter(|r| !r.ok).count();
        let elapsed = t0.elapsed();
        let calls_now = self.hv.calls().unwrap_or_default();
        let calls = calls_now.since(&self.calls_at_publish);
        self.calls_at_publish = calls_now;
        self.counters.libvirt_calls = calls_now;
        status.memory = PlannerMemory {
            history: self.history.clone(),
            clock: Some(self.start),
        };
        status.last_cycle = Some(CycleInfo {
            finished_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            observe_ms: std::mem::take(&mut self.observe_time).as_secs_f64() * 1000.0,
            plan_ms: std::mem::take(&mut self.plan_time).as_secs_f64() * 1000.0,
            enforce_ms: std::mem::take(&mut self.enforce_time).as_secs_f64() * 1000.0,
            libvirt_reads: calls.reads(),
            libvirt_writes: calls.writes(),
            actions: status.results.len(),
            failed,
            scope,
        });
        // Lost in observe or in the middle of enforcing: one event per loss.
        if !status.libvirt.connected && self.was_connected != Some(false) {
            self.counters.libvirt_lost += 1;
            self.pending.push(Event::in_cycle(
                EventKind::LibvirtLost {
                    uri: status.libvirt.uri.clone(),
                    error: status.libvirt.error.clone().unwrap_or_default(),
                },
                self.cycle,
            ));
        }
        self.was_connected = Some(status.libvirt.connected);
        self.counters.cycles += 1;
        self.counters.cycle_seconds.observe(elapsed.as_secs_f64());
        for r in &status.results {
            let key = (
                r.action.resource_label().to_string(),
                if r.ok { "ok" } else { "error" }.to_string(),
            );
            *self.counters.actions.entry(key).or_insert(0) += 1;
        }
        // The cycle's events in one batch: those noted during the cycle,
        // then one per action, made as they are written. Written before
        // the status is published (whoever sees cycle N finds its events),
        // on a blocking thread: thousands of events are a file write that
        // must not hold a runtime worker (the API's requests run there).
        let st = Arc::new(status);
        let noted = std::mem::take(&mut self.pending);
        if !noted.is_empty() || !st.results.is_empty() {
            let (audit, cycle, status) = (self.audit.clone(), self.cycle, st.clone());
            let written = tokio::task::spawn_blocking(move || {
                let (results, time) = (&status.results, crate::audit::time_now());
                audit.append_with(noted.len() + results.len(), |i| {
                    match i.checked_sub(noted.len()) {
                        None => noted[i].clone(),
                        Some(k) => action_event(&results[k], cycle, &time),
                    }
                })
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the audit log"),
                Err(e) => tracing::warn!(error = %e, "audit log write did not finish"),
            }
        }
        // Counters first: whoever sees cycle N in the status finds the
        // counters of cycle N (or later) too.
        self.counters_tx
            .send_replace(Arc::new(self.counters.clone()));
        self.status_tx.send_replace(st.clone());
        let line = Notice::Status(crate::service::summary(&st));
        if self.watchdog.is_some() && self.hv.is_alive() {
            self.notifier.notify(&[line, Notice::Watchdog]);
        } else {
            self.notifier.notify(&[line]);
        }
        st
    }

    /// Fills `active_secs` from when each domain was first seen active.
    fn track_active(&mut self, mut domains: Vec<DomainObs>) -> Vec<DomainObs> {
        let now = Instant::now();
        let active: HashSet<&str> = domains
            .iter()
            .filter(|d| d.state.is_active())
            .map(|d| &*d.uuid)
            .collect();
        self.active.retain(|u, _| active.contains(&**u));
        drop(active);
        for d in &mut domains {
            if d.state.is_active() {
                let a = self.active.entry(d.uuid.clone()).or_insert(Active {
                    since: now,
                    stats_period_set: false,
                });
                d.active_secs = Some(now.duration_since(a.since).as_secs());
            }
        }
        domains
    }

    async fn set_stats_periods(&mut self, domains: &[&DomainObs]) {
        let secs = u32::try_from(self.config.tuning.stats_period.as_secs()).unwrap_or(u32::MAX);
        if secs == 0 {
            return;
        }
        let todo: Vec<String> = domains
            .iter()
            .filter(|d| d.state == crate::model::DomainState::Running)
            .filter(|d| {
                !self
                    .active
                    .get(&*d.uuid)
                    .is_some_and(|a| a.stats_period_set)
            })
            .map(|d| d.uuid.to_string())
            .collect();
        if todo.is_empty() {
            return;
        }
        if let Ok(results) = self.hv.set_stats_period(todo, secs).await {
            for (uuid, r) in results {
                let done = match r {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(%uuid, error = %e, "cannot set balloon stats period");
                        // Don't retry every cycle on domains that can't.
                        !matches!(e, HvError::ConnectionLost(_))
                    }
                };
                if let Some(a) = self.active.get_mut(uuid.as_str()) {
                    a.stats_period_set |= done;
                }
            }
        }
    }

    /// Runs the plan's actions in order, all in one job on the libvirt
    /// thread (one hand-over per cycle, not per action). Each is checked
    /// against the plan's invariants first (the guard refuses one that
    /// would break them); one failure never stops the others; a lost
    /// connection fails the rest without calling libvirt. With `only`,
    /// just the actions on those domains (UUIDs) run; the others are
    /// neither applied nor recorded nor reported.
    async fn enforce(
        &mut self,
        plan: Plan,
        now: u64,
        only: Option<&HashSet<String>>,
    ) -> (Plan, Vec<ActionOutcome>) {
        let picked: Vec<usize> = (0..plan.actions.len())
            .filter(|&i| only.is_none_or(|o| o.contains(plan.actions[i].uuid())))
            .collect();
        if picked.is_empty() {
            return (plan, Vec::new());
        }
        let plan = Arc::new(plan);
        let job_plan = plan.clone();
        let job_picked = picked.clone();
        let results = self
            .hv
            .run(move |hv| {
                let plan = &*job_plan;
                let mut guard = Guard::new(plan);
                let mut lost: Option<HvError> = None;
                let mut out = Vec::with_capacity(job_picked.len());
                for action in job_picked.iter().map(|&i| &plan.actions[i]) {
                    let r = if let Some(e) = &lost {
                        Err(e.clone())
                    } else if let Err(v) = guard.check(action) {
                        tracing::error!(domain = action.domain(), violation = %v, "action refused by the safety check");
                        Err(HvError::InvalidArg(format!(
                            "refused by the safety check: {v}"
                        )))
                    } else {
                        hv.apply(action)
                    };
                    match &r {
                        Ok(()) => guard.applied(action),
                        Err(e) if e.is_connection() && lost.is_none() => lost = Some(e.clone()),
                        Err(_) => {}
                    }
                    out.push(r);
                }
                out
            })
            .await;
        // The job's copy is dropped once it has run: the plan is ours again.
        let plan = Arc::try_unwrap(plan).unwrap_or_else(|p| (*p).clone());
        let results = match results {
            Ok(r) => r,
            Err(e) => vec![Err(e); picked.len()],
        };
        let mut out = Vec::with_capacity(picked.len());
        for (action, r) in picked.iter().map(|&i| &plan.actions[i]).zip(results) {
            let outcome = match &r {
                Ok(()) => Outcome::Ok,
                Err(HvError::Timeout(_)) => Outcome::Timeout,
                Err(_) => Outcome::Failed,
            };
            Arc::make_mut(&mut self.history).record(action, outcome, now);
            if let (Outcome::Timeout, Action::SetVcpus { from, to, .. }) = (outcome, action) {
                // Logged once: the planner sends no vCPU change to this
                // domain again in this run of it (see History::vcpus_frozen).
                tracing::warn!(
                    domain = action.domain(),
                    from,
                    to,
                    "vCPU change timed out: vCPU count held (pending) until libvirt shows {to} vCPUs or the domain restarts; no vCPU is added back after a timed-out removal"
                );
            }
            log_action(action, &r, self.cycle);
            out.push(ActionOutcome {
                ok: r.is_ok(),
                error: r.err().map(|e| e.to_string()),
                action: action.clone(),
            });
        }
        (plan, out)
    }
}

/// The audit record of one action's outcome.
fn action_event(r: &ActionOutcome, cycle: u64, time: &str) -> Event {
    let (before, after, reason) = describe(&r.action);
    let kind = EventKind::Action {
        domain: r.action.domain().to_string(),
        uuid: r.action.uuid().to_string(),
        resource: r.action.resource_label().to_string(),
        before,
        after,
        reason,
        result: if r.ok { "ok" } else { "error" }.into(),
        error: r.error.clone(),
        action: Some(Box::new(r.action.clone())),
    };
    Event {
        seq: 0,
        time: time.to_owned(),
        cycle: Some(cycle),
        kind,
    }
}

/// (before, after, reason) of an action, for logs and the audit log.
fn describe(a: &Action) -> (String, String, String) {
    match a {
        Action::SetVcpus {
            from, to, reason, ..
        } => (from.to_string(), to.to_string(), reason.to_string()),
        Action::SetMemory {
            from, to, reason, ..
        } => (
            crate::units::human_bytes(*from),
            crate::units::human_bytes(*to),
            reason.to_string(),
        ),
        Action::SetBlockIoTune { disk, from, to, .. } => (
            format!(
                "{disk} {}B/s {}IOPS",
                from.total_bytes_sec, from.total_iops_sec
            ),
            format!("{disk} {}B/s {}IOPS", to.total_bytes_sec, to.total_iops_sec),
            "share".into(),
        ),
        Action::SetCpuShares { from, to, .. } | Action::SetBlkioWeight { from, to, .. } => (
            from.map_or("unknown".into(), |v| v.to_string()),
            to.to_string(),
            "shares".into(),
        ),
    }
}

/// One structured event per enforcement action.
fn log_action(a: &Action, r: &Result<(), HvError>, cycle: u64) {
    let (before, after, reason) = describe(a);
    match r {
        Ok(()) => tracing::info!(
            cycle,
            domain = a.domain(),
            uuid = a.uuid(),
            resource = a.resource_label(),
            before,
            after,
            reason,
            result = "ok",
            "applied"
        ),
        Err(e) => tracing::warn!(
            cycle,
            domain = a.domain(),
            uuid = a.uuid(),
            resource = a.resource_label(),
            before,
            after,
            reason,
            result = "error",
            error = %e,
            "action failed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::events::{CloseReason, DomainEvent, LifecycleKind};

    fn ev(uuid: &str, kind: LifecycleKind) -> HvEvent {
        HvEvent::Domain(DomainEvent {
            uuid: uuid.into(),
            name: format!("vm-{uuid}"),
            kind,
            detail: 0,
        })
    }

    #[test]
    fn events_scope_the_cycle_to_their_domains() {
        let b = [
            ev("a", LifecycleKind::Started),
            ev("b", LifecycleKind::Stopped),
            ev("a", LifecycleKind::Suspended),
        ];
        assert_eq!(
            event_scope(&b),
            Scope::Domains(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn a_closed_connection_asks_for_a_full_cycle() {
        let b = [
            ev("a", LifecycleKind::Started),
            HvEvent::ConnectionClosed(CloseReason::Eof),
        ];
        assert_eq!(event_scope(&b), Scope::All);
        assert_eq!(event_scope(&[]), Scope::All);
    }
}
