//! The recent past of every pool: per resource, its budget, what is
//! allocated (Σ targets of admitted active members), what the members
//! have (Σ actual) and what their guests use (Σ used, where they say),
//! one sample per cycle for the last hour.
//!
//! A fixed cost: each pool has a ring of [`Samples::capacity`] points of
//! [`POINT_BYTES`] bytes, allocated whole when the pool is first seen and
//! freed when it is gone (360 points, 31 KiB per pool at the default 10 s
//! interval). Values are kept as 32-bit numbers in a unit per resource —
//! vCPUs, MiB of memory, KiB/s of disk bandwidth, IOPS, millicores of CPU
//! time — and given back in the API's units (counts, bytes, bytes per
//! second, millicores).
//!
//! Fed by the reconciler's publishing step with every report it publishes
//! (a cycle that could not observe adds nothing: the gap shows); cycles
//! closer together than half a step (a change's cycle, a libvirt event)
//! replace the last point instead of adding one, so a burst of changes
//! does not push the hour out.

use crate::agent::report::Report;
use crate::core::model::{PerResource, Resource};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How far back the history goes.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// The shortest step between points: a faster interval is coalesced to it
/// (at most 720 points a pool).
pub const MIN_STEP: Duration = Duration::from_secs(5);
/// Bytes of one point (time, cycle, 4 values of 32 bits per resource).
pub const POINT_BYTES: usize = std::mem::size_of::<Point>();

/// A value not known (a resource the pool does not manage, or no guest
/// reporting what it uses).
const NONE: u32 = u32::MAX;

/// What one point holds per resource, in this order.
const BUDGET: usize = 0;
const ALLOCATED: usize = 1;
const ACTUAL: usize = 2;
const USED: usize = 3;

/// The unit a resource is kept in, in the API's units.
fn unit(r: Resource) -> u64 {
    match r {
        Resource::Vcpus | Resource::DiskIopsSec => 1,
        Resource::Memory => 1 << 20,
        Resource::DiskBytesSec => 1 << 10,
        // Millicores, as the API gives them.
        Resource::Cpu => 1,
    }
}

/// Rounded to the resource's unit, saturating below [`NONE`].
fn pack(r: Resource, v: Option<u64>) -> u32 {
    let Some(v) = v else { return NONE };
    let u = unit(r);
    let n = v.saturating_add(u / 2) / u;
    u32::try_from(n).unwrap_or(NONE - 1).min(NONE - 1)
}

fn unpack(r: Resource, v: u32) -> Option<u64> {
    (v != NONE).then(|| u64::from(v) * unit(r))
}

/// One sample of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    /// Unix seconds (when the cycle finished).
    time: u32,
    /// The cycle's number (low 32 bits).
    cycle: u32,
    /// `[resource][BUDGET | ALLOCATED | ACTUAL | USED]`.
    v: [[u32; 4]; Resource::COUNT],
}

/// One sample of one pool, in the API's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub time: u64,
    pub cycle: u64,
    /// `None` for resources the pool did not manage then.
    pub budget: PerResource<Option<u64>>,
    pub allocated: PerResource<Option<u64>>,
    pub actual: PerResource<Option<u64>>,
    /// Where at least one member's guest said (memory).
    pub used: PerResource<Option<u64>>,
}

impl Point {
    fn sample(&self) -> Sample {
        let get = |what: usize| PerResource::from_fn(|r| unpack(r, self.v[r.index()][what]));
        Sample {
            time: u64::from(self.time),
            cycle: u64::from(self.cycle),
            budget: get(BUDGET),
            allocated: get(ALLOCATED),
            actual: get(ACTUAL),
            used: get(USED),
        }
    }
}

/// One pool's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// Seconds between points.
    pub step_secs: u64,
    /// The most points kept.
    pub capacity: usize,
    /// Oldest first.
    pub samples: Vec<Sample>,
}

struct Rings {
    step_secs: u32,
    capacity: usize,
    pools: BTreeMap<String, VecDeque<Point>>,
}

/// The history of every pool; cheap to clone (shared).
#[derive(Clone)]
pub struct Samples {
    rings: Arc<Mutex<Rings>>,
}

impl Default for Samples {
    /// At the default interval (10 s).
    fn default() -> Samples {
        Samples::new(Duration::from_secs(10))
    }
}

