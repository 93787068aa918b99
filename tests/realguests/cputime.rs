//! Scenario 4b of `tests/realguests.rs`: CPU time as a pooled resource on
//! real guests. Limits, weights and the `demand` policy of a pool's `cpu`
//! are read back from libvirt on a second connection (`virsh schedinfo`:
//! `global_period` / `global_quota`) and measured as the CPU time each
//! QEMU process really gets (`/proc/PID/stat`, ≥ 10 s per figure).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crate::harness::wait_until;
use crate::probe;
use crate::scenarios::{Row, Suite};

const C1: &str = "vp-c1";
const C2: &str = "vp-c2";

/// Pool `pb` with a CPU-time budget: `cpu` is the pool's `cpu = {…}`
/// line, `m1` / `m2` the members' (empty: none).
fn pb_cpu_spec(cpu: &str, m1: &str, m2: &str) -> String {
    let member = |d: &str, m: &str| {
        if m.is_empty() {
            String::new()
        } else {
            format!("[members.{d}]\ncpu = {{ {m} }}\n")
        }
    };
    format!(
        "match = \"vp-c*\"\nvcpus = {{ budget = 4 }}\nmemory = {{ budget = \"1024MiB\" }}\ncpu = {{ {cpu} }}\n{}{}",
        member(C1, m1),
        member(C2, m2)
    )
}

