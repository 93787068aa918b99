//! Worked examples of the allocation rules, readable as documentation.
//! Each one is quoted in `docs/allocation.md` under its test name.
#![allow(clippy::unwrap_used)]

use crate::member;
use std::sync::Arc;
use virtpool::core::config::{Config, Limits, MemoryPolicy};
use virtpool::core::model::{Action, DomainObs, Observation, Reason, Resource};
use virtpool::core::planner::testing::{self as t, GIB, MIB};
use virtpool::core::planner::{
    check_plan, plan, Alloc, Guard, History, Outcome, Plan, PlanInput, Reservations, Violation,
};
use virtpool::core::units::Amount;

const NOW: u64 = 10_000;

fn run_with(
    cfg: &Config,
    snapshot: &Observation,
    res: &Reservations,
    h: &History,
    now: u64,
) -> Plan {
    let p = plan(&PlanInput {
        config: cfg,
        host: snapshot.host,
        domains: &snapshot.domains,
        reservations: res,
        history: h,
        now,
        paused: false,
    });
    check_plan(&p).unwrap();
    p
}

fn run(cfg: &Config, domains: Vec<DomainObs>) -> Plan {
    let snap = Observation {
        host: t::host(64, 256 * GIB),
        domains,
    };
    run_with(cfg, &snap, &Reservations::new(), &History::default(), NOW)
}

fn alloc(p: &Plan, name: &str, r: Resource) -> Alloc {
    member(p, name).alloc.get(r).unwrap()
}

fn targets(p: &Plan, names: &[&str], r: Resource) -> Vec<u64> {
    names.iter().map(|n| alloc(p, n, r).target).collect()
}

fn vm(name: &str, pool: &str, vcpus: u64, memory: u64) -> DomainObs {
    let mut d = t::domain(name, Some(pool));
    d.vcpus = vcpus;
    d.vcpus_max = 16;
    d.memory = memory;
    d.memory_max = 16 * GIB;
    d
}

fn no_limits() -> Limits {
    Limits::default()
}

/// Applies plans until nothing is left to do; returns how many cycles.
fn settle(cfg: &Config, snap: &mut Observation, h: &mut History, mut now: u64) -> usize {
    for k in 0..100 {
        let p = run_with(cfg, snap, &Reservations::new(), h, now);
        if p.actions.is_empty() {
            return k;
        }
        t::apply(snap, &p, h, now, |_| Outcome::Ok);
        now += 10;
    }
    panic!("no fixed point");
}

#[test]
fn db_vm_gets_three_times_the_share() {
    // A 32 GiB host; pool "prod" has 24 GiB and 16 vCPUs. Three web VMs at
    // the default 1000 shares, the DB VM at 3000.
    let mut prod = t::pool("prod");
    prod = t::with_budget(prod, Resource::Memory, 24 * GIB, no_limits());
    prod = t::with_budget(prod, Resource::Vcpus, 16, no_limits());
    prod = t::with_member(prod, "db", Resource::Memory, t::shares(3000));
    prod = t::with_member(prod, "db", Resource::Vcpus, t::shares(3000));
    let cfg = t::config(16, 32 * GIB, vec![prod]);
    let names = ["web-1", "web-2", "web-3", "db"];
    let doms: Vec<_> = names.iter().map(|n| vm(n, "prod", 2, 4 * GIB)).collect();
    let p = run(&cfg, doms.clone());

    // Memory 1:1:1:3 of 24 GiB.
    assert_eq!(
        targets(&p, &names, Resource::Memory),
        vec![4 * GIB, 4 * GIB, 4 * GIB, 12 * GIB]
    );
    // vCPUs: exact shares 2⅔, 2⅔, 2⅔, 8; the two leftover vCPUs go to
    // members with a fractional share (in UUID order), never over 16.
    assert_eq!(targets(&p, &names, Resource::Vcpus), vec![3, 3, 2, 8]);
    assert_eq!(p.pools[0].allocated.vcpus, 16);
    assert_eq!(alloc(&p, "db", Resource::Memory).reason, Reason::Share);
    // The DB grows at once (4 → 12 GiB) because the room is free.
    assert!(p.actions.contains(&Action::SetMemory {
        uuid: doms[3].uuid.clone(),
        domain: "db".into(),
        from: 4 * GIB,
        to: 12 * GIB,
        reason: Reason::Share,
        persist: false,
    }));

    // Applying the plan reaches a fixed point: the next cycle does nothing.
    let mut snap = Observation {
        host: t::host(16, 32 * GIB),
        domains: doms,
    };
    let mut h = History::default();
    assert_eq!(settle(&cfg, &mut snap, &mut h, NOW), 1);
}

