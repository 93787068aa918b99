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
pub mod advance;
pub mod alloc;
pub mod check;
pub mod disk;
mod emit;
pub mod history;
mod plan;
mod pressure;
mod release;
pub mod reserve;
mod stability;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod weights;
mod work;

pub use advance::{advance, CycleFacts};
pub use check::{check_action, check_plan, Guard, Violation};
pub use history::{Admission, History, Originals, Outcome, PendingVcpus, Released};
pub use plan::{
    Alloc, MemberPlan, Plan, PlanInput, PoolPlan, Release, Reservations, Unmanaged, UNCAPPED,
};
pub use weights::{blkio_weight, cpu_weight};

use crate::core::config::{Limits, DEFAULT_SHARES};
use crate::core::keys::head_word;
use crate::core::membership::Membership;
use crate::core::model::{DomainObs, PerResource};
use emit::{count_actions, finish, shrinks};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use work::{prepare_pool, Facts, Member, Note, Work};

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
    let alloc = cfg.host.allocatable(&input.host);

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
    let domains = input.domains;
    let mut keyed: Vec<(u64, usize)> = Vec::with_capacity(domains.len());
    let mut places: Vec<Place> = Vec::with_capacity(domains.len());
    let share = domains.len().div_ceil(cfg_names.len().max(1));
    let mut by_pool: Vec<Vec<Member<'_>>> = cfg_names
        .iter()
        .map(|_| Vec::with_capacity(share))
        .collect();
    let mut unmanaged_count = 0;
    for (i, d) in domains.iter().enumerate() {
        let key = head_word(&d.uuid);
        keyed.push((key, i));
        let place = match membership.pool_index_of(d) {
            Some((k, via)) => to_cfg[k].map_or(Place::Elsewhere, |c| {
                by_pool[c].push(Member {
                    d,
                    uuid: &d.uuid,
                    key,
                    o: Facts::new(d),
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
    let mut releases = Vec::new();
    let mut hist = history::Cursor::new(input.history);
    for (key, i) in keyed {
        let d = &domains[i];
        match places[i] {
            Place::Pool(c, j) => {
                by_pool[c][j].hist = hist.get(&d.uuid, key);
                orders[c].push(j as u32);
            }
            Place::Unmanaged => {
                let h = hist.get(&d.uuid, key);
                // Noted for an earlier domain with this UUID: not its own.
                let originals = h.originals.filter(|o| o.belong_to(&d.name));
                let release = match (originals, h.released) {
                    (Some(o), _) => Some(release::release(
                        d,
                        o,
                        cfg.agent.on_release,
                        !input.paused,
                        &mut releases,
                    )),
                    (None, Some(r)) => Some(Release::Done(*r)),
                    (None, None) => None,
                };
                unmanaged.push(Unmanaged {
                    name: d.name.clone(),
                    uuid: d.uuid.clone(),
                    state: d.state,
                    vcpus: d.vcpus,
                    memory: d.memory,
                    release,
                });
            }
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
    let mut setup = Vec::new();
    let pools = works
        .into_iter()
        .map(|w| {
            let emit = emits(&w);
            finish(w, input, emit, &mut setup, &mut actions, &mut grow)
        })
        .collect();
    actions.append(&mut grow);

    Plan {
        allocatable: alloc,
        pressure,
        pools,
        unmanaged,
        setup,
        actions,
        releases,
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
struct ByDomain<'m, V>(FxHashMap<&'m str, &'m V>);

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
