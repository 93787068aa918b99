//! Scenarios 2 (host memory pressure) and 3 (budgets under contention)
//! of `tests/realguests.rs`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::wait_until;
use crate::probe::{self, Hog, KIB_PER_MIB};
use crate::scenarios::{pa_spec, pb_spec, Row, Suite, CALM, DEM, INTERVAL, MIN_CHANGE, STEP};

/// Shares of each guest's memory in scenario 2 (`vp-d1` is in the demand
/// pool at its floor: nothing to take).
const SHARES: [(&str, u64); 5] = [
    ("vp-s1", 500),
    ("vp-s2", 500),
    ("vp-c1", 1000),
    ("vp-c2", 1000),
    ("vp-s3", 2000),
];

impl Suite {
    /// Scenario 2: host memory pressure, from a real memory hog on the host.
    ///
    /// The threshold is set 2 GiB below what the host has available, then
    /// a hog in this process takes those 2 GiB and 64 MiB more, and keeps
    /// the host 32–128 MiB short while the agent reclaims (it grows as the
    /// guests give memory back, and shrinks if other programs take some).
    /// The agent sees a real shortfall in the host's MemAvailable and the
    /// memory it reclaims comes back to the host for real (the guests'
    /// pages were touched first). Setting the threshold near what is
    /// available instead of filling 90 % of the host keeps the machine
    /// usable for everything else running on it.
    pub fn pressure(&mut self) {
        self.h.guest_cmd("vp-s2", "mem 150", 60);
        self.settle(&["pa", "pb"], 60);
        let avail0 = probe::host_available_kib() / KIB_PER_MIB;
        let base = 2048;
        let threshold = avail0 - base;
        self.config(threshold);
        self.h.ctl(&["reload"]);
        let start: BTreeMap<&str, u64> = SHARES
            .iter()
            .map(|(d, _)| (*d, self.actual_mib(d)))
            .collect();
        let from: BTreeMap<&str, usize> = SHARES
            .iter()
            .map(|(d, _)| (*d, self.h.statuses(d).len()))
            .collect();
        let pids: Vec<u32> = SHARES
            .iter()
            .filter_map(|(d, _)| self.h.qemu_pid(d))
            .collect();
        let rss = |pids: &[u32]| -> u64 { pids.iter().map(|&p| probe::rss_mib(p)).sum() };
        let rss0 = rss(&pids);
        let t0 = self.sp.now();
        let mut hog = Hog::default();
        let (mut hog_min, mut hog_max) = (u64::MAX, 0);
        let (mut avail_min, mut avail_max) = (u64::MAX, 0);
        let dur = Duration::from_secs(if self.long { 60 } else { 24 });
        let t = Instant::now();
        while t.elapsed() < dur {
            let a = probe::host_available_kib() / KIB_PER_MIB;
            avail_min = avail_min.min(a);
            avail_max = avail_max.max(a);
            // Short by 32..128 MiB: at most 4 steps of 32 MiB per cycle.
            if a + 32 > threshold && hog.mib() < 6144 {
                hog.grow();
                continue;
            }
            if a + 128 < threshold && hog.mib() > 0 {
                hog.shrink();
                continue;
            }
            hog_min = hog_min.min(hog.mib());
            hog_max = hog_max.max(hog.mib());
            std::thread::sleep(Duration::from_millis(250));
        }
        let t1 = self.sp.now();
        let rss1 = rss(&pids);
        let during = self.sp.since(t0);
        let lowest: BTreeMap<&str, u64> = SHARES
            .iter()
            .map(|(d, _)| {
                let m = during
                    .iter()
                    .filter_map(|s| s.doms.get(*d))
                    .map(|x| x.actual_kib / KIB_PER_MIB)
                    .min()
                    .unwrap_or(0);
                (*d, m)
            })
            .collect();
        let first_shrink = |d: &str| -> Option<f64> {
            let s0 = start[d] * KIB_PER_MIB;
            during
                .iter()
                .find(|s| {
                    s.doms
                        .get(d)
                        .is_some_and(|x| x.actual_kib + KIB_PER_MIB < s0)
                })
                .map(|s| s.t - t0)
        };
        // At its floor: the guest keeps about its margin, no more.
        let at_floor = |d: &str| {
            let r = self.last_status(d);
            (r.mem_available_kb as f64 / 1024.0) < Self::margin_mib(d) + (STEP + 8) as f64
        };
        for (d, shares) in SHARES {
            say!(
                "[2] {d} (shares {shares}): balloon {} → lowest {} MiB (reclaimed {} MiB), first shrink {}, at its floor now: {}",
                start[d],
                lowest[d],
                start[d] - lowest[d],
                first_shrink(d).map_or("never".to_string(), |t| format!("{t:.1} s")),
                at_floor(d)
            );
        }
        say!(
            "[2] threshold {threshold} MiB; host MemAvailable {avail_min}..{avail_max} MiB while the hog held {hog_min}..{hog_max} MiB; \
             the five QEMUs' RSS {rss0} → {rss1} MiB (what the host got back)"
        );
        // Gone: given back gradually.
        let t_rel = self.sp.now();
        hog.free();
        let mut back = None;
        while back.is_none() && self.sp.now() - t_rel < 120.0 {
            std::thread::sleep(Duration::from_millis(250));
            let s = self.sp.after(self.sp.now());
            // Back within the dead band of where it was.
            back = SHARES
                .iter()
                .all(|(d, _)| {
                    s.doms
                        .get(*d)
                        .is_some_and(|x| x.actual_kib / KIB_PER_MIB + MIN_CHANGE > start[d])
                })
                .then(|| self.sp.now() - t_rel);
        }
        let Some(back) = back else {
            let st = self.h.ctl_json(&["status"]);
            say!(
                "[2] not given back: host {}; threshold {threshold} MiB",
                st["host"]
            );
            let s = self.sp.after(self.sp.now());
            say!("[2] started at {start:?}; libvirt now {:?}", s.doms);
            say!(
                "{}{}",
                self.h.ctl(&["pool", "show", "pa"]),
                self.h.ctl(&["pool", "show", "pb"])
            );
            panic!("the balloons were not given back within 120 s after the hog ended");
        };
        let release = self.sp.since(t_rel);
        self.config(CALM);
        self.h.ctl(&["reload"]);

        let mut down_max = 0;
        let mut up_max = 0;
        for (d, _) in SHARES {
            down_max = down_max.max(probe::largest_steps(&during, d).0);
            up_max = up_max.max(probe::largest_steps(&release, d).1);
        }
        let reclaimed: u64 = SHARES.iter().map(|(d, _)| start[d] - lowest[d]).sum();
        let mut low_avail = f64::INFINITY;
        for (d, _) in SHARES {
            let low = self.lowest_avail(d, from[d]);
            low_avail = low_avail.min(low);
            assert!(
                low >= 0.6 * Self::margin_mib(d),
                "under pressure {d} ran down to {low:.1} MiB available (guest_free_min {:.1} MiB)",
                Self::margin_mib(d)
            );
        }
        let oom: u64 = SHARES.iter().map(|(d, _)| self.oom(d)).sum();
        say!(
            "[2] reclaimed {reclaimed} MiB in {:.0} s; largest shrink between samples {:.1} MiB, largest regrowth {:.1} MiB \
             (max_shrink {STEP} MiB); all given back {back:.1} s after the hog ended; lowest guest MemAvailable {low_avail:.1} MiB; OOM kills {oom}",
            t1 - t0,
            down_max as f64 / 1024.0,
            up_max as f64 / 1024.0
        );
        assert!(
            reclaimed >= 2 * STEP,
            "under pressure only {reclaimed} MiB was reclaimed"
        );
        assert!(
            down_max <= (STEP + 1) * KIB_PER_MIB,
            "a balloon shrank {down_max} KiB between samples"
        );
        assert!(
            up_max <= (STEP + 1) * KIB_PER_MIB,
            "a balloon grew back {up_max} KiB between samples"
        );
        assert_eq!(oom, 0, "OOM kills under host memory pressure");
        // Lowest shares first: the first to give is a 500-share guest, and
        // in every cycle where the 2000-share guest gives, each lower-share
        // guest gives a full step too (each gives at most one step per
        // cycle: when the shortfall is larger, the next in line gives),
        // unless it has reached the lowest it went (its floor).
        let first = SHARES
            .iter()
            .filter_map(|(d, s)| Some((first_shrink(d)?, *s, *d)))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        assert!(
            first.is_some_and(|(_, s, _)| s == 500),
            "the first guest to give memory was {first:?}, not a 500-share one"
        );
        let s3 = start["vp-s3"] - lowest["vp-s3"];
        let at = |d: &str, t: f64| -> Option<u64> {
            during
                .iter()
                .rev()
                .find(|s| s.t <= t)
                .or(during.first())
                .and_then(|s| s.doms.get(d))
                .map(|x| x.actual_kib / KIB_PER_MIB)
        };
        let half = INTERVAL as f64 * 0.75;
        let mut out_of_order = Vec::new();
        for w in during.windows(2) {
            let (Some(a), Some(b)) = (w[0].doms.get("vp-s3"), w[1].doms.get("vp-s3")) else {
                continue;
            };
            if a.actual_kib < b.actual_kib + KIB_PER_MIB {
                continue;
            }
            let t = w[1].t;
            for (d, _) in &SHARES[..4] {
                let (Some(x), Some(y)) = (at(d, t - half), at(d, t + half)) else {
                    continue;
                };
                if x.saturating_sub(y) + 1 < STEP && y > lowest[d] + 1 {
                    out_of_order.push(format!(
                        "t={:.1}s: vp-s3 gave while {d} went only {x} → {y} MiB (it went down to {} later)",
                        t - t0,
                        lowest[d]
                    ));
                }
            }
        }
        assert!(
            out_of_order.is_empty(),
            "the 2000-share guest gave before lower-share guests: {out_of_order:?}"
        );
        self.rows.push(Row {
            scenario: "2 host pressure: real hog, host kept 32–128 MiB short".into(),
            samples: format!("{} libvirt samples over {:.0} s + release", during.len(), t1 - t0),
            worst: format!(
                "reclaimed {reclaimed} MiB, 2000-share guest {s3} MiB; shrink ≤ {:.0} MiB/sample, regrowth ≤ {:.0} MiB/sample; \
                 lowest guest MemAvailable {low_avail:.1} MiB; all back {back:.0} s after the hog",
                down_max as f64 / 1024.0,
                up_max as f64 / 1024.0
            ),
            oom,
        });
        self.h.guest_cmd("vp-s2", "mem 0", 60);
    }

