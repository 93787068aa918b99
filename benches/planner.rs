//! Planner benchmark: `plan()` at 1,000 / 10,000 / 100,000 domains in 10
//! pools with every rule on (vCPUs, memory with guest stats and the demand
//! policy in some pools, disk bytes and IOPS, host memory pressure with
//! carried reclaim, cooldowns, reservations, per-member overrides, glob,
//! metadata and explicit membership, unmanaged and shut-off domains).
//!
//! `cargo bench --bench planner -- --warm-up-time 1 --measurement-time 3`
//! After the criterion groups, a short timing pass prints ns per domain.
//!
//! `PLANNER_BENCH_ONCE=1` skips criterion and the timing pass: one
//! `plan_with` (and the drop of its plan) per size, in `plan_once`, for an
//! instruction count that does not depend on machine load:
//! `valgrind --tool=callgrind --toggle-collect='planner::plan_once*' BENCH_BINARY`
//! (see docs/performance-history.md, "Planner"). `PLANNER_BENCH_REPEAT=N` plans N times per
//! size in that mode (for `perf stat`: the difference between two repeat
//! counts is the planning alone); `PLANNER_BENCH_CYCLES=10` plans the steady
//! state (the host after 10 applied cycles) instead of the first cycle.
//!
//! The summary also times a floor pass alongside the plans (`floor_pass`:
//! read every domain, order by UUID, build and drop one member record per
//! domain, no rules) and prints plan/floor, a ratio that holds across
//! machines of different speed; `PLANNER_BENCH_ONCE` runs it once per size
//! after the plans, for `--toggle-collect='planner::floor_pass*'`.
//!
//! `PLANNER_BENCH_DUMP=DIR` writes each size's plan as JSON (first cycle,
//! then after 3 cycles) to `DIR/plan-N.json` and exits: two builds of the
//! planner must write the same bytes.

