//! Stability: how far each member moves toward its target this cycle
//! (`Alloc::next`).
//!
//! - Memory: no change while the target is within `memory.min_change` of
//!   the current balloon (dead band); a shrink moves at most one step (`memory.max_shrink` of the
//!   current memory, at least 1 MiB) per cycle; growth is immediate.
//! - vCPUs: no change while a timed-out change holds the domain (for the
//!   rest of its run, see `History::vcpus_frozen`) or during
//!   `vcpus.cooldown` after the last change; otherwise immediate.
//! - Disk rates: immediate.
//! - CPU time: no change inside the dead band (`cpu.min_change`, while
//!   the limit is within [floor, cap]); in a `demand` pool a limit comes
//!   down by at most `cpu.max_shrink` per cycle and not before
//!   `cpu.cooldown` after it was last raised (a domain without a limit
//!   gets its first one at once); elsewhere at once. Not set where the
//!   hypervisor has no quota (reason `no_quota`).
//! - Budget: growth only gets room that is actually free this cycle.
//!   With `base` = Σ next of the members that do not grow + Σ current of
//!   those that do, the growers share `budget − base` (nothing if `base`
//!   is over the budget), first to reach their floors, then by shares. So
//!   Σ next ≤ budget, or ≤ Σ current while a pool that is over budget
//!   shrinks at the rate limit.

use super::alloc::{water_fill, Claim};
use super::history::{self, PendingVcpus};
use super::plan::{Alloc, PlanInput};
use super::pressure;
use super::work::{Note, Work};
use crate::core::config::MemoryPolicy;
use crate::core::cpu::{CpuQuota, QuotaScope};
use crate::core::model::{DomainState, Reason, Resource};
use crate::core::units;

/// A member that wants to grow: index and its allocation.
struct Grower {
    m: usize,
    actual: u64,
    floor: u64,
    target: u64,
    shares: u64,
}

