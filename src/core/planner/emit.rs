//! A pool's plan from its settled allocations, and the actions that get
//! its members there (step 6 of the module doc of
//! [`crate::core::planner`]).

use super::plan::{Alloc, MemberPlan, PlanInput, PoolPlan};
use super::weights::{blkio_weight, cpu_weight};
use super::work::{granularity, Facts, Member, Note, Work};
use super::{disk, stability};
use crate::core::model::{Action, CpuQuota, DomainObs, DomainState, PerResource, Resource};

/// Builds a pool's plan from its settled allocations and, when `emit`,
/// its members' balloon statistics periods (into `setup`), disk limits and
/// weights (into `neutral`) and vCPU and balloon increases (into `grow`);
/// the decreases are [`shrinks`].
pub(super) fn finish(
    w: Work<'_>,
    input: &PlanInput<'_>,
    emit: bool,
    setup: &mut Vec<Action>,
    neutral: &mut Vec<Action>,
    grow: &mut Vec<Action>,
) -> PoolPlan {
    let persist = w.pool.persist;
    let factor = input.config.tuning.disk_burst_factor;
    let manages_disk = w.budget.disk_bytes_sec.is_some() || w.budget.disk_iops_sec.is_some();
    let stats_secs = stats_period(&w, input);
    let mut allocated = PerResource::<u64>::default();
    let mut members = Vec::with_capacity(w.members.len());
    let slot = |k: usize, m: usize| w.allocs[k].get(m).copied().flatten();
    for m in 0..w.order.len() {
        let mem = w.member(m);
        let d = mem.d;
        let admitted = w.admitted[m];
        let alloc = PerResource {
            vcpus: slot(0, m),
            memory: slot(1, m),
            disk_bytes_sec: slot(2, m),
            disk_iops_sec: slot(3, m),
            cpu: slot(4, m),
        };
        if admitted {
            for r in Resource::ALL {
                if let Some(a) = alloc.get(r) {
                    *allocated.get_mut(r) = allocated.get(r).saturating_add(a.target);
                }
            }
        }
        if let (true, Some(secs)) = (emit, stats_secs) {
            if needs_stats_period(mem) {
                setup.push(Action::SetStatsPeriod {
                    uuid: d.uuid.clone(),
                    domain: d.name.clone(),
                    secs,
                });
            }
        }
        // A paused domain waits: no change at all until it runs.
        if emit && admitted && mem.o.state != DomainState::Paused {
            emit_neutral(
                d,
                &mem.o,
                &alloc,
                mem.disk_shares,
                persist,
                factor,
                manages_disk,
                neutral,
            );
            emit_vcpus_memory(d, &alloc, persist, false, grow);
        }
        members.push(MemberPlan {
            name: d.name.clone(),
            uuid: d.uuid.clone(),
            state: mem.o.state,
            via: mem.via,
            admitted,
            note: note(mem.note, &w.budget),
            alloc,
        });
    }
    PoolPlan {
        name: w.pool.name.clone(),
        paused: w.pool.paused,
        runtime: w.pool.runtime,
        budget: w.budget,
        allocated,
        members,
    }
}

/// The balloon statistics period a pool's members get (seconds), when the
/// pool manages memory and a period is configured.
fn stats_period(w: &Work<'_>, input: &PlanInput<'_>) -> Option<u32> {
    let secs = input.config.tuning.stats_period.as_secs();
    (w.budget.memory.is_some() && secs > 0).then(|| u32::try_from(secs).unwrap_or(u32::MAX))
}

/// Whether a member (admitted or not: its floor needs the guest's
/// statistics too) is running and has no stats period set in this run.
fn needs_stats_period(mem: &Member<'_>) -> bool {
    mem.o.state == DomainState::Running
        && mem.o.balloon_device
        && mem.hist.stats_period != Some(mem.o.id)
}

/// Adds to `counts` (per phase, as [`finish`] sorts them) the actions a
/// pool's settled allocations lead to: exact for vCPUs, memory and
/// weights, the number of tunable disks for disk limits.
pub(super) fn count_actions(w: &Work<'_>, counts: &mut [usize; 3]) {
    let manages_disk = w.budget.disk_bytes_sec.is_some() || w.budget.disk_iops_sec.is_some();
    let slot = |k: usize, m: usize| w.allocs[k].get(m).copied().flatten();
    for m in 0..w.order.len() {
        let mem = w.member(m);
        if !w.admitted[m] || mem.o.state == DomainState::Paused {
            continue;
        }
        for k in [0, 1, 4] {
            if let Some(a) = slot(k, m).filter(|a| a.next != a.actual) {
                counts[if a.next < a.actual { 0 } else { 2 }] += 1;
            }
        }
        let o = &mem.o;
        if o.tunable > 0 && (slot(2, m).is_some() || slot(3, m).is_some()) {
            counts[1] += o.tunable;
        }
        if let Some(a) = slot(4, m).or(slot(0, m)) {
            counts[1] += usize::from(o.cpu_shares.is_some_and(|c| c != cpu_weight(a.shares)));
        }
        if manages_disk && o.tunable > 0 {
            let to = blkio_weight(mem.disk_shares);
            counts[1] += usize::from(o.blkio_weight.is_some_and(|c| c != to));
        }
    }
}

