//! The suite's state and scenarios 1–3 of `tests/realguests.rs` (4–6 are
//! in `more.rs`): each drives workloads in the guests, reads the guests
//! and libvirt, asserts, and adds a row to the summary.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::harness::{wait_until, Harness, Report, MIB};
use crate::probe::{self, PoolAt, Sampler, KIB_PER_MIB};
use crate::GUESTS;

/// The agent's interval, s.
pub const INTERVAL: u64 = 2;
/// `memory.max_shrink`, MiB: the most a balloon may shrink per cycle.
pub const STEP: u64 = 32;
/// What the demand guest adds per step in scenario 1, MiB.
pub const FILL_STEP: u64 = 24;
/// `memory.guest_free_min`, MiB.
pub const GUEST_FREE_MIN: u64 = 2 * FILL_STEP;
/// `memory.min_change`, MiB.
pub const MIN_CHANGE: u64 = 8;
/// The threshold outside scenario 2: far below what the host has.
pub const CALM: u64 = 512;

const CONFIG: &str = r#"[host]
cpus = 8
disk_bytes_sec = "4GiB"
disk_iops_sec = 100000

[memory]
guest_free_min = "48MiB"
max_shrink = "32MiB"
min_change = "8MiB"
stats_period = "1s"
pressure_threshold = "{threshold}MiB"

[vcpus]
cooldown = "1s"
"#;

pub const DEM: &str = "match = \"vp-d1\"\nmemory = { budget = \"512MiB\", policy = \"demand\" }\n";

/// Pool `pa`: the three small guests, weights 500 / 500 / 2000.
pub fn pa_spec(budget_mib: u64) -> String {
    format!(
        "domains = [\"vp-s1\", \"vp-s2\", \"vp-s3\"]\nmemory = {{ budget = \"{budget_mib}MiB\" }}\n\
         [members.vp-s1]\nmemory = {{ shares = 500 }}\n[members.vp-s2]\nmemory = {{ shares = 500 }}\n\
         [members.vp-s3]\nmemory = {{ shares = 2000 }}\n"
    )
}

/// Pool `pb`: `vp-c*` and `extra` domains; vCPU weights `w1` / `w2`.
pub fn pb_spec(vcpus: u64, mem_mib: u64, extra: &[&str], w1: u64, w2: u64) -> String {
    let domains: Vec<String> = extra.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "match = \"vp-c*\"\ndomains = [{}]\nvcpus = {{ budget = {vcpus} }}\nmemory = {{ budget = \"{mem_mib}MiB\" }}\n\
         [members.vp-c1]\nvcpus = {{ shares = {w1} }}\n[members.vp-c2]\nvcpus = {{ shares = {w2} }}\n",
        domains.join(", ")
    )
}

/// Per guest: balloon (MiB) and vCPUs, as last seen by `settle`.
type Seen = BTreeMap<String, (u64, u64)>;

/// One line of the summary table.
pub struct Row {
    pub scenario: String,
    pub samples: String,
    pub worst: String,
    pub oom: u64,
}

pub struct Suite {
    /// Dropped first: it stops before libvirtd does.
    pub sp: Sampler,
    pub h: Harness,
    pub long: bool,
    /// Per guest: balloon size − the guest's MemTotal (KiB), the memory
    /// the guest never sees.
    pub overhead_kib: BTreeMap<String, u64>,
    /// OOM kills seen in runs of a guest that ended (restarts).
    pub oom_before: BTreeMap<String, u64>,
    pub rows: Vec<Row>,
    /// The pools' budgets and members over time (scenario 3's check).
    pub timeline: BTreeMap<&'static str, Vec<PoolAt>>,
    pub started: Instant,
    /// Failed checks that let the later scenarios run (asserted at the end).
    pub failures: Vec<String>,
}

impl Suite {
    pub fn new(h: Harness, sp: Sampler, long: bool) -> Suite {
        Suite {
            h,
            sp,
            long,
            overhead_kib: BTreeMap::new(),
            oom_before: BTreeMap::new(),
            rows: Vec::new(),
            timeline: BTreeMap::new(),
            started: Instant::now(),
            failures: Vec::new(),
        }
    }