/// Fills in `next` (and the final `reason`) of every admitted member.
pub(super) fn settle(work: &mut Work<'_>, input: &PlanInput<'_>) {
    let paused = input.paused || work.pool.paused;
    let tuning = &input.config.tuning;
    let cooldown = tuning.vcpu_cooldown.as_secs();
    let cpu_demand = work.pool.cpu_policy == MemoryPolicy::Demand;
    let Work {
        budget,
        members,
        order,
        admitted,
        allocs,
        reserved,
        ..
    } = work;
    // One pass over each managed resource's column.
    let mut growers: Vec<Grower> = Vec::new();
    for (k, r) in Resource::ALL.into_iter().enumerate() {
        let Some(budget) = *budget.get(r) else {
            continue;
        };
        let col = &mut allocs[k];
        growers.clear();
        // Members waiting to be admitted again hold room nobody may grow
        // into.
        let mut base = reserved[k] << super::work::shift(r);
        for (m, slot) in col.iter_mut().enumerate() {
            let Some(a) = slot.as_mut().filter(|_| admitted[m]) else {
                continue;
            };
            if paused {
                hold(a, Reason::Paused);
                continue;
            }
            let facts = &members[order[m] as usize].o;
            // A paused guest answers no balloon or vCPU request: its
            // changes wait until it runs; what it holds counts as it is.
            let domain_paused = facts.state == DomainState::Paused;
            let no_balloon = r == Resource::Memory && !facts.balloon_device;
            if domain_paused || no_balloon {
                hold(a, Reason::Paused);
                a.reason = if domain_paused {
                    Reason::DomainPaused
                } else {
                    Reason::NoBalloon
                };
                if !matches!(r, Resource::DiskBytesSec | Resource::DiskIopsSec) {
                    base = base.saturating_add(a.actual);
                }
                continue;
            }
            let grow = match r {
                Resource::Vcpus => {
                    if a.target == a.actual {
                        a.next = a.actual;
                        false
                    } else {
                        let mem = &mut members[order[m] as usize];
                        let h = &mem.hist;
                        if let Some(pv) =
                            history::frozen_with(h.pending, mem.o.id, mem.o.vcpus, a.target)
                        {
                            hold(a, Reason::Pending);
                            if matches!(mem.note, Note::None) {
                                mem.note = Note::Frozen(pv);
                            }
                            false
                        } else if history::cooling_at(h.changed_at, input.now, cooldown) {
                            hold(a, Reason::Cooldown);
                            false
                        } else if a.target < a.actual {
                            a.next = a.target;
                            false
                        } else {
                            true
                        }
                    }
                }
                Resource::Memory => {
                    // No exception for a balloon just outside [floor, cap]:
                    // with guest statistics both move with the guest's
                    // noise, and a balloon at its floor would chase them
                    // by a MiB or two every cycle.
                    if a.target == a.actual {
                        a.next = a.actual;
                        false
                    } else if a.target.abs_diff(a.actual) < tuning.memory_min_change {
                        hold(a, Reason::DeadBand);
                        false
                    } else if a.target < a.actual {
                        let step = pressure::step(tuning.memory_max_shrink, a.actual);
                        let lo = pressure::ceil_mib(a.actual.saturating_sub(step));
                        a.next = a.target.max(lo);
                        if a.next > a.target {
                            a.reason = Reason::RateLimited;
                        }
                        false
                    } else {
                        true
                    }
                }
                Resource::DiskBytesSec | Resource::DiskIopsSec => {
                    // Rates apply at once; an observed 0 (unlimited) is
                    // never a ceiling worth keeping.
                    a.next = a.target;
                    false
                }
                Resource::Cpu => {
                    let mem = &members[order[m] as usize];
                    let in_bounds = a.floor <= a.actual && a.actual <= a.cap;
                    if mem.o.quota_scope.is_none() {
                        hold(a, Reason::NoQuota);
                        false
                    } else if a.target == a.actual {
                        a.next = a.actual;
                        false
                    } else if in_bounds && a.target.abs_diff(a.actual) < tuning.cpu.min_change {
                        hold(a, Reason::DeadBand);
                        false
                    } else if a.target < a.actual {
                        if cpu_demand && mem.o.cpu_limited {
                            let cd = tuning.cpu.cooldown.as_secs();
                            if history::cooling_at(mem.hist.cpu_raised_at, input.now, cd) {
                                hold(a, Reason::Cooldown);
                            } else {
                                let step = tuning.cpu.max_shrink.resolve(a.actual).max(1);
                                a.next = a.target.max(a.actual.saturating_sub(step));
                                if a.next > a.target {
                                    a.reason = Reason::RateLimited;
                                }
                            }
                        } else {
                            a.next = a.target;
                        }
                        false
                    } else {
                        true
                    }
                }
            };
            if grow {
                base = base.saturating_add(a.actual);
                growers.push(Grower {
                    m,
                    actual: a.actual,
                    floor: a.floor,
                    target: a.target,
                    shares: a.shares,
                });
            } else if r != Resource::DiskBytesSec && r != Resource::DiskIopsSec {
                base = base.saturating_add(a.next);
            }
        }
        if growers.is_empty() {
            continue;
        }
        let grants = share_room(budget.saturating_sub(base), &growers);
        for (g, grant) in growers.iter().zip(grants) {
            let Some(a) = col[g.m].as_mut() else {
                continue;
            };
            if grant >= g.target - g.actual {
                a.next = g.target;
            } else {
                // Memory grants are bytes, applied rounded down to MiB; the
                // unused bytes stay free for the next cycle.
                let mut next = g.actual + grant;
                if r == Resource::Memory {
                    next = units::floor_mib(next);
                }
                a.next = next.max(g.actual);
                a.reason = Reason::RateLimited;
            }
            // Memory grows by at least the dead band (a guest below what it
            // uses excepted): no 15 MiB steps, no 845 → 846 MiB.
            if r == Resource::Memory
                && a.next > a.actual
                && a.next - a.actual < tuning.memory_min_change
                && a.used.is_none_or(|u| a.actual >= u)
            {
                hold(a, Reason::DeadBand);
            }
            // A CPU limit too: no growth by less than the dead band
            // unless it is below its floor.
            if r == Resource::Cpu
                && a.next > a.actual
                && a.next - a.actual < tuning.cpu.min_change
                && a.actual >= a.floor
            {
                hold(a, Reason::DeadBand);
            }
            // Nor to a limit the kernel cannot set (below 1 ms a period):
            // it would be written as that 1 ms, more than the room.
            if r == Resource::Cpu && a.next > a.actual {
                let o = &members[order[g.m] as usize].o;
                let scope = o.quota_scope.unwrap_or(QuotaScope::Global);
                if a.next < CpuQuota::min_limit(scope, o.vcpus) {
                    a.next = a.actual;
                }
            }
        }
    }
}

/// Why a member's vCPUs are held after a timed-out change.
pub(super) fn frozen_note(p: &PendingVcpus) -> String {
    if p.is_removal() {
        format!(
            "vCPU removal {} → {} timed out: vCPUs held until the domain restarts (no change until libvirt shows {}, never more than it has)",
            p.from, p.to, p.to
        )
    } else {
        format!(
            "vCPU addition {} → {} timed out: no vCPU change until libvirt shows {} or the domain restarts",
            p.from, p.to, p.to
        )
    }
}

/// Keeps the current value, explaining why.
fn hold(a: &mut Alloc, reason: Reason) {
    a.next = a.actual;
    if a.target != a.actual {
        a.reason = reason;
    }
}

/// Splits `room` among growers: first up to their floors, then up to their
/// targets, by shares each time.
fn share_room(room: u64, growers: &[Grower]) -> Vec<u64> {
    let want: u64 = growers
        .iter()
        .map(|g| g.target - g.actual)
        .fold(0, u64::saturating_add);
    if want <= room {
        return growers.iter().map(|g| g.target - g.actual).collect();
    }
    let to_floor: Vec<Claim> = growers
        .iter()
        .map(|g| Claim {
            floor: 0,
            cap: g.floor.min(g.target).saturating_sub(g.actual),
            shares: g.shares,
        })
        .collect();
    let first = water_fill(room, &to_floor);
    let left = room - first.iter().sum::<u64>();
    let rest: Vec<Claim> = growers
        .iter()
        .zip(&first)
        .map(|(g, f)| Claim {
            floor: 0,
            cap: g.target - g.actual - f,
            shares: g.shares,
        })
        .collect();
    let second = water_fill(left, &rest);
    first.iter().zip(second).map(|(a, b)| a + b).collect()
}