use criterion::{BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
use virtpool::core::config::{Config, Limits, MemoryPolicy};
use virtpool::core::membership::{Membership, Via};
use virtpool::core::model::{DomainState, IoTune, Observation, PerResource, Reason, Resource};
use virtpool::core::planner::testing::{self as t, GIB, MIB};
use virtpool::core::planner::{
    plan, plan_with, Alloc, History, MemberPlan, Outcome, PlanInput, Reservations,
};

const POOLS: usize = 10;
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

/// Sizes to run: `PLANNER_BENCH_SIZES=1000,10000` or all.
fn sizes() -> Vec<usize> {
    std::env::var("PLANNER_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| SIZES.to_vec())
}

struct Fixture {
    config: Config,
    snapshot: Observation,
    reservations: Reservations,
    history: History,
    now: u64,
}

/// Deterministic pseudo-random numbers (SplitMix64).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fixture(n: usize) -> Fixture {
    let per_pool = (n / POOLS) as u64;
    let mut pools = Vec::new();
    let mut reservations = Reservations::new();
    for k in 0..POOLS {
        let name = format!("pool{k}");
        let mut p = t::pool(&name);
        p.globs = vec![format!("p{k}-*")];
        if k % 3 == 0 {
            p.memory_policy = MemoryPolicy::Demand;
        }
        let min = Limits {
            min: Some(1),
            max: Some(8),
            shares: None,
        };
        p = t::with_budget(p, Resource::Vcpus, per_pool * 2, min);
        p = t::with_budget(
            p,
            Resource::Memory,
            per_pool * 3 * GIB,
            Limits {
                min: Some(512 * MIB),
                ..Limits::default()
            },
        );
        p = t::with_budget(
            p,
            Resource::DiskBytesSec,
            per_pool * 50 * MIB,
            Limits::default(),
        );
        p = t::with_budget(p, Resource::DiskIopsSec, per_pool * 500, Limits::default());
        let mut res = std::collections::BTreeMap::new();
        for j in 0..(per_pool / 100) {
            let dom = format!("p{k}-{j}");
            p = t::with_member(p, &dom, Resource::Vcpus, t::shares(500 + (j % 7) * 500));
            p.domains.push(format!("x{k}-{j}"));
            let r = virtpool::core::model::PerResource {
                memory: Some(GIB),
                ..Default::default()
            };
            res.insert(format!("p{k}-{}", j + 1), r);
        }
        reservations.insert(name, res);
        pools.push(p);
    }
    let mut config = t::config(4 * n as u64, 4 * GIB * n as u64, pools);
    config.tuning.memory_max_shrink = virtpool::core::units::Amount::Fraction(0.05);
    let mut history = History::default();
    let mut domains = Vec::with_capacity(n);
    for i in 0..n {
        let r = mix(i as u64);
        let k = i % POOLS;
        let j = i / POOLS;
        // Most join by glob; some by metadata; some explicitly; 2% unmanaged.
        let (name, meta) = match r % 50 {
            0 => (format!("stray-{i}"), None),
            1..=5 => (format!("m{k}-{j}"), Some(format!("pool{k}"))),
            6 if j < (n / POOLS) / 100 => (format!("x{k}-{j}"), None),
            _ => (format!("p{k}-{j}"), None),
        };
        let mut d = t::domain(&name, meta.as_deref());
        d.uuid = format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            r as u32,
            (r >> 32) as u16,
            (r >> 48) as u16,
            i as u16,
            i
        )
        .into();
        d.state = if r % 97 == 0 {
            DomainState::Shutoff
        } else {
            DomainState::Running
        };
        d.vcpus_max = 8;
        d.vcpus = 1 + (r >> 8) % 8;
        d.memory_max = 8 * GIB;
        d.memory = (1 + (r >> 12) % 8) * GIB;
        if (r >> 16) % 10 < 8 {
            d.balloon = Some(t::balloon(d.memory, d.memory / 100 * (10 + (r >> 20) % 80)));
        }
        let mut disks = vec![t::disk("vda"), t::disk("vdb")];
        disks[1].device = "cdrom".into();
        if (r >> 24) % 2 == 0 {
            disks.push(t::disk("vdc"));
            disks[0].iotune = Some(IoTune {
                total_bytes_sec: 10 * MIB,
                total_bytes_sec_max: 10 * MIB,
                total_iops_sec: 100,
                total_iops_sec_max: 100,
            });
        }
        d.disks = disks.into();
        d.cpu_shares = Some(1000);
        d.active_secs = Some((r >> 28) % 100_000);
        if (r >> 32) % 10 == 0 {
            Arc::make_mut(&mut history.vcpu_changed_at).insert(d.uuid.clone(), 995);
        }
        if (r >> 36) % 10 == 0 {
            Arc::make_mut(&mut history.reclaim).insert(d.uuid.clone(), 256 * MIB);
        }
        domains.push(d);
    }
    let mut host = t::host(4 * n as u64, 4 * GIB * n as u64);
    host.memory_available = host.memory_total / 20; // under pressure
    Fixture {
        config,
        snapshot: Observation { host, domains },
        reservations,
        history,
        now: 1000,
    }
}

fn input(f: &Fixture) -> PlanInput<'_> {
    PlanInput {
        config: &f.config,
        host: f.snapshot.host,
        domains: &f.snapshot.domains,
        reservations: &f.reservations,
        history: &f.history,
        now: f.now,
        paused: false,
    }
}

/// The fixture after `cycles` cycles of planning and applying every
/// action (the monitor's steady state: far fewer actions per cycle).
fn after_cycles(mut f: Fixture, cycles: usize) -> Fixture {
    let m = Membership::new(&f.config.pools);
    for _ in 0..cycles {
        let p = plan_with(&input(&f), &m);
        let now = f.now;
        t::apply(&mut f.snapshot, &p, &mut f.history, now, |_| Outcome::Ok);
        f.now += 10;
    }
    f
}