/// The text of a member's note.
fn note(n: Note, budget: &PerResource<Option<u64>>) -> Option<String> {
    match n {
        Note::None => None,
        Note::NotRunning => Some("not running: holds nothing".to_string()),
        Note::Unadmitted(refusal) => {
            let r = refusal.resource;
            let g = granularity(r);
            Some(format!(
                "unadmitted: its {r} floor ({}) does not fit the pool budget ({}, of which {} is already reserved by members admitted first); left untouched",
                r.human(refusal.floor.saturating_mul(g)),
                r.human(budget.get(r).unwrap_or(0)),
                r.human(refusal.reserved.saturating_mul(g)),
            ))
        }
        Note::Waiting(w) => {
            let r = w.resource;
            let g = granularity(r);
            Some(format!(
                "waiting to be admitted again: it holds {} of {r}, and the members admitted before it hold {} of the pool budget ({}); they give room back at the shrink rate, then it is admitted; left untouched until then",
                r.human(w.holds.saturating_mul(g)),
                r.human(w.held.saturating_mul(g)),
                r.human(budget.get(r).unwrap_or(0)),
            ))
        }
        Note::Frozen(pv) => Some(stability::frozen_note(&pv)),
    }
}

/// The vCPU, balloon and CPU-time decreases of a pool's admitted members,
/// in member order, vCPUs first.
pub(super) fn shrinks(w: &Work<'_>, out: &mut Vec<Action>) {
    let persist = w.pool.persist;
    for m in 0..w.order.len() {
        let mem = w.member(m);
        if !w.admitted[m] {
            continue;
        }
        let alloc = PerResource {
            vcpus: w.allocs[0].get(m).copied().flatten(),
            memory: w.allocs[1].get(m).copied().flatten(),
            cpu: w.allocs[4].get(m).copied().flatten(),
            ..PerResource::default()
        };
        emit_vcpus_memory(mem.d, &alloc, persist, true, out);
    }
}

/// A member's vCPU, balloon and CPU-time changes in one direction
/// (decreases when `shrink`), vCPUs first.
fn emit_vcpus_memory(
    d: &DomainObs,
    alloc: &PerResource<Option<Alloc>>,
    persist: bool,
    shrink: bool,
    out: &mut Vec<Action>,
) {
    let wanted = |a: &Alloc| a.next != a.actual && (a.next < a.actual) == shrink;
    if let Some(a) = alloc.vcpus.filter(wanted) {
        out.push(Action::SetVcpus {
            uuid: d.uuid.clone(),
            domain: d.name.clone(),
            from: a.actual,
            to: a.next,
            reason: a.reason,
            persist,
        });
    }
    if let Some(a) = alloc.memory.filter(wanted) {
        out.push(Action::SetMemory {
            uuid: d.uuid.clone(),
            domain: d.name.clone(),
            from: a.actual,
            to: a.next,
            reason: a.reason,
            persist,
        });
    }
    // Only where the hypervisor takes a quota (else the member is held).
    if let (Some(a), Some(was)) = (alloc.cpu.filter(wanted), d.cpu_quota) {
        out.push(Action::SetCpuQuota {
            uuid: d.uuid.clone(),
            domain: d.name.clone(),
            from: a.actual,
            to: a.next,
            was: Some(was),
            quota: CpuQuota::for_limit(a.next, d.vcpus, was.scope),
            reason: a.reason,
            persist,
        });
    }
}

/// A member's disk limits and scheduler weights (see [`finish`]).
#[allow(clippy::too_many_arguments)]
fn emit_neutral(
    d: &DomainObs,
    o: &Facts,
    alloc: &PerResource<Option<Alloc>>,
    disk_shares: u64,
    persist: bool,
    factor: f64,
    manages_disk: bool,
    out: &mut Vec<Action>,
) {
    let tunable = o.tunable;
    if tunable > 0 {
        let bytes = alloc.disk_bytes_sec.map(|a| a.next);
        let iops = alloc.disk_iops_sec.map(|a| a.next);
        if bytes.is_some() || iops.is_some() {
            let mut bs = bytes.map(|b| disk::split(b, tunable));
            let mut is = iops.map(|i| disk::split(i, tunable));
            for disk in o.tunable_disks(d) {
                let b = bs.as_mut().and_then(Iterator::next);
                let i = is.as_mut().and_then(Iterator::next);
                let to = disk::desired(disk.iotune, b, i, factor);
                if disk.iotune != Some(to) {
                    out.push(Action::SetBlockIoTune {
                        uuid: d.uuid.clone(),
                        domain: d.name.clone(),
                        disk: disk.target.clone(),
                        from: disk.iotune.unwrap_or_default(),
                        to,
                        persist,
                    });
                }
            }
        }
    }
    // The CPU-time shares where the pool manages CPU time, else the
    // vCPU shares.
    if let Some(a) = alloc.cpu.or(alloc.vcpus) {
        let to = cpu_weight(a.shares);
        // Only where the hypervisor exposes the parameter (the libvirt
        // test driver's scheduler has none): never retry a setting
        // that can't exist.
        if o.cpu_shares.is_some_and(|c| c != to) {
            out.push(Action::SetCpuShares {
                uuid: d.uuid.clone(),
                domain: d.name.clone(),
                from: o.cpu_shares,
                to,
                persist,
            });
        }
    }
    if manages_disk && tunable > 0 {
        let to = blkio_weight(disk_shares);
        if o.blkio_weight.is_some_and(|c| c != to) {
            out.push(Action::SetBlkioWeight {
                uuid: d.uuid.clone(),
                domain: d.name.clone(),
                from: o.blkio_weight,
                to,
                persist,
            });
        }
    }
}
