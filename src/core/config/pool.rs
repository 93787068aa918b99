//! Pools: validated from a [`PoolSpec`], member limits, budgets and membership across pools.

use super::bounds::{max_amount, MAX_SHARES};
use super::problems::{BudgetProblem, MembershipConflict, PoolError, PoolProblem};
use super::spec::{BytesPolicy, CountPolicy, CpuPolicy, MemberSpec, MemoryPolicy, PoolSpec};
use crate::core::cpu;
use crate::core::model::{PerResource, Resource};
use crate::core::names::{self, NameError};
use crate::core::units::Amount;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Member limits for one resource: reservation, limit, weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    pub min: Option<u64>,
    pub max: Option<u64>,
    pub shares: Option<u64>,
}

impl Limits {
    /// `other`'s fields where set, else ours.
    pub fn overlay(self, other: Limits) -> Limits {
        Limits {
            min: other.min.or(self.min),
            max: other.max.or(self.max),
            shares: other.shares.or(self.shares),
        }
    }
}

/// A resource a pool manages: its budget and the member defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PoolResource {
    pub budget: Amount,
    pub defaults: Limits,
}

/// A validated pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pool {
    pub name: String,
    pub domains: Vec<String>,
    pub globs: Vec<String>,
    pub persist: bool,
    pub paused: bool,
    pub memory_policy: MemoryPolicy,
    /// The same for CPU time (`cpu.policy`).
    pub cpu_policy: MemoryPolicy,
    /// `None` for a resource the pool does not manage.
    pub resources: PerResource<Option<PoolResource>>,
    /// Per-domain overrides, keyed by name or UUID.
    pub members: BTreeMap<String, PerResource<Limits>>,
    /// Defined at run time through the API (not in the config file).
    pub runtime: bool,
    /// Domains removed from this pool at run time (names or UUIDs): the
    /// pool never matches them.
    pub exclude: Vec<String>,
}

impl Pool {
    /// The limits of one member for one resource: pool defaults, then the
    /// member's override (looked up by name, then UUID).
    pub fn member_limits(&self, name: &str, uuid: &str, r: Resource) -> Limits {
        let base = self
            .resources
            .get(r)
            .map(|p| p.defaults)
            .unwrap_or_default();
        match self.members.get(name).or_else(|| self.members.get(uuid)) {
            Some(m) => base.overlay(*m.get(r)),
            None => base,
        }
    }
}

/// Problems with Σ budgets against allocatable (empty when they fit).
pub fn budget_problems(
    pools: &BTreeMap<String, Pool>,
    alloc: &PerResource<u64>,
) -> Vec<BudgetProblem> {
    let mut problems = Vec::new();
    for r in Resource::ALL {
        let mut sum: u64 = 0;
        let mut parts = Vec::new();
        for p in pools.values() {
            if let Some(res) = p.resources.get(r) {
                if res.budget.is_fraction()
                    && *alloc.get(r) == 0
                    && matches!(r, Resource::DiskBytesSec | Resource::DiskIopsSec)
                {
                    problems.push(BudgetProblem::PercentOfUndeclared {
                        pool: p.name.clone(),
                        resource: r,
                    });
                }
                let b = res.budget.resolve(*alloc.get(r));
                sum = sum.saturating_add(b);
                parts.push((p.name.clone(), b));
            }
        }
        let a = *alloc.get(r);
        let declared = match r {
            Resource::Vcpus | Resource::Memory | Resource::Cpu => true,
            _ => a > 0,
        };
        if declared && sum > a {
            problems.push(BudgetProblem::AboveAllocatable {
                resource: r,
                sum,
                parts,
                allocatable: a,
            });
        }
    }
    problems
}

/// A domain explicitly listed in two pools is a config error.
pub fn membership_conflicts(pools: &BTreeMap<String, Pool>) -> Vec<MembershipConflict> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    let mut problems = Vec::new();
    for p in pools.values() {
        for d in &p.domains {
            if let Some(other) = seen.insert(d.as_str(), p.name.as_str()) {
                if other != p.name {
                    problems.push(MembershipConflict {
                        domain: d.clone(),
                        first: other.to_owned(),
                        second: p.name.clone(),
                    });
                }
            }
        }
    }
    problems
}

/// A pool name: what an operator can type and a URL can carry as it is
/// (see [`names::pool_name`]).
pub fn valid_name(s: &str) -> Result<(), NameError> {
    names::pool_name(s)
}

