//! What the reconciler publishes after every cycle ([`Report`]) and what it
//! counts across cycles ([`Counters`]). The API, the metrics and systemd's
//! `STATUS=` line are views of these; none of them waits on libvirt.
//!
//! Names, for the record: an *observation* is what libvirt showed in one
//! cycle ([`crate::core::model::Observation`]); the *report* is the agent's
//! state after the cycle (observation, plan, outcomes, connection); the
//! API's `StatusResponse` is the `/v1/status` view of a report; the
//! *runtime state* is what was changed through the API (`state.json`).

use crate::adapters::libvirt::calls::CallCounts;
use crate::adapters::libvirt::HvError;
use crate::core::config::Mode;
use crate::core::model::{Action, DomainObs, HostCapacity};
use crate::core::planner::{History, Plan};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

/// Why an action failed, as the agent decides on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionErrorKind {
    /// The domain no longer exists.
    NoDomain,
    /// libvirt rejected the value (not retried until the plan changes).
    InvalidArg,
    /// Not possible in the domain's current state (tried again next cycle).
    OperationInvalid,
    /// libvirt did not complete the change in time (held as pending).
    Timeout,
    /// The connection to libvirt is gone.
    ConnectionLost,
    /// The safety check refused the action before any libvirt call.
    Refused,
    /// Anything else libvirt reported.
    Other,
}

/// A failed action: what kind of failure, and libvirt's (or the safety
/// check's) words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionError {
    pub kind: ActionErrorKind,
    pub message: String,
}

impl From<&HvError> for ActionError {
    fn from(e: &HvError) -> ActionError {
        let kind = match e {
            HvError::NoDomain(_) => ActionErrorKind::NoDomain,
            HvError::InvalidArg(_) => ActionErrorKind::InvalidArg,
            HvError::OperationInvalid(_) => ActionErrorKind::OperationInvalid,
            HvError::Timeout(_) => ActionErrorKind::Timeout,
            HvError::ConnectionLost(_) => ActionErrorKind::ConnectionLost,
            HvError::Refused(_) => ActionErrorKind::Refused,
            HvError::Other(_) => ActionErrorKind::Other,
        };
        ActionError {
            kind,
            message: e.to_string(),
        }
    }
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The outcome of one enforcement action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub action: Action,
    pub ok: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ActionError>,
}

/// What the agent publishes after every cycle; the API serves views of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Number of cycles run (0 before the first).
    pub cycle: u64,
    pub mode: Mode,
    pub paused: bool,
    pub libvirt: LibvirtStatus,
    pub host: Option<HostCapacity>,
    /// The capacity the cycle used: declared beside measured, reserved,
    /// ratios, allocatable, memory pressure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<crate::core::capacity::Capacity>,
    pub last_cycle: Option<CycleInfo>,
    /// The last plan (with the actual values after its actions).
    pub plan: Option<Plan>,
    /// Every domain as last observed (with the changes libvirt accepted
    /// since).
    pub domains: Vec<DomainObs>,
    /// The outcome of the last cycle's actions.
    pub results: Vec<ActionOutcome>,
    /// The last config (or runtime state) error, if the last load failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
    /// What the next plan starts from besides the observation, so a dry
    /// run plans as the next cycle will (not part of the JSON).
    #[serde(skip)]
    pub basis: PlanBasis,
}

/// The planner's history as of a published cycle and the clock it is kept
/// in: with the report's domains, everything a dry-run plan needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanBasis {
    pub history: Arc<History>,
    /// When the reconciler's clock started (`now` = seconds since then).
    pub clock: Option<Instant>,
}

impl Report {
    /// One-line summary of a status, for `STATUS=` and logs.
    pub fn summary(&self) -> String {
        let st = self;
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
            crate::core::config::Mode::Enforce => "; enforce",
            crate::core::config::Mode::Observe => "; observe",
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
}

impl PlanBasis {
    /// The planner's `now` at this moment.
    pub fn now(&self) -> u64 {
        self.clock.map_or(0, |c| c.elapsed().as_secs())
    }
}

/// Upper bounds of the cycle duration histogram, seconds.
pub const CYCLE_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    /// Observations ≤ each bound (not cumulative; rendered cumulatively).
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

/// What the reconciler counts across cycles (a [`Report`] is one cycle).
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    pub cycles: u64,
    pub cycle_seconds: Histogram,
    /// (resource label, "ok" | "error") → actions.
    pub actions: BTreeMap<(String, String), u64>,
    pub reloads_ok: u64,
    pub reloads_refused: u64,
    /// Whether the last reload was swapped in (`None` before any reload).
    pub last_reload_ok: Option<bool>,
    /// Times the libvirt connection was lost.
    pub libvirt_lost: u64,
    /// libvirt calls made so far, by kind.
    pub libvirt_calls: CallCounts,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            cycles: 0,
            cycle_seconds: Histogram::new(&CYCLE_BUCKETS),
            actions: BTreeMap::new(),
            reloads_ok: 0,
            reloads_refused: 0,
            last_reload_ok: None,
            libvirt_lost: 0,
            libvirt_calls: CallCounts::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_one_line_and_says_what_is_wrong() {
        let st = Report {
            cycle: 7,
            mode: crate::core::config::Mode::Observe,
            paused: true,
            libvirt: LibvirtStatus {
                uri: "qemu:///system".into(),
                connected: false,
                error: Some("no socket\nat all".into()),
            },
            host: None,
            capacity: None,
            last_cycle: None,
            plan: None,
            domains: Vec::new(),
            results: Vec::new(),
            config_error: Some("reload refused: bad".into()),
            basis: Default::default(),
        };
        let s = st.summary();
        assert_eq!(
            s,
            "cycle 7; observe (paused); libvirt DOWN (no socket at all); config error: reload refused: bad"
        );
    }
}