#[test]
fn member_max_below_share_gets_max_rest_reshared() {
    // 12 vCPUs, three members; "small" may have at most 2.
    let mut p = t::pool("p");
    p = t::with_budget(p, Resource::Vcpus, 12, no_limits());
    p = t::with_member(
        p,
        "small",
        Resource::Vcpus,
        Limits {
            max: Some(2),
            ..Limits::default()
        },
    );
    let cfg = t::config(16, 32 * GIB, vec![p]);
    let names = ["a", "b", "small"];
    let plan = run(&cfg, names.iter().map(|n| vm(n, "p", 1, GIB)).collect());
    assert_eq!(targets(&plan, &names, Resource::Vcpus), vec![5, 5, 2]);
    assert_eq!(alloc(&plan, "small", Resource::Vcpus).reason, Reason::Max);
}

#[test]
fn pool_with_one_member() {
    // One member, 8 GiB budget, but the domain's maximum memory is 6 GiB:
    // it gets 6 GiB (hardware max) and 2 GiB stay free.
    let p = t::with_budget(t::pool("solo"), Resource::Memory, 8 * GIB, no_limits());
    let cfg = t::config(4, 16 * GIB, vec![p]);
    let mut d = vm("only", "solo", 1, 2 * GIB);
    d.memory_max = 6 * GIB;
    let plan = run(&cfg, vec![d]);
    let a = alloc(&plan, "only", Resource::Memory);
    assert_eq!((a.target, a.reason), (6 * GIB, Reason::HardwareMax));
    assert_eq!(plan.pools[0].free(Resource::Memory), Some(2 * GIB));
}

#[test]
fn all_members_at_max_leave_budget_free() {
    let p = t::with_budget(t::pool("p"), Resource::Vcpus, 16, no_limits());
    let cfg = t::config(16, 32 * GIB, vec![p]);
    let mut a = vm("a", "p", 1, GIB);
    let mut b = vm("b", "p", 1, GIB);
    a.vcpus_max = 4;
    b.vcpus_max = 4;
    let plan = run(&cfg, vec![a, b]);
    assert_eq!(targets(&plan, &["a", "b"], Resource::Vcpus), vec![4, 4]);
    assert_eq!(plan.pools[0].free(Resource::Vcpus), Some(8));
}

#[test]
fn budget_split_by_shares() {
    // 12 vCPUs at 1000 and 2000 shares: 4 and 8.
    let mut p = t::with_budget(t::pool("p"), Resource::Vcpus, 12, no_limits());
    p = t::with_member(p, "big", Resource::Vcpus, t::shares(2000));
    let cfg = t::config(16, 32 * GIB, vec![p]);
    let plan = run(&cfg, vec![vm("big", "p", 1, GIB), vm("std", "p", 1, GIB)]);
    assert_eq!(targets(&plan, &["std", "big"], Resource::Vcpus), vec![4, 8]);
}

#[test]
fn min_is_honoured_then_rest_shared() {
    // 9 GiB at equal shares would be 3 GiB each, but "db" reserves 6 GiB.
    // A reservation is a guarantee, not a bonus: "db" gets exactly 6 GiB
    // and the others share the remaining 3 GiB.
    let mut p = t::with_budget(t::pool("p"), Resource::Memory, 9 * GIB, no_limits());
    p = t::with_member(
        p,
        "db",
        Resource::Memory,
        Limits {
            min: Some(6 * GIB),
            ..Limits::default()
        },
    );
    let cfg = t::config(16, 32 * GIB, vec![p]);
    let names = ["db", "x", "y"];
    let plan = run(&cfg, names.iter().map(|n| vm(n, "p", 1, GIB)).collect());
    assert_eq!(
        targets(&plan, &names, Resource::Memory),
        vec![6 * GIB, 1536 * MIB, 1536 * MIB]
    );
    let db = alloc(&plan, "db", Resource::Memory);
    assert_eq!((db.floor, db.reason), (6 * GIB, Reason::Floor));
}

