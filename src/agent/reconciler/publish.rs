//! Step 6 of a cycle: the report the API serves, the counters, the audit
//! log and systemd's status line. Also what is saved between cycles (held
//! vCPU changes) and the events noted along the way.

use super::enforce::Ran;
use super::inputs::{Inputs, Timings};
use crate::adapters::libvirt::calls::CallCounts;
use crate::adapters::libvirt::HvError;
use crate::agent::audit::{self, AuditLog, Event, EventKind};
use crate::agent::memory::SavedHistory;
use crate::agent::notify::{Notice, Notifier};
use crate::agent::report::{ActionOutcome, Counters, CycleInfo, LibvirtStatus, Report};
use crate::agent::samples::Samples;
use crate::agent::state::VcpuHolds;
use crate::core::capacity::Capacity;
use crate::core::config::Config;
use crate::core::model::DomainObs;
use crate::core::planner::{History, Plan, Released};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// What the publishing step keeps between cycles.
pub(super) struct Publisher {
    reports: watch::Sender<Arc<Report>>,
    pub(super) config_tx: watch::Sender<Arc<Config>>,
    pub(super) counters: Counters,
    counters_tx: watch::Sender<Arc<Counters>>,
    pub(super) notifier: Arc<dyn Notifier>,
    pub(super) watchdog: Option<Duration>,
    audit: AuditLog,
    /// Audit events waiting for the end of the cycle.
    pending: Vec<Event>,
    /// Unadmitted members (pool, UUID) already reported.
    unadmitted: HashSet<(String, String)>,
    /// The libvirt call counts when the last cycle ended.
    calls_at_publish: CallCounts,
    /// Where held vCPU changes are saved, and what the file holds now.
    holds_dir: Option<PathBuf>,
    saved_holds: VcpuHolds,
    /// The planner's history whose saved part the file holds now (shared
    /// with the reconciler's while a cycle changes nothing in it).
    saved_history: Arc<History>,
    /// Why the last reload was refused, until a good one.
    pub(super) reload_error: Option<String>,
    /// Whether libvirt answered in the last published cycle (`None`
    /// before the first).
    pub(super) was_connected: Option<bool>,
    /// The pools' history (shared with the handles).
    samples: Samples,
}

/// The domains and plan after the actions libvirt accepted: what the
/// report shows is what the domains have now, not what they had.
pub(super) fn settle(
    mut domains: Vec<DomainObs>,
    mut plan: Plan,
    ran: &Ran,
) -> (Vec<DomainObs>, Plan) {
    let accepted: Vec<usize> = ran
        .results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| *i)
        .collect();
    if accepted.is_empty() {
        return (domains, plan);
    }
    let by_uuid: HashMap<Arc<str>, usize> = domains
        .iter()
        .enumerate()
        .map(|(i, d)| (d.uuid.clone(), i))
        .collect();
    for i in accepted {
        let action = plan.step(i);
        if let Some(&d) = by_uuid.get(action.uuid()) {
            domains[d].apply(action);
        }
    }
    plan.refresh_actuals(&domains);
    (domains, plan)
}

