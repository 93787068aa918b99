//! Safety checks the enforcer runs before every libvirt call: an action
//! that would break an allocation invariant is refused, whatever bug
//! produced it.
//!
//! Per action ([`Guard::check`]):
//! - the domain is an admitted member of an unpaused pool in this plan, and
//!   the pool manages the resource;
//! - vCPUs: never 0; never shrunk below the member's floor (`min`, at least
//!   1); never grown above its cap (`max`, hardware max);
//! - memory: a whole number of MiB; never shrunk below the floor (`min`,
//!   guest used + `guest_free_min`) nor below the guest's used memory;
//!   never grown above the cap;
//! - growth (vCPUs, memory) never takes the pool's committed total —
//!   Σ current values, updated as actions succeed — over its budget;
//! - disk limits: a managed rate is never 0 (libvirt reads 0 as
//!   unlimited), never above the member's allocation, and its `*_max` is
//!   ≥ the rate;
//! - CPU time: like vCPUs and memory (floor, cap, budget), and the
//!   quota written is one libvirt takes (period 1000..=1000000 µs, quota
//!   1000..=17592186044415 µs, or -1 for no limit);
//! - weights: `cpu_shares` in 2..=10000, blkio weight in 100..=1000.
//!
//! Per plan ([`check_plan`]): Σ targets ≤ budget and floor ≤ target ≤ cap
//! for every admitted member, Σ next ≤ max(budget, Σ current), and every
//! action, in order, passes the guard.

use super::plan::{Alloc, MemberPlan, Plan, Release};
use super::weights::{BLKIO_WEIGHT_RANGE, CPU_WEIGHT_RANGE};
use super::work::MIB;
use crate::core::cpu::{MAX_QUOTA_US, MIN_QUOTA_US};
use crate::core::model::{Action, CpuQuota, PerResource, Resource};
use std::collections::HashMap;

/// An action or plan that breaks an invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("{domain}: not an admitted member of an unpaused pool in this plan")]
    NotManaged { domain: String },
    #[error("{domain}: {resource} is not managed by its pool")]
    ResourceNotManaged { domain: String, resource: Resource },
    #[error("{domain}: vcpus would be 0")]
    ZeroVcpus { domain: String },
    #[error("{domain}: {resource} {to} is above the cap {cap}")]
    AboveCap {
        domain: String,
        resource: Resource,
        to: u64,
        cap: u64,
    },
    #[error("{domain}: {resource} {to} is below the floor {floor}")]
    BelowFloor {
        domain: String,
        resource: Resource,
        to: u64,
        floor: u64,
    },
    #[error("{domain}: memory {to} is below what the guest uses ({used})")]
    BelowUsed { domain: String, to: u64, used: u64 },
    #[error("{domain}: memory {to} is not a whole number of MiB")]
    NotMib { domain: String, to: u64 },
    #[error("pool {pool}: {resource} would reach {total}, over the budget {budget}")]
    OverBudget {
        pool: String,
        resource: Resource,
        total: u64,
        budget: u64,
    },
    #[error("{domain}: {resource} target {target} is outside [{floor}, {cap}]")]
    TargetOutOfBounds {
        domain: String,
        resource: Resource,
        target: u64,
        floor: u64,
        cap: u64,
    },
    #[error("{domain}: disk {disk}: {resource} {rate} with max {max} (rate must be 1..=allocation {alloc}, max ≥ rate)")]
    BadIoTune {
        domain: String,
        disk: String,
        resource: Resource,
        rate: u64,
        max: u64,
        alloc: u64,
    },
    #[error("{domain}: CPU quota {quota} µs per {period} µs is not one libvirt takes")]
    BadCpuQuota {
        domain: String,
        period: u64,
        quota: i64,
    },
    #[error("{domain}: {what} {to} is outside {lo}..={hi}")]
    WeightOutOfRange {
        domain: String,
        what: &'static str,
        to: u64,
        lo: u64,
        hi: u64,
    },
}

/// Checks actions of one plan as the enforcer applies them, tracking what
/// each pool has committed. Build it once per plan; call
/// [`Guard::check`] before each libvirt call and [`Guard::applied`] after
/// each successful one.
pub struct Guard<'p> {
    plan: &'p Plan,
    /// UUID → (pool index, member index), admitted members of unpaused pools.
    index: HashMap<&'p str, (usize, usize)>,
    /// UUID → pool index, every member of an unpaused pool that manages
    /// memory (whose stats period may be set).
    stats: HashMap<&'p str, usize>,
    /// Domains that left management and are being given back what the
    /// agent changed.
    releasing: std::collections::HashSet<&'p str>,
    /// Per pool: Σ current values of admitted members.
    committed: Vec<PerResource<u64>>,
}

