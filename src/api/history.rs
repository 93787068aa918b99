//! `GET /v1/pools/{pool}/history`: the pool's last hour, one point per
//! cycle (see [`crate::agent::samples`]), as columns: the times, then per
//! managed resource its budget, allocated, actual and used, oldest first.

use super::controller::AppState;
use super::error::Error;
use crate::agent::samples::Series;
use crate::core::model::Resource;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /v1/pools/{pool}/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolHistory {
    pub pool: String,
    /// Seconds between points (the agent's interval at start, at least 5 s;
    /// closer cycles replace the last point).
    pub step_secs: u64,
    /// The most points kept (an hour).
    pub capacity: usize,
    /// When each point's cycle finished, Unix seconds, oldest first.
    pub time: Vec<u64>,
    /// Each point's cycle number.
    pub cycle: Vec<u64>,
    /// Per resource the pool managed in any point, one value per point
    /// (`null` where it did not manage it then).
    pub resources: BTreeMap<Resource, ResourceSeries>,
}

/// One resource of a pool over time, in the resource's unit (memory at
/// MiB resolution, disk bandwidth at KiB/s).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceSeries {
    pub budget: Vec<Option<u64>>,
    /// Σ targets of the admitted active members.
    pub allocated: Vec<Option<u64>>,
    /// Σ of what those members have (libvirt's values).
    pub actual: Vec<Option<u64>>,
    /// Σ of what their guests use, where at least one says (memory);
    /// absent when none ever did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used: Vec<Option<u64>>,
}

/// The answer from a pool's series.
pub fn view(pool: &str, s: &Series) -> PoolHistory {
    let mut resources = BTreeMap::new();
    for r in Resource::ALL {
        if s.samples.iter().all(|p| p.budget.get(r).is_none()) {
            continue;
        }
        let col = |f: &dyn Fn(&crate::agent::samples::Sample) -> Option<u64>| {
            s.samples.iter().map(f).collect::<Vec<_>>()
        };
        let mut used = col(&|p| *p.used.get(r));
        if used.iter().all(Option::is_none) {
            used.clear();
        }
        resources.insert(
            r,
            ResourceSeries {
                budget: col(&|p| *p.budget.get(r)),
                allocated: col(&|p| *p.allocated.get(r)),
                actual: col(&|p| *p.actual.get(r)),
                used,
            },
        );
    }
    PoolHistory {
        pool: pool.to_string(),
        step_secs: s.step_secs,
        capacity: s.capacity,
        time: s.samples.iter().map(|p| p.time).collect(),
        cycle: s.samples.iter().map(|p| p.cycle).collect(),
        resources,
    }
}

/// A pool's history: 404 for a pool that does not exist, no points for
/// one not sampled yet (created since the last cycle).
pub fn pool_history(s: &AppState, pool: &str) -> Result<PoolHistory, Error> {
    super::controller::parse_name("pool", pool)?;
    // 404 as `GET /v1/pools/{pool}` gives it.
    s.pool(pool)?;
    let samples = s
        .control()
        .samples()
        .ok_or_else(|| Error::Internal("this agent keeps no history".into()))?;
    let series = samples
        .series(pool)
        .unwrap_or_else(|| samples.empty_series());
    Ok(view(pool, &series))
}