#[test]
fn rounding_never_exceeds_budget() {
    // 10 vCPUs among three: 4 + 3 + 3. 1000 MiB (+ 1 byte) of memory: whole
    // MiB only, 334 + 333 + 333.
    let mut p = t::with_budget(t::pool("p"), Resource::Vcpus, 10, no_limits());
    p = t::with_budget(p, Resource::Memory, 1000 * MIB + 1, no_limits());
    let cfg = t::config(16, 32 * GIB, vec![p]);
    let names = ["a", "b", "c"];
    let plan = run(
        &cfg,
        names.iter().map(|n| vm(n, "p", 1, 300 * MIB)).collect(),
    );
    assert_eq!(targets(&plan, &names, Resource::Vcpus), vec![4, 3, 3]);
    assert_eq!(
        targets(&plan, &names, Resource::Memory),
        vec![334 * MIB, 333 * MIB, 333 * MIB]
    );
}

#[test]
fn unadmitted_member_left_untouched() {
    // 8 vCPUs, every member reserves 3: only two fit. "new" holds a runtime
    // reservation (admitted first), then the longest-running "old";
    // "mid" is not admitted — for every resource — and left untouched.
    let defaults = Limits {
        min: Some(3),
        ..Limits::default()
    };
    let mut p = t::with_budget(t::pool("p"), Resource::Vcpus, 8, defaults);
    p = t::with_budget(p, Resource::Memory, 64 * GIB, no_limits());
    let cfg = t::config(16, 128 * GIB, vec![p]);
    let mut old = vm("old", "p", 2, GIB);
    old.active_secs = Some(86_400);
    let mut mid = vm("mid", "p", 2, GIB);
    mid.active_secs = Some(3_600);
    let mut new = vm("new", "p", 2, GIB);
    new.active_secs = Some(60);
    let mut res = Reservations::new();
    res.entry("p".into())
        .or_default()
        .entry("new".into())
        .or_default()
        .vcpus = Some(3);
    let snap = Observation {
        host: t::host(16, 128 * GIB),
        domains: vec![old, mid.clone(), new],
    };
    let plan = run_with(&cfg, &snap, &res, &History::default(), NOW);
    let pool = &plan.pools[0];
    let unadmitted: Vec<_> = pool.unadmitted().map(|m| &*m.name).collect();
    assert_eq!(unadmitted, vec!["mid"]);
    let m = member(&plan, "mid");
    assert!(m.note.as_deref().unwrap().contains("vcpus floor (3)"));
    for r in [Resource::Vcpus, Resource::Memory] {
        let a = alloc(&plan, "mid", r);
        assert_eq!(a.reason, Reason::Unadmitted);
        assert_eq!(a.next, a.actual);
    }
    assert!(plan.actions.iter().all(|a| a.uuid() != &*mid.uuid));
    assert_eq!(targets(&plan, &["old", "new"], Resource::Vcpus), vec![4, 4]);
}

#[test]
fn guest_need_is_a_floor() {
    // The guest reports 5 GiB used; with guest_free_min = 1 GiB its floor
    // is 6 GiB: more than its equal share (4 GiB), so it gets 6 GiB and the
    // other member the remaining 2 GiB.
    let p = t::with_budget(t::pool("p"), Resource::Memory, 8 * GIB, no_limits());
    let mut cfg = t::config(16, 32 * GIB, vec![p]);
    cfg.tuning.guest_free_min = Amount::Absolute(GIB);
    let mut busy = vm("busy", "p", 1, 6 * GIB);
    busy.balloon = Some(t::balloon(6 * GIB, 5 * GIB));
    let plan = run(&cfg, vec![busy, vm("idle", "p", 1, GIB)]);
    let a = alloc(&plan, "busy", Resource::Memory);
    assert_eq!(
        (a.floor, a.target, a.used),
        (6 * GIB, 6 * GIB, Some(5 * GIB))
    );
    assert_eq!(a.target_reason, Reason::Floor);
    assert_eq!(alloc(&plan, "idle", Resource::Memory).target, 2 * GIB);
}

