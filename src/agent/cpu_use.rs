//! How much CPU time each domain uses: the change of libvirt's cumulative
//! CPU time (`cpu.time`, nanoseconds) between two observations of the same
//! run, over the wall time between them, in millicores
//! ([`DomainObs::cpu_used`]). The planner's `demand` policy for CPU time
//! reads it.
//!
//! A new value needs a fresh reading at least [`MIN_WINDOW`] after the
//! last one; until then (a scoped cycle right after a full one), and for
//! the domains a scoped cycle did not read again, the last value stands.
//! A domain that restarted (another libvirt ID, or its CPU time went back)
//! starts over: no value until its second reading.

use crate::core::cpu::used_millicores;
use crate::core::model::DomainObs;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shortest wall time a use is averaged over.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Sample {
    run: Option<u32>,
    /// Cumulative CPU time, ns.
    time: u64,
    at: Instant,
    /// Millicores over the window that ended at `at`.
    used: Option<u64>,
}

/// The last CPU-time reading of each active domain (by UUID).
#[derive(Debug, Default)]
pub struct CpuUse {
    samples: HashMap<Arc<str>, Sample>,
}

impl CpuUse {
    /// Fills `cpu_used` of every active domain, read at `now` if it is in
    /// `fresh` (`None`: all were read now), and forgets the domains that
    /// are gone or stopped.
    pub fn fill(&mut self, domains: &mut [DomainObs], fresh: Option<&[String]>, now: Instant) {
        let tracked: HashSet<&str> = domains
            .iter()
            .filter(|d| d.state.is_active() && d.cpu_time.is_some())
            .map(|d| &*d.uuid)
            .collect();
        self.samples.retain(|u, _| tracked.contains(&**u));
        for d in domains.iter_mut() {
            let Some(time) = d.cpu_time.filter(|_| d.state.is_active()) else {
                continue;
            };
            let sample = Sample {
                run: d.id,
                time,
                at: now,
                used: None,
            };
            let read_now = fresh.is_none_or(|f| f.iter().any(|u| **u == *d.uuid));
            let s = self.samples.entry(d.uuid.clone()).or_insert(sample);
            if !read_now {
                // Its reading is the last one, kept from an earlier cycle.
            } else if s.run != d.id || time < s.time {
                *s = sample;
            } else if now.saturating_duration_since(s.at) >= MIN_WINDOW {
                let elapsed = now.saturating_duration_since(s.at).as_nanos();
                let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
                s.used = used_millicores(time - s.time, elapsed);
                s.time = time;
                s.at = now;
            }
            d.cpu_used = s.used;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::planner::testing;

    fn dom(time: u64, id: u32) -> DomainObs {
        let mut d = testing::domain("a", None);
        d.cpu_time = Some(time);
        d.id = Some(id);
        d
    }

    #[test]
    fn use_is_the_change_over_the_wall_time() {
        let mut c = CpuUse::default();
        let t0 = Instant::now();
        let mut d = [dom(1_000_000_000, 1)];
        c.fill(&mut d, None, t0);
        assert_eq!(d[0].cpu_used, None, "one reading is no rate");
        // 1.5 s of CPU time in 2 s: 0.75 core.
        let mut d = [dom(2_500_000_000, 1)];
        c.fill(&mut d, None, t0 + Duration::from_secs(2));
        assert_eq!(d[0].cpu_used, Some(750));
        // Too soon: the last value stands.
        let mut d = [dom(2_600_000_000, 1)];
        c.fill(&mut d, None, t0 + Duration::from_millis(2500));
        assert_eq!(d[0].cpu_used, Some(750));
        // Not read again by a scoped cycle: the last value stands.
        let scope = ["other".to_string()];
        let mut d = [dom(2_500_000_000, 1)];
        c.fill(&mut d, Some(&scope), t0 + Duration::from_secs(3));
        assert_eq!(d[0].cpu_used, Some(750));
        // 0.5 s more over the 2 s since the last reading used: 0.25 core.
        let mut d = [dom(3_000_000_000, 1)];
        let scope = [d[0].uuid.to_string()];
        c.fill(&mut d, Some(&scope), t0 + Duration::from_secs(4));
        assert_eq!(d[0].cpu_used, Some(250));
        // Idle: no CPU time at all in 2 s.
        let mut d = [dom(3_000_000_000, 1)];
        c.fill(&mut d, None, t0 + Duration::from_secs(6));
        assert_eq!(d[0].cpu_used, Some(0));
        // Restarted: starts over.
        let mut d = [dom(10, 2)];
        c.fill(&mut d, None, t0 + Duration::from_secs(7));
        assert_eq!(d[0].cpu_used, None);
        // Stopped: forgotten.
        let mut off = dom(10, 2);
        off.state = crate::core::model::DomainState::Shutoff;
        c.fill(&mut [off], None, t0 + Duration::from_secs(8));
        assert!(c.samples.is_empty());
    }
}
