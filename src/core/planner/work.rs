//! One pool being planned: its members' facts, floors, caps and shares,
//! admission, and the fair targets per resource (steps 2 and 3 of the
//! module doc of [`crate::core::planner`]).

use super::alloc::{self, Claim};
use super::history::{self, PendingVcpus};
use super::plan::{Alloc, PlanInput, UNCAPPED};
use super::{admission, disk};
use crate::core::config::{Allocatable, Config, Limits, MemoryPolicy, Pool, DEFAULT_SHARES};
use crate::core::cpu::{CpuQuota, MILLI};
use crate::core::membership::Via;
use crate::core::model::{
    BalloonStats, DiskObs, DomainObs, DomainState, PerResource, QuotaScope, Reason, Resource,
};

pub(super) const MIB: u64 = 1 << 20;

/// Granularity of each resource's targets.
pub(super) fn granularity(r: Resource) -> u64 {
    match r {
        Resource::Memory => MIB,
        _ => 1,
    }
}

/// Granularity of each resource as a shift: targets are whole multiples
/// of `1 << shift` (amounts in units are `bytes >> shift`, exactly).
pub(super) fn shift(r: Resource) -> u32 {
    granularity(r).trailing_zeros()
}

/// What the planner reads of one pool member, gathered in one pass over
/// the domains in the order they are listed (each domain's memory read
/// once, in order): the later steps work on these small copies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts {
    pub(super) state: DomainState,
    pub(super) id: Option<u32>,
    pub(super) vcpus: u64,
    pub(super) vcpus_max: u64,
    pub(super) memory: u64,
    pub(super) memory_max: u64,
    /// What the guest uses, when it says.
    pub(super) used: Option<u64>,
    /// It has a balloon device (else its memory is not managed).
    pub(super) balloon_device: bool,
    /// Free fraction of the guest (pressure order).
    pub(super) idle: (u64, u64),
    pub(super) cpu_shares: Option<u64>,
    pub(super) blkio_weight: Option<u64>,
    pub(super) active_secs: u64,
    /// Tunable disks: how many, and which (bit k: disk k, when the domain
    /// has at most 64 disks).
    pub(super) tunable: usize,
    pub(super) tunable_mask: u64,
    /// Observed disk rates (see [`disk::observed`]).
    pub(super) disk_bytes: u64,
    pub(super) disk_iops: u64,
    /// CPU-time limit (millicores; all online vCPUs when unlimited).
    pub(super) cpu: u64,
    /// A limit is set (not every vCPU's worth).
    pub(super) cpu_limited: bool,
    /// Where the hypervisor takes a CPU quota, if it does.
    pub(super) quota_scope: Option<QuotaScope>,
    /// CPU time used of late (millicores), when measured.
    pub(super) cpu_used: Option<u64>,
}

impl Facts {
    pub(super) fn new(d: &DomainObs) -> Facts {
        let (tunable, disk_bytes, disk_iops) = disk::observed(&d.disks);
        let mut tunable_mask = 0u64;
        for (k, disk) in d.disks.iter().enumerate().take(64) {
            if disk.is_tunable() {
                tunable_mask |= 1 << k;
            }
        }
        Facts {
            state: d.state,
            id: d.id,
            vcpus: d.vcpus,
            vcpus_max: d.vcpus_max,
            memory: d.memory,
            memory_max: d.memory_max,
            used: d.balloon.and_then(|s| s.used()),
            balloon_device: d.balloon_device,
            idle: idle(d.balloon),
            cpu_shares: d.cpu_shares,
            blkio_weight: d.blkio_weight,
            active_secs: d.active_secs.unwrap_or(0),
            tunable,
            tunable_mask,
            disk_bytes,
            disk_iops,
            cpu: d.cpu_limit(),
            cpu_limited: d.cpu_quota.is_some_and(|q| q.is_limited()),
            quota_scope: d.cpu_quota.map(|q| q.scope),
            cpu_used: d.cpu_used,
        }
    }

    /// The observed amount of the resource of index `k`.
    pub(super) fn actual(&self, k: usize) -> u64 {
        [
            self.vcpus,
            self.memory,
            self.disk_bytes,
            self.disk_iops,
            self.cpu,
        ][k]
    }

    /// The tunable disks of `d` (the domain this was observed from).
    pub(super) fn tunable_disks<'d>(&self, d: &'d DomainObs) -> impl Iterator<Item = &'d DiskObs> {
        let mask = self.tunable_mask;
        let all = d.disks.len() > 64;
        d.disks
            .iter()
            .enumerate()
            .filter(move |&(k, x)| {
                if all {
                    x.is_tunable()
                } else {
                    (mask >> k) & 1 == 1
                }
            })
            .map(|(_, x)| x)
    }
}

