//! Fixtures for tests, benchmarks and demos of the planner: build
//! domains, pools and configs in a few lines, and apply a plan to a
//! simulated host. Not used by the agent itself.

use super::advance::{advance, CycleFacts};
use super::history::{History, Outcome};
use super::plan::Plan;
use crate::core::config::{Config, Limits, MemoryPolicy, Pool, PoolResource};
use crate::core::model::{
    Action, BalloonStats, DiskObs, DomainObs, HostCapacity, Observation, PerResource, Resource,
};
use crate::core::units::Amount;
use std::collections::BTreeMap;
use std::path::Path;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// A running domain with 1 vCPU (max 64), 1 GiB (max 64 GiB), no disks,
/// no balloon stats, no CPU quota (a hypervisor without one) and no CPU
/// use measured, in pool `pool` through its metadata element.
pub fn domain(name: &str, pool: Option<&str>) -> DomainObs {
    DomainObs {
        id: Some(1),
        vcpus_max: 64,
        memory_max: 64 * GIB,
        metadata_pool: pool.map(str::to_owned),
        ..DomainObs::started(
            name,
            &format!("00000000-0000-0000-0000-{name:0>12}"),
            1,
            GIB,
        )
    }
}

/// No CPU limit, on a hypervisor that takes a quota for the whole domain
/// (QEMU): the quota libvirt reports before anyone set one.
pub fn no_cpu_limit() -> crate::core::model::CpuQuota {
    crate::core::model::CpuQuota::unlimited(crate::core::model::QuotaScope::Global)
}

/// Balloon stats of a guest with `memory` bytes that uses `used` bytes.
pub fn balloon(memory: u64, used: u64) -> BalloonStats {
    BalloonStats {
        actual: memory,
        unused: Some(memory.saturating_sub(used)),
        available: Some(memory),
        usable: Some(memory.saturating_sub(used)),
    }
}

/// A writable virtio disk with no limits read yet.
pub fn disk(target: &str) -> DiskObs {
    DiskObs {
        target: target.into(),
        device: "disk".to_owned(),
        readonly: false,
        iotune: None,
    }
}

/// An empty pool (no resources managed; members join by metadata).
pub fn pool(name: &str) -> Pool {
    Pool {
        name: name.to_owned(),
        domains: Vec::new(),
        globs: Vec::new(),
        persist: false,
        paused: false,
        memory_policy: MemoryPolicy::Share,
        cpu_policy: MemoryPolicy::Share,
        resources: PerResource::default(),
        members: BTreeMap::new(),
        runtime: false,
        exclude: Vec::new(),
    }
}

/// Limits with only `shares` set.
pub fn shares(s: u64) -> Limits {
    Limits {
        shares: Some(s),
        ..Limits::default()
    }
}

/// Adds a managed resource with an absolute budget and member defaults.
pub fn with_budget(mut p: Pool, r: Resource, budget: u64, defaults: Limits) -> Pool {
    p.resources.get_mut(r).replace(PoolResource {
        budget: Amount::Absolute(budget),
        defaults,
    });
    p
}

/// Sets per-member limits (by name or UUID) for one resource.
pub fn with_member(mut p: Pool, member: &str, r: Resource, l: Limits) -> Pool {
    *p.members.entry(member.to_owned()).or_default().get_mut(r) = l;
    p
}

/// A config with default tuning, a host declaring `cpus` and `memory`
/// with nothing reserved and ratio 1.0, and these pools.
pub fn config(cpus: u64, memory: u64, pools: Vec<Pool>) -> Config {
    let mut c = Config::empty(Path::new("test.toml"));
    c.host.cpus = Some(cpus);
    c.host.memory = Some(memory);
    c.host.reserved_cpus = 0;
    c.host.reserved_memory = 0;
    c.host.cpu_allocation_ratio = 1.0;
    c.host.memory_allocation_ratio = 1.0;
    c.host.disk_bytes_sec = Some(u64::MAX / 4);
    c.host.disk_iops_sec = Some(u64::MAX / 4);
    c.pools = pools.into_iter().map(|p| (p.name.clone(), p)).collect();
    c
}

/// A host with `memory` bytes, all of it available.
pub fn host(cpus: u64, memory: u64) -> HostCapacity {
    HostCapacity {
        cpus,
        memory_total: memory,
        memory_available: memory,
    }
}

/// Carries out `plan` on a simulated host: every action succeeds unless
/// `outcome` says otherwise (a timed-out or failed action changes
/// nothing), then moves `history` on as the agent does
/// ([`advance`](super::advance::advance)). Guest memory stats follow the
/// balloon (the guest keeps using what it used); a guest's CPU use is cut
/// to a lower limit.
pub fn apply(
    snapshot: &mut Observation,
    plan: &Plan,
    history: &mut History,
    now: u64,
    mut outcome: impl FnMut(&Action) -> Outcome,
) {
    let mut by_uuid: BTreeMap<String, usize> = BTreeMap::new();
    for (i, d) in snapshot.domains.iter().enumerate() {
        by_uuid.insert(d.uuid.to_string(), i);
    }
    let mut outcomes = Vec::with_capacity(plan.step_count());
    for a in plan.steps() {
        let o = outcome(a);
        outcomes.push((a, o));
        if o != Outcome::Ok {
            continue;
        }
        let Some(&i) = by_uuid.get(a.uuid()) else {
            continue;
        };
        let d = &mut snapshot.domains[i];
        d.apply(a);
        if let (Action::SetMemory { to, .. }, Some(b)) = (a, d.balloon.as_mut()) {
            let used = b.used().unwrap_or(0);
            *b = balloon(*to, used);
        }
        // A guest uses no more CPU time than its limit lets it.
        if let Action::SetCpuQuota { .. } = a {
            let limit = d.cpu_limit();
            d.cpu_used = d.cpu_used.map(|u| u.min(limit));
        }
    }
    let next = advance(
        &std::sync::Arc::new(std::mem::take(history)),
        &CycleFacts {
            plan,
            domains: &snapshot.domains,
            scope: None,
            enforced: true,
            outcomes: &outcomes,
            now,
        },
    );
    *history = std::sync::Arc::unwrap_or_clone(next);
}

/// A plan with nothing in it (for tests of what follows a plan).
pub fn empty_plan() -> Plan {
    Plan {
        allocatable: crate::core::config::Allocatable::default(),
        pressure: false,
        pools: Vec::new(),
        unmanaged: Vec::new(),
        setup: Vec::new(),
        actions: Vec::new(),
        releases: Vec::new(),
        reclaim: BTreeMap::new(),
    }
}

/// Host available memory if the host holds only the active domains'
/// balloons (plus `other` bytes used outside any domain).
pub fn available_after(snapshot: &Observation, other: u64) -> u64 {
    let used: u64 = snapshot
        .domains
        .iter()
        .filter(|d| d.state.is_active())
        .map(|d| d.memory)
        .fold(other, u64::saturating_add);
    snapshot.host.memory_total.saturating_sub(used)
}
