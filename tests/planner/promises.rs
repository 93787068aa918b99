//! The promises of `docs/allocation.md` on awkward cases, planned cycle
//! after cycle on a simulated host (the planner and `advance`, as the
//! agent runs them): sticky admission, what the agent changed given back,
//! a domain without a balloon, a paused domain, the dead band on growth,
//! floors that follow what the guest uses. The same promises are checked
//! against libvirt from a second connection by the stateful test
//! (`tests/daemon/promises_live.rs`).

use crate::member;
use std::sync::Arc;
use virtpool::core::config::{Config, Limits, OnRelease};
use virtpool::core::model::{Action, DomainObs, DomainState, Observation, Reason, Resource};
use virtpool::core::planner::testing::{self as t, GIB, MIB};
use virtpool::core::planner::{
    advance, check_plan, plan, CycleFacts, History, Outcome, Plan, PlanInput, Release, Released,
    Reservations,
};
use virtpool::core::units::Amount;

/// A simulated host the planner runs on, cycle after cycle.
struct Sim {
    cfg: Config,
    obs: Observation,
    history: Arc<History>,
    res: Reservations,
    now: u64,
}

impl Sim {
    fn new(cfg: Config, domains: Vec<DomainObs>) -> Sim {
        Sim {
            cfg,
            obs: Observation {
                host: t::host(64, 256 * GIB),
                domains,
            },
            history: Arc::new(History::default()),
            res: Reservations::new(),
            now: 10_000,
        }
    }

    fn plan(&self) -> Plan {
        let p = plan(&PlanInput {
            config: &self.cfg,
            host: self.obs.host,
            domains: &self.obs.domains,
            reservations: &self.res,
            history: &self.history,
            now: self.now,
            paused: false,
        });
        check_plan(&p).unwrap();
        p
    }

    /// Plans and carries the plan out (every action succeeds), as a
    /// cycle of the agent does; returns the plan.
    fn cycle(&mut self) -> Plan {
        let p = self.plan();
        let mut outcomes = Vec::new();
        for a in p.steps() {
            outcomes.push((a, Outcome::Ok));
            if let Some(d) = self.obs.domains.iter_mut().find(|d| *d.uuid == *a.uuid()) {
                d.apply(a);
            }
        }
        self.history = advance(
            &self.history,
            &CycleFacts {
                plan: &p,
                domains: &self.obs.domains,
                scope: None,
                enforced: true,
                outcomes: &outcomes,
                now: self.now,
            },
        );
        self.now += 10;
        p
    }

    fn dom(&mut self, name: &str) -> &mut DomainObs {
        self.obs
            .domains
            .iter_mut()
            .find(|d| *d.name == *name)
            .unwrap()
    }
}

fn vm(name: &str, pool: &str, vcpus: u64, memory: u64, age: u64) -> DomainObs {
    let mut d = t::domain(name, Some(pool));
    d.vcpus = vcpus;
    d.vcpus_max = 16;
    d.memory = memory;
    d.memory_max = 64 * GIB;
    d.active_secs = Some(age);
    d
}

fn admitted(p: &Plan, name: &str) -> bool {
    member(p, name).admitted
}

fn no_limits() -> Limits {
    Limits::default()
}

fn min(v: u64) -> Limits {
    Limits {
        min: Some(v),
        ..Limits::default()
    }
}

/// Item 2: a member admitted stays admitted while its floor fits; a
/// newcomer that runs longer or holds a reservation does not displace it;
/// a restart (the agent's clock starts over) changes nothing.
#[test]
fn admission_is_sticky() {
    let p = t::with_budget(t::pool("web"), Resource::Vcpus, 4, min(2));
    let cfg = t::config(64, 256 * GIB, vec![p]);
    let mut s = Sim::new(
        cfg,
        vec![vm("young", "web", 2, GIB, 5), vm("mid", "web", 2, GIB, 6)],
    );
    let p1 = s.cycle();
    assert!(admitted(&p1, "young") && admitted(&p1, "mid"));
    // An older domain joins: floors no longer fit (2+2+2 > 4); before,
    // the longest running won and "young" was unadmitted.
    s.obs.domains.push(vm("old", "web", 2, GIB, 999_999));
    let p2 = s.cycle();
    assert!(admitted(&p2, "young") && admitted(&p2, "mid"));
    assert!(!admitted(&p2, "old"));
    // Ages start over (an agent restart): the same members stay admitted.
    for d in &mut s.obs.domains {
        d.active_secs = Some(0);
    }
    let p3 = s.cycle();
    assert!(admitted(&p3, "young") && admitted(&p3, "mid") && !admitted(&p3, "old"));
    // "young" stops: its place is free, "old" is admitted.
    s.dom("young").state = DomainState::Shutoff;
    let p4 = s.cycle();
    assert!(admitted(&p4, "old") && admitted(&p4, "mid"));
}

