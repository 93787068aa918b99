//! What the planner reads and what it answers: [`PlanInput`] in, a
//! [`Plan`] out (per pool and member: floor, cap, target, next, actual and
//! reason per resource; the actions; the unmanaged domains).

use super::history::{History, Released};
use crate::core::config::{Allocatable, Config};
use crate::core::membership::Via;
use crate::core::model::{
    Action, DomainObs, DomainState, HostCapacity, PerResource, Reason, Resource,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// [`Alloc::cap`] of a member nothing caps: a disk rate without a `max`
/// (domains have no maximum I/O rate). Such a member may take up to the
/// pool's budget.
pub const UNCAPPED: u64 = u64::MAX;

/// Reservations made at run time through the API, per pool, then per
/// domain (name or UUID as the operator gave it): a raised `min`.
pub type Reservations = BTreeMap<String, BTreeMap<String, PerResource<Option<u64>>>>;

/// Everything the planner looks at.
pub struct PlanInput<'a> {
    pub config: &'a Config,
    /// The host as observed this cycle.
    pub host: HostCapacity,
    /// Every domain as observed this cycle, in any order.
    pub domains: &'a [DomainObs],
    pub reservations: &'a Reservations,
    pub history: &'a History,
    /// Seconds on the caller's monotonic clock.
    pub now: u64,
    /// Agent-wide pause or observe mode: plan, but issue no actions.
    pub paused: bool,
}

/// One member's allocation of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alloc {
    /// Guaranteed amount (reservation, guest need), capped by `cap`.
    pub floor: u64,
    /// Most it may get (max, hardware max, demand); [`UNCAPPED`] when
    /// nothing caps it (a disk rate without a `max`).
    pub cap: u64,
    pub shares: u64,
    /// Its fair allocation: floor ≤ target ≤ cap, Σ targets ≤ budget.
    pub target: u64,
    /// What it is set to this cycle (moves toward `target` within the
    /// stability rules; equals `actual` when nothing is issued).
    pub next: u64,
    /// What libvirt reports now (disk rates: Σ of the tunable disks'
    /// limits, 0 = unlimited).
    pub actual: u64,
    /// What the guest uses, when it says (memory only).
    pub used: Option<u64>,
    /// Why `next` is what it is: the target's reason when the member moves
    /// to (or is at) its target, else what holds it back (dead_band,
    /// rate_limited, cooldown, pending, paused, unadmitted).
    pub reason: Reason,
    /// Why `target` is what it is (share, floor, max, hardware_max, demand,
    /// pressure).
    pub target_reason: Reason,
}

/// A domain in a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberPlan {
    pub name: Arc<str>,
    pub uuid: Arc<str>,
    pub state: DomainState,
    pub via: Via,
    /// False when its floors did not fit (or it is not running): left
    /// untouched.
    pub admitted: bool,
    /// Why it is not admitted / why nothing is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Per resource the pool manages; `None` for unmanaged resources, for
    /// inactive domains, and for disk rates of a domain without tunable
    /// disks. Unadmitted members carry their floors and caps with
    /// target = next = actual and reason `unadmitted`.
    pub alloc: PerResource<Option<Alloc>>,
}

/// One pool's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolPlan {
    pub name: String,
    pub paused: bool,
    pub runtime: bool,
    /// `None` for resources the pool does not manage.
    pub budget: PerResource<Option<u64>>,
    /// Σ targets of admitted active members.
    pub allocated: PerResource<u64>,
    pub members: Vec<MemberPlan>,
}

impl PoolPlan {
    pub fn free(&self, r: Resource) -> Option<u64> {
        self.budget
            .get(r)
            .map(|b| b.saturating_sub(*self.allocated.get(r)))
    }

    /// Members whose floors did not fit (active but not admitted).
    pub fn unadmitted(&self) -> impl Iterator<Item = &MemberPlan> {
        self.members
            .iter()
            .filter(|m| m.state.is_active() && !m.admitted)
    }
}

/// A domain in no pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unmanaged {
    pub name: Arc<str>,
    pub uuid: Arc<str>,
    pub state: DomainState,
    pub vcpus: u64,
    pub memory: u64,
    /// Where giving back what the agent changed on it stands, when it was
    /// managed before (`None`: never changed by the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
}

/// Where a domain that left management stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// What the agent changed is being given back (actions in the plan).
    Giving,
    /// Waits until it runs (paused, or its persistent config was changed).
    Waiting,
    /// Done: given back, or left as it is.
    Done(Released),
}

impl Release {
    /// How an unmanaged domain reads in the views: `never touched` when
    /// the agent never changed it (`None`), else `released`, `giving back`
    /// or `release waits until it runs`.
    pub fn words(r: Option<Release>) -> &'static str {
        match r {
            None => "never touched",
            Some(Release::Giving) => "giving back what the agent changed",
            Some(Release::Waiting) => "release waits until it runs",
            Some(Release::Done(Released::Restored)) => "released: given back",
            Some(Release::Done(Released::Kept)) => "released: values kept",
        }
    }
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub allocatable: Allocatable,
    /// Host available memory is below the pressure threshold.
    pub pressure: bool,
    pub pools: Vec<PoolPlan>,
    pub unmanaged: Vec<Unmanaged>,
    /// What the enforcer does before the changes and that changes no
    /// allocation: the balloon statistics period of running members of
    /// pools that manage memory, once per run of each (so that guest
    /// statistics exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<Action>,
    /// Changes to make, in a deterministic order: everything that gives
    /// resources back (vCPU and balloon shrinks) first, then disk limits
    /// and weights, then growth.
    pub actions: Vec<Action>,
    /// What the agent changed on domains that left management, given
    /// back (run after the changes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<Action>,
    /// Per domain UUID: bytes by which pressure lowers its memory target
    /// (carried to the next cycle by [`History::record_plan`]).
    #[serde(default)]
    pub reclaim: BTreeMap<Arc<str>, u64>,
}

impl Plan {
    /// Every action in the order the enforcer runs them: the setup, then
    /// the changes. Index `i` of this order is [`Plan::step`]`(i)`.
    pub fn steps(&self) -> impl Iterator<Item = &Action> {
        self.setup.iter().chain(&self.actions).chain(&self.releases)
    }

    /// The number of [`Plan::steps`].
    pub fn step_count(&self) -> usize {
        self.setup.len() + self.actions.len() + self.releases.len()
    }

    /// The `i`-th of [`Plan::steps`].
    pub fn step(&self, i: usize) -> &Action {
        if i < self.setup.len() {
            &self.setup[i]
        } else if i < self.setup.len() + self.actions.len() {
            &self.actions[i - self.setup.len()]
        } else {
            &self.releases[i - self.setup.len() - self.actions.len()]
        }
    }

    /// Refreshes every member's `actual` from `domains` (after enforcement).
    pub fn refresh_actuals(&mut self, domains: &[DomainObs]) {
        let by_uuid: std::collections::HashMap<&str, &DomainObs> =
            domains.iter().map(|d| (&*d.uuid, d)).collect();
        for p in &mut self.pools {
            for m in &mut p.members {
                let Some(d) = by_uuid.get(&*m.uuid) else {
                    continue;
                };
                for r in Resource::ALL {
                    if let Some(a) = m.alloc.get_mut(r).as_mut() {
                        a.actual = d.actual(r);
                    }
                }
            }
        }
    }
}
