//! The closed loop on real guests under real load: six QEMU guests (KVM
//! when it works, TCG otherwise) under a private libvirtd
//! (`tests/realvm/run.sh`, shared with `tests/realvm.rs`), the real
//! `virtpoold` in enforce mode, and workloads started inside the guests
//! over their control channel (memory held in a tmpfs, busy loops, disk
//! reads). Every check reads the guests' own consoles (MemTotal,
//! MemAvailable, online CPUs, OOM kills) or libvirt on a second
//! connection sampled every 250 ms — never only what the agent says:
//!
//! 1. demand-driven memory: a guest grows its use by ~60 % of its memory
//!    in steps, the balloon grows ahead of it, no OOM kill; freed, the
//!    balloon comes back at the shrink rate, never below the floor;
//! 2. host memory pressure (a real memory hog on the host): reclaim from
//!    low shares and idle guests first, within the shrink rate, never
//!    below floors; given back gradually once the hog is gone;
//! 3. budgets moved, members added and removed, a guest restarted:
//!    Σ actual ≤ budget per pool at every sample (or not rising while a
//!    pool is over for a reason of its own); MemTotal and online CPUs
//!    match the targets once settled;
//! 4. CPU weights 1:3 under contention: the share of host CPU time each
//!    QEMU gets (disk throughput reported too);
//! 5. the agent SIGKILLed and restarted, libvirtd restarted, mid-workload:
//!    guests undisturbed, the loop back within an interval;
//! 6. steady cost with all guests up: libvirt reads per cycle, cycle time
//!    and agent CPU against a raw-libvirt baseline in the same run.
//!
//! Needs root. `VIRTPOOL_REALVM=skip` or `VIRTPOOL_REALGUESTS=skip` skip
//! it (it says SKIP); `VIRTPOOL_REALGUESTS=long` runs each scenario longer
//! and prints every sample; `VIRTPOOL_REALGUESTS=keep` leaves it running.
#![allow(clippy::unwrap_used)]

#[macro_use]
#[path = "realvm/harness.rs"]
mod harness;
#[path = "realguests/contention.rs"]
mod contention;
#[path = "realguests/cputime.rs"]
mod cputime;
#[path = "realguests/more.rs"]
mod more;
#[path = "realguests/probe.rs"]
mod probe;
#[path = "realguests/scenarios.rs"]
mod scenarios;

use harness::{Harness, Phases};
use std::time::{Duration, Instant};

/// Name, memory (MiB), max vCPUs, vCPUs at boot.
pub const GUESTS: [(&str, u64, u64, u64); 6] = [
    ("vp-d1", 512, 1, 1),
    ("vp-s1", 384, 1, 1),
    ("vp-s2", 384, 1, 1),
    ("vp-s3", 384, 1, 1),
    ("vp-c1", 512, 2, 1),
    ("vp-c2", 512, 2, 1),
];

#[test]
fn real_guests_under_real_load() {
    let keep = match harness::gate(Some("VIRTPOOL_REALGUESTS"), "the real-guest suite") {
        Err(why) => {
            say!("SKIP realguests: {why} — no real QEMU guest was started");
            return;
        }
        Ok(keep) => keep,
    };
    let long = std::env::var("VIRTPOOL_REALGUESTS").is_ok_and(|v| v == "long");
    let mut ph = Phases::new();
    let dir = std::env::temp_dir().join(format!("virtpool-realguests.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spec: Vec<String> = GUESTS
        .iter()
        .map(|(n, m, x, c)| format!("{n}:{m}:{x}:{c}"))
        .collect();
    let spec = spec.join(" ");
    let h = Harness::up(
        dir,
        &[("GUESTS", &spec), ("GUEST_PERIOD", "1"), ("GUEST_DD", "0")],
        keep.as_deref(),
    );
    say!(
        "{} guests up: domain type {} ({}), kernel {}; run.sh: packages {} s, libvirtd {} s, boot (parallel) {} s",
        GUESTS.len(),
        h.var("DTYPE"),
        h.accel(),
        h.var("KERNEL"),
        h.var("T_PACKAGES"),
        h.var("T_LIBVIRTD"),
        h.var("T_BOOT")
    );
    ph.end("up: packages, libvirtd, 6 guests booted in parallel");
    let sampler = probe::Sampler::start(h.uri(), ph.start, Duration::from_millis(250));
    let mut s = scenarios::Suite::new(h, sampler, long);
    s.prepare();
    ph.end("guests' memory touched, agent started, pools settled");
    s.demand();
    ph.end("1 demand-driven memory");
    s.pressure();
    ph.end("2 host memory pressure");
    s.budgets();
    ph.end("3 budgets under contention");
    s.cpu_shares();
    ph.end("4 CPU and disk weights");
    s.cpu_time();
    ph.end("4b CPU time: limits, shares, demand");
    s.restarts();
    ph.end("5 agent and libvirtd restarts");
    s.steady_cost();
    ph.end("6 steady cost");
    s.cpu_release();
    ph.end("4b CPU time given back on release");
    s.finish();
    let t = Instant::now();
    drop(s);
    say!("teardown {:.1} s", t.elapsed().as_secs_f64());
    ph.end("teardown");
    ph.print();
}