/// Why a member is not admitted, or why nothing is done (formatted into
/// [`MemberPlan::note`] when the plan is built).
#[derive(Debug, Clone, Copy)]
pub(super) enum Note {
    None,
    NotRunning,
    Unadmitted(admission::Refusal),
    Waiting(admission::Wait),
    Frozen(PendingVcpus),
}

/// A pool member being planned.
pub(super) struct Member<'a> {
    pub(super) d: &'a DomainObs,
    pub(super) uuid: &'a str,
    /// [`head_word`] of the UUID.
    pub(super) key: u64,
    pub(super) o: Facts,
    pub(super) via: Via,
    pub(super) hist: history::Entry<'a>,
    /// Its member override and runtime reservation, if any.
    pub(super) over: Option<&'a PerResource<Limits>>,
    pub(super) res: Option<&'a PerResource<Option<u64>>>,
    pub(super) note: Note,
    /// Shares of the pool's disk resource.
    pub(super) disk_shares: u64,
}

/// A pool being planned: its members as the domains are listed, their
/// UUID order, and, per resource the pool manages, one allocation slot per
/// member in UUID order (`None` for inactive members and for disk rates of
/// members without tunable disks); the columns of unmanaged resources are
/// empty. Member `m` (in UUID order) is `members[order[m]]`.
pub(super) struct Work<'a> {
    pub(super) pool: &'a Pool,
    pub(super) budget: PerResource<Option<u64>>,
    pub(super) members: Vec<Member<'a>>,
    pub(super) order: Vec<u32>,
    /// In UUID order.
    pub(super) admitted: Vec<bool>,
    pub(super) allocs: [Vec<Option<Alloc>>; Resource::COUNT],
    /// Per resource, in units: what members waiting for admission hold
    /// (kept out of what the admitted members share and grow into).
    pub(super) reserved: [u64; Resource::COUNT],
}

impl<'a> Work<'a> {
    /// The member `m`-th in UUID order.
    pub(super) fn member(&self, m: usize) -> &Member<'a> {
        &self.members[self.order[m] as usize]
    }
}

/// Floor, cap and weight of one member for one resource, in units of the
/// resource's granularity.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bound {
    pub(super) floor: u64,
    pub(super) cap: u64,
    pub(super) shares: u64,
    /// What limits the cap.
    pub(super) cap_reason: Reason,
}