/// One plan of the first cycle, dropped before returning (what callgrind
/// counts in `PLANNER_BENCH_ONCE` mode).
#[inline(never)]
fn plan_once(f: &Fixture, m: &Membership) -> usize {
    let p = plan_with(black_box(&input(f)), m);
    p.actions.len()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // without it (unoptimized): then only check that one plan at 1,000
    // domains works.
    if !std::env::args().any(|a| a == "--bench") {
        let f = fixture(1_000);
        let m = Membership::new(&f.config.pools);
        let actions = plan_once(&f, &m);
        assert!(actions > 0, "the fixture host needs changes");
        println!("planner bench smoke: 1000 domains, {actions} actions");
        return;
    }
    let fixtures: Vec<(usize, Fixture)> = sizes().into_iter().map(|n| (n, fixture(n))).collect();
    if let Some(dir) = std::env::var_os("PLANNER_BENCH_DUMP") {
        // The plans as JSON (first cycle, and after 3 cycles), to compare
        // two builds of the planner.
        for (n, f) in fixtures {
            let m = Membership::new(&f.config.pools);
            let first = serde_json::to_string(&plan_with(&input(&f), &m)).expect("plan as JSON");
            let f = after_cycles(f, 3);
            let later = serde_json::to_string(&plan_with(&input(&f), &m)).expect("plan as JSON");
            let path = std::path::Path::new(&dir).join(format!("plan-{n}.json"));
            std::fs::write(&path, format!("{first}\n{later}\n")).expect("write the plans");
            println!("{n} domains: {}", path.display());
        }
        return;
    }
    if std::env::var_os("PLANNER_BENCH_ONCE").is_some() {
        // `PLANNER_BENCH_REPEAT=N`: plan N times per size (for `perf stat`:
        // the difference between two repeat counts is the planning alone).
        let repeat: usize = std::env::var("PLANNER_BENCH_REPEAT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        // `PLANNER_BENCH_CYCLES=N`: plan the host as it is after N applied
        // cycles (10: the steady state of the summary) instead of the first.
        let cycles: usize = std::env::var("PLANNER_BENCH_CYCLES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        for (n, f) in fixtures {
            let f = &after_cycles(f, cycles);
            let m = Membership::new(&f.config.pools);
            let mut actions = 0;
            for _ in 0..repeat {
                actions = plan_once(f, &m);
            }
            // The baseline of the summary, once, for
            // `--toggle-collect='planner::floor_pass*'`.
            let records = floor_pass(f);
            println!("{n} domains: {actions} actions; floor pass: {records} records");
        }
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    {
        // What the monitor does each cycle: membership rules compiled once
        // per config, then plan_with().
        let mut g = c.benchmark_group("plan");
        g.sample_size(10);
        for (n, f) in &fixtures {
            let m = Membership::new(&f.config.pools);
            g.throughput(Throughput::Elements(*n as u64));
            g.bench_with_input(BenchmarkId::from_parameter(n), f, |b, f| {
                b.iter(|| plan_with(black_box(&input(f)), &m))
            });
        }
        g.finish();
    }
    {
        // plan() compiles the membership globs every call.
        let mut g = c.benchmark_group("plan_cold");
        g.sample_size(10);
        for (n, f) in fixtures.iter().take(1) {
            g.throughput(Throughput::Elements(*n as u64));
            g.bench_with_input(BenchmarkId::from_parameter(n), f, |b, f| {
                b.iter(|| plan(black_box(&input(f))))
            });
        }
        g.finish();
    }
    c.final_summary();

    // Summary: best of a few runs, ns per domain (near-linear growth is
    // the target; ≤ 5 ms at 10,000 domains).
    // CPU time is shown too: on a loaded machine wall time includes waiting
    // for a core.
    println!("\nplanner summary (plan_with, best of runs, all rules on, {POOLS} pools):");
    for (n, f) in fixtures {
        summary(n, "first cycle", &f);
        let steady = after_cycles(f, 10);
        summary(n, "after 10 cycles", &steady);
    }
}

/// The floor under any plan of this host, as a baseline measured in the
/// same run: read what a plan reads of every domain (its amounts, guest
/// memory, disks' limits), put the domains in UUID order (a plan does not
/// depend on the listing order) and build, then drop, one member record
/// per domain with its name and UUID. No pools, no rules, no actions.
#[inline(never)]
fn floor_pass(f: &Fixture) -> usize {
    let doms = &f.snapshot.domains;
    let key = |s: &str| {
        let mut b = [0u8; 8];
        let n = s.len().min(8);
        b[..n].copy_from_slice(&s.as_bytes()[..n]);
        u64::from_be_bytes(b)
    };
    let mut order: Vec<(u64, usize)> = doms
        .iter()
        .enumerate()
        .map(|(i, d)| (key(&d.uuid), i))
        .collect();
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| doms[a.1].uuid.cmp(&doms[b.1].uuid))
    });
    let one = |actual: u64, used: Option<u64>| Alloc {
        floor: 0,
        cap: actual,
        shares: 1000,
        target: actual,
        next: actual,
        actual,
        used,
        reason: Reason::Share,
        target_reason: Reason::Share,
    };
    let members: Vec<MemberPlan> = order
        .iter()
        .map(|&(_, i)| {
            let d = &doms[i];
            let (mut bytes, mut iops) = (0u64, 0u64);
            for t in d.disks.iter().filter_map(|x| x.iotune) {
                bytes = bytes.saturating_add(t.total_bytes_sec);
                iops = iops.saturating_add(t.total_iops_sec);
            }
            let used = d.balloon.and_then(|b| b.used());
            MemberPlan {
                name: d.name.clone(),
                uuid: d.uuid.clone(),
                state: d.state,
                via: Via::Match,
                admitted: d.state.is_active(),
                note: None,
                alloc: PerResource {
                    vcpus: Some(one(d.vcpus, None)),
                    memory: Some(one(d.memory, used)),
                    disk_bytes_sec: Some(one(bytes, None)),
                    disk_iops_sec: Some(one(iops, None)),
                    cpu: None,
                },
            }
        })
        .collect();
    black_box(&members);
    members.len()
}

