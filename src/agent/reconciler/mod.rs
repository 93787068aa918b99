//! The reconciler: keeps every running domain inside its pool's
//! allocation, one cycle at a time. A cycle is a straight pipeline:
//!
//! 1. **inputs** (this file): the host's capacity, the runtime state and
//!    the effective config (file ⊕ runtime);
//! 2. **observe** ([`observe`]): every domain, or only the scoped ones on
//!    top of the last observation;
//! 3. **plan** ([`plan`]): the pure planner on what was observed; a scoped
//!    cycle whose plan moves other members of its pools re-observes them
//!    and plans once more (at most once);
//! 4. **enforce** ([`enforce`]): the plan's actions, each checked by the
//!    planner's guard, on the libvirt thread;
//! 5. **remember**: the planner's history moves on
//!    ([`crate::core::planner::advance`]), held vCPU changes are saved;
//! 6. **publish** ([`publish`]): the report, counters, audit events and
//!    systemd's status line.
//!
//! When cycles run — ticks, API requests, libvirt events, a full
//! observation giving way to a scoped cycle — is [`schedule`]'s business.
//! [`Handle`] is what the API and the service layer hold.

mod enforce;
mod handle;
mod inputs;
mod observe;
mod plan;
mod publish;
mod schedule;
mod scope;

pub use handle::{BoxFuture, Command, Control, Handle};
pub use scope::Scope;

use crate::adapters::host::Host;
use crate::adapters::libvirt::events::EventReceiver;
use crate::adapters::libvirt::worker::HvWorker;
use crate::agent::audit::{AuditLog, Event, EventKind};
use crate::agent::memory::SavedHistory;
use crate::agent::notify::{NoNotifier, Notifier};
use crate::agent::report::{Counters, LibvirtStatus, PlanBasis, Report};
use crate::agent::state::{RuntimeState, VcpuHolds};
use crate::core::config::{Config, Mode};
use crate::core::planner::{self, CycleFacts, History};
use inputs::{Inputs, Timings};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Optional collaborators of a [`Reconciler`].
#[derive(Clone)]
pub struct ReconcilerOptions {
    /// Plan and report, change nothing (overrides `agent.mode`).
    pub observe_only: bool,
    /// Receives `STATUS=` after every cycle and `WATCHDOG=1` pings.
    pub notifier: Arc<dyn Notifier>,
    /// The systemd watchdog interval: with it the loop pings after every
    /// cycle and wakes at least every half interval to ping. A hung cycle
    /// pings no more.
    pub watchdog: Option<Duration>,
    /// Where events are written.
    pub audit: AuditLog,
    /// Where held vCPU changes and the planner's saved history go
    /// (`state_dir`); `None`: kept in memory only.
    pub holds_dir: Option<PathBuf>,
    /// The held vCPU changes saved by an earlier run (see [`VcpuHolds`]):
    /// they hold from the first cycle on.
    pub holds: VcpuHolds,
    /// The planner's history saved by an earlier run (admission order,
    /// what domains had before the agent changed them).
    pub saved: SavedHistory,
}

impl Default for ReconcilerOptions {
    fn default() -> Self {
        ReconcilerOptions {
            observe_only: false,
            notifier: Arc::new(NoNotifier),
            watchdog: None,
            audit: AuditLog::memory(),
            holds_dir: None,
            holds: VcpuHolds::default(),
            saved: SavedHistory::default(),
        }
    }
}

/// The reconciler's own state; [`Reconciler::run`] drives it.
pub struct Reconciler {
    hv: HvWorker,
    host: Host,
    /// The file config in force (changes on reload).
    config: Config,
    runtime: Arc<Mutex<RuntimeState>>,
    observe_only: bool,
    /// What the planner remembers; shared with the published report until
    /// a cycle changes it.
    history: Arc<History>,
    /// The planner's clock starts here.
    clock: Instant,
    /// Cycles published so far.
    cycle: u64,
    observer: observe::Observer,
    planner: plan::Planning,
    publisher: publish::Publisher,
    /// Requests from the handles.
    cmd_rx: mpsc::Receiver<Command>,
    /// libvirt events, when registered: each (debounced) batch runs a
    /// cycle.
    events: Option<EventReceiver>,
    /// Shared with the handles: a scoped cycle is waiting, a full
    /// observation gives way.
    preempt: Arc<AtomicBool>,
}

