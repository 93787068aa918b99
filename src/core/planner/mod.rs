//! The planner: a pure function from what the agent knows (config, host,
//! observed domains, runtime reservations, history) to what every managed
//! domain should have, the actions that get it there, and why.
//!
//! No I/O, no clock: the caller passes `now`. Same inputs → same plan,
//! whatever the order of the domains. The rules are written for operators
//! in `docs/allocation.md`; in code, one cycle runs:
//!
//! 1. membership: which pool each domain is in ([`crate::core::membership`]);
//! 2. per pool, floors / caps / shares of each active member, then
//!    [`admission`] when the floors do not all fit;
//! 3. per pool and resource, the fair targets ([`alloc::water_fill`]);
//! 4. host memory [`pressure`] lowers memory targets across pools;
//! 5. [`stability`] decides how far each member moves this cycle (`next`);
//! 6. actions: vCPUs, balloon, per-disk I/O limits ([`disk`]) and
//!    scheduler weights ([`weights`]), shrinks first.
//!
//! The enforcer re-checks every action with [`check::Guard`] before it
//! calls libvirt.

mod admission;
pub mod alloc;
pub mod check;
pub mod disk;
pub mod history;
mod pressure;
mod stability;
mod strmap;
pub mod testing;
pub mod weights;

pub use check::{check_action, check_plan, Guard, Violation};
pub use history::{History, Outcome, PendingVcpus};
pub use weights::{blkio_weight, cpu_weight};

use crate::core::config::{Allocatable, Config, Limits, MemoryPolicy, Pool, DEFAULT_SHARES};
use crate::core::membership::{Membership, Via};
use crate::core::model::{
    Action, DiskObs, DomainObs, DomainState, PerResource, Reason, Resource, Snapshot,
};
use alloc::Claim;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
pub(crate) use strmap::StrMap;

const MIB: u64 = 1 << 20;

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
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub allocatable: Allocatable,
    /// Host available memory is below the pressure threshold.
    pub pressure: bool,
    pub pools: Vec<PoolPlan>,
    pub unmanaged: Vec<Unmanaged>,
    /// Changes to make, in a deterministic order: everything that gives
    /// resources back (vCPU and balloon shrinks) first, then disk limits
    /// and weights, then growth.
    pub actions: Vec<Action>,
    /// Per domain UUID: bytes by which pressure lowers its memory target
    /// (carried to the next cycle by [`History::record_plan`]).
    #[serde(default)]
    pub reclaim: BTreeMap<String, u64>,
}

/// The first 8 bytes of `s`, big-endian (zero-padded): ordering these
/// integers agrees with ordering the strings on those bytes.
pub(crate) fn prefix_key(s: &str) -> u64 {
    let mut b = [0u8; 8];
    let n = s.len().min(8);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    u64::from_be_bytes(b)
}

impl Plan {
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

/// Granularity of each resource's targets.
fn granularity(r: Resource) -> u64 {
    match r {
        Resource::Memory => MIB,
        _ => 1,
    }
}

/// Index of a resource in [`Resource::ALL`].
fn idx(r: Resource) -> usize {
    match r {
        Resource::Vcpus => 0,
        Resource::Memory => 1,
        Resource::DiskBytesSec => 2,
        Resource::DiskIopsSec => 3,
    }
}

/// Granularity of each resource as a shift: targets are whole multiples
/// of `1 << shift` (amounts in units are `bytes >> shift`, exactly).
fn shift(r: Resource) -> u32 {
    granularity(r).trailing_zeros()
}

/// What the planner reads of one pool member, gathered in one pass over
/// the domains in the order they are listed (each domain's memory read
/// once, in order): the later steps work on these small copies.
#[derive(Debug, Clone, Copy)]
struct Obs {
    state: DomainState,
    id: Option<u32>,
    vcpus: u64,
    vcpus_max: u64,
    memory: u64,
    memory_max: u64,
    /// What the guest uses, when it says.
    used: Option<u64>,
    /// Free fraction of the guest (pressure order).
    idle: (u64, u64),
    cpu_shares: Option<u64>,
    blkio_weight: Option<u64>,
    active_secs: u64,
    /// Tunable disks: how many, and which (bit k: disk k, when the domain
    /// has at most 64 disks).
    tunable: usize,
    tunable_mask: u64,
    /// Observed disk rates (see [`disk::observed`]).
    disk_bytes: u64,
    disk_iops: u64,
}

impl Obs {
    fn new(d: &DomainObs) -> Obs {
        let (tunable, disk_bytes, disk_iops) = disk::observed(&d.disks);
        let mut tunable_mask = 0u64;
        for (k, disk) in d.disks.iter().enumerate().take(64) {
            if disk.is_tunable() {
                tunable_mask |= 1 << k;
            }
        }
        Obs {
            state: d.state,
            id: d.id,
            vcpus: d.vcpus,
            vcpus_max: d.vcpus_max,
            memory: d.memory,
            memory_max: d.memory_max,
            used: d.balloon.and_then(|s| s.used()),
            idle: pressure::idle(d.balloon),
            cpu_shares: d.cpu_shares,
            blkio_weight: d.blkio_weight,
            active_secs: d.active_secs.unwrap_or(0),
            tunable,
            tunable_mask,
            disk_bytes,
            disk_iops,
        }
    }