#[test]
fn demand_policy_caps_at_used_plus_target_free() {
    // Policy "demand", target_free 20%: a guest using 4 GiB is capped at
    // 4 / 0.8 = 5 GiB. A guest without stats falls back to its share.
    let mut p = t::with_budget(t::pool("p"), Resource::Memory, 16 * GIB, no_limits());
    p.memory_policy = MemoryPolicy::Demand;
    let cfg = t::config(16, 32 * GIB, vec![p]);
    // (Its floor, 4 GiB used + 10% of its 8 GiB maximum, is below that.)
    let mut known = vm("known", "p", 1, 8 * GIB);
    known.memory_max = 8 * GIB;
    known.balloon = Some(t::balloon(8 * GIB, 4 * GIB));
    let plan = run(&cfg, vec![known, vm("silent", "p", 1, 8 * GIB)]);
    let a = alloc(&plan, "known", Resource::Memory);
    assert_eq!((a.target, a.target_reason), (5 * GIB, Reason::Demand));
    // Shrinking from 8 GiB happens at the rate limit.
    assert_eq!(a.reason, Reason::RateLimited);
    let b = alloc(&plan, "silent", Resource::Memory);
    assert_eq!((b.target, b.target_reason), (11 * GIB, Reason::Share));
}

#[test]
fn shrink_is_rate_limited_growth_waits_for_room() {
    // 16 GiB, equal shares: targets 8 + 8. "a" has 12 GiB, "b" 4 GiB.
    // With max_shrink = 1 GiB, "a" gives back 1 GiB per cycle and "b"
    // grows only into what "a" gave back: Σ next never exceeds 16 GiB.
    let p = t::with_budget(t::pool("p"), Resource::Memory, 16 * GIB, no_limits());
    let mut cfg = t::config(16, 32 * GIB, vec![p]);
    cfg.tuning.memory_max_shrink = Amount::Absolute(GIB);
    let mut snap = Observation {
        host: t::host(16, 32 * GIB),
        domains: vec![vm("a", "p", 1, 12 * GIB), vm("b", "p", 1, 4 * GIB)],
    };
    let plan = run_with(&cfg, &snap, &Reservations::new(), &History::default(), NOW);
    let (a, b) = (
        alloc(&plan, "a", Resource::Memory),
        alloc(&plan, "b", Resource::Memory),
    );
    assert_eq!(
        (a.target, a.next, a.reason),
        (8 * GIB, 11 * GIB, Reason::RateLimited)
    );
    assert_eq!(
        (b.target, b.next, b.reason),
        (8 * GIB, 5 * GIB, Reason::RateLimited)
    );
    // Shrinks come first in the action list.
    assert!(matches!(plan.actions[0], Action::SetMemory { to, .. } if to == 11 * GIB));
    let mut h = History::default();
    assert_eq!(settle(&cfg, &mut snap, &mut h, NOW), 4);
}

#[test]
fn dead_band_suppresses_small_changes() {
    // Target 8 GiB, balloon 8 GiB + 10 MiB: under the 16 MiB dead band.
    let p = t::with_budget(t::pool("p"), Resource::Memory, 16 * GIB, no_limits());
    let cfg = t::config(16, 32 * GIB, vec![p]);
    let plan = run(
        &cfg,
        vec![
            vm("a", "p", 1, 8 * GIB + 10 * MIB),
            vm("b", "p", 1, 8 * GIB - 10 * MIB),
        ],
    );
    let a = alloc(&plan, "a", Resource::Memory);
    assert_eq!(
        (a.target, a.next, a.reason),
        (8 * GIB, a.actual, Reason::DeadBand)
    );
    assert!(plan.actions.is_empty());
}