/// Item 3: what the agent changed is given back when the domain leaves
/// management; `keep` leaves it.
#[test]
fn a_domain_that_leaves_its_pool_gets_its_values_back() {
    let pool = t::with_budget(t::pool("web"), Resource::Vcpus, 2, no_limits());
    let pool = t::with_budget(pool, Resource::Memory, 2 * GIB, no_limits());
    let cfg = t::config(64, 256 * GIB, vec![pool]);
    let mut s = Sim::new(cfg, vec![vm("a", "web", 4, 4 * GIB, 1)]);
    let mut changed = false;
    for _ in 0..40 {
        let p = s.cycle();
        changed |= !p.actions.is_empty();
        if p.actions.is_empty() && changed {
            break;
        }
    }
    let a = s.dom("a").clone();
    assert_eq!(a.vcpus, 2, "shrunk into the pool");
    assert!(a.memory < 4 * GIB);
    // It leaves (its metadata no longer names a pool).
    s.dom("a").metadata_pool = None;
    let p = s.cycle();
    let u = p.unmanaged.iter().find(|u| &*u.name == "a").unwrap();
    assert_eq!(u.release, Some(Release::Giving));
    assert!(p.releases.iter().all(|x| x.uuid() == &*a.uuid));
    assert!(p.releases.iter().any(|x| matches!(
        x,
        Action::SetVcpus {
            to: 4,
            reason: Reason::Released,
            ..
        }
    )));
    assert!(p
        .releases
        .iter()
        .any(|x| matches!(x, Action::SetMemory { to, .. } if *to == 4 * GIB)));
    let p = s.cycle();
    let u = p.unmanaged.iter().find(|u| &*u.name == "a").unwrap();
    assert_eq!(u.release, Some(Release::Done(Released::Restored)));
    assert!(p.releases.is_empty());
    assert_eq!((s.dom("a").vcpus, s.dom("a").memory), (4, 4 * GIB));
    assert!(s.history.originals.is_empty());

    // With `keep`, nothing is given back.
    let pool = t::with_budget(t::pool("web"), Resource::Vcpus, 2, no_limits());
    let mut cfg = t::config(64, 256 * GIB, vec![pool]);
    cfg.agent.on_release = OnRelease::Keep;
    let mut s = Sim::new(cfg, vec![vm("a", "web", 4, 4 * GIB, 1)]);
    s.cycle();
    assert_eq!(s.dom("a").vcpus, 2);
    s.dom("a").metadata_pool = None;
    let p = s.cycle();
    assert!(p.releases.is_empty());
    assert_eq!(p.unmanaged[0].release, Some(Release::Done(Released::Kept)));
    assert_eq!(s.dom("a").vcpus, 2);
}

/// Item 4: a domain without a balloon keeps its memory; it counts in the
/// budget; no stats period is set on it.
#[test]
fn no_balloon_memory_is_reported_not_managed() {
    let pool = t::with_budget(t::pool("web"), Resource::Memory, 6 * GIB, no_limits());
    let cfg = t::config(64, 256 * GIB, vec![pool]);
    let mut nb = vm("noballoon", "web", 2, 4 * GIB, 1);
    nb.balloon_device = false;
    let mut s = Sim::new(cfg, vec![nb, vm("b", "web", 2, 4 * GIB, 1)]);
    for _ in 0..30 {
        let p = s.cycle();
        assert!(
            p.steps().all(|a| a.domain() != "noballoon"),
            "{:?}",
            p.steps().collect::<Vec<_>>()
        );
        let a = member(&p, "noballoon").alloc.memory.unwrap();
        assert_eq!((a.target, a.reason), (4 * GIB, Reason::NoBalloon));
    }
    assert_eq!(s.dom("noballoon").memory, 4 * GIB);
    // The other member got what is left: 2 GiB.
    assert!(
        s.dom("b").memory.abs_diff(2 * GIB) < 16 * MIB,
        "{}",
        s.dom("b").memory
    );
}

/// Item 5: a paused domain is not changed until it runs.
#[test]
fn a_paused_domain_waits() {
    let pool = t::with_budget(t::pool("web"), Resource::Vcpus, 6, no_limits());
    let pool = t::with_budget(pool, Resource::Memory, 4 * GIB, no_limits());
    let pool = t::with_budget(pool, Resource::DiskBytesSec, 100 * MIB, no_limits());
    let cfg = t::config(64, 256 * GIB, vec![pool]);
    let mut p = vm("paused", "web", 2, GIB, 1);
    p.state = DomainState::Paused;
    p.disks = Arc::from([t::disk("vda")]);
    let mut s = Sim::new(cfg, vec![p]);
    let plan = s.cycle();
    assert!(
        plan.steps().next().is_none(),
        "{:?}",
        plan.steps().collect::<Vec<_>>()
    );
    let m = &plan.pools[0].members[0];
    assert_eq!(m.alloc.vcpus.unwrap().reason, Reason::DomainPaused);
    assert_eq!(m.alloc.memory.unwrap().reason, Reason::DomainPaused);
    // It runs: now it moves.
    s.dom("paused").state = DomainState::Running;
    let plan = s.cycle();
    assert_action!(plan, Action::SetVcpus { to: 6, .. });
}