    /// The observed amount of the resource of index `k`.
    fn actual(&self, k: usize) -> u64 {
        [self.vcpus, self.memory, self.disk_bytes, self.disk_iops][k]
    }

    /// The tunable disks of `d` (the domain this was observed from).
    fn tunable_disks<'d>(&self, d: &'d DomainObs) -> impl Iterator<Item = &'d DiskObs> {
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
enum Note {
    None,
    NotRunning,
    Unadmitted(admission::Refusal),
    Frozen(PendingVcpus),
}

/// A pool member being planned.
struct Mem<'a> {
    d: &'a DomainObs,
    uuid: &'a str,
    /// [`prefix_key`] of the UUID.
    key: u64,
    o: Obs,
    via: Via,
    hist: history::Entry,
    /// Its member override and runtime reservation, if any.
    over: Option<&'a PerResource<Limits>>,
    res: Option<&'a PerResource<Option<u64>>>,
    note: Note,
    /// Shares of the pool's disk resource.
    disk_shares: u64,
}

/// A pool being planned: its members as the domains are listed, their
/// UUID order, and, per resource the pool manages, one allocation slot per
/// member in UUID order (`None` for inactive members and for disk rates of
/// members without tunable disks); the columns of unmanaged resources are
/// empty. Member `m` (in UUID order) is `mems[order[m]]`.
pub(crate) struct Work<'a> {
    pool: &'a Pool,
    budget: PerResource<Option<u64>>,
    mems: Vec<Mem<'a>>,
    order: Vec<u32>,
    /// In UUID order.
    admitted: Vec<bool>,
    allocs: [Vec<Option<Alloc>>; 4],
}

impl<'a> Work<'a> {
    /// The member `m`-th in UUID order.
    fn mem(&self, m: usize) -> &Mem<'a> {
        &self.mems[self.order[m] as usize]
    }
}

/// Plans one cycle.
///
/// Compiles the pools' membership rules (globs) first; a caller that plans
/// every few seconds can keep a [`Membership`] per config and call
/// [`plan_with`] instead.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    plan_with(input, &Membership::new(&input.config.pools))
}

