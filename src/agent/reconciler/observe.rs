//! Step 2 of a cycle: what libvirt shows. A full cycle reads every domain;
//! a scoped cycle reads its domains and puts them into the last published
//! observation. A lost connection is the cycle's outcome, not a panic:
//! the last plan stays for the API and the loop retries with backoff.

use super::inputs::Timings;
use super::scope::{pool_neighbours_with_actions, scoped_limit, Last, Scope};
use crate::adapters::libvirt::worker::HvWorker;
use crate::adapters::libvirt::HvError;
use crate::agent::cpu_use::CpuUse;
use crate::agent::report::Report;
use crate::core::config::Config;
use crate::core::model::DomainObs;
use crate::core::planner::Plan;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the observing step keeps between cycles.
#[derive(Default)]
pub(super) struct Observer {
    /// When each active domain was first seen active (by UUID).
    first_seen: HashMap<Arc<str>, Instant>,
    /// Failed observations in a row (reconnect backoff).
    failures: u32,
    /// The effective config of the last full cycle that observed libvirt
    /// (a scoped cycle needs the same).
    last_full: Option<Config>,
    /// Each domain's last CPU-time reading (its use between readings).
    cpu: CpuUse,
}

/// Why a cycle has no observation.
pub(super) enum Failed {
    /// A full observation gave way to a scoped cycle asked meanwhile.
    GaveWay,
    /// libvirt failed (the connection is lost, most likely).
    Hv(HvError),
}

/// What one observation found.
pub(super) struct Observed {
    pub(super) domains: Vec<DomainObs>,
    /// libvirt answers again after failing.
    pub(super) restored: bool,
}

/// How an observation is to be made.
pub(super) struct Ask<'a> {
    pub(super) hv: &'a HvWorker,
    /// The last published report (a scoped observation builds on it).
    pub(super) last: &'a Report,
    /// The effective config of this cycle.
    pub(super) effective: &'a Config,
    /// Set when a scoped cycle waits: a full observation gives way.
    pub(super) preempt: &'a Arc<AtomicBool>,
    /// Whether a full observation may give way.
    pub(super) preemptible: bool,
}

/// Backoff between reconnect attempts: 1 s doubling to 60 s.
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60))
}

/// Widens a scoped cycle once to the other domains with actions in its
/// domains' pools (a raised reservation takes from them first), or to a
/// full cycle when that is too many. Returns whether the cycle must
/// observe and plan again.
pub(super) fn widen(scope: &mut Option<Vec<String>>, plan: &Plan, total: usize) -> bool {
    let Some(uuids) = scope.as_mut() else {
        return false;
    };
    let extra = pool_neighbours_with_actions(plan, uuids);
    if extra.is_empty() {
        return false;
    }
    uuids.extend(extra);
    if uuids.len() > scoped_limit(total) {
        tracing::debug!(domains = uuids.len(), "scope too wide: full cycle");
        *scope = None;
    }
    true
}

impl Observer {
    /// The wait before the next reconnect attempt.
    pub(super) fn retry_in(&self) -> Duration {
        backoff(self.failures.saturating_sub(1))
    }

    /// The domains a cycle asked for `request` may look at alone, or `None`
    /// when it must be a full one: no full cycle yet, libvirt down at the
    /// last cycle, the effective config (pools, mode) or the pause changed
    /// since the last full cycle, a domain not in the last observation, or
    /// more than a tenth of the domains (one is always allowed).
    pub(super) fn scope_for(
        &self,
        request: Scope,
        effective: &Config,
        paused: bool,
        last: &Report,
    ) -> Option<Vec<String>> {
        let Scope::Domains(uuids) = request else {
            return None;
        };
        if self.last_full.as_ref() != Some(effective) || last.paused != paused {
            return None;
        }
        Last::of(last).can_scope(&uuids).then_some(uuids)
    }

    /// Observes the domains of `scope` (on top of the last observation) or
    /// all of them; a scoped observation that fails, or finds a domain
    /// gone, becomes a full one (`scope` is then `None`).
    pub(super) async fn observe(
        &mut self,
        ask: Ask<'_>,
        scope: &mut Option<Vec<String>>,
        timings: &mut Timings,
    ) -> Result<Observed, Failed> {
        if let Some(uuids) = scope.as_deref() {
            if let Some(merged) = scoped(ask.hv, ask.last, uuids, timings).await {
                return Ok(self.answered(merged, Some(uuids)));
            }
            *scope = None;
        }
        let t = Instant::now();
        let observed = if ask.preemptible {
            ask.preempt.store(false, Ordering::Release);
            match ask.hv.observe_until(ask.preempt.clone()).await {
                Ok(Some(d)) => Ok(d),
                Ok(None) => return Err(Failed::GaveWay),
                Err(e) => Err(e),
            }
        } else {
            ask.hv.observe().await
        };
        timings.observe += t.elapsed();
        match observed {
            Ok(d) => {
                self.last_full = Some(ask.effective.clone());
                Ok(self.answered(d, None))
            }
            Err(e) => {
                self.last_full = None;
                self.failures = self.failures.saturating_add(1);
                tracing::warn!(uri = %ask.effective.agent.libvirt_uri, error = %e, retry_in = ?self.retry_in(), "cannot observe libvirt");
                Err(Failed::Hv(e))
            }
        }
    }

    /// libvirt answered: with every domain read now (`fresh` `None`), or
    /// only these.
    fn answered(&mut self, domains: Vec<DomainObs>, fresh: Option<&[String]>) -> Observed {
        let restored = self.failures > 0;
        self.failures = 0;
        Observed {
            domains: self.track_active(domains, fresh),
            restored,
        }
    }

    /// Fills `active_secs` from when each domain was first seen active,
    /// and `cpu_used` from the change of its CPU time.
    fn track_active(
        &mut self,
        mut domains: Vec<DomainObs>,
        fresh: Option<&[String]>,
    ) -> Vec<DomainObs> {
        let now = Instant::now();
        self.cpu.fill(&mut domains, fresh, now);
        let active: HashSet<&str> = domains
            .iter()
            .filter(|d| d.state.is_active())
            .map(|d| &*d.uuid)
            .collect();
        self.first_seen.retain(|u, _| active.contains(&**u));
        drop(active);
        for d in &mut domains {
            if d.state.is_active() {
                let since = *self.first_seen.entry(d.uuid.clone()).or_insert(now);
                d.active_secs = Some(now.duration_since(since).as_secs());
            }
        }
        domains
    }
}

/// Re-observes the scoped domains and puts them into the last published
/// observation. `None` when one is gone or libvirt fails (then a full
/// cycle observes, and reports the failure).
async fn scoped(
    hv: &HvWorker,
    last: &Report,
    uuids: &[String],
    timings: &mut Timings,
) -> Option<Vec<DomainObs>> {
    let t = Instant::now();
    let fresh = hv.observe_domains(uuids.to_vec()).await;
    timings.observe += t.elapsed();
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
    let mut merged = last.domains.clone();
    for d in &mut merged {
        if let Some(f) = fresh.remove(&*d.uuid) {
            *d = f;
        }
    }
    Some(merged)
}