    /// Scenario 3: budgets moved, members added and removed, a guest
    /// restarted, with Σ actual ≤ budget checked at every libvirt sample.
    pub fn budgets(&mut self) {
        let t0 = self.sp.now();
        let mut settles = Vec::new();
        // Budgets down (pa over its budget: converges), pb's vCPUs up.
        // (Each change is noted before it is made: from then on the check
        // holds the pool to the new budget and members.)
        self.note_pool("pa", 768, &["vp-s1", "vp-s2", "vp-s3"]);
        self.h.pool_create("pa", &pa_spec(768));
        self.note_pool("pb", 768, &["vp-c1", "vp-c2"]);
        self.h.pool_create("pb", &pb_spec(5, 768, &[], 1000, 1000));
        settles.push((
            "pa 1152 → 768 MiB, pb 1024 → 768 MiB and 2 → 5 vCPUs",
            self.settle(&["pa", "pb"], 90),
        ));
        // A member moves into pb, then a guest of pa restarts.
        self.h.ctl(&["pool", "delete", "dem", "--wait"]);
        self.note_pool("pb", 768, &["vp-c1", "vp-c2", "vp-d1"]);
        self.h
            .pool_create("pb", &pb_spec(5, 768, &["vp-d1"], 1000, 1000));
        settles.push((
            "vp-d1 moved from dem into pb",
            self.settle(&["pa", "pb"], 90),
        ));
        let oom_s1 = self.last_status("vp-s1").oom;
        *self.oom_before.entry("vp-s1".into()).or_default() += oom_s1;
        let lines = self.h.statuses("vp-s1").len();
        say!("[3] vp-s1 destroyed and started at t={:.1}s", self.sp.now());
        self.h.virsh(&["destroy", "vp-s1"]);
        self.h.drop_channel("vp-s1");
        self.h.virsh(&["start", "vp-s1"]);
        wait_until(120, "vp-s1 to boot again", || {
            (self.h.statuses("vp-s1").len() > lines + 1).then_some(())
        });
        settles.push((
            "vp-s1 restarted (comes back at 384 MiB)",
            self.settle(&["pa", "pb"], 90),
        ));
        // Out again, budgets back up.
        self.note_pool("pb", 1024, &["vp-c1", "vp-c2"]);
        self.h.pool_create("pb", &pb_spec(5, 1024, &[], 1000, 1000));
        self.h.pool_create("dem", DEM);
        self.note_pool("pa", 1152, &["vp-s1", "vp-s2", "vp-s3"]);
        self.h.pool_create("pa", &pa_spec(1152));
        settles.push((
            "vp-d1 back to dem, budgets back up",
            self.settle(&["pa", "pb", "dem"], 120),
        ));
        let samples = self.sp.since(t0);
        let mut worst = Vec::new();
        let mut bad = Vec::new();
        for (pool, tl) in &self.timeline {
            // While over, Σ actual never rises: the agent grows a member
            // only into room libvirt already shows free, so a shrink has
            // landed before the growth it makes room for (1 MiB: balloon
            // targets are whole MiB).
            let c = probe::check_budget(&samples, tl, KIB_PER_MIB, KIB_PER_MIB);
            say!(
                "[3] pool {pool}: {} sample pairs, {} over the budget (largest excess {:.1} MiB, while converging), \
                 largest rise while over {:.1} MiB; {} rises within 20 s of a member's start (largest {:.1} MiB)",
                c.samples,
                c.over,
                c.worst_over_kib as f64 / 1024.0,
                c.worst_rise_kib as f64 / 1024.0,
                c.young_rises,
                c.worst_young_rise_kib as f64 / 1024.0
            );
            for v in c.violations.iter().take(if self.long { 50 } else { 5 }) {
                say!("[3]   {pool}: {v}");
            }
            worst.push(format!(
                "{pool}: over {} samples (≤ {:.0} MiB, converging), rise while over {:.1} MiB",
                c.over,
                c.worst_over_kib as f64 / 1024.0,
                c.worst_rise_kib as f64 / 1024.0
            ));
            if !c.violations.is_empty() {
                bad.push(format!("{pool}: {}", c.violations[0]));
            }
        }
        for (what, s) in &settles {
            say!("[3] {what}: settled (libvirt = targets, MemTotal and online CPUs match) in {s:.1} s");
        }
        let vc: Vec<String> = ["vp-c1", "vp-c2"]
            .iter()
            .map(|d| {
                format!(
                    "{d} libvirt {} vCPUs, guest online={}",
                    self.h.libvirt_vcpus(d),
                    self.last_status(d).online
                )
            })
            .collect();
        say!("[3] {}", vc.join("; "));
        let oom = self.oom_all();
        // Checked at the end (the later scenarios still run and report).
        if !bad.is_empty() {
            self.failures.push(format!(
                "scenario 3: Σ actual rose while over budget: {bad:?}"
            ));
        }
        assert_eq!(oom, 0, "OOM kills while budgets moved");
        self.rows.push(Row {
            scenario: "3 budgets: lowered, member moved in/out, guest restarted, raised".into(),
            samples: format!("{} libvirt samples, 4 settles", samples.len()),
            worst: worst.join("; "),
            oom,
        });
    }
}
