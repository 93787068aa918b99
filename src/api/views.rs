//! Pure builders of API responses from a published [`Report`], the
//! runtime state and a [`Plan`]. No locks, no I/O: unit-testable.

use super::types::*;
use crate::agent::report::Report;
use crate::agent::state::RuntimeState;
use crate::core::config::Config;
use crate::core::model::{DomainObs, PerResource, Resource};
use crate::core::planner::{Alloc, MemberPlan, Plan, PoolPlan};

fn resource_view(a: &Alloc) -> ResourceView {
    ResourceView {
        floor: a.floor,
        cap: (a.cap != crate::core::planner::UNCAPPED).then_some(a.cap),
        shares: a.shares,
        target: a.target,
        next: a.next,
        actual: a.actual,
        used: a.used,
        reason: a.reason,
    }
}

fn resources(m: &MemberPlan) -> PerResource<Option<ResourceView>> {
    PerResource::from_fn(|r| m.alloc.get(r).as_ref().map(resource_view))
}

/// The runtime reservation of a member (looked up by name, then UUID).
pub fn reservation_of(
    rt: &RuntimeState,
    pool: &str,
    name: &str,
    uuid: &str,
) -> PerResource<Option<u64>> {
    rt.reservation(pool, name)
        .or_else(|| rt.reservation(pool, uuid))
        .copied()
        .unwrap_or_default()
}

/// One pool's view, members sorted by name (then UUID), as
/// `GET /v1/domains` lists domains.
pub fn pool_view(p: &PoolPlan, rt: &RuntimeState) -> PoolView {
    pool_view_with(p, rt, true)
}

/// [`pool_view`]; without `members`, the member list stays empty (the
/// counts, reservations and unadmitted names are still there) and no
/// member view is built.
fn pool_view_with(p: &PoolPlan, rt: &RuntimeState, members: bool) -> PoolView {
    let mut reserved = PerResource::<u64>::default();
    let mut views = Vec::with_capacity(if members { p.members.len() } else { 0 });
    for m in &p.members {
        let reservation = reservation_of(rt, &p.name, &m.name, &m.uuid);
        for r in Resource::ALL {
            if let Some(v) = reservation.get(r) {
                *reserved.get_mut(r) = reserved.get(r).saturating_add(*v);
            }
        }
        if members {
            views.push(MemberView {
                name: m.name.to_string(),
                uuid: m.uuid.to_string(),
                state: m.state,
                via: m.via,
                admitted: m.admitted,
                note: m.note.clone(),
                reservation,
                resources: resources(m),
            });
        }
    }
    views.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uuid.cmp(&b.uuid)));
    let mut unadmitted: Vec<(&str, &str)> = p.unadmitted().map(|m| (&*m.name, &*m.uuid)).collect();
    unadmitted.sort_unstable();
    // Runtime membership changes no cycle has planned yet (a domain is
    // named as the change named it: by name, or by UUID).
    let planned = |d: &str| {
        p.members
            .iter()
            .any(|m| *m.name == *d || m.uuid.eq_ignore_ascii_case(d))
    };
    let pending = rt
        .added
        .get(&p.name)
        .map(|set| set.iter().filter(|d| !planned(d)).cloned().collect())
        .unwrap_or_default();
    let leaving = rt
        .removed
        .get(&p.name)
        .map(|set| set.iter().filter(|d| planned(d)).cloned().collect())
        .unwrap_or_default();
    PoolView {
        name: p.name.clone(),
        source: if p.runtime {
            PoolSource::Runtime
        } else {
            PoolSource::Config
        },
        // A pause asked through the API shows at once: from then on the
        // members are left untouched, even before a cycle plans it. (A
        // resume shows with the next cycle: until then nothing touches
        // them either.)
        paused: p.paused || rt.paused_pools.contains(&p.name),
        budget: p.budget,
        allocated: p.allocated,
        free: PerResource::from_fn(|r| p.free(r)),
        reserved,
        member_count: p.members.len(),
        unadmitted: unadmitted.into_iter().map(|(n, _)| n.to_owned()).collect(),
        members: views,
        pending,
        leaving,
    }
}