/// Plans one cycle with membership rules compiled beforehand from
/// `input.config.pools` (`Membership::new`); same result as [`plan`].
pub fn plan_with(input: &PlanInput<'_>, membership: &Membership) -> Plan {
    let cfg = input.config;
    let alloc = cfg.host.allocatable(&input.snapshot.host);

    // Membership pools → config pools (the same list when the membership
    // was compiled from this config).
    let cfg_names: Vec<&str> = cfg.pools.keys().map(String::as_str).collect();
    let to_cfg: Vec<Option<usize>> = membership
        .pool_names()
        .iter()
        .map(|n| cfg_names.binary_search(&n.as_str()).ok())
        .collect();
    // Member overrides and runtime reservations, hashed once per cycle.
    let empty = BTreeMap::new();
    let overrides: Vec<ByDomain<'_, PerResource<Limits>>> = cfg
        .pools
        .values()
        .map(|p| ByDomain::new(&p.members))
        .collect();
    let reservations: Vec<ByDomain<'_, PerResource<Option<u64>>>> = cfg
        .pools
        .values()
        .map(|p| ByDomain::new(input.reservations.get(&p.name).unwrap_or(&empty)))
        .collect();

    // One pass over the domains as listed (memory order): each one's pool,
    // sort key and, for pool members, everything planning reads of it,
    // kept per pool in this order.
    let domains = &input.snapshot.domains;
    let mut keyed: Vec<(u64, usize)> = Vec::with_capacity(domains.len());
    let mut places: Vec<Place> = Vec::with_capacity(domains.len());
    let share = domains.len().div_ceil(cfg_names.len().max(1));
    let mut by_pool: Vec<Vec<Mem<'_>>> = cfg_names
        .iter()
        .map(|_| Vec::with_capacity(share))
        .collect();
    let mut unmanaged_count = 0;
    for (i, d) in domains.iter().enumerate() {
        let key = prefix_key(&d.uuid);
        keyed.push((key, i));
        let place = match membership.pool_index_of(d) {
            Some((k, via)) => to_cfg[k].map_or(Place::Elsewhere, |c| {
                by_pool[c].push(Mem {
                    d,
                    uuid: &d.uuid,
                    key,
                    o: Obs::new(d),
                    via,
                    hist: history::Entry::default(),
                    over: overrides[c].get(d),
                    res: reservations[c].get(d),
                    note: Note::None,
                    disk_shares: DEFAULT_SHARES,
                });
                Place::Pool(c, by_pool[c].len() - 1)
            }),
            None => {
                unmanaged_count += 1;
                Place::Unmanaged
            }
        };
        places.push(place);
    }
    drop((overrides, reservations));
    // Deterministic order, whatever order libvirt listed domains in: by
    // UUID, then name. The first 8 bytes of the UUID as an integer make
    // most comparisons one integer compare.
    keyed.sort_unstable_by(|&(ka, a), &(kb, b)| {
        ka.cmp(&kb)
            .then_with(|| domains[a].uuid.cmp(&domains[b].uuid))
            .then_with(|| domains[a].name.cmp(&domains[b].name))
    });

    // Each pool's UUID order, and the members' history: domains come in
    // UUID order, so one merge with the history's maps.
    let mut orders: Vec<Vec<u32>> = by_pool
        .iter()
        .map(|m| Vec::with_capacity(m.len()))
        .collect();
    let mut unmanaged = Vec::with_capacity(unmanaged_count);
    let mut hist = history::Cursor::new(input.history);
    for (key, i) in keyed {
        let d = &domains[i];
        match places[i] {
            Place::Pool(c, j) => {
                by_pool[c][j].hist = hist.get(&d.uuid, key);
                orders[c].push(j as u32);
            }
            Place::Unmanaged => unmanaged.push(Unmanaged {
                name: d.name.clone(),
                uuid: d.uuid.clone(),
                state: d.state,
                vcpus: d.vcpus,
                memory: d.memory,
            }),
            Place::Elsewhere => {}
        }
    }
    drop(places);
    unmanaged.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uuid.cmp(&b.uuid)));

    let mut works: Vec<Work<'_>> = cfg
        .pools
        .values()
        .zip(by_pool.into_iter().zip(orders))
        .map(|(pool, (members, order))| prepare_pool(input, pool, &alloc, members, order))
        .collect();

    let (pressure, reclaim) = pressure::apply(&mut works, input);

    for w in works.iter_mut() {
        stability::settle(w, input);
    }
    // The actions, in phase order: vCPU and balloon decreases, then disk
    // limits and weights, then vCPU and balloon increases. The decreases
    // of every pool go first, straight into the list; then, per pool, each
    // member's plan, its disk limits and weights (into the list) and its
    // increases (kept aside, appended last). The list is sized from a
    // count first: the vCPU, memory and weight changes exactly, disk limits
    // at most one per tunable disk (a list that grows is remapped as it
    // grows; an oversized one is a larger fresh mapping every cycle).
    let emits = |w: &Work<'_>| !(input.paused || w.pool.paused);
    let mut counts = [0usize; 3];
    for w in works.iter().filter(|w| emits(w)) {
        count_actions(w, &mut counts);
    }
    let mut actions = Vec::with_capacity(counts.iter().sum());
    let mut grow = Vec::with_capacity(counts[2]);
    for w in works.iter().filter(|w| emits(w)) {
        shrinks(w, &mut actions);
    }
    let pools = works
        .into_iter()
        .map(|w| {
            let emit = emits(&w);
            finish(w, input, emit, &mut actions, &mut grow)
        })
        .collect();
    actions.append(&mut grow);

    Plan {
        allocatable: alloc,
        pressure,
        pools,
        unmanaged,
        actions,
        reclaim,
    }
}