impl Suite {
    /// libvirt's quota of a domain in µs per `global_period` (-1: none).
    fn global_quota(&self, dom: &str) -> Option<i64> {
        self.h.virsh(&["schedinfo", dom]).lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "global_quota").then(|| v.trim().parse().ok())?
        })
    }

    /// Waits until both guests' quotas satisfy `ok`; returns them.
    fn wait_quotas(&self, what: &str, ok: impl Fn(i64, i64) -> bool) -> (i64, i64) {
        wait_until(90, what, || {
            let q = (self.global_quota(C1)?, self.global_quota(C2)?);
            ok(q.0, q.1).then_some(q)
        })
    }

    /// Cores of host CPU time each QEMU used over `secs`.
    fn cores_used(&self, secs: u64) -> [f64; 2] {
        let pids = [C1, C2].map(|d| self.h.qemu_pid(d).expect("QEMU pid"));
        let c0 = pids.map(probe::cpu_secs);
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        let c1 = pids.map(probe::cpu_secs);
        let wall = t.elapsed().as_secs_f64();
        [(c1[0] - c0[0]) / wall, (c1[1] - c0[1]) / wall]
    }

    /// A figure against its bounds: over `high` always fails (the limit
    /// is the kernel's to enforce, whatever else runs); under `low` fails
    /// only where the host had the room (`room`: what a guest got with no
    /// limit, measured in the same run, was enough), and is said otherwise.
    fn check(&mut self, what: String, high_ok: bool, low_ok: bool, room: bool) {
        let verdict = match (high_ok, low_ok, room) {
            (true, true, _) => "",
            (true, false, false) => "  (low: this host had no room to give more — not counted)",
            _ => "  <-- FAILED",
        };
        say!("[4b] {what}{verdict}");
        if verdict.contains("FAILED") {
            self.failures.push(format!("scenario 4b: {what}"));
        }
    }

    /// Scenario 4b: a limit of 0.5 core, then 1 core; shares 1:3 under a
    /// budget of 1 core; a `demand` pool lending an idle guest's time.
    pub fn cpu_time(&mut self) {
        let secs = if self.long { 30 } else { 12 };
        let quota0 = (self.global_quota(C1), self.global_quota(C2));
        say!(
            "[4b] quotas before: {C1} {:?}, {C2} {:?} µs per 100 ms",
            quota0.0,
            quota0.1
        );

        // What the host gives a guest burning both its vCPUs with no limit:
        // the figures below need a host with more than a core to spare.
        self.h.guest_cmd(C1, "cpu 2", 30);
        std::thread::sleep(Duration::from_secs(2));
        let free = self.cores_used(secs)[0];
        say!(
            "[4b] no limit: {C1} burning 2 vCPUs used {free:.3} core (what this host can give it)"
        );

        // A limit of 0.5 core on a guest burning both its vCPUs.
        self.h
            .pool_create("pb", &pb_cpu_spec("budget = 2", "max = 0.5", ""));
        self.wait_quotas("global_quota 50000 on vp-c1", |a, _| a == 50_000);
        std::thread::sleep(Duration::from_secs(2));
        let half = self.cores_used(secs)[0];
        self.check(
            format!("limit 0.5 core (global_quota 50000 / 100000): {C1} used {half:.3} core over {secs} s (want 0.5 ± 10 %)"),
            half <= 0.55,
            half >= 0.45,
            free >= 0.6,
        );

        // Raised to 1 core: it uses more.
        self.h
            .pool_create("pb", &pb_cpu_spec("budget = 2", "max = 1", ""));
        self.wait_quotas("global_quota 100000 on vp-c1", |a, _| a == 100_000);
        std::thread::sleep(Duration::from_secs(2));
        let one = self.cores_used(secs)[0];
        self.check(
            format!("limit raised to 1 core: {C1} used {one:.3} core (want 1 ± 10 %)"),
            one <= 1.1,
            one >= 0.9,
            free >= 1.2,
        );

        // Shares 1:3 under a budget of 1 core, both burning.
        self.h.pool_create(
            "pb",
            &pb_cpu_spec("budget = 1", "shares = 1000", "shares = 3000"),
        );
        let q = self.wait_quotas("global_quota 25000 / 75000", |a, b| {
            a == 25_000 && b == 75_000
        });
        self.h.guest_cmd(C2, "cpu 2", 30);
        std::thread::sleep(Duration::from_secs(2));
        let split = self.cores_used(secs);
        self.check(
            format!(
                "budget 1 core, shares 1:3 (quotas {} / {}): {C1} {:.3}, {C2} {:.3} core (want 0.25 / 0.75 ± 0.1)",
                q.0, q.1, split[0], split[1]
            ),
            split[0] <= 0.35 && split[1] <= 0.85,
            split[0] >= 0.15 && split[1] >= 0.65,
            free >= 1.2,
        );

        // Demand: vp-c2 idle, vp-c1 busy; equal shares would give 0.5 each.
        self.h.guest_cmd(C2, "stop", 30);
        self.h.pool_create(
            "pb",
            &pb_cpu_spec("budget = 1, policy = \"demand\"", "", ""),
        );
        let t = Instant::now();
        let q = self.wait_quotas("vp-c1's demand limit above 0.8 core", |a, _| a >= 80_000);
        let took = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        let lent = self.cores_used(secs);
        self.check(
            format!(
                "demand, budget 1 core: {C2} idle, its limit {} → {C1} limit {} after {took:.0} s; used {C1} {:.3}, {C2} {:.3} core (want {C1} > 0.7)",
                q.1, q.0, lent[0], lent[1]
            ),
            lent[0] + lent[1] <= 1.1,
            lent[0] > 0.7,
            free >= 1.0,
        );

        // Back to a budget of all their vCPUs: no limit on either.
        self.h.guest_cmd(C1, "stop", 30);
        self.h.pool_create(
            "pb",
            &pb_cpu_spec("budget = 4", "shares = 1000", "shares = 3000"),
        );
        self.wait_quotas("no limit at a budget of all the vCPUs", |a, b| {
            a == -1 && b == -1
        });

        self.rows.push(Row {
            scenario: "4b CPU time: limits, shares 1:3, demand".into(),
            samples: format!("{secs} s of QEMU CPU time (/proc/PID/stat) per figure"),
            worst: format!(
                "no limit → {free:.2}; 0.5 limit → {half:.2}; 1 → {one:.2}; 1:3 → {:.2} / {:.2}; demand → {:.2} / {:.2}",
                split[0], split[1], lent[0], lent[1]
            ),
            oom: self.oom_all(),
        });
    }

    /// After the other scenarios: limits set, then the pool deleted; its
    /// members are released and get back the quotas libvirt had before
    /// the agent first set one (the release rule for CPU time).
    pub fn cpu_release(&mut self) {
        self.h.pool_create("pb", &pb_cpu_spec("budget = 1", "", ""));
        let set = self.wait_quotas("global_quota 50000 on both", |a, b| {
            a == 50_000 && b == 50_000
        });
        self.h.ctl(&["pool", "delete", "pb", "--wait"]);
        let back = self.wait_quotas("the quotas given back on release", |a, b| {
            a == -1 && b == -1
        });
        say!("[4b] pool deleted, members released: quotas {set:?} → {back:?} (none, as before the agent)");
    }
}