/// Every pool of a plan; without the member lists unless `members`.
pub fn pools(plan: Option<&Plan>, rt: &RuntimeState, members: bool) -> PoolsResponse {
    PoolsResponse {
        pools: plan
            .map(|p| {
                p.pools
                    .iter()
                    .map(|pp| pool_view_with(pp, rt, members))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// `GET /v1/status`.
pub fn status(st: &Report, rt: &RuntimeState, cfg: &Config) -> StatusResponse {
    let mut counts = DomainCounts {
        total: st.domains.len(),
        active: st.domains.iter().filter(|d| d.state.is_active()).count(),
        ..Default::default()
    };
    if let Some(plan) = &st.plan {
        counts.unmanaged = plan.unmanaged.len();
        counts.managed = plan.pools.iter().map(|p| p.members.len()).sum();
        counts.unadmitted = plan
            .pools
            .iter()
            .flat_map(|p| &p.members)
            .filter(|m| m.state.is_active() && !m.admitted)
            .count();
    }
    StatusResponse {
        agent: AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            mode: st.mode,
            paused: rt.paused,
            paused_pools: rt.paused_pools.iter().cloned().collect(),
        },
        libvirt: st.libvirt.clone(),
        cycle: st.cycle,
        last_cycle: st.last_cycle.clone(),
        host: st.host,
        allocatable: st.plan.as_ref().map(|p| p.allocatable),
        memory_pressure: st.plan.as_ref().is_some_and(|p| p.pressure),
        capacity: st.capacity,
        pools: st.plan.as_ref().map_or(cfg.pools.len(), |p| p.pools.len()),
        domains: counts,
        config_error: st.config_error.clone(),
    }
}

/// Finds a domain by name or UUID (UUIDs compared case-insensitively).
pub fn find_domain<'a>(domains: &'a [DomainObs], key: &str) -> Option<&'a DomainObs> {
    domains
        .iter()
        .find(|d| *d.name == *key)
        .or_else(|| domains.iter().find(|d| d.uuid.eq_ignore_ascii_case(key)))
}

/// One domain with its pool.
pub fn domain_view(d: &DomainObs, plan: Option<&Plan>, rt: &RuntimeState) -> DomainView {
    let member = plan.and_then(|p| {
        p.pools.iter().find_map(|pp| {
            pp.members
                .iter()
                .find(|m| m.uuid == d.uuid)
                .map(|m| (pp.name.as_str(), m))
        })
    });
    DomainView {
        name: d.name.to_string(),
        uuid: d.uuid.to_string(),
        state: d.state,
        pool: member.map(|(p, _)| p.to_string()),
        via: member.map(|(_, m)| m.via),
        admitted: member.map(|(_, m)| m.admitted),
        vcpus: d.vcpus,
        vcpus_max: d.vcpus_max,
        memory: d.memory,
        memory_max: d.memory_max,
        memory_used: d.balloon.and_then(|b| b.used()),
        cpu_used: d.cpu_used,
        cpu_limit: d
            .cpu_quota
            .filter(|q| q.is_limited())
            .map(|_| d.cpu_limit()),
        disks: d
            .disks
            .iter()
            .filter(|x| x.is_tunable())
            .map(|x| x.target.to_string())
            .collect(),
        reservation: member
            .map(|(p, _)| reservation_of(rt, p, &d.name, &d.uuid))
            .unwrap_or_default(),
        resources: member.map(|(_, m)| resources(m)).unwrap_or_default(),
        release: plan.and_then(|p| {
            p.unmanaged
                .iter()
                .find(|u| u.uuid == d.uuid)
                .and_then(|u| u.release)
        }),
    }
}

/// `GET /v1/domains`, sorted by name.
pub fn domains(st: &Report, rt: &RuntimeState) -> DomainsResponse {
    let mut v: Vec<DomainView> = st
        .domains
        .iter()
        .map(|d| domain_view(d, st.plan.as_ref(), rt))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name).then(a.uuid.cmp(&b.uuid)));
    DomainsResponse { domains: v }
}

/// `GET /v1/plan` from a freshly computed plan.
pub fn plan(st: &Report, plan: &Plan, rt: &RuntimeState, paused: bool) -> PlanResponse {
    let pool_of = |uuid: &str| {
        plan.pools
            .iter()
            .find(|p| p.members.iter().any(|m| *m.uuid == *uuid))
            .map(|p| p.name.clone())
    };
    PlanResponse {
        cycle: st.cycle,
        mode: st.mode,
        paused,
        allocatable: plan.allocatable,
        pressure: plan.pressure,
        actions: plan
            .actions
            .iter()
            .map(|a| PlannedAction {
                pool: pool_of(a.uuid()),
                action: a.clone(),
            })
            .collect(),
        pools: plan.pools.iter().map(|p| pool_view(p, rt)).collect(),
    }
}