fn lock<T: Clone>(m: &Mutex<T>) -> T {
    match m.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

impl Reconciler {
    /// Builds a reconciler and the handle the API uses.
    pub fn new(
        hv: HvWorker,
        host: Host,
        config: Config,
        runtime: RuntimeState,
        observe_only: bool,
    ) -> (Reconciler, Handle) {
        Reconciler::with_options(
            hv,
            host,
            config,
            runtime,
            ReconcilerOptions {
                observe_only,
                ..ReconcilerOptions::default()
            },
        )
    }

    /// Builds a reconciler with its collaborators.
    pub fn with_options(
        hv: HvWorker,
        host: Host,
        config: Config,
        runtime: RuntimeState,
        opts: ReconcilerOptions,
    ) -> (Reconciler, Handle) {
        let observe_only = opts.observe_only;
        let initial = Report {
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
            capacity: None,
            last_cycle: None,
            plan: None,
            domains: Vec::new(),
            results: Vec::new(),
            config_error: None,
            basis: PlanBasis::default(),
        };
        let (reports_tx, reports) = watch::channel(Arc::new(initial));
        let (cmd, cmd_rx) = mpsc::channel(64);
        let runtime = Arc::new(Mutex::new(runtime));
        let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
        let (counters_tx, counters) = watch::channel(Arc::new(Counters::default()));
        let preempt = Arc::new(AtomicBool::new(false));
        let samples = crate::agent::samples::Samples::new(config.agent.interval);
        let handle = Handle {
            samples: samples.clone(),
            preempt: preempt.clone(),
            config: config_rx,
            reports,
            runtime: runtime.clone(),
            counters,
            audit: opts.audit.clone(),
            cmd,
        };
        let history = Arc::new({
            let mut h = History {
                vcpu_pending: Arc::new(opts.holds.to_pending(0)),
                ..History::default()
            };
            opts.saved.restore_into(&mut h);
            h
        });
        let r = Reconciler {
            hv,
            host,
            config,
            runtime,
            observe_only,
            history: Arc::clone(&history),
            clock: Instant::now(),
            cycle: 0,
            observer: observe::Observer::default(),
            planner: plan::Planning::default(),
            publisher: publish::Publisher::new(
                reports_tx,
                config_tx,
                counters_tx,
                opts.notifier,
                opts.watchdog.filter(|w| !w.is_zero()),
                opts.audit,
                opts.holds_dir,
                opts.holds,
                history,
                samples,
            ),
            cmd_rx,
            events: None,
            preempt,
        };
        (r, handle)
    }

    /// Also runs a cycle at once on libvirt events (see
    /// [`crate::adapters::libvirt::events`]).
    pub fn with_events(mut self, rx: EventReceiver) -> Reconciler {
        self.events = Some(rx);
        self
    }

    fn mode(&self) -> Mode {
        if self.observe_only {
            Mode::Observe
        } else {
            self.config.agent.mode
        }
    }

    /// Runs one full cycle: observe → plan → enforce → publish. Returns the
    /// published report.
    pub async fn cycle_once(&mut self) -> Arc<Report> {
        self.cycle(Scope::All).await
    }

    /// Runs one cycle over `scope` (see [`Scope`]). A scoped cycle observes
    /// and enforces only its domains and plans the whole host with the
    /// others as last observed. Returns the published report.
    pub async fn cycle(&mut self, scope: Scope) -> Arc<Report> {
        self.run_cycle(scope, false)
            .await
            .expect("a cycle that may not give way always publishes")
    }

    /// Step 1: what the cycle starts from.
    fn inputs(&mut self) -> Inputs {
        let host = self.host.refresh();
        let runtime = lock(&self.runtime);
        let mut config_error = self
            .publisher
            .reload_error
            .as_ref()
            .map(|e| format!("reload refused (running the previous config): {e}"));
        // What fits applies (a paused pool stays paused); the rest is left
        // out and reported.
        let effective = runtime.effective(&self.config);
        if !effective.problems.is_empty() {
            let msg = format!(
                "runtime state entries left out (they do not fit the config): {}",
                crate::agent::state::StateProblems(effective.problems)
            );
            tracing::error!(error = %msg, "runtime state does not fit the config; the rest of it applies");
            config_error = Some(match config_error.take() {
                Some(prev) => format!("{prev}; {msg}"),
                None => msg,
            });
        }
        let effective = effective.config;
        let mode = self.mode();
        Inputs {
            host,
            enforce: mode == Mode::Enforce && !runtime.paused,
            mode,
            runtime,
            effective,
            config_error,
        }
    }

    /// The pipeline of one cycle (see the module doc). With `preemptible`,
    /// a full observation gives up when a scoped cycle is asked for
    /// meanwhile (`None`: nothing published, the cycle number not used).
    async fn run_cycle(&mut self, request: Scope, preemptible: bool) -> Option<Arc<Report>> {
        let t0 = Instant::now();
        let number = self.cycle + 1;
        let mut timings = Timings::default();
        let inputs = self.inputs();
        let now = self.clock.elapsed().as_secs();

        // 2 + 3: observe and plan (a scoped cycle may widen once).
        let last = self.publisher.last();
        let mut scope =
            self.observer
                .scope_for(request, &inputs.effective, inputs.runtime.paused, &last);
        let mut widened = false;
        let (domains, plan) = loop {
            let ask = observe::Ask {
                hv: &self.hv,
                last: &last,
                effective: &inputs.effective,
                preempt: &self.preempt,
                preemptible: preemptible && !widened,
            };
            let domains = match self.observer.observe(ask, &mut scope, &mut timings).await {
                Ok(observed) => {
                    self.answered(observed.restored, number);
                    observed.domains
                }
                Err(observe::Failed::GaveWay) => return None,
                Err(observe::Failed::Hv(e)) => {
                    self.cycle = number;
                    let report = self.publisher.lost(&inputs, e, number, &self.config);
                    return Some(self.publish(report, t0, timings, None).await);
                }
            };
            let plan = self
                .planner
                .plan(&inputs, &domains, &self.history, now, &mut timings);
            if widened || !observe::widen(&mut scope, &plan, domains.len()) {
                break (domains, plan);
            }
            widened = true;
        };
        drop(last);
        self.cycle = number;
        let in_scope: Option<HashSet<String>> = scope.as_ref().map(|u| u.iter().cloned().collect());

        // 4: enforce.
        let (plan, ran) = if inputs.enforce {
            enforce::enforce(&self.hv, plan, in_scope.as_ref(), number, &mut timings).await
        } else {
            (plan, enforce::Ran::default())
        };

        // 5: remember. The report shows what the domains have now.
        let (domains, plan) = publish::settle(domains, plan, &ran);
        let before = Arc::clone(&self.history);
        self.history = planner::advance(
            &self.history,
            &CycleFacts {
                plan: &plan,
                domains: &domains,
                scope: in_scope.as_ref(),
                enforced: inputs.enforce,
                outcomes: &ran.for_history(&plan),
                now,
            },
        );
        self.publisher
            .note_released(&before, &self.history, &plan, number);
        drop(before);
        self.publisher.save(&self.history).await;

        // 6: publish.
        let report = self
            .publisher
            .report(&inputs, &self.config, number, domains, plan, &ran);
        Some(self.publish(report, t0, timings, scope).await)
    }

    /// libvirt answered: notes a restored connection.
    fn answered(&mut self, restored: bool, cycle: u64) {
        if restored {
            tracing::info!(uri = %self.config.agent.libvirt_uri, "libvirt connection restored");
        }
        if self.publisher.was_connected == Some(false) {
            self.publisher.note(Event::in_cycle(
                EventKind::LibvirtRestored {
                    uri: self.config.agent.libvirt_uri.clone(),
                },
                cycle,
            ));
        }
    }

    /// Publishes `report` with the planner basis and the cycle's facts.
    async fn publish(
        &mut self,
        mut report: Report,
        t0: Instant,
        timings: Timings,
        scope: Option<Vec<String>>,
    ) -> Arc<Report> {
        report.basis = PlanBasis {
            history: self.history.clone(),
            clock: Some(self.clock),
        };
        let calls = self.hv.calls().unwrap_or_default();
        let alive = self.hv.is_alive();
        self.publisher
            .publish(report, t0, timings, scope, calls, alive)
            .await
    }
}