/// A domain name (or UUID): any name libvirt takes but for control
/// characters (see [`names::domain_name`]).
pub fn valid_domain_name(s: &str) -> Result<(), NameError> {
    names::domain_name(s)
}

pub(super) fn build_pool(name: &str, spec: &PoolSpec, out: &mut Vec<PoolError>) -> Pool {
    let mut problems = Vec::new();
    if let Err(e) = valid_name(name) {
        problems.push(PoolProblem::Name(e));
    }
    for g in &spec.match_ {
        if let Err(error) = crate::core::glob::Glob::new(g) {
            problems.push(PoolProblem::Glob {
                pattern: g.clone(),
                error,
            });
        }
    }
    for d in &spec.domains {
        if let Err(e) = valid_domain_name(d) {
            problems.push(PoolProblem::DomainName(e));
        }
    }
    for m in spec.members.keys() {
        if let Err(e) = valid_domain_name(m) {
            problems.push(PoolProblem::MemberName(e));
        }
    }
    let mut policy = MemoryPolicy::Share;
    let mut cpu_policy = MemoryPolicy::Share;
    let mut resources: PerResource<Option<PoolResource>> = PerResource::default();
    for (r, w) in written(spec) {
        let Written {
            budget,
            limits,
            policy: pol,
        } = w;
        if pol.is_some() && !matches!(r, Resource::Memory | Resource::Cpu) {
            problems.push(PoolProblem::PolicyNotMemory { resource: r });
        }
        match (r, pol) {
            (Resource::Cpu, Some(p)) => cpu_policy = p,
            (_, Some(p)) => policy = p,
            _ => {}
        }
        let Some(budget) = budget else {
            problems.push(PoolProblem::MissingBudget { resource: r });
            continue;
        };
        match budget {
            Amount::Fraction(f) if f > 1.0 => {
                problems.push(PoolProblem::BudgetAboveAll {
                    resource: r,
                    budget,
                });
            }
            Amount::Absolute(b) if b > max_amount(r) => {
                problems.push(PoolProblem::BudgetOutOfRange {
                    resource: r,
                    budget: b,
                    max: max_amount(r),
                });
            }
            _ => {}
        }
        check_limits(None, r, limits, Some(budget), &mut problems);
        resources.get_mut(r).replace(PoolResource {
            budget,
            defaults: limits,
        });
    }
    let mut members = BTreeMap::new();
    for (m, ms) in &spec.members {
        let mut lim: PerResource<Limits> = PerResource::default();
        for (r, w) in written(ms) {
            let Written {
                budget,
                limits,
                policy: pol,
            } = w;
            let member = || m.clone();
            if budget.is_some() {
                problems.push(PoolProblem::MemberBudget {
                    member: member(),
                    resource: r,
                });
            }
            if pol.is_some() {
                problems.push(PoolProblem::MemberPolicy {
                    member: member(),
                    resource: r,
                });
            }
            if resources.get(r).is_none() {
                problems.push(PoolProblem::MemberWithoutBudget {
                    member: member(),
                    resource: r,
                });
            }
            let pool_defaults = resources.get(r).map(|p| p.defaults).unwrap_or_default();
            check_limits(
                Some(m),
                r,
                pool_defaults.overlay(limits),
                resources.get(r).map(|p| p.budget),
                &mut problems,
            );
            *lim.get_mut(r) = limits;
        }
        members.insert(m.clone(), lim);
    }
    out.extend(problems.into_iter().map(|problem| PoolError {
        pool: name.to_owned(),
        problem,
    }));
    Pool {
        name: name.to_owned(),
        domains: spec.domains.clone(),
        globs: spec.match_.clone(),
        persist: spec.persist,
        paused: spec.paused,
        memory_policy: policy,
        cpu_policy,
        resources,
        members,
        runtime: false,
        exclude: Vec::new(),
    }
}

/// One resource as written for a pool or a member, in the resource's unit.
#[derive(Clone, Copy)]
struct Written {
    budget: Option<Amount>,
    limits: Limits,
    /// `share` or `demand` (memory and CPU time only).
    policy: Option<MemoryPolicy>,
}

impl Written {
    fn new(
        budget: Option<Amount>,
        min: Option<u64>,
        max: Option<u64>,
        shares: Option<u64>,
        policy: Option<MemoryPolicy>,
    ) -> Written {
        let limits = Limits { min, max, shares };
        Written {
            budget,
            limits,
            policy,
        }
    }
}