#[test]
fn dead_band_holds_a_balloon_just_off_its_floor_and_cap() {
    // Demand policy, a guest at its floor (= its cap): its statistics
    // move by a MiB or two between cycles, and so do floor and cap. A
    // balloon 3 MiB under the floor or 3 MiB over the cap is left alone
    // (a real guest's balloon otherwise moved every cycle).
    let mut p = t::with_budget(t::pool("p"), Resource::Memory, 4 * GIB, no_limits());
    p.memory_policy = MemoryPolicy::Demand;
    let mut cfg = t::config(16, 32 * GIB, vec![p]);
    cfg.tuning.guest_free_min = Amount::Absolute(512 * MIB);
    for off in [-3i64, 3] {
        let floor = GIB + 512 * MIB;
        let actual = floor
            .checked_add_signed(off * MIB as i64)
            .expect("positive");
        let mut g = vm("g", "p", 1, actual);
        g.memory_max = 2 * GIB;
        // Used 1 GiB: floor 1.5 GiB, demand cap 1.25 GiB → target = floor.
        let mut stats = t::balloon(actual, GIB);
        stats.usable = Some(actual - GIB);
        g.balloon = Some(stats);
        let plan = run(&cfg, vec![g]);
        let a = alloc(&plan, "g", Resource::Memory);
        assert_eq!(a.target, floor, "offset {off} MiB");
        assert_eq!(
            (a.next, a.reason),
            (actual, Reason::DeadBand),
            "offset {off} MiB"
        );
        assert!(
            plan.actions.is_empty(),
            "offset {off} MiB: {:?}",
            plan.actions
        );
    }
}

#[test]
fn vcpu_cooldown() {
    // A vCPU change 30 s ago: the next waits for the 60 s cooldown.
    let p = t::with_budget(t::pool("p"), Resource::Vcpus, 4, no_limits());
    let cfg = t::config(16, 32 * GIB, vec![p]);
    let d = vm("a", "p", 2, GIB);
    let snap = Observation {
        host: t::host(16, 32 * GIB),
        domains: vec![d.clone()],
    };
    let mut h = History::default();
    Arc::make_mut(&mut h.vcpu_changed_at).insert(d.uuid.clone(), NOW - 30);
    let plan = run_with(&cfg, &snap, &Reservations::new(), &h, NOW);
    let a = alloc(&plan, "a", Resource::Vcpus);
    assert_eq!((a.target, a.next, a.reason), (4, 2, Reason::Cooldown));
    let later = run_with(&cfg, &snap, &Reservations::new(), &h, NOW + 30);
    // (No CPU weight action: the fixture's hypervisor reports no cpu_shares.)
    assert_eq!(later.actions.len(), 1, "SetVcpus 2 → 4");
}

