//! What `tests/realguests.rs` reads besides the guests' consoles: libvirt
//! sampled on a second connection of its own (a thread, every 250 ms),
//! the host's available memory, QEMU's CPU time, a host memory hog, and
//! the checks run over the samples.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virt::sys;
use virtpool::adapters::libvirt::ffi;

pub const KIB_PER_MIB: u64 = 1024;

/// One running domain as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dom {
    /// Balloon size, KiB.
    pub actual_kib: u64,
    pub vcpus: u64,
    /// libvirt's ID of this run of the domain (new on every start).
    pub id: u32,
}

/// One look at libvirt (running domains only) and the host.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since the suite started.
    pub t: f64,
    pub doms: BTreeMap<String, Dom>,
    /// Host MemAvailable, KiB.
    pub host_avail_kib: u64,
}

/// Samples libvirt on its own connection until stopped.
pub struct Sampler {
    t0: Instant,
    stop: Arc<AtomicBool>,
    data: Arc<Mutex<Vec<Sample>>>,
    handle: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(uri: &str, t0: Instant, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let data = Arc::new(Mutex::new(Vec::new()));
        let (uri, s2, d2) = (uri.to_string(), stop.clone(), data.clone());
        // Connection failures while libvirtd restarts are expected: not
        // printed by libvirt's default error handler.
        virt::error::clear_error_callback();
        let handle = std::thread::spawn(move || {
            let mut conn: Option<virt::connect::Connect> = None;
            while !s2.load(Ordering::Relaxed) {
                let next = Instant::now() + every;
                if conn.is_none() {
                    conn = virt::connect::Connect::open(Some(&uri)).ok();
                }
                if let Some(c) = &conn {
                    match read(c) {
                        Some(doms) => d2.lock().unwrap().push(Sample {
                            t: t0.elapsed().as_secs_f64(),
                            doms,
                            host_avail_kib: host_available_kib(),
                        }),
                        // libvirtd went away: connect again next time.
                        None => conn = None,
                    }
                }
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            drop(conn);
        });
        Sampler {
            t0,
            stop,
            data,
            handle: Some(handle),
        }
    }

    /// Seconds since the suite started (the samples' clock).
    pub fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// The samples taken at or after `t`.
    pub fn since(&self, t: f64) -> Vec<Sample> {
        self.data
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.t >= t)
            .cloned()
            .collect()
    }

    pub fn count(&self) -> usize {
        self.data.lock().unwrap().len()
    }

    /// The newest sample taken after `t` (waits for one).
    pub fn after(&self, t: f64) -> Sample {
        crate::harness::wait_until(30, "a libvirt sample", || self.since(t).pop())
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Running domains: name → balloon and vCPUs. `None` if libvirt failed.
fn read(c: &virt::connect::Connect) -> Option<BTreeMap<String, Dom>> {
    let names: BTreeMap<String, (String, u32)> = c
        .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        .ok()?
        .iter()
        .filter_map(|d| Some((d.uuid_string().ok()?, (d.name().ok()?, d.id()?))))
        .collect();
    let recs = ffi::all_domain_stats(
        c,
        sys::VIR_DOMAIN_STATS_STATE | sys::VIR_DOMAIN_STATS_VCPU | sys::VIR_DOMAIN_STATS_BALLOON,
        sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING,
        &["state.state", "vcpu.current", "balloon.current"],
    )
    .ok()?;
    Some(
        recs.iter()
            .filter_map(|r| {
                let (name, id) = names.get(&r.uuid)?.clone();
                let dom = Dom {
                    actual_kib: r.number("balloon.current")?,
                    vcpus: r.number("vcpu.current")?,
                    id,
                };
                Some((name, dom))
            })
            .collect(),
    )
}

/// The host's MemAvailable, KiB.
pub fn host_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A process's CPU time (user + system, all threads), seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is 3,
    // utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    f.iter().sum::<u64>() as f64 / ticks
}

/// A process's resident memory, MiB.
pub fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// Memory held on the host, in 64 MiB chunks written through (resident).
#[derive(Default)]
pub struct Hog {
    chunks: Vec<Vec<u8>>,
}

pub const HOG_CHUNK_MIB: u64 = 64;

impl Hog {
    pub fn mib(&self) -> u64 {
        self.chunks.len() as u64 * HOG_CHUNK_MIB
    }

    pub fn grow(&mut self) {
        self.chunks
            .push(vec![0xA5u8; (HOG_CHUNK_MIB * 1024 * 1024) as usize]);
    }

    pub fn shrink(&mut self) {
        self.chunks.pop();
    }