/// The three shapes of a resource's key (counted, sized, CPU time).
trait AsWritten {
    fn written(&self) -> Written;
}

impl AsWritten for CountPolicy {
    fn written(&self) -> Written {
        Written::new(self.budget, self.min, self.max, self.shares, None)
    }
}

impl AsWritten for BytesPolicy {
    fn written(&self) -> Written {
        let (min, max) = (self.min.map(|x| x.0), self.max.map(|x| x.0));
        Written::new(self.budget, min, max, self.shares, self.policy)
    }
}

impl AsWritten for CpuPolicy {
    fn written(&self) -> Written {
        let (min, max) = (self.min.map(|x| x.0), self.max.map(|x| x.0));
        Written::new(self.budget, min, max, self.shares, self.policy)
    }
}

/// The five resource keys, as `vcpus`, `memory`, `disk_bytes_sec`,
/// `disk_iops_sec`, `cpu`.
type Keys<'a> = (
    &'a Option<CountPolicy>,
    &'a Option<BytesPolicy>,
    &'a Option<BytesPolicy>,
    &'a Option<CountPolicy>,
    &'a Option<CpuPolicy>,
);

/// What has the five resource keys: a pool and a member.
trait ResourceKeys {
    fn keys(&self) -> Keys<'_>;
}

/// Both have the five keys as fields of the same names.
impl ResourceKeys for PoolSpec {
    fn keys(&self) -> Keys<'_> {
        (
            &self.vcpus,
            &self.memory,
            &self.disk_bytes_sec,
            &self.disk_iops_sec,
            &self.cpu,
        )
    }
}

impl ResourceKeys for MemberSpec {
    fn keys(&self) -> Keys<'_> {
        (
            &self.vcpus,
            &self.memory,
            &self.disk_bytes_sec,
            &self.disk_iops_sec,
            &self.cpu,
        )
    }
}

/// The resources `spec` writes, in [`Resource::ALL`] order.
fn written(spec: &impl ResourceKeys) -> impl Iterator<Item = (Resource, Written)> {
    fn one<P: AsWritten>(p: &Option<P>) -> Option<Written> {
        p.as_ref().map(P::written)
    }
    let (vcpus, memory, disk_bytes_sec, disk_iops_sec, cpu) = spec.keys();
    let keys = PerResource {
        vcpus: one(vcpus),
        memory: one(memory),
        disk_bytes_sec: one(disk_bytes_sec),
        disk_iops_sec: one(disk_iops_sec),
        cpu: one(cpu),
    };
    Resource::ALL
        .into_iter()
        .filter_map(move |r| keys.get(r).map(|w| (r, w)))
}

/// The limits of the pool (`member` = `None`) or of one member.
fn check_limits(
    member: Option<&String>,
    r: Resource,
    l: Limits,
    budget: Option<Amount>,
    problems: &mut Vec<PoolProblem>,
) {
    let member = || member.cloned();
    if let (Some(min), Some(max)) = (l.min, l.max) {
        if min > max {
            problems.push(PoolProblem::MinAboveMax {
                member: member(),
                resource: r,
                min,
                max,
            });
        }
    }
    if let (Some(min), Some(Amount::Absolute(b))) = (l.min, budget) {
        if min > b {
            problems.push(PoolProblem::MinAboveBudget {
                member: member(),
                resource: r,
                min,
                budget: b,
            });
        }
    }
    for (key, v) in [("min", l.min), ("max", l.max)] {
        if let Some(value) = v.filter(|v| *v > max_amount(r)) {
            problems.push(PoolProblem::LimitOutOfRange {
                member: member(),
                resource: r,
                key,
                value,
                max: max_amount(r),
            });
        }
    }
    if r == Resource::Vcpus && l.max == Some(0) {
        problems.push(PoolProblem::NoVcpus { member: member() });
    }
    if r == Resource::Cpu && l.max.is_some_and(|m| m < cpu::MIN_LIMIT) {
        problems.push(PoolProblem::CpuMaxBelowQuota { member: member() });
    }
    if let Some(shares) = l.shares {
        if shares == 0 || shares > MAX_SHARES {
            problems.push(PoolProblem::Shares {
                member: member(),
                resource: r,
                shares,
                max: MAX_SHARES,
            });
        }
    }
}