impl Samples {
    /// Rings of one hour at `interval` (at least [`MIN_STEP`]).
    pub fn new(interval: Duration) -> Samples {
        let step = interval.max(MIN_STEP).as_secs().max(1);
        let capacity = WINDOW.as_secs().div_ceil(step);
        Samples {
            rings: Arc::new(Mutex::new(Rings {
                step_secs: u32::try_from(step).unwrap_or(u32::MAX),
                capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
                pools: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Rings> {
        match self.rings.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The most points a pool keeps.
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    /// Adds a published report's pools (nothing for a cycle that did not
    /// reach libvirt or planned nothing). Pools no longer planned are
    /// forgotten.
    pub fn record(&self, report: &Report) {
        let Some(plan) = report.plan.as_ref().filter(|_| report.libvirt.connected) else {
            return;
        };
        let time = report
            .last_cycle
            .as_ref()
            .map_or_else(now_secs, |c| c.finished_at);
        let time = u32::try_from(time).unwrap_or(u32::MAX);
        let cycle = report.cycle as u32;
        let mut g = self.lock();
        let (step, capacity) = (g.step_secs, g.capacity);
        g.pools
            .retain(|name, _| plan.pools.iter().any(|p| p.name == *name));
        for p in &plan.pools {
            let mut v = [[NONE; 4]; Resource::COUNT];
            for r in Resource::ALL {
                let Some(budget) = *p.budget.get(r) else {
                    continue;
                };
                let (mut actual, mut used, mut any_used) = (0u64, 0u64, false);
                for m in p.members.iter().filter(|m| m.admitted) {
                    if let Some(a) = m.alloc.get(r) {
                        actual = actual.saturating_add(a.actual);
                        if let Some(u) = a.used {
                            used = used.saturating_add(u);
                            any_used = true;
                        }
                    }
                }
                let row = &mut v[r.index()];
                row[BUDGET] = pack(r, Some(budget));
                row[ALLOCATED] = pack(r, Some(*p.allocated.get(r)));
                row[ACTUAL] = pack(r, Some(actual));
                row[USED] = pack(r, any_used.then_some(used));
            }
            let point = Point { time, cycle, v };
            let ring = g
                .pools
                .entry(p.name.clone())
                .or_insert_with(|| VecDeque::with_capacity(capacity));
            match ring.back_mut() {
                // Closer than half a step to the last point: it replaces it.
                Some(last) if time.saturating_sub(last.time) < step.div_ceil(2) => *last = point,
                _ => {
                    if ring.len() >= capacity {
                        ring.pop_front();
                    }
                    ring.push_back(point);
                }
            }
        }
    }

    /// One pool's history (`None`: no point recorded for it).
    pub fn series(&self, pool: &str) -> Option<Series> {
        let g = self.lock();
        let ring = g.pools.get(pool)?;
        Some(Series {
            step_secs: u64::from(g.step_secs),
            capacity: g.capacity,
            samples: ring.iter().map(Point::sample).collect(),
        })
    }

    /// What an empty series of this history looks like (a pool planned
    /// but not sampled yet).
    pub fn empty_series(&self) -> Series {
        let g = self.lock();
        Series {
            step_secs: u64::from(g.step_secs),
            capacity: g.capacity,
            samples: Vec::new(),
        }
    }

    /// Bytes the rings hold allocated (their points; the map around them
    /// adds a few dozen bytes and the pool's name per pool).
    pub fn allocated_bytes(&self) -> usize {
        let g = self.lock();
        g.pools.values().map(|r| r.capacity() * POINT_BYTES).sum()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::agent::report::{CycleInfo, LibvirtStatus};
    use crate::core::config::Mode;
    use crate::core::planner::{Plan, PoolPlan};

    fn pool(name: &str, budget_mem: u64, allocated_mem: u64) -> PoolPlan {
        PoolPlan {
            name: name.into(),
            paused: false,
            runtime: false,
            budget: PerResource {
                vcpus: Some(8),
                memory: Some(budget_mem),
                ..Default::default()
            },
            allocated: PerResource {
                vcpus: 6,
                memory: allocated_mem,
                ..Default::default()
            },
            members: Vec::new(),
        }
    }

    fn report(cycle: u64, time: u64, pools: Vec<PoolPlan>, connected: bool) -> Report {
        Report {
            cycle,
            mode: Mode::Enforce,
            paused: false,
            libvirt: LibvirtStatus {
                uri: "test:///default".into(),
                connected,
                error: None,
            },
            host: None,
            capacity: None,
            last_cycle: Some(CycleInfo {
                finished_at: time,
                duration_ms: 1.0,
                ..Default::default()
            }),
            plan: Some(Plan {
                allocatable: Default::default(),
                pressure: false,
                pools,
                unmanaged: Vec::new(),
                setup: Vec::new(),
                actions: Vec::new(),
                releases: Vec::new(),
                reclaim: Default::default(),
            }),
            domains: Vec::new(),
            results: Vec::new(),
            config_error: None,
            basis: Default::default(),
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn an_hour_of_points_then_the_oldest_go() {
        let s = Samples::new(Duration::from_secs(10));
        assert_eq!(s.capacity(), 360);
        for i in 0..400u64 {
            s.record(&report(
                i + 1,
                1_000 + i * 10,
                vec![pool("web", 20 * GIB, GIB * i / 100)],
                true,
            ));
        }
        let h = s.series("web").unwrap();
        assert_eq!((h.step_secs, h.capacity, h.samples.len()), (10, 360, 360));
        assert_eq!(h.samples[0].cycle, 41, "the 40 oldest are gone");
        let last = h.samples.last().unwrap();
        assert_eq!(last.time, 1_000 + 399 * 10);
        assert_eq!(last.budget.memory, Some(20 * GIB));
        assert_eq!(last.budget.vcpus, Some(8));
        assert_eq!(last.allocated.vcpus, Some(6));
        assert_eq!(last.budget.disk_iops_sec, None, "not managed");
        assert_eq!(last.used.memory, None, "no guest said");
        // Memory at MiB resolution: 3.99 GiB (4085.76 MiB) rounds to the
        // nearest MiB.
        assert_eq!(last.allocated.memory, Some(4086 << 20));
        // The fixed cost: the whole ring, whatever the number of points.
        assert_eq!(s.allocated_bytes(), 360 * POINT_BYTES);
        assert_eq!(POINT_BYTES, 88);
    }

    #[test]
    fn close_cycles_replace_the_last_point_and_lost_cycles_add_none() {
        let s = Samples::new(Duration::from_secs(10));
        s.record(&report(1, 1_000, vec![pool("web", 8 * GIB, GIB)], true));
        // A change's cycle 2 s later replaces it; a lost cycle adds nothing.
        s.record(&report(2, 1_002, vec![pool("web", 8 * GIB, 2 * GIB)], true));
        s.record(&report(
            3,
            1_010,
            vec![pool("web", 8 * GIB, 5 * GIB)],
            false,
        ));
        s.record(&report(4, 1_011, vec![pool("web", 8 * GIB, 3 * GIB)], true));
        let h = s.series("web").unwrap();
        let got: Vec<(u64, Option<u64>)> = h
            .samples
            .iter()
            .map(|p| (p.cycle, p.allocated.memory))
            .collect();
        assert_eq!(got, vec![(2, Some(2 * GIB)), (4, Some(3 * GIB))]);
    }

    #[test]
    fn a_pool_no_longer_planned_is_forgotten_and_a_fast_interval_is_coalesced() {
        let s = Samples::new(Duration::from_millis(500));
        assert_eq!(s.capacity(), 720, "steps of at least 5 s");
        s.record(&report(
            1,
            1_000,
            vec![pool("a", GIB, 0), pool("b", GIB, 0)],
            true,
        ));
        s.record(&report(2, 1_005, vec![pool("b", GIB, 0)], true));
        assert!(s.series("a").is_none());
        assert_eq!(s.series("b").unwrap().samples.len(), 2);
        assert_eq!(s.allocated_bytes(), 720 * POINT_BYTES);
    }

    #[test]
    fn packing_rounds_to_the_unit_and_saturates() {
        assert_eq!(pack(Resource::Memory, Some((1 << 20) + 1)), 1);
        assert_eq!(
            pack(Resource::Memory, Some(3 << 19)),
            2,
            "1.5 MiB rounds up"
        );
        assert_eq!(pack(Resource::Vcpus, Some(u64::MAX)), NONE - 1);
        assert_eq!(
            unpack(
                Resource::DiskBytesSec,
                pack(Resource::DiskBytesSec, Some(100 << 20))
            ),
            Some(100 << 20)
        );
        assert_eq!(unpack(Resource::Memory, pack(Resource::Memory, None)), None);
    }
}