    pub fn names() -> impl Iterator<Item = &'static str> {
        GUESTS.iter().map(|g| g.0)
    }

    pub fn mem_mib(dom: &str) -> u64 {
        GUESTS.iter().find(|g| g.0 == dom).map_or(0, |g| g.1)
    }

    /// `memory.guest_free_min`, MiB: set to twice the largest step a
    /// guest takes at once in these scenarios (`FILL_STEP`), the way an
    /// operator sizes it to a guest's largest burst.
    pub fn margin_mib(_dom: &str) -> f64 {
        GUEST_FREE_MIN as f64
    }

    pub fn config(&self, threshold_mib: u64) {
        self.h
            .write_config(&CONFIG.replace("{threshold}", &threshold_mib.to_string()));
    }

    /// The newest status line of each guest.
    pub fn last_status(&self, dom: &str) -> Report {
        self.h.statuses(dom).pop().expect("a status line")
    }

    /// OOM kills in the guest since the suite started (all its runs).
    pub fn oom(&self, dom: &str) -> u64 {
        self.oom_before.get(dom).copied().unwrap_or(0) + self.last_status(dom).oom
    }

    pub fn oom_all(&self) -> u64 {
        Self::names().map(|d| self.oom(d)).sum()
    }

    /// Status lines of `dom` printed from index `from` on.
    pub fn statuses_from(&self, dom: &str, from: usize) -> Vec<Report> {
        self.h
            .statuses(dom)
            .split_off(from.min(self.h.statuses(dom).len()))
    }

    /// Lowest MemAvailable (MiB) in status lines from index `from` on.
    pub fn lowest_avail(&self, dom: &str, from: usize) -> f64 {
        self.statuses_from(dom, from)
            .iter()
            .map(|r| r.mem_available_kb as f64 / 1024.0)
            .fold(f64::INFINITY, f64::min)
    }

    pub fn actual_mib(&self, dom: &str) -> u64 {
        let s = self.sp.after(self.sp.now());
        s.doms.get(dom).map_or(0, |d| d.actual_kib / KIB_PER_MIB)
    }

    pub fn note_pool(&mut self, pool: &'static str, budget_mib: u64, members: &[&str]) {
        let at = PoolAt {
            t: self.sp.now(),
            budget_kib: budget_mib * KIB_PER_MIB,
            members: members
                .iter()
                .map(|m| m.to_string())
                .collect::<BTreeSet<_>>(),
        };
        self.timeline.entry(pool).or_default().push(at);
    }

    /// Waits until every member of `pools` is where the agent wants it
    /// (libvirt's balloon within the dead band of the agent's target, its
    /// vCPUs at their target, no move for
    /// two cycles) and each guest's MemTotal and online CPUs match what
    /// libvirt gives it. Returns the seconds it took.
    pub fn settle(&self, pools: &[&str], secs: u64) -> f64 {
        let t = Instant::now();
        let mut last: Option<(Seen, Instant)> = None;
        wait_until(secs, &format!("pools {pools:?} settled"), || {
            let mut want = BTreeMap::new();
            for p in pools {
                let v = self.h.ctl_json(&["pool", "show", p]);
                for m in v["members"].as_array()? {
                    if m["state"] != "running" {
                        continue;
                    }
                    let r = &m["resources"];
                    let mem = r["memory"]["target"].as_u64().unwrap_or(0) / MIB;
                    let vc = r["vcpus"]["target"].as_u64().unwrap_or(0);
                    want.insert(m["name"].as_str()?.to_string(), (mem, vc));
                }
            }
            let s = self.sp.after(self.sp.now());
            let mut now = BTreeMap::new();
            for (name, &(mem, vc)) in &want {
                let d = s.doms.get(name)?;
                let (am, av) = (d.actual_kib / KIB_PER_MIB, d.vcpus);
                // Within the dead band of the target (not issued).
                if (mem > 0 && am.abs_diff(mem) >= MIN_CHANGE) || (vc > 0 && av != vc) {
                    return None;
                }
                // Inside the guest: MemTotal follows the balloon, the
                // CPUs libvirt gives are online.
                let g = self.last_status(name);
                let seen = g.mem_total_kb + self.overhead_kib[name.as_str()];
                if seen.abs_diff(d.actual_kib) > 4 * KIB_PER_MIB {
                    return None;
                }
                let online = if av == 1 {
                    "0".to_string()
                } else {
                    format!("0-{}", av - 1)
                };
                if g.online != online {
                    return None;
                }
                now.insert(name.clone(), (am, av));
            }
            // Unchanged for two cycles.
            match &last {
                Some((prev, since)) if *prev == now => {
                    (since.elapsed() >= Duration::from_secs(2 * INTERVAL)).then_some(())
                }
                _ => {
                    last = Some((now, Instant::now()));
                    None
                }
            }
        });
        t.elapsed().as_secs_f64()
    }

    /// Every guest holds 60 % of its memory in its tmpfs and frees it
    /// (its pages are then resident on the host: a balloon that takes them
    /// gives the host real memory back), the agent starts, the pools are
    /// created and settle.
    pub fn prepare(&mut self) {
        for d in Self::names() {
            let st = self.h.fresh_status(d, 1);
            let actual = Self::mem_mib(d) * KIB_PER_MIB;
            self.overhead_kib
                .insert(d.to_string(), actual - st.mem_total_kb);
        }
        say!(
            "memory the guests never see (balloon − MemTotal): {}",
            Self::names()
                .map(|d| format!("{d} {:.1} MiB", self.overhead_kib[d] as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // (Not vp-d1: scenario 1 touches its memory.)
        let touched = || Self::names().filter(|d| *d != "vp-d1");
        let seqs: Vec<(&str, u64)> = touched()
            .map(|d| {
                (
                    d,
                    self.h
                        .guest_send(d, &format!("mem {}", Self::mem_mib(d) * 6 / 10)),
                )
            })
            .collect();
        for (d, seq) in seqs {
            self.h.guest_wait(d, seq, 120);
        }
        let seqs: Vec<(&str, u64)> = touched()
            .map(|d| (d, self.h.guest_send(d, "mem 0")))
            .collect();
        for (d, seq) in seqs {
            self.h.guest_wait(d, seq, 60);
        }
        self.config(CALM);
        self.h.start_agent();
        self.h.pool_create("dem", DEM);
        self.h.pool_create("pa", &pa_spec(1152));
        self.h.pool_create("pb", &pb_spec(2, 1024, &[], 1000, 1000));
        self.note_pool("pa", 1152, &["vp-s1", "vp-s2", "vp-s3"]);
        self.note_pool("pb", 1024, &["vp-c1", "vp-c2"]);
        let s = self.settle(&["dem", "pa", "pb"], 120);
        say!(
            "agent started, pools dem / pa / pb settled in {s:.1} s; balloons: {}",
            Self::names()
                .map(|d| format!("{d} {} MiB", self.actual_mib(d)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    /// Scenario 1: demand-driven memory.
    pub fn demand(&mut self) {
        let d = "vp-d1";
        let margin = Self::margin_mib(d);
        let t0 = self.sp.now();
        let from = self.h.statuses(d).len();
        let at_floor = self.h.fresh_status(d, 2);
        say!(
            "[1] {d} at its floor: balloon {} MiB, guest MemTotal {:.1} MiB, MemAvailable {:.1} MiB (guest_free_min {margin:.1} MiB)",
            self.actual_mib(d),
            at_floor.mem_total_kb as f64 / 1024.0,
            at_floor.mem_available_kb as f64 / 1024.0
        );
        assert!(
            at_floor.mem_available_kb as f64 / 1024.0 >= 0.6 * margin,
            "at its floor {d} has {:.1} MiB available, guest_free_min promises {margin:.1} MiB",
            at_floor.mem_available_kb as f64 / 1024.0
        );
        // Grow by ~60 % of its memory in steps of 24 MiB (about half the
        // margin the floor keeps free: a guest can take at once only what
        // it has free), each once the balloon has caught up.
        let steps = 13;
        let mut lat = Vec::new();
        for i in 1..=steps {
            let before = self.actual_mib(d);
            let t_cmd = self.sp.now();
            self.h.guest_cmd(d, &format!("mem {}", i * FILL_STEP), 60);
            let grown = wait_until(30, &format!("{d}'s balloon to grow after step {i}"), || {
                self.sp.since(t_cmd).into_iter().find(|s| {
                    s.doms
                        .get(d)
                        .is_some_and(|x| x.actual_kib >= (before + MIN_CHANGE) * KIB_PER_MIB)
                })
            });
            let after = grown.doms[d].actual_kib / KIB_PER_MIB;
            lat.push(grown.t - t_cmd);
            // Ahead again: the guest has its margin back (less the dead
            // band) before the next step.
            let ahead = wait_until(
                30,
                &format!("{d} to have its margin back after step {i}"),
                || {
                    let r = self.h.fresh_status(d, 1);
                    (r.mem_available_kb as f64 / 1024.0 >= margin - (MIN_CHANGE + 4) as f64)
                        .then_some(r)
                },
            );
            if self.long || i == 1 || i == steps {
                say!(
                    "[1] step {i}: fill {} MiB → balloon {before} → {after} MiB after {:.1} s; MemAvailable back at {:.1} MiB",
                    i * FILL_STEP,
                    grown.t - t_cmd,
                    ahead.mem_available_kb as f64 / 1024.0
                );
            }
        }
        let low_grow = self.lowest_avail(d, from);
        let peak = self.actual_mib(d);
        // Freed: back at the shrink rate, never below the floor.
        let t_free = self.sp.now();
        let from_free = self.h.statuses(d).len();
        self.h.guest_cmd(d, "mem 0", 60);
        let s = self.settle(&["dem"], 120);
        let shrink = self.sp.since(t_free);
        let (down, _) = probe::largest_steps(&shrink, d);
        let low_free = self.lowest_avail(d, from_free);
        let end = self.actual_mib(d);
        let oom = self.oom(d);
        lat.sort_by(f64::total_cmp);
        let med = lat[lat.len() / 2];
        let max = lat[lat.len() - 1];
        say!(
            "[1] {steps} steps of {FILL_STEP} MiB: step → balloon growth median {med:.1} s, max {max:.1} s; \
             lowest MemAvailable while growing {low_grow:.1} MiB; freed: balloon {peak} → {end} MiB in {s:.1} s, \
             largest shrink between samples {:.1} MiB (max_shrink {STEP} MiB), lowest MemAvailable {low_free:.1} MiB; OOM kills {oom}",
            down as f64 / 1024.0
        );
        assert_eq!(oom, 0, "{d} had OOM kills");
        assert!(
            low_grow >= 4.0,
            "{d} ran down to {low_grow:.1} MiB available while growing"
        );
        assert!(
            down <= (STEP + 1) * KIB_PER_MIB,
            "{d}'s balloon shrank {down} KiB between two samples (max_shrink {STEP} MiB)"
        );
        assert!(
            low_free >= 0.6 * margin,
            "shrinking, {d} ran down to {low_free:.1} MiB available (guest_free_min {margin:.1} MiB)"
        );
        assert!(
            end < peak,
            "{d}'s balloon did not come back: {peak} → {end} MiB"
        );
        self.rows.push(Row {
            scenario: "1 demand: +61 % in 24 MiB steps, then freed".into(),
            samples: format!(
                "{steps} steps, {} libvirt samples, {} guest lines",
                self.sp.since(t0).len(),
                self.statuses_from(d, from).len()
            ),
            worst: format!(
                "step→growth max {max:.1} s (median {med:.1}); lowest MemAvailable {low_grow:.1} MiB; \
                 shrink ≤ {:.0} MiB/sample; after freeing ≥ {low_free:.1} MiB available",
                down as f64 / 1024.0
            ),
            oom,
        });
    }
}
