//! Giving back what the agent changed on a domain that left management
//! (removed from its pool, its pool deleted, the config changed): the
//! values it had before the agent first changed each of them, noted in
//! the history. `agent.on_release = "keep"` leaves the values as they
//! are instead. A paused domain is given back once it runs; a shut-off
//! one has nothing live to give back (only what was also written to its
//! persistent config waits for its next run).

use super::history::{Originals, Released};
use super::plan::Release;
use super::weights::{BLKIO_WEIGHT_RANGE, CPU_WEIGHT_RANGE};
use crate::core::config::OnRelease;
use crate::core::model::{Action, CpuQuota, DomainObs, DomainState, IoTune, Reason};

const MIB: u64 = 1 << 20;

/// What releasing `d` needs now: its state, and the actions (into `out`)
/// that set back what differs from `o`.
pub(super) fn release(
    d: &DomainObs,
    o: &Originals,
    how: OnRelease,
    emit: bool,
    out: &mut Vec<Action>,
) -> Release {
    if how == OnRelease::Keep {
        return Release::Done(Released::Kept);
    }
    match d.state {
        DomainState::Running => {}
        DomainState::Paused => return Release::Waiting,
        // Live values went with the run; what was also written to the
        // persistent config is given back when it runs again.
        _ if o.persisted => return Release::Waiting,
        _ => return Release::Done(Released::Restored),
    }
    let persist = o.persisted;
    let (uuid, domain) = (&d.uuid, &d.name);
    let before = out.len();
    let mut push = |a: Action| {
        if emit {
            out.push(a);
        }
    };
    let mut differs = false;
    if let Some(to) = o.vcpus.map(|v| v.clamp(1, d.vcpus_max.max(1))) {
        if to != d.vcpus {
            differs = true;
            push(Action::SetVcpus {
                uuid: uuid.clone(),
                domain: domain.clone(),
                from: d.vcpus,
                to,
                reason: Reason::Released,
                persist,
            });
        }
    }
    // Balloon targets are set in whole MiB (what libvirt took from us).
    if let Some(to) = o
        .memory
        .map(|m| (m / MIB * MIB).clamp(MIB, d.memory_max.max(MIB)))
    {
        if to.abs_diff(d.memory) >= MIB {
            differs = true;
            push(Action::SetMemory {
                uuid: uuid.clone(),
                domain: domain.clone(),
                from: d.memory,
                to,
                reason: Reason::Released,
                persist,
            });
        }
    }
    for disk in d.disks.iter().filter(|x| x.is_tunable()) {
        let Some(to) = o.iotune.get(&disk.target) else {
            continue;
        };
        let now = disk.iotune.unwrap_or_default();
        if same_limits(&now, to) {
            continue;
        }
        differs = true;
        push(Action::SetBlockIoTune {
            uuid: uuid.clone(),
            domain: domain.clone(),
            disk: disk.target.clone(),
            from: now,
            to: *to,
            persist,
        });
    }
    // A weight outside what the agent may set (a driver's own default
    // such as 0) cannot be set back: left as it is.
    let cpu_shares = o
        .cpu_shares
        .filter(|v| (CPU_WEIGHT_RANGE.0..=CPU_WEIGHT_RANGE.1).contains(v));
    let blkio_weight = o
        .blkio_weight
        .filter(|v| (BLKIO_WEIGHT_RANGE.0..=BLKIO_WEIGHT_RANGE.1).contains(v));
    if let (Some(to), Some(now)) = (cpu_shares, d.cpu_shares) {
        if to != now {
            differs = true;
            push(Action::SetCpuShares {
                uuid: uuid.clone(),
                domain: domain.clone(),
                from: Some(now),
                to,
                persist,
            });
        }
    }
    if let (Some(to), Some(now)) = (blkio_weight, d.blkio_weight) {
        if to != now {
            differs = true;
            push(Action::SetBlkioWeight {
                uuid: uuid.clone(),
                domain: domain.clone(),
                from: Some(now),
                to,
                persist,
            });
        }
    }
    // The CPU-time limit: the quota and period it had (no limit as -1,
    // which is how libvirt lifts one).
    if let (Some(to), Some(now)) = (o.cpu_quota, d.cpu_quota) {
        let to = if to.is_limited() {
            to
        } else {
            CpuQuota::unlimited(to.scope)
        };
        if !same_quota(&now, &to) {
            differs = true;
            push(Action::SetCpuQuota {
                uuid: uuid.clone(),
                domain: domain.clone(),
                from: d.cpu_limit(),
                to: to.millicores(d.vcpus),
                was: Some(now),
                quota: to,
                reason: Reason::Released,
                persist,
            });
        }
    }
    debug_assert!(!emit || differs == (out.len() > before));
    if differs {
        Release::Giving
    } else {
        Release::Done(Released::Restored)
    }
}

/// Whether two CPU quotas limit the same: both none, or the same quota
/// and period.
fn same_quota(a: &CpuQuota, b: &CpuQuota) -> bool {
    match (a.is_limited(), b.is_limited()) {
        (false, false) => true,
        (true, true) => a.quota == b.quota && a.period == b.period,
        _ => false,
    }
}

/// Whether two limits are the same as libvirt keeps them (the rates; a
/// max equal to its rate or unset reads back either way).
fn same_limits(a: &IoTune, b: &IoTune) -> bool {
    a.total_bytes_sec == b.total_bytes_sec && a.total_iops_sec == b.total_iops_sec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::planner::testing;

    #[test]
    fn gives_back_what_differs_and_nothing_else() {
        let mut d = testing::domain("d", None);
        d.vcpus = 2;
        d.memory = 2 << 30;
        let o = Originals {
            vcpus: Some(4),
            memory: Some(2 << 30),
            ..Originals::default()
        };
        let mut out = Vec::new();
        assert_eq!(
            release(&d, &o, OnRelease::Restore, true, &mut out),
            Release::Giving
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(matches!(out[0], Action::SetVcpus { from: 2, to: 4, .. }));
        d.vcpus = 4;
        out.clear();
        assert_eq!(
            release(&d, &o, OnRelease::Restore, true, &mut out),
            Release::Done(Released::Restored)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn keep_paused_and_shut_off() {
        let mut d = testing::domain("d", None);
        let o = Originals {
            vcpus: Some(4),
            ..Originals::default()
        };
        let mut out = Vec::new();
        assert_eq!(
            release(&d, &o, OnRelease::Keep, true, &mut out),
            Release::Done(Released::Kept)
        );
        d.state = DomainState::Paused;
        assert_eq!(
            release(&d, &o, OnRelease::Restore, true, &mut out),
            Release::Waiting
        );
        d.state = DomainState::Shutoff;
        assert_eq!(
            release(&d, &o, OnRelease::Restore, true, &mut out),
            Release::Done(Released::Restored)
        );
        let persisted = Originals {
            persisted: true,
            ..o
        };
        assert_eq!(
            release(&d, &persisted, OnRelease::Restore, true, &mut out),
            Release::Waiting
        );
        assert!(out.is_empty());
    }
}