/// Item 6: memory does not grow by less than the dead band (16 MiB).
#[test]
fn growth_keeps_the_dead_band() {
    // Room for 15 MiB more: no step.
    let pool = t::with_budget(
        t::pool("web"),
        Resource::Memory,
        GIB + 15 * MIB,
        no_limits(),
    );
    let cfg = t::config(64, 256 * GIB, vec![pool]);
    let mut a = vm("a", "web", 1, GIB, 1);
    a.balloon = Some(t::balloon(GIB, 512 * MIB));
    let mut s = Sim::new(cfg, vec![a]);
    for _ in 0..5 {
        let p = s.cycle();
        assert!(p.actions.is_empty(), "{:?}", p.actions);
    }
    assert_eq!(s.dom("a").memory, GIB);
    // A neighbour gives room back 15 MiB a cycle (its shrink rate): the
    // grower waits for 16 MiB rather than growing 15 MiB at a time.
    let pool = t::with_budget(t::pool("web"), Resource::Memory, 4 * GIB, no_limits());
    let mut cfg = t::config(64, 256 * GIB, vec![pool]);
    cfg.tuning.memory_max_shrink = Amount::Absolute(15 * MIB);
    let big = vm("big", "web", 1, 3 * GIB, 2);
    let mut small = vm("small", "web", 1, GIB, 1);
    small.balloon = Some(t::balloon(GIB, 512 * MIB));
    let mut s = Sim::new(cfg, vec![big, small]);
    let mut grew = 0;
    for _ in 0..12 {
        for a in &s.cycle().actions {
            if let Action::SetMemory { from, to, .. } = a {
                assert!(to.abs_diff(*from) >= 15 * MIB, "{a:?}");
                if to > from {
                    assert!(to - from >= 16 * MIB, "growth inside the dead band: {a:?}");
                    grew += 1;
                }
            }
        }
    }
    assert!(grew > 0, "it does grow, by the dead band at least");
}

/// Item 7: the floor is the guest's use plus a margin of that use, not of
/// its maximum: a 1 TiB-max guest using 2 GiB gets a floor near 2.2 GiB.
#[test]
fn the_floor_follows_what_the_guest_uses() {
    let pool = t::with_budget(t::pool("db"), Resource::Memory, 32 * GIB, no_limits());
    let mut cfg = t::config(64, 256 * GIB, vec![pool]);
    cfg.tuning.guest_free_min = Amount::Fraction(0.10);
    let mut big = vm("db-big", "db", 2, 8 * GIB, 1);
    big.memory_max = 1024 * GIB;
    big.balloon = Some(t::balloon(8 * GIB, 2 * GIB));
    let s = Sim::new(cfg, vec![big]);
    let p = s.plan();
    let m = &p.pools[0].members[0];
    assert!(m.admitted, "{:?}", m.note);
    let floor = m.alloc.memory.unwrap().floor;
    assert!(
        (2 * GIB..=2 * GIB + 205 * MIB + MIB).contains(&floor),
        "floor {floor}"
    );
}

/// Item 1: a member refused admission while the others grew into its
/// share does not come back over the budget: it waits until they have
/// given the room back (it holds 3 vCPUs, they shrink first).
#[test]
fn a_member_admitted_again_never_takes_the_pool_over_its_budget() {
    let pool = t::with_budget(t::pool("web"), Resource::Vcpus, 8, min(1));
    let pool = t::with_budget(pool, Resource::Memory, 6 * GIB, no_limits());
    let mut cfg = t::config(64, 256 * GIB, vec![pool]);
    // a and b cannot give vCPUs back for 30 s after they grew.
    cfg.tuning.vcpu_cooldown = std::time::Duration::from_secs(30);
    cfg.tuning.guest_free_min = Amount::Absolute(0);
    let mut c = vm("c", "web", 3, 2 * GIB, 1);
    // c's guest uses 4.5 GiB: its floor does not fit next to the others'.
    c.balloon = Some(t::balloon(5 * GIB, 4608 * MIB));
    c.memory = 5 * GIB;
    let mut a = vm("a", "web", 2, 2 * GIB, 3);
    a.balloon = Some(t::balloon(2 * GIB, GIB));
    let mut b = vm("b", "web", 2, 2 * GIB, 2);
    b.balloon = Some(t::balloon(2 * GIB, GIB));
    let mut s = Sim::new(cfg, vec![a, b, c]);
    let p = s.cycle();
    assert!(!admitted(&p, "c"), "c's floor does not fit");
    assert_eq!(
        (s.dom("a").vcpus, s.dom("b").vcpus),
        (4, 4),
        "a and b grew into c's share"
    );
    // c's guest frees memory: its floor fits again.
    s.dom("c").balloon = Some(t::balloon(5 * GIB, GIB));
    for _ in 0..10 {
        let p = s.cycle();
        let held: u64 = p.pools[0]
            .members
            .iter()
            .filter(|m| m.admitted)
            .map(|m| {
                s.obs
                    .domains
                    .iter()
                    .find(|d| d.uuid == m.uuid)
                    .unwrap()
                    .vcpus
            })
            .sum();
        assert!(held <= 8, "admitted members hold {held} vCPUs of 8");
    }
    let p = s.plan();
    assert!(admitted(&p, "c"), "admitted once the room is there");
}