pub(super) fn prepare_pool<'a>(
    input: &PlanInput<'_>,
    pool: &'a Pool,
    alloc: &Allocatable,
    mut members: Vec<Member<'a>>,
    order: Vec<u32>,
) -> Work<'a> {
    let budget = Config::pool_budget(pool, alloc);
    let n = members.len();
    let managed: Vec<(usize, Resource, u64)> = Resource::ALL
        .into_iter()
        .filter_map(|r| budget.get(r).map(|b| (r.index(), r, b)))
        .collect();
    let mut allocs: [Vec<Option<Alloc>>; Resource::COUNT] = Default::default();
    for &(k, _, _) in &managed {
        allocs[k] = vec![None; n];
    }
    let mut admitted = vec![false; n];
    let mut candidates = Vec::with_capacity(n);
    let mut active = Vec::with_capacity(n);
    let disk_res = if budget.disk_bytes_sec.is_some() {
        Some(Resource::DiskBytesSec)
    } else if budget.disk_iops_sec.is_some() {
        Some(Resource::DiskIopsSec)
    } else {
        None
    };
    let defaults = Resource::ALL.map(|r| {
        pool.resources
            .get(r)
            .map(|p| p.defaults)
            .unwrap_or_default()
    });
    for (m, &j) in order.iter().enumerate() {
        let mem = &mut members[j as usize];
        let o = &mem.o;
        let is_active = o.state.is_active();
        let (over, res) = (mem.over, mem.res);
        let lim = |r: Resource| -> Limits {
            let base = defaults[r.index()];
            let mut l = match over {
                Some(o) => base.overlay(*o.get(r)),
                None => base,
            };
            if let Some(v) = res.and_then(|x| *x.get(r)) {
                l.min = Some(l.min.map_or(v, |m| m.max(v)));
            }
            l
        };
        mem.disk_shares =
            disk_res.map_or(DEFAULT_SHARES, |r| lim(r).shares.unwrap_or(DEFAULT_SHARES));
        if !is_active {
            mem.note = Note::NotRunning;
            continue;
        }
        admitted[m] = true;
        let mut explicit = false;
        let mut floors: [Option<u64>; Resource::COUNT] = [None; Resource::COUNT];
        for &(k, r, _) in &managed {
            explicit |= res.is_some_and(|x| x.get(r).is_some())
                || over.is_some_and(|o| o.get(r).min.is_some());
            let Some(bd) = bound(input, pool, o, r, lim(r)) else {
                continue;
            };
            floors[k] = Some(bd.floor);
            let g = granularity(r);
            let actual = o.actual(k);
            // The unadmitted view; admitted members get their targets
            // below (the cap's reason waits in `target_reason`).
            allocs[k][m] = Some(Alloc {
                floor: bd.floor.saturating_mul(g),
                cap: bd.cap.saturating_mul(g),
                shares: bd.shares,
                target: actual,
                next: actual,
                actual,
                used: match r {
                    Resource::Memory => o.used,
                    Resource::Cpu => o.cpu_used,
                    _ => None,
                },
                reason: Reason::Unadmitted,
                target_reason: bd.cap_reason,
            });
        }
        // What it holds counts against the budget before any change:
        // vCPUs and memory (disk rates are limits, set at once).
        let mut holds = [None; Resource::COUNT];
        for &(k, r, _) in &managed {
            if floors[k].is_some() && matches!(r, Resource::Vcpus | Resource::Memory) {
                holds[k] = Some(o.actual(k).div_ceil(granularity(r)));
            }
        }
        candidates.push(admission::Candidate {
            refused_before: mem.hist.refused.is_some_and(|p| *p == pool.name),
            holds,
            uuid: mem.uuid,
            sticky: mem
                .hist
                .admitted
                .filter(|a| a.pool == pool.name)
                .map(|a| a.seq),
            explicit,
            active_secs: o.active_secs,
            floors,
        });
        active.push(m);
    }

    let budget_units: [Option<u64>; Resource::COUNT] =
        Resource::ALL.map(|r| budget.get(r).map(|b| b / granularity(r)));
    let verdicts = admission::admit(&candidates, budget_units);
    let mut reserved = [0u64; Resource::COUNT];
    let mut refused = false;
    for ((&m, verdict), c) in active.iter().zip(&verdicts).zip(&candidates) {
        let note = match verdict {
            admission::Verdict::Admitted => continue,
            admission::Verdict::Refused(refusal) => Note::Unadmitted(*refusal),
            admission::Verdict::Waiting(wait) => {
                for (r, h) in reserved.iter_mut().zip(c.holds) {
                    *r = r.saturating_add(h.unwrap_or(0));
                }
                Note::Waiting(*wait)
            }
        };
        admitted[m] = false;
        members[order[m] as usize].note = note;
        refused = true;
    }
    drop(candidates);
    if refused {
        active.retain(|&m| {
            if admitted[m] {
                return true;
            }
            for col in allocs.iter_mut() {
                if let Some(a) = col.get_mut(m).and_then(Option::as_mut) {
                    a.target_reason = Reason::Unadmitted;
                }
            }
            false
        });
    }

    // Per resource: the admitted members' claims, their fair targets, and
    // each target's reason.
    let mut claims: Vec<Claim> = Vec::with_capacity(active.len());
    for &(k, r, b) in &managed {
        let s = shift(r);
        let col = &mut allocs[k];
        claims.clear();
        claims.extend(active.iter().filter_map(|&m| {
            col[m].map(|a| Claim {
                floor: a.floor >> s,
                cap: a.cap >> s,
                shares: a.shares,
            })
        }));
        // Room kept for members waiting to be admitted again.
        let targets = alloc::water_fill((b >> s).saturating_sub(reserved[k]), &claims);
        let mut targets = targets.into_iter();
        for &m in &active {
            let Some(a) = col[m].as_mut() else { continue };
            let Some(t) = targets.next() else { continue };
            let (floor, cap) = (a.floor >> s, a.cap >> s);
            let reason = if t >= cap && cap > floor {
                a.target_reason
            } else if t <= floor {
                Reason::Floor
            } else {
                Reason::Share
            };
            a.target = t << s;
            a.next = a.target;
            a.reason = reason;
            a.target_reason = reason;
        }
    }

    Work {
        pool,
        budget,
        members,
        order,
        admitted,
        allocs,
        reserved,
    }
}

/// The domain's own upper bound for a resource, in units.
pub(super) fn hardware_max(o: &Facts, r: Resource) -> u64 {
    match r {
        Resource::Vcpus => o.vcpus_max.max(1),
        Resource::Memory => (o.memory_max / MIB).max(1),
        Resource::DiskBytesSec | Resource::DiskIopsSec => UNCAPPED,
        // Never more CPU time than its online vCPUs can use.
        Resource::Cpu => o.vcpus.max(1).saturating_mul(MILLI),
    }
}