/// Where membership puts a domain.
#[derive(Clone, Copy)]
enum Place {
    /// In this config pool (index), at this index of its members.
    Pool(usize, usize),
    /// In a pool of the membership rules that the config does not have.
    Elsewhere,
    /// In no pool.
    Unmanaged,
}

/// Name-or-UUID lookups in a per-domain map (member overrides,
/// reservations), hashed once per cycle.
struct ByDomain<'m, V>(StrMap<&'m str, &'m V>);

impl<'m, V> ByDomain<'m, V> {
    fn new(m: &'m BTreeMap<String, V>) -> Self {
        ByDomain(m.iter().map(|(k, v)| (k.as_str(), v)).collect())
    }

    /// The entry of the domain's name, else of its UUID.
    fn get(&self, d: &DomainObs) -> Option<&'m V> {
        if self.0.is_empty() {
            return None;
        }
        self.0
            .get(&*d.name)
            .or_else(|| self.0.get(&*d.uuid))
            .copied()
    }
}

/// Floor, cap and weight of one member for one resource, in units of the
/// resource's granularity.
#[derive(Debug, Clone, Copy)]
struct Bound {
    floor: u64,
    cap: u64,
    shares: u64,
    /// What limits the cap.
    cap_reason: Reason,
}

fn prepare_pool<'a>(
    input: &PlanInput<'_>,
    pool: &'a Pool,
    alloc: &Allocatable,
    mut mems: Vec<Mem<'a>>,
    order: Vec<u32>,
) -> Work<'a> {
    let budget = Config::pool_budget(pool, alloc);
    let n = mems.len();
    let managed: Vec<(usize, Resource, u64)> = Resource::ALL
        .into_iter()
        .filter_map(|r| budget.get(r).map(|b| (idx(r), r, b)))
        .collect();
    let mut allocs: [Vec<Option<Alloc>>; 4] = Default::default();
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
        let mem = &mut mems[j as usize];
        let o = &mem.o;
        let is_active = o.state.is_active();
        let (over, res) = (mem.over, mem.res);
        let lim = |r: Resource| -> Limits {
            let base = defaults[idx(r)];
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
        let mut floors: [Option<u64>; 4] = [None; 4];
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
                used: if r == Resource::Memory { o.used } else { None },
                reason: Reason::Unadmitted,
                target_reason: bd.cap_reason,
            });
        }
        candidates.push(admission::Candidate {
            uuid: mem.uuid,
            explicit,
            active_secs: o.active_secs,
            floors,
        });
        active.push(m);
    }

    let budget_units: [Option<u64>; 4] =
        Resource::ALL.map(|r| budget.get(r).map(|b| b / granularity(r)));
    let verdicts = admission::admit(&candidates, budget_units);
    drop(candidates);
    let mut refused = false;
    for (&m, verdict) in active.iter().zip(&verdicts) {
        if let Err(refusal) = verdict {
            admitted[m] = false;
            mems[order[m] as usize].note = Note::Unadmitted(*refusal);
            refused = true;
        }
    }
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
        let targets = alloc::water_fill(b >> s, &claims);
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
        mems,
        order,
        admitted,
        allocs,
    }
}