#[test]
fn vcpu_unplug_timeout_freezes_vcpus_until_restart() {
    // The target is 2 vCPUs; removing 2 of 4 timed out in QEMU (libvirt
    // still shows 4). The planner sends no vCPU change to the domain for
    // the rest of its run, however long it waits; once libvirt shows the
    // requested 2 it may remove more but never adds back; a restart (new
    // libvirt ID) starts clean.
    let p = t::with_budget(t::pool("p"), Resource::Vcpus, 2, no_limits());
    let cfg = t::config(16, 32 * GIB, vec![p]);
    let mut d = vm("a", "p", 4, GIB);
    d.id = Some(7);
    let mut snap = Observation {
        host: t::host(16, 32 * GIB),
        domains: vec![d],
    };
    let none = Reservations::new();
    let mut h = History::default();
    let first = run_with(&cfg, &snap, &none, &h, NOW);
    assert_eq!(first.actions.len(), 1);
    h.record(&first.actions[0], Outcome::Timeout, NOW);
    h.observe(&snap.domains);

    for later in [NOW + 70, NOW + 300, NOW + 86_400] {
        let waiting = run_with(&cfg, &snap, &none, &h, later);
        let a = alloc(&waiting, "a", Resource::Vcpus);
        assert_eq!((a.target, a.next, a.reason), (2, 4, Reason::Pending));
        assert!(waiting.actions.is_empty(), "{:?}", waiting.actions);
        let note = waiting.pools[0].members[0].note.clone().unwrap_or_default();
        assert!(note.contains("removal 4 → 2 timed out"), "{note}");
    }

    // One vCPU went away (neither old nor requested count): still frozen.
    snap.domains[0].vcpus = 3;
    assert!(run_with(&cfg, &snap, &none, &h, NOW + 70)
        .actions
        .is_empty());

    // libvirt shows the requested 2: no re-adding, even with room for it.
    snap.domains[0].vcpus = 2;
    let roomy = t::with_budget(t::pool("p"), Resource::Vcpus, 8, no_limits());
    let cfg8 = t::config(16, 32 * GIB, vec![roomy]);
    let held = run_with(&cfg8, &snap, &none, &h, NOW + 70);
    let a = alloc(&held, "a", Resource::Vcpus);
    assert_eq!((a.target, a.next, a.reason), (8, 2, Reason::Pending));
    assert!(held.actions.is_empty(), "{:?}", held.actions);

    // Restarted: a new run, planned as usual.
    snap.domains[0].vcpus = 4;
    snap.domains[0].id = Some(8);
    let fresh = run_with(&cfg, &snap, &none, &h, NOW + 70);
    assert!(matches!(
        fresh.actions[..],
        [Action::SetVcpus { from: 4, to: 2, .. }]
    ));
    h.observe(&snap.domains);
    assert!(h.vcpu_pending.is_empty());
}

#[test]
fn pressure_takes_from_low_shares_and_idle_first_and_gives_back_gradually() {
    // 64 GiB host, threshold 10% = 6.4 GiB, only 6 GiB available:
    // 409.6 MiB must be reclaimed. Pool of 36 GiB: "idle" and "busy" at 500
    // shares, "vip" at 2000; guest_free_min 1 GiB. Fair targets: "vip" its
    // 16 GiB maximum, "busy" its floor (12 GiB used + 1 GiB), "idle" the
    // remaining 7 GiB.
    let mut p = t::with_budget(t::pool("p"), Resource::Memory, 36 * GIB, no_limits());
    for n in ["idle", "busy"] {
        p = t::with_member(p, n, Resource::Memory, t::shares(500));
    }
    p = t::with_member(p, "vip", Resource::Memory, t::shares(2000));
    let mut cfg = t::config(16, 64 * GIB, vec![p]);
    cfg.tuning.guest_free_min = Amount::Absolute(GIB);
    let mut idle = vm("idle", "p", 1, 7 * GIB);
    idle.balloon = Some(t::balloon(7 * GIB, GIB));
    let mut busy = vm("busy", "p", 1, 13 * GIB);
    busy.balloon = Some(t::balloon(13 * GIB, 12 * GIB));
    let mut vip = vm("vip", "p", 1, 16 * GIB);
    vip.balloon = Some(t::balloon(16 * GIB, 2 * GIB));
    let mut snap = Observation {
        host: t::host(16, 64 * GIB),
        domains: vec![idle, busy, vip],
    };
    let names = ["idle", "busy", "vip"];
    let none = Reservations::new();
    let mut h = History::default();
    let calm = run_with(&cfg, &snap, &none, &h, NOW);
    assert_eq!(
        targets(&calm, &names, Resource::Memory),
        vec![7 * GIB, 13 * GIB, 16 * GIB]
    );
    assert!(calm.actions.is_empty());

    // Under pressure: low shares first, the most idle first among them:
    // "idle" (86% free) gives one shrink step (5% of 7 GiB = 359 MiB);
    // "busy" is at its floor and gives nothing; "vip" gives the last 51 MiB.
    snap.host.memory_available = 6 * GIB;
    let hot = run_with(&cfg, &snap, &none, &h, NOW);
    assert!(hot.pressure);
    assert_eq!(
        targets(&hot, &names, Resource::Memory),
        vec![7 * GIB - 359 * MIB, 13 * GIB, 16 * GIB - 51 * MIB]
    );
    assert_eq!(
        alloc(&hot, "idle", Resource::Memory).reason,
        Reason::Pressure
    );
    t::apply(&mut snap, &hot, &mut h, NOW, |_| Outcome::Ok);

    // The pressure passes with only 200 MiB of headroom above the
    // threshold: reclaim is given back within it, in reverse order ("vip"
    // first), and the rest of "idle"'s reclaim (210 MiB) waits.
    let threshold = cfg.tuning.pressure_threshold.resolve(64 * GIB);
    snap.host.memory_available = threshold + 200 * MIB;
    let after = run_with(&cfg, &snap, &none, &h, NOW + 10);
    assert!(!after.pressure);
    assert_eq!(
        targets(&after, &names, Resource::Memory),
        vec![7 * GIB - 210 * MIB, 13 * GIB, 16 * GIB]
    );
    assert_eq!(after.reclaim.len(), 1);
}