/// Floor and cap of one member for one resource (units, floor ≤ cap);
/// `None` when the member takes no part (disk rates without tunable disks).
pub(super) fn bound(
    input: &PlanInput<'_>,
    pool: &Pool,
    o: &Facts,
    r: Resource,
    l: Limits,
) -> Option<Bound> {
    // Amounts in units: shifts (the granularities are powers of two).
    let g = shift(r);
    let ceil = |x: u64| (x >> g) + u64::from(x & ((1 << g) - 1) != 0);
    let hw = hardware_max(o, r);
    let (mut cap, mut cap_reason) = match l.max.map(|m| m >> g) {
        Some(m) if m < hw => (m, Reason::Max),
        _ => (hw, Reason::HardwareMax),
    };
    let mut floor = ceil(l.min.unwrap_or(0));
    match r {
        Resource::Vcpus => {
            cap = cap.max(1);
            floor = floor.max(1);
        }
        Resource::Memory => {
            cap = cap.max(1);
            floor = floor.max(1);
            if !o.balloon_device {
                // No balloon: what it has is what it gets, counted in the
                // budget, never changed.
                let have = ceil(o.memory).max(1);
                return Some(Bound {
                    floor: have,
                    cap: have,
                    shares: l.shares.unwrap_or(DEFAULT_SHARES).max(1),
                    cap_reason: Reason::NoBalloon,
                });
            }
            if let Some(used) = o.used {
                // The margin is a share of what the guest uses (or an
                // absolute amount): a sane function of its need, whatever
                // its maximum (a 1 TiB maximum is no reason for a 100 GiB
                // floor).
                let margin = input.config.tuning.guest_free_min.resolve(used);
                floor = floor.max(ceil(used.saturating_add(margin)));
                if pool.memory_policy == MemoryPolicy::Demand {
                    let keep = 1.0 - input.config.tuning.target_free;
                    let want = (used as f64 / keep).ceil();
                    let want = if want.is_finite() && want < u64::MAX as f64 {
                        want as u64
                    } else {
                        u64::MAX
                    };
                    let demand = ceil(want);
                    if demand < cap {
                        cap = demand;
                        cap_reason = Reason::Demand;
                    }
                }
            }
        }
        Resource::DiskBytesSec | Resource::DiskIopsSec => {
            if o.tunable == 0 {
                return None;
            }
            // Each tunable disk needs at least 1 (0 means unlimited).
            let t = o.tunable as u64;
            floor = floor.max(t);
            cap = cap.max(t);
        }
        Resource::Cpu => {
            // The smallest quota the kernel takes (per vCPU where the
            // quota is per vCPU).
            let scope = o.quota_scope.unwrap_or(QuotaScope::Global);
            let least = CpuQuota::min_limit(scope, o.vcpus).min(hw);
            floor = floor.max(least);
            cap = cap.max(least);
            if let (MemoryPolicy::Demand, Some(used)) = (pool.cpu_policy, o.cpu_used) {
                let demand = cpu_demand(used, o.cpu, input.config.tuning.cpu.target_idle);
                if demand < cap {
                    cap = demand;
                    cap_reason = Reason::Demand;
                }
            }
        }
    }
    // The hardware maximum is absolute; a floor (reservation, guest need)
    // overrides a lower configured max or demand cap.
    let floor = floor.min(hw);
    let shares = l.shares.unwrap_or(DEFAULT_SHARES).max(1);
    Some(Bound {
        floor,
        cap: cap.max(floor),
        shares,
        cap_reason,
    })
}

/// A guest using at least this fraction of its limit is taken as held
/// back by it (its use shows the limit, not its need).
pub(super) const SATURATED: f64 = 0.9;

/// The CPU-time limit a guest that used `used` millicores under a limit of
/// `limit` asks for: `used / (1 − target_idle)`, and at least twice its
/// limit when it used 90% of it or more (a limited guest cannot show a
/// need above its limit: its limit doubles each cycle until it no longer
/// saturates it).
pub(super) fn cpu_demand(used: u64, limit: u64, target_idle: f64) -> u64 {
    let keep = (1.0 - target_idle).max(f64::MIN_POSITIVE);
    let want = (used as f64 / keep).ceil();
    let mut want = if want.is_finite() && want < u64::MAX as f64 {
        want as u64
    } else {
        u64::MAX
    };
    if used as f64 >= SATURATED * limit as f64 {
        want = want.max(limit.saturating_mul(2));
    }
    want
}

/// Free fraction of a guest as a rational (free, total); unknown = (0, 1).
fn idle(b: Option<BalloonStats>) -> (u64, u64) {
    match b.and_then(|s| Some((s.actual, s.used()?))) {
        Some((total, used)) if total > 0 => (total.saturating_sub(used), total),
        _ => (0, 1),
    }
}
