//! The planner: a pure function from what the agent knows (config, host,
//! observed domains, runtime reservations, history) to what every managed
//! domain should have, the actions that get it there, and why.
//!
//! No I/O, no clock: the caller passes `now`. Same inputs → same plan,
//! whatever the order of the domains.

pub mod alloc;

use crate::config::{Allocatable, Config, Limits, Pool, DEFAULT_SHARES};
use crate::membership::{Membership, Via};
use crate::model::{Action, DomainObs, DomainState, PerResource, Reason, Resource, Snapshot};
use crate::units;
use alloc::Claim;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const MIB: u64 = 1 << 20;

/// Reservations made at run time through the API, per pool, then per
/// domain (name or UUID as the operator gave it): a raised `min`.
pub type Reservations = BTreeMap<String, BTreeMap<String, PerResource<Option<u64>>>>;

/// What the planner remembers between cycles (kept by the monitor).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Per domain UUID: when (seconds, caller's clock) its vCPU count last changed.
    pub vcpu_changed_at: BTreeMap<String, u64>,
}

impl History {
    /// Records the outcome of enforced actions at time `now`.
    pub fn record(&mut self, action: &Action, ok: bool, now: u64) {
        if let (Action::SetVcpus { uuid, .. }, true) = (action, ok) {
            self.vcpu_changed_at.insert(uuid.clone(), now);
        }
    }

    /// Forgets domains that no longer exist.
    pub fn retain(&mut self, alive: impl Fn(&str) -> bool) {
        self.vcpu_changed_at.retain(|u, _| alive(u));
    }
}

/// Everything the planner looks at.
pub struct PlanInput<'a> {
    pub config: &'a Config,
    pub snapshot: &'a Snapshot,
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
    /// Guaranteed amount (reservation, guest need).
    pub floor: u64,
    /// Most it may get (max, hardware max, demand).
    pub cap: u64,
    pub shares: u64,
    /// Its fair allocation: floor ≤ target ≤ cap, Σ targets ≤ budget.
    pub target: u64,
    /// What it is set to this cycle (moves toward `target` within the
    /// stability rules; equals `actual` when nothing is issued).
    pub next: u64,
    /// What libvirt reports now.
    pub actual: u64,
    /// What the guest uses, when it says (memory only).
    pub used: Option<u64>,
    pub reason: Reason,
}

/// A domain in a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberPlan {
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
    pub via: Via,
    /// False when its floors did not fit: left untouched.
    pub admitted: bool,
    /// Why it is not admitted / why nothing is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Per resource the pool manages; `None` for unmanaged resources and
    /// for inactive domains.
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
}

/// A domain in no pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unmanaged {
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
    pub vcpus: u64,
    pub memory: u64,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub allocatable: Allocatable,
    /// Host available memory is below the pressure threshold.
    pub pressure: bool,
    pub pools: Vec<PoolPlan>,
    pub unmanaged: Vec<Unmanaged>,
    /// Changes to make, in a deterministic order.
    pub actions: Vec<Action>,
}

/// Granularity of each resource's targets.
fn granularity(r: Resource) -> u64 {
    match r {
        Resource::Memory => MIB,
        _ => 1,
    }
}

/// Plans one cycle.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let cfg = input.config;
    let alloc = cfg.host.allocatable(&input.snapshot.host);
    let membership = Membership::new(&cfg.pools);

    // Deterministic order, whatever order libvirt listed domains in.
    let mut domains: Vec<&DomainObs> = input.snapshot.domains.iter().collect();
    domains.sort_by(|a, b| a.uuid.cmp(&b.uuid).then(a.name.cmp(&b.name)));

    let mut by_pool: BTreeMap<&str, Vec<(&DomainObs, Via)>> = BTreeMap::new();
    let mut unmanaged = Vec::new();
    for d in domains {
        match membership.pool_of(d) {
            Some((p, via)) => by_pool.entry(p).or_default().push((d, via)),
            None => unmanaged.push(Unmanaged {
                name: d.name.clone(),
                uuid: d.uuid.clone(),
                state: d.state,
                vcpus: d.vcpus,
                memory: d.memory,
            }),
        }
    }
    unmanaged.sort_by(|a, b| a.name.cmp(&b.name).then(a.uuid.cmp(&b.uuid)));

    let mut pools = Vec::new();
    let mut actions = Vec::new();
    for pool in cfg.pools.values() {
        let members = by_pool.remove(pool.name.as_str()).unwrap_or_default();
        let empty = BTreeMap::new();
        let reservations = input.reservations.get(&pool.name).unwrap_or(&empty);
        let pp = plan_pool(input, pool, &alloc, &members, reservations, &mut actions);
        pools.push(pp);
    }
    Plan {
        allocatable: alloc,
        pressure: false,
        pools,
        unmanaged,
        actions,
    }
}