fn summary(n: usize, label: &str, f: &Fixture) {
    let runs = if n >= 100_000 { 5 } else { 20 };
    let (mut wall, mut cpu) = (f64::MAX, f64::MAX);
    let mut actions = 0;
    let mut faults = u64::MAX;
    let m = Membership::new(&f.config.pools);
    for _ in 0..runs {
        let (t0, c0, f0) = (Instant::now(), thread_cpu_secs(), thread_minor_faults());
        let p = plan_with(black_box(&input(f)), &m);
        actions = p.actions.len();
        drop(black_box(p));
        wall = wall.min(t0.elapsed().as_secs_f64());
        cpu = cpu.min(thread_cpu_secs() - c0);
        faults = faults.min(thread_minor_faults().saturating_sub(f0));
    }
    // How much of it is membership (globs, explicit lists: membership.rs).
    let mut member_cpu = f64::MAX;
    for _ in 0..runs {
        let c0 = thread_cpu_secs();
        let k = f
            .snapshot
            .domains
            .iter()
            .filter(|d| m.pool_of(black_box(d)).is_some())
            .count();
        black_box(k);
        member_cpu = member_cpu.min(thread_cpu_secs() - c0);
    }
    // The floor (see `floor_pass`), alternated with plans so that both
    // see the same machine: the ratio is what planning adds to touching
    // the host's data and writing a plan-sized answer.
    let (mut floor_cpu, mut plan_cpu) = (f64::MAX, f64::MAX);
    for _ in 0..runs {
        let c0 = thread_cpu_secs();
        black_box(floor_pass(black_box(f)));
        floor_cpu = floor_cpu.min(thread_cpu_secs() - c0);
        let c0 = thread_cpu_secs();
        drop(black_box(plan_with(black_box(&input(f)), &m)));
        plan_cpu = plan_cpu.min(thread_cpu_secs() - c0);
    }
    println!(
        "  {n:>7} domains, {label:<15}: membership alone {:>5.0} ns/domain (cpu); floor {:>6.0} ns/domain, plan {:>6.0} ns/domain alongside: plan/floor {:.2}",
        member_cpu * 1e9 / n as f64,
        floor_cpu * 1e9 / n as f64,
        plan_cpu * 1e9 / n as f64,
        plan_cpu / floor_cpu
    );
    println!(
        "  {n:>7} domains, {label:<15}: wall {:>9.3} ms {:>6.0} ns/domain | cpu {:>9.3} ms {:>6.0} ns/domain  ({actions} actions, {faults} page faults)",
        wall * 1e3,
        wall * 1e9 / n as f64,
        cpu * 1e3,
        cpu * 1e9 / n as f64
    );
}

/// CPU time of this thread, seconds.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // every Linux kernel supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Minor page faults of this thread so far.
fn thread_minor_faults() -> u64 {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage; RUSAGE_THREAD is supported
    // by every Linux kernel since 2.6.26.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    if rc != 0 {
        return 0;
    }
    ru.ru_minflt as u64
}