#[test]
fn disk_rates_split_across_tunable_disks() {
    // 300 MiB/s and 1002 IOPS for two members with two writable disks
    // each (plus a CD-ROM, which is not limited); burst factor 1.5.
    // Every disk needs at least 1 (0 would mean unlimited), so the floors
    // are 2 + 2 and the rest is shared: 150 MiB/s and 501 IOPS each.
    let mut p = t::with_budget(t::pool("p"), Resource::DiskBytesSec, 300 * MIB, no_limits());
    p = t::with_budget(p, Resource::DiskIopsSec, 1002, no_limits());
    let mut cfg = t::config(16, 32 * GIB, vec![p]);
    cfg.tuning.disk_burst_factor = 1.5;
    let mut a = vm("a", "p", 1, GIB);
    let mut cdrom = t::disk("hdc");
    cdrom.device = "cdrom".into();
    a.disks = vec![t::disk("vda"), t::disk("vdb"), cdrom].into();
    let mut b = vm("b", "p", 1, GIB);
    b.disks = vec![t::disk("vda"), t::disk("vdb")].into();
    let nodisk = vm("nodisk", "p", 1, GIB);
    let plan = run(&cfg, vec![a, b, nodisk]);
    assert_eq!(alloc(&plan, "a", Resource::DiskBytesSec).target, 150 * MIB);
    assert_eq!(alloc(&plan, "a", Resource::DiskIopsSec).target, 501);
    let tunes: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|x| match x {
            Action::SetBlockIoTune {
                domain, disk, to, ..
            } if &**domain == "a" => Some((
                &**disk,
                to.total_bytes_sec,
                to.total_bytes_sec_max,
                to.total_iops_sec,
                to.total_iops_sec_max,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        tunes,
        vec![
            ("vda", 75 * MIB, 112 * MIB + 512 * 1024, 251, 377),
            ("vdb", 75 * MIB, 112 * MIB + 512 * 1024, 250, 375),
        ]
    );
    // No tunable disk: no disk action, no blkio weight, no error.
    assert!(plan
        .actions
        .iter()
        .all(|x| x.domain() != "nodisk" || matches!(x, Action::SetCpuShares { .. })));
    assert!(plan.pools[0]
        .members
        .iter()
        .any(|m| *m.name == *"nodisk" && m.admitted));
}

#[test]
fn weights_follow_shares() {
    // cpu_shares = vCPU shares (2..=10000); blkio weight = disk shares / 10
    // (100..=1000). Only where libvirt reports something else.
    let mut p = t::with_budget(t::pool("p"), Resource::Vcpus, 8, no_limits());
    p = t::with_budget(p, Resource::DiskIopsSec, 1000, no_limits());
    p = t::with_member(p, "db", Resource::Vcpus, t::shares(3000));
    p = t::with_member(p, "db", Resource::DiskIopsSec, t::shares(3000));
    let cfg = t::config(16, 32 * GIB, vec![p]);
    let mut db = vm("db", "p", 6, GIB);
    let mut vda = t::disk("vda");
    vda.iotune = Some(Default::default());
    db.disks = vec![vda].into();
    db.cpu_shares = Some(1024);
    db.blkio_weight = Some(0);
    let mut web = vm("web", "p", 2, GIB);
    web.cpu_shares = Some(1000);
    // A hypervisor that exposes no weights gets no weight actions.
    let mut bare = vm("bare", "p", 2, GIB);
    bare.disks = vec![t::disk("vda")].into();
    let plan = run(&cfg, vec![db, web, bare]);
    assert!(plan.actions.iter().all(|a| a.domain() != "bare"
        || !matches!(
            a,
            Action::SetCpuShares { .. } | Action::SetBlkioWeight { .. }
        )));
    let weights: Vec<_> = plan
        .actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::SetCpuShares { .. } | Action::SetBlkioWeight { .. }
            )
        })
        .cloned()
        .collect();
    assert!(matches!(
        &weights[..],
        [
            Action::SetCpuShares { domain: d1, to: 3000, from: Some(1024), .. },
            Action::SetBlkioWeight { domain: d2, to: 300, .. },
        ] if &**d1 == "db" && &**d2 == "db"
    ));
}