fn plan_pool(
    input: &PlanInput<'_>,
    pool: &Pool,
    alloc: &Allocatable,
    members: &[(&DomainObs, Via)],
    reservations: &BTreeMap<String, PerResource<Option<u64>>>,
    actions: &mut Vec<Action>,
) -> PoolPlan {
    let budget = Config::pool_budget(pool, alloc);
    let mut plans: Vec<MemberPlan> = members
        .iter()
        .map(|(d, via)| MemberPlan {
            name: d.name.clone(),
            uuid: d.uuid.clone(),
            state: d.state,
            via: *via,
            admitted: d.state.is_active(),
            note: (!d.state.is_active()).then(|| "not running: holds nothing".to_string()),
            alloc: PerResource::default(),
        })
        .collect();
    let active: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].0.state.is_active())
        .collect();

    let mut allocated = PerResource::<u64>::default();
    for r in Resource::ALL {
        let Some(b) = *budget.get(r) else { continue };
        let g = granularity(r);
        let claims: Vec<(usize, Claim, u64)> = active
            .iter()
            .map(|&i| {
                let d = members[i].0;
                let lim = limits(pool, reservations, d, r);
                let (floor, cap) = bounds(input, d, r, lim);
                let shares = lim.shares.unwrap_or(DEFAULT_SHARES);
                (
                    i,
                    Claim {
                        floor: floor.div_ceil(g),
                        cap: cap / g,
                        shares,
                    },
                    floor,
                )
            })
            .collect();
        // Admission (v1): admit in order until floors fit the budget.
        let units_budget = b / g;
        let mut admitted = Vec::new();
        let mut sum = 0u64;
        for (i, c, _) in &claims {
            if plans[*i].admitted && sum.saturating_add(c.floor.min(c.cap)) <= units_budget {
                sum += c.floor.min(c.cap);
                admitted.push((*i, *c));
            } else {
                plans[*i].admitted = false;
                plans[*i].note = Some(format!(
                    "{r} floor does not fit the pool budget ({} of {} already reserved)",
                    r.human(sum * g),
                    r.human(b)
                ));
            }
        }
        let only: Vec<Claim> = admitted.iter().map(|(_, c)| *c).collect();
        let shares_out = alloc::water_fill(units_budget, &only);
        for ((i, c), t) in admitted.iter().zip(shares_out) {
            let d = members[*i].0;
            let target = t * g;
            let reason = if c.floor >= c.cap || t <= c.floor {
                Reason::Floor
            } else if t >= c.cap {
                if c.cap * g >= hardware_max(d, r) {
                    Reason::HardwareMax
                } else {
                    Reason::Max
                }
            } else {
                Reason::Share
            };
            *allocated.get_mut(r) += target;
            plans[*i].alloc.get_mut(r).replace(Alloc {
                floor: c.floor * g,
                cap: c.cap * g,
                shares: c.shares,
                target,
                next: target,
                actual: d.actual(r),
                used: if r == Resource::Memory {
                    d.balloon.and_then(|s| s.used())
                } else {
                    None
                },
                reason,
            });
        }
    }

    // Stability (v1): dead band on memory.
    for p in plans.iter_mut() {
        if let Some(a) = p.alloc.memory.as_mut() {
            if a.target.abs_diff(a.actual) < input.config.tuning.memory_min_change {
                a.next = a.actual;
                a.reason = Reason::DeadBand;
            }
        }
    }
    // Never issue more than the budget: if the dead band left members above
    // their targets, growers wait for the room.
    for r in Resource::ALL {
        let Some(b) = *budget.get(r) else { continue };
        let mut total: u64 = plans
            .iter()
            .filter_map(|p| p.alloc.get(r).map(|a| a.next))
            .sum();
        for p in plans.iter_mut() {
            if total <= b {
                break;
            }
            if let Some(a) = p.alloc.get_mut(r).as_mut() {
                if a.next > a.actual {
                    let cut = (a.next - a.actual).min(total - b);
                    a.next -= cut;
                    total -= cut;
                }
            }
        }
    }

    let issue = !(input.paused || pool.paused);
    for (p, (d, _)) in plans.iter().zip(members) {
        if !p.admitted || !issue {
            continue;
        }
        if let Some(a) = p.alloc.vcpus {
            if a.next != a.actual {
                actions.push(Action::SetVcpus {
                    uuid: d.uuid.clone(),
                    domain: d.name.clone(),
                    from: a.actual,
                    to: a.next,
                    reason: a.reason,
                    persist: pool.persist,
                });
            }
        }
        if let Some(a) = p.alloc.memory {
            if a.next != a.actual {
                actions.push(Action::SetMemory {
                    uuid: d.uuid.clone(),
                    domain: d.name.clone(),
                    from: a.actual,
                    to: a.next,
                    reason: a.reason,
                    persist: pool.persist,
                });
            }
        }
    }

    PoolPlan {
        name: pool.name.clone(),
        paused: pool.paused,
        runtime: pool.runtime,
        budget,
        allocated,
        members: plans,
    }
}

/// The member's limits: pool defaults, member override, runtime reservation.
fn limits(
    pool: &Pool,
    reservations: &BTreeMap<String, PerResource<Option<u64>>>,
    d: &DomainObs,
    r: Resource,
) -> Limits {
    let mut l = pool.member_limits(&d.name, &d.uuid, r);
    let res = reservations
        .get(&d.name)
        .or_else(|| reservations.get(&d.uuid))
        .and_then(|m| *m.get(r));
    if let Some(v) = res {
        l.min = Some(l.min.map_or(v, |m| m.max(v)));
    }
    l
}

/// The domain's own upper bound for a resource.
fn hardware_max(d: &DomainObs, r: Resource) -> u64 {
    match r {
        Resource::Vcpus => d.vcpus_max.max(1),
        Resource::Memory => units::floor_mib(d.memory_max),
        Resource::DiskBytesSec | Resource::DiskIopsSec => u64::MAX,
    }
}

/// Floor and cap of one member (floor ≤ cap).
fn bounds(input: &PlanInput<'_>, d: &DomainObs, r: Resource, l: Limits) -> (u64, u64) {
    let hw = hardware_max(d, r);
    let cap = l.max.map_or(hw, |m| m.min(hw));
    let mut floor = l.min.unwrap_or(0);
    match r {
        Resource::Vcpus => floor = floor.max(1),
        Resource::Memory => {
            if let Some(used) = d.balloon.and_then(|s| s.used()) {
                let margin = input.config.tuning.guest_free_min.resolve(d.memory_max);
                floor = floor.max(used.saturating_add(margin));
            }
        }
        _ => {}
    }
    (floor.min(cap), cap)
}