    pub fn free(&mut self) {
        self.chunks.clear();
        self.chunks.shrink_to_fit();
    }
}

/// Per-sample largest decrease and increase of one domain's balloon over
/// the samples (KiB), where it ran in both samples.
pub fn largest_steps(samples: &[Sample], dom: &str) -> (u64, u64) {
    let (mut down, mut up) = (0, 0);
    for w in samples.windows(2) {
        if let (Some(a), Some(b)) = (w[0].doms.get(dom), w[1].doms.get(dom)) {
            down = down.max(a.actual_kib.saturating_sub(b.actual_kib));
            up = up.max(b.actual_kib.saturating_sub(a.actual_kib));
        }
    }
    (down, up)
}

/// One pool's budget and members from time `t` on.
#[derive(Debug, Clone)]
pub struct PoolAt {
    pub t: f64,
    pub budget_kib: u64,
    pub members: BTreeSet<String>,
}

/// The outcome of [`check_budget`].
#[derive(Debug, Default)]
pub struct BudgetCheck {
    pub samples: usize,
    /// Samples where Σ actual was over the budget (allowed while it does
    /// not rise: the pool is over for a reason of its own).
    pub over: usize,
    /// Largest Σ actual − budget seen, KiB (0 if never over).
    pub worst_over_kib: u64,
    /// Largest rise of Σ actual while over, KiB, over members present in
    /// both samples (the violations of the invariant).
    pub worst_rise_kib: u64,
    /// Rises within `YOUNG` s of a member's start (not judged).
    pub young_rises: usize,
    pub worst_young_rise_kib: u64,
    pub violations: Vec<String>,
}

/// Σ actual ≤ budget per pool at every sample (within `tol_kib`), or —
/// while the pool is over for a reason of its own (budget just lowered, a
/// member added or started) — Σ actual of the members present in both
/// samples rises by no more than `rise_tol_kib` (every rise is reported).
/// `timeline` is in time order.
pub fn check_budget(
    samples: &[Sample],
    timeline: &[PoolAt],
    tol_kib: u64,
    rise_tol_kib: u64,
) -> BudgetCheck {
    let at = |t: f64| timeline.iter().rev().find(|p| p.t <= t);
    // When each run of each domain was first seen. Until a new run's
    // balloon driver answers, libvirt reports the balloon size last asked
    // for, then what the guest really has: a guest started at 384 MiB
    // and shrunk at once reads 192 MiB, then 384, then 192. Runs younger
    // than `YOUNG` s are left out of the rise check.
    const YOUNG: f64 = 20.0;
    let mut born: BTreeMap<(&str, u32), f64> = BTreeMap::new();
    for s in samples {
        for (n, d) in &s.doms {
            born.entry((n.as_str(), d.id)).or_insert(s.t);
        }
    }
    let mut out = BudgetCheck::default();
    for w in samples.windows(2) {
        let (prev, cur) = (&w[0], &w[1]);
        let (Some(pp), Some(pc)) = (at(prev.t), at(cur.t)) else {
            continue;
        };
        out.samples += 1;
        let sum = |s: &Sample, set: &dyn Fn(&str) -> bool| -> u64 {
            s.doms
                .iter()
                .filter(|(n, _)| set(n))
                .map(|(_, d)| d.actual_kib)
                .sum()
        };
        let total = sum(cur, &|n| pc.members.contains(n));
        if total <= pc.budget_kib + tol_kib {
            continue;
        }
        out.over += 1;
        out.worst_over_kib = out.worst_over_kib.max(total - pc.budget_kib);
        // (A member restarted between the samples is a new run: not in both.)
        let both = |n: &str| {
            pc.members.contains(n)
                && pp.members.contains(n)
                && matches!((prev.doms.get(n), cur.doms.get(n)),
                    (Some(a), Some(b)) if a.id == b.id
                        && born.get(&(n, b.id)).is_some_and(|&t0| cur.t - t0 >= YOUNG))
        };
        // A member that stopped or started between the two samples: the
        // others may have grown into its room before it came back (a
        // sample can take a second while libvirt starts a domain), so the
        // order of events is unknown. Judged from the next pair on.
        let runs = |s: &Sample, set: &std::collections::BTreeSet<String>| -> Vec<(String, u32)> {
            s.doms
                .iter()
                .filter(|(n, _)| set.contains(*n))
                .map(|(n, d)| (n.clone(), d.id))
                .collect()
        };
        if runs(prev, &pc.members) != runs(cur, &pc.members) {
            continue;
        }
        // Within `YOUNG` s of a member's start the pool is over for a
        // reason of its own, and a change the agent decided while that
        // member was down may land after it is back (a growth into the
        // room it had left): reported, not judged.
        let young = cur.doms.iter().any(|(n, d)| {
            pc.members.contains(n)
                && born
                    .get(&(n.as_str(), d.id))
                    .is_some_and(|&t0| t0 > samples[0].t && cur.t - t0 < YOUNG)
        });
        let (a, b) = (sum(prev, &both), sum(cur, &both));
        if b > a && !young {
            out.worst_rise_kib = out.worst_rise_kib.max(b - a);
        }
        if b > a + rise_tol_kib && young {
            out.young_rises += 1;
            out.worst_young_rise_kib = out.worst_young_rise_kib.max(b - a);
        } else if b > a + rise_tol_kib {
            let show = |s: &Sample| -> String {
                s.doms
                    .iter()
                    .filter(|(n, _)| pc.members.contains(*n))
                    .map(|(n, d)| format!("{n}#{} {} MiB", d.id, d.actual_kib / KIB_PER_MIB))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.violations.push(format!(
                "t={:.1}s: Σ actual {} MiB > budget {} MiB and rose by {} KiB ({:.1}s: {}; {:.1}s: {})",
                cur.t,
                total / KIB_PER_MIB,
                pc.budget_kib / KIB_PER_MIB,
                b - a,
                prev.t,
                show(prev),
                cur.t,
                show(cur)
            ));
        }
    }
    out
}