impl<'p> Guard<'p> {
    pub fn new(plan: &'p Plan) -> Guard<'p> {
        let mut index = HashMap::new();
        let mut stats = HashMap::new();
        let mut committed = Vec::with_capacity(plan.pools.len());
        for (pi, pool) in plan.pools.iter().enumerate() {
            let mut c = PerResource::<u64>::default();
            for (mi, m) in pool.members.iter().enumerate() {
                if !pool.paused && pool.budget.memory.is_some() {
                    stats.insert(&*m.uuid, pi);
                }
                if !m.admitted {
                    continue;
                }
                if !pool.paused {
                    index.insert(&*m.uuid, (pi, mi));
                }
                for r in Resource::ALL {
                    if let Some(a) = m.alloc.get(r) {
                        *c.get_mut(r) = c.get(r).saturating_add(a.actual);
                    }
                }
            }
            committed.push(c);
        }
        let releasing = plan
            .unmanaged
            .iter()
            .filter(|u| u.release == Some(Release::Giving))
            .map(|u| &*u.uuid)
            .collect();
        Guard {
            plan,
            index,
            stats,
            releasing,
            committed,
        }
    }

    fn member(&self, uuid: &str, domain: &str) -> Result<(usize, &'p MemberPlan), Violation> {
        let plan: &'p Plan = self.plan;
        self.index
            .get(uuid)
            .map(|&(p, m)| (p, &plan.pools[p].members[m]))
            .ok_or_else(|| Violation::NotManaged {
                domain: domain.to_owned(),
            })
    }

    fn alloc(m: &MemberPlan, r: Resource) -> Result<Alloc, Violation> {
        m.alloc.get(r).ok_or_else(|| Violation::ResourceNotManaged {
            domain: m.name.to_string(),
            resource: r,
        })
    }

    /// Refuses an action that would break an invariant.
    pub fn check(&self, action: &Action) -> Result<(), Violation> {
        if self.releasing.contains(action.uuid()) {
            return check_release(action);
        }
        if let Action::SetStatsPeriod { uuid, domain, .. } = action {
            return match self.stats.contains_key(&**uuid) {
                true => Ok(()),
                false => Err(Violation::NotManaged {
                    domain: domain.to_string(),
                }),
            };
        }
        let (pi, m) = self.member(action.uuid(), action.domain())?;
        let domain = || m.name.to_string();
        match action {
            Action::SetVcpus { from, to, .. } => {
                let a = Self::alloc(m, Resource::Vcpus)?;
                if *to == 0 {
                    return Err(Violation::ZeroVcpus { domain: domain() });
                }
                self.bounds(pi, m, Resource::Vcpus, a, *from, *to)
            }
            Action::SetMemory { from, to, .. } => {
                let a = Self::alloc(m, Resource::Memory)?;
                if to % MIB != 0 {
                    return Err(Violation::NotMib {
                        domain: domain(),
                        to: *to,
                    });
                }
                if to < from {
                    if let Some(used) = a.used.filter(|u| to < u) {
                        return Err(Violation::BelowUsed {
                            domain: domain(),
                            to: *to,
                            used,
                        });
                    }
                }
                self.bounds(pi, m, Resource::Memory, a, *from, *to)
            }
            Action::SetBlockIoTune { disk, to, .. } => {
                let rates = [
                    (
                        Resource::DiskBytesSec,
                        to.total_bytes_sec,
                        to.total_bytes_sec_max,
                    ),
                    (
                        Resource::DiskIopsSec,
                        to.total_iops_sec,
                        to.total_iops_sec_max,
                    ),
                ];
                let mut any = false;
                for (r, rate, max) in rates {
                    let Some(a) = *m.alloc.get(r) else { continue };
                    any = true;
                    if rate == 0 || rate > a.next || max < rate {
                        return Err(Violation::BadIoTune {
                            domain: domain(),
                            disk: disk.to_string(),
                            resource: r,
                            rate,
                            max,
                            alloc: a.next,
                        });
                    }
                }
                if any {
                    Ok(())
                } else {
                    Err(Violation::ResourceNotManaged {
                        domain: domain(),
                        resource: Resource::DiskBytesSec,
                    })
                }
            }
            Action::SetCpuShares { to, .. } => range(domain, "cpu_shares", *to, CPU_WEIGHT_RANGE),
            Action::SetBlkioWeight { to, .. } => {
                range(domain, "blkio_weight", *to, BLKIO_WEIGHT_RANGE)
            }
            Action::SetCpuQuota {
                from, to, quota, ..
            } => {
                let a = Self::alloc(m, Resource::Cpu)?;
                quota_ok(domain, quota)?;
                self.bounds(pi, m, Resource::Cpu, a, *from, *to)
            }
            Action::SetStatsPeriod { .. } => Ok(()),
        }
    }

    fn bounds(
        &self,
        pi: usize,
        m: &MemberPlan,
        r: Resource,
        a: Alloc,
        from: u64,
        to: u64,
    ) -> Result<(), Violation> {
        if to < from && to < a.floor {
            return Err(Violation::BelowFloor {
                domain: m.name.to_string(),
                resource: r,
                to,
                floor: a.floor,
            });
        }
        if to > from {
            if to > a.cap {
                return Err(Violation::AboveCap {
                    domain: m.name.to_string(),
                    resource: r,
                    to,
                    cap: a.cap,
                });
            }
            let pool = &self.plan.pools[pi];
            if let Some(budget) = *pool.budget.get(r) {
                let total = (self.committed[pi].get(r) - from.min(*self.committed[pi].get(r)))
                    .saturating_add(to);
                if total > budget {
                    return Err(Violation::OverBudget {
                        pool: pool.name.clone(),
                        resource: r,
                        total,
                        budget,
                    });
                }
            }
        }
        Ok(())
    }

    /// Records that an action was carried out (call only on success), so
    /// later growth is checked against the new totals.
    pub fn applied(&mut self, action: &Action) {
        let (r, from, to) = match action {
            Action::SetVcpus { from, to, .. } => (Resource::Vcpus, *from, *to),
            Action::SetMemory { from, to, .. } => (Resource::Memory, *from, *to),
            Action::SetCpuQuota { from, to, .. } => (Resource::Cpu, *from, *to),
            _ => return,
        };
        if let Some(&(pi, _)) = self.index.get(action.uuid()) {
            let c = self.committed[pi].get_mut(r);
            *c = c.saturating_sub(from).saturating_add(to);
        }
    }
}

/// A quota libvirt takes: a period of 1 ms to 1 s and a quota of at
/// least 1 ms (at most libvirt's largest), or -1 for no limit.
fn quota_ok(domain: impl FnOnce() -> String, q: &CpuQuota) -> Result<(), Violation> {
    let period_ok = (1000..=1_000_000).contains(&q.period);
    let quota_ok = q.quota == -1 || (MIN_QUOTA_US as i64..=MAX_QUOTA_US).contains(&q.quota);
    if period_ok && quota_ok {
        Ok(())
    } else {
        Err(Violation::BadCpuQuota {
            domain: domain(),
            period: q.period,
            quota: q.quota,
        })
    }
}

fn range(
    domain: impl FnOnce() -> String,
    what: &'static str,
    to: u64,
    (lo, hi): (u64, u64),
) -> Result<(), Violation> {
    if (lo..=hi).contains(&to) {
        Ok(())
    } else {
        Err(Violation::WeightOutOfRange {
            domain: domain(),
            what,
            to,
            lo,
            hi,
        })
    }
}

/// Checks one action against a plan, as if it were the first applied.
/// Builds a [`Guard`] (O(members)); for a whole cycle use one guard.
pub fn check_action(plan: &Plan, action: &Action) -> Result<(), Violation> {
    Guard::new(plan).check(action)
}

/// Checks a whole plan: budgets, bounds, and every action in order.
pub fn check_plan(plan: &Plan) -> Result<(), Vec<Violation>> {
    let mut out = Vec::new();
    for pool in &plan.pools {
        for r in Resource::ALL {
            let Some(budget) = *pool.budget.get(r) else {
                continue;
            };
            let (mut targets, mut next, mut actual) = (0u64, 0u64, 0u64);
            for m in pool.members.iter().filter(|m| m.admitted) {
                let Some(a) = m.alloc.get(r) else { continue };
                targets = targets.saturating_add(a.target);
                next = next.saturating_add(a.next);
                actual = actual.saturating_add(a.actual);
                if a.target < a.floor || a.target > a.cap {
                    out.push(Violation::TargetOutOfBounds {
                        domain: m.name.to_string(),
                        resource: r,
                        target: a.target,
                        floor: a.floor,
                        cap: a.cap,
                    });
                }
            }
            if targets > budget {
                out.push(Violation::OverBudget {
                    pool: pool.name.clone(),
                    resource: r,
                    total: targets,
                    budget,
                });
            }
            let disk = matches!(r, Resource::DiskBytesSec | Resource::DiskIopsSec);
            if !disk && next > budget.max(actual) {
                out.push(Violation::OverBudget {
                    pool: pool.name.clone(),
                    resource: r,
                    total: next,
                    budget: budget.max(actual),
                });
            }
        }
    }
    let mut g = Guard::new(plan);
    for a in &plan.actions {
        match g.check(a) {
            Ok(()) => g.applied(a),
            Err(v) => out.push(v),
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(out)
    }
}
/// An action that gives back what the agent changed on a domain that
/// left management: only the values libvirt itself takes.
fn check_release(action: &Action) -> Result<(), Violation> {
    let domain = || action.domain().to_owned();
    match action {
        Action::SetVcpus { to: 0, .. } => Err(Violation::ZeroVcpus { domain: domain() }),
        Action::SetMemory { to, .. } if to % MIB != 0 => Err(Violation::NotMib {
            domain: domain(),
            to: *to,
        }),
        Action::SetCpuShares { to, .. } => range(domain, "cpu_shares", *to, CPU_WEIGHT_RANGE),
        Action::SetBlkioWeight { to, .. } => range(domain, "blkio_weight", *to, BLKIO_WEIGHT_RANGE),
        Action::SetCpuQuota { quota, .. } => quota_ok(domain, quota),
        Action::SetStatsPeriod { .. } => Err(Violation::NotManaged { domain: domain() }),
        _ => Ok(()),
    }
}