#[test]
fn paused_pool_is_planned_but_untouched() {
    let mut p = t::with_budget(t::pool("p"), Resource::Vcpus, 8, no_limits());
    p.paused = true;
    let cfg = t::config(16, 32 * GIB, vec![p]);
    let plan = run(&cfg, vec![vm("a", "p", 1, GIB)]);
    let a = alloc(&plan, "a", Resource::Vcpus);
    assert_eq!((a.target, a.next, a.reason), (8, 1, Reason::Paused));
    assert!(plan.actions.is_empty());
}

#[test]
fn guard_refuses_unsafe_actions() {
    // The enforcer checks every action against the plan before calling
    // libvirt, and tells the guard what succeeded.
    let mut p = t::with_budget(t::pool("p"), Resource::Vcpus, 4, no_limits());
    p = t::with_budget(p, Resource::Memory, 8 * GIB, no_limits());
    let mut cfg = t::config(16, 32 * GIB, vec![p]);
    cfg.tuning.guest_free_min = Amount::Absolute(GIB);
    let mut a = vm("a", "p", 2, 4 * GIB);
    a.balloon = Some(t::balloon(4 * GIB, 3 * GIB));
    let b = vm("b", "p", 2, 4 * GIB);
    let plan = run(&cfg, vec![a.clone(), b.clone()]);
    let mut guard = Guard::new(&plan);
    for act in &plan.actions {
        guard.check(act).unwrap();
        guard.applied(act);
    }
    // A change of `d` from `from` to `to`, as the `Action` variant `$kind`.
    macro_rules! change {
        ($kind:ident) => {
            |d: &DomainObs, from, to| Action::$kind {
                uuid: d.uuid.clone(),
                domain: d.name.clone(),
                from,
                to,
                reason: Reason::Share,
                persist: false,
            }
        };
    }
    let mem = change!(SetMemory);
    let vcpus = change!(SetVcpus);
    let g = Guard::new(&plan);
    // Below the guest's floor (3 GiB used + 1 GiB margin).
    assert!(matches!(
        g.check(&mem(&a, 4 * GIB, 3 * GIB)),
        Err(Violation::BelowFloor { .. })
    ));
    assert!(matches!(
        g.check(&vcpus(&b, 2, 0)),
        Err(Violation::ZeroVcpus { .. })
    ));
    assert!(matches!(
        // Above the domain's 16 possible vCPUs.
        g.check(&vcpus(&b, 2, 17)),
        Err(Violation::AboveCap { .. })
    ));
    // 2 + 2 vCPUs already committed: growing one to 3 breaks the budget.
    assert!(matches!(
        g.check(&vcpus(&b, 2, 3)),
        Err(Violation::OverBudget { .. })
    ));
    assert!(matches!(
        g.check(&mem(&b, 4 * GIB, 4 * GIB + 1)),
        Err(Violation::NotMib { .. })
    ));
    let stranger = t::domain("stranger", None);
    assert!(matches!(
        g.check(&vcpus(&stranger, 1, 2)),
        Err(Violation::NotManaged { .. })
    ));
}