impl Publisher {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        reports: watch::Sender<Arc<Report>>,
        config_tx: watch::Sender<Arc<Config>>,
        counters_tx: watch::Sender<Arc<Counters>>,
        notifier: Arc<dyn Notifier>,
        watchdog: Option<Duration>,
        audit: AuditLog,
        holds_dir: Option<PathBuf>,
        saved_holds: VcpuHolds,
        saved_history: Arc<History>,
        samples: Samples,
    ) -> Publisher {
        Publisher {
            reports,
            config_tx,
            counters: Counters::default(),
            counters_tx,
            notifier,
            watchdog,
            audit,
            pending: Vec::new(),
            unadmitted: HashSet::new(),
            calls_at_publish: CallCounts::default(),
            holds_dir,
            saved_holds,
            saved_history,
            reload_error: None,
            was_connected: None,
            samples,
        }
    }

    /// The last published report.
    pub(super) fn last(&self) -> Arc<Report> {
        self.reports.borrow().clone()
    }

    /// Notes an event for the audit log (written with the next cycle).
    pub(super) fn note(&mut self, e: Event) {
        self.pending.push(e);
    }

    /// Writes the noted events now (when the loop stops).
    pub(super) fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.pending);
        if let Err(e) = self.audit.append_owned(events) {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    }

    /// The report of a cycle that planned (and maybe enforced).
    pub(super) fn report(
        &mut self,
        inputs: &Inputs,
        config: &Config,
        cycle: u64,
        domains: Vec<DomainObs>,
        plan: Plan,
        ran: &Ran,
    ) -> Report {
        let mut libvirt = LibvirtStatus {
            uri: config.agent.libvirt_uri.clone(),
            connected: true,
            error: None,
        };
        if let Some(e) = ran.lost() {
            libvirt.connected = false;
            libvirt.error = Some(e.to_string());
        }
        self.note_unadmitted(&plan, cycle);
        Report {
            cycle,
            mode: inputs.mode,
            paused: inputs.runtime.paused,
            libvirt,
            host: Some(inputs.host),
            capacity: Some(Capacity::of(&config.host, &config.tuning, &inputs.host)),
            last_cycle: None,
            results: ran.outcomes(&plan),
            plan: Some(plan),
            domains,
            config_error: inputs.config_error.clone(),
            basis: Default::default(),
        }
    }

    /// The report of a cycle that could not observe: the last domains and
    /// plan stay for the API.
    pub(super) fn lost(&self, inputs: &Inputs, e: HvError, cycle: u64, config: &Config) -> Report {
        let prev = self.last();
        Report {
            cycle,
            mode: inputs.mode,
            paused: inputs.runtime.paused,
            libvirt: LibvirtStatus {
                uri: config.agent.libvirt_uri.clone(),
                connected: false,
                error: Some(e.to_string()),
            },
            host: Some(inputs.host),
            capacity: Some(Capacity::of(&config.host, &config.tuning, &inputs.host)),
            last_cycle: None,
            plan: prev.plan.clone(),
            domains: prev.domains.clone(),
            results: Vec::new(),
            config_error: inputs.config_error.clone(),
            basis: Default::default(),
        }
    }

    /// Reports the domains released by this cycle (in `after`'s released
    /// domains, not in `before`'s: what the agent changed given back, or
    /// kept).
    pub(super) fn note_released(
        &mut self,
        before: &History,
        after: &History,
        plan: &Plan,
        cycle: u64,
    ) {
        for (uuid, how) in after.released.iter() {
            if before.released.contains_key(uuid) {
                continue;
            }
            let name = plan
                .unmanaged
                .iter()
                .find(|u| *u.uuid == **uuid)
                .map_or_else(|| uuid.to_string(), |u| u.name.to_string());
            let how = match how {
                Released::Restored => "restored",
                Released::Kept => "kept",
            };
            tracing::info!(domain = %name, how, "domain released");
            self.pending.push(Event::in_cycle(
                EventKind::Released {
                    domain: name,
                    uuid: uuid.to_string(),
                    how: how.into(),
                },
                cycle,
            ));
        }
    }

    /// Reports members that became unadmitted (once each, until admitted)
    /// and those admitted again.
    fn note_unadmitted(&mut self, plan: &Plan, cycle: u64) {
        if !self.unadmitted.is_empty() {
            for p in &plan.pools {
                for m in p.members.iter().filter(|m| m.admitted) {
                    let key = (p.name.clone(), m.uuid.to_string());
                    if self.unadmitted.contains(&key) {
                        tracing::info!(pool = %p.name, domain = %m.name, "member admitted again");
                        self.pending.push(Event::in_cycle(
                            EventKind::Admitted {
                                pool: p.name.clone(),
                                domain: m.name.to_string(),
                                uuid: m.uuid.to_string(),
                            },
                            cycle,
                        ));
                    }
                }
            }
        }
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
                        cycle,
                    ));
                }
                now.insert(key);
            }
        }
        self.unadmitted = now;
    }

    /// Publishes a report and the counters, writes the cycle's events,
    /// reports to the service manager (STATUS=, and WATCHDOG=1: a cycle
    /// finished, so the loop is alive — unless the libvirt thread is gone
    /// for good, `hv_alive` false).
    pub(super) async fn publish(
        &mut self,
        mut report: Report,
        t0: Instant,
        timings: Timings,
        scope: Option<Vec<String>>,
        calls_now: CallCounts,
        hv_alive: bool,
    ) -> Arc<Report> {
        let failed = report.results.iter().filter(|r| !r.ok).count();
        let elapsed = t0.elapsed();
        let calls = calls_now.since(&self.calls_at_publish);
        self.calls_at_publish = calls_now;
        self.counters.libvirt_calls = calls_now;
        report.last_cycle = Some(CycleInfo {
            finished_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            observe_ms: timings.observe.as_secs_f64() * 1000.0,
            plan_ms: timings.plan.as_secs_f64() * 1000.0,
            enforce_ms: timings.enforce.as_secs_f64() * 1000.0,
            libvirt_reads: calls.reads(),
            libvirt_writes: calls.writes(),
            actions: report.results.len(),
            failed,
            scope,
        });
        // Lost in observe or in the middle of enforcing: one event per loss.
        if !report.libvirt.connected && self.was_connected != Some(false) {
            self.counters.libvirt_lost += 1;
            self.pending.push(Event::in_cycle(
                EventKind::LibvirtLost {
                    uri: report.libvirt.uri.clone(),
                    error: report.libvirt.error.clone().unwrap_or_default(),
                },
                report.cycle,
            ));
        }
        self.was_connected = Some(report.libvirt.connected);
        self.counters.cycles += 1;
        self.counters.cycle_seconds.observe(elapsed.as_secs_f64());
        for r in &report.results {
            let key = (
                r.action.resource_label().to_string(),
                if r.ok { "ok" } else { "error" }.to_string(),
            );
            *self.counters.actions.entry(key).or_insert(0) += 1;
        }
        let report = Arc::new(report);
        self.samples.record(&report);
        self.write_events(&report).await;
        // Counters first: whoever sees cycle N in the report finds the
        // counters of cycle N (or later) too.
        self.counters_tx
            .send_replace(Arc::new(self.counters.clone()));
        self.reports.send_replace(report.clone());
        let line = Notice::Status(report.summary());
        if self.watchdog.is_some() && hv_alive {
            self.notifier.notify(&[line, Notice::Watchdog]);
        } else {
            self.notifier.notify(&[line]);
        }
        report
    }

    /// The cycle's events in one batch: those noted during the cycle, then
    /// one per action, made as they are written. Written before the report
    /// is published (whoever sees cycle N finds its events), on a blocking
    /// thread: thousands of events are a file write that must not hold a
    /// runtime worker (the API's requests run there).
    async fn write_events(&mut self, report: &Arc<Report>) {
        let noted = std::mem::take(&mut self.pending);
        if noted.is_empty() && report.results.is_empty() {
            return;
        }
        let (audit, report) = (self.audit.clone(), report.clone());
        let written = tokio::task::spawn_blocking(move || {
            let (results, time) = (&report.results, audit::time_now());
            audit.append_with(noted.len() + results.len(), |i| {
                match i.checked_sub(noted.len()) {
                    None => noted[i].clone(),
                    Some(k) => action_event(&results[k], report.cycle, &time),
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

    /// Saves what the planner remembers across restarts when it changed:
    /// the held vCPU changes (a timeout was recorded, or a held domain
    /// restarted or went away) and the saved history (admissions, what
    /// domains had before the agent changed them). On a blocking thread
    /// (the writes are fsynced); a failed write is logged and tried again
    /// after the next cycle.
    pub(super) async fn save(&mut self, history: &Arc<History>) {
        let Some(dir) = self.holds_dir.clone() else {
            return;
        };
        let holds = VcpuHolds::from_pending(&history.vcpu_pending);
        let holds = (holds.holds != self.saved_holds.holds).then_some(holds);
        let saved = if SavedHistory::same_part(&self.saved_history, history) {
            // Nothing to write. Hold this cycle's history rather than the
            // one it replaced: that one would stay alive as a second copy.
            self.saved_history = Arc::clone(history);
            None
        } else {
            Some(Arc::clone(history))
        };
        if holds.is_none() && saved.is_none() {
            return;
        }
        let written = tokio::task::spawn_blocking(move || {
            let h = holds.map(|h| h.save(&dir).map(|()| h));
            let s = saved.map(|s| SavedHistory::save_part(&s, &dir).map(|()| s));
            (h, s)
        })
        .await;
        let (h, s) = match written {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the planner's memory was not saved");
                return;
            }
        };
        match h {
            Some(Ok(h)) => {
                tracing::debug!(held = h.holds.len(), "vCPU holds saved");
                self.saved_holds = h;
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "vCPU holds not saved: a restarted agent would forget them");
            }
            None => {}
        }
        match s {
            Some(Ok(s)) => self.saved_history = s,
            Some(Err(e)) => {
                tracing::error!(error = %e, "admissions and original values not saved: a restarted agent would forget them");
            }
            None => {}
        }
    }
}

/// The audit record of one action's outcome.
fn action_event(r: &ActionOutcome, cycle: u64, time: &str) -> Event {
    let change = crate::core::words::action_change(&r.action);
    let kind = EventKind::Action {
        domain: r.action.domain().to_string(),
        uuid: r.action.uuid().to_string(),
        resource: r.action.resource_label().to_string(),
        before: change.before,
        after: change.after,
        reason: change.reason,
        result: if r.ok { "ok" } else { "error" }.into(),
        error: r.error.as_ref().map(|e| e.message.clone()),
        action: Some(Box::new(r.action.clone())),
    };
    Event {
        seq: 0,
        time: time.to_owned(),
        cycle: Some(cycle),
        kind,
    }
}