/// The domain's own upper bound for a resource, in units.
fn hardware_max(o: &Obs, r: Resource) -> u64 {
    match r {
        Resource::Vcpus => o.vcpus_max.max(1),
        Resource::Memory => (o.memory_max / MIB).max(1),
        Resource::DiskBytesSec | Resource::DiskIopsSec => UNCAPPED,
    }
}

/// Floor and cap of one member for one resource (units, floor ≤ cap);
/// `None` when the member takes no part (disk rates without tunable disks).
fn bound(input: &PlanInput<'_>, pool: &Pool, o: &Obs, r: Resource, l: Limits) -> Option<Bound> {
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
            if let Some(used) = o.used {
                let margin = input.config.tuning.guest_free_min.resolve(o.memory_max);
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

/// Builds a pool's plan from its settled allocations and, when `emit`,
/// its members' disk limits and weights (into `neutral`) and vCPU and
/// balloon increases (into `grow`); the decreases are [`shrinks`].
fn finish(
    w: Work<'_>,
    input: &PlanInput<'_>,
    emit: bool,
    neutral: &mut Vec<Action>,
    grow: &mut Vec<Action>,
) -> PoolPlan {
    let persist = w.pool.persist;
    let factor = input.config.tuning.disk_burst_factor;
    let manages_disk = w.budget.disk_bytes_sec.is_some() || w.budget.disk_iops_sec.is_some();
    let mut allocated = PerResource::<u64>::default();
    let mut members = Vec::with_capacity(w.mems.len());
    let slot = |k: usize, m: usize| w.allocs[k].get(m).copied().flatten();
    for m in 0..w.order.len() {
        let mem = w.mem(m);
        let d = mem.d;
        let admitted = w.admitted[m];
        let alloc = PerResource {
            vcpus: slot(0, m),
            memory: slot(1, m),
            disk_bytes_sec: slot(2, m),
            disk_iops_sec: slot(3, m),
        };
        if admitted {
            for r in Resource::ALL {
                if let Some(a) = alloc.get(r) {
                    *allocated.get_mut(r) = allocated.get(r).saturating_add(a.target);
                }
            }
        }
        if emit && admitted {
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

/// Adds to `counts` (per phase, as [`finish`] sorts them) the actions a
/// pool's settled allocations lead to: exact for vCPUs, memory and
/// weights, the number of tunable disks for disk limits.
fn count_actions(w: &Work<'_>, counts: &mut [usize; 3]) {
    let manages_disk = w.budget.disk_bytes_sec.is_some() || w.budget.disk_iops_sec.is_some();
    let slot = |k: usize, m: usize| w.allocs[k].get(m).copied().flatten();
    for m in 0..w.order.len() {
        let mem = w.mem(m);
        if !w.admitted[m] {
            continue;
        }
        for k in 0..2 {
            if let Some(a) = slot(k, m).filter(|a| a.next != a.actual) {
                counts[if a.next < a.actual { 0 } else { 2 }] += 1;
            }
        }
        let o = &mem.o;
        if o.tunable > 0 && (slot(2, m).is_some() || slot(3, m).is_some()) {
            counts[1] += o.tunable;
        }
        if let Some(a) = slot(0, m) {
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
        Note::Frozen(pv) => Some(stability::frozen_note(&pv)),
    }
}

/// The vCPU and balloon decreases of a pool's admitted members, in member
/// order, vCPUs before memory.
fn shrinks(w: &Work<'_>, out: &mut Vec<Action>) {
    let persist = w.pool.persist;
    for m in 0..w.order.len() {
        let mem = w.mem(m);
        if !w.admitted[m] {
            continue;
        }
        let alloc = PerResource {
            vcpus: w.allocs[0].get(m).copied().flatten(),
            memory: w.allocs[1].get(m).copied().flatten(),
            ..PerResource::default()
        };
        emit_vcpus_memory(mem.d, &alloc, persist, true, out);
    }
}

/// A member's vCPU and balloon changes in one direction (decreases when
/// `shrink`), vCPUs first.
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
}

/// A member's disk limits and scheduler weights (see [`finish`]).
#[allow(clippy::too_many_arguments)]
fn emit_neutral(
    d: &DomainObs,
    o: &Obs,
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
    if let Some(a) = alloc.vcpus {
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
