//! Writing one action to a live domain: the libvirt call for each kind of
//! action, with `persist` also on the persistent config.

use virt::domain::Domain;
use virt::error::Error as VirtError;
use virt::sys;

use super::calls::{Call, CallCounter};
use super::errors::{is_exclusive_flags, Failure, Res};
use super::ffi;
use super::hypervisor::HvError;
use super::read::KIB;
use crate::core::model::{Action, IoTune};

/// Lowest and highest blkio weight accepted (cgroup v1 and v2 safe).
pub const BLKIO_WEIGHT_RANGE: std::ops::RangeInclusive<u64> = 100..=1000;
/// Lowest and highest `cpu_shares` accepted (cgroup v2 `cpu.weight` tops
/// out at 10000; libvirt passes larger values through and the kernel
/// rejects them).
pub const CPU_SHARES_RANGE: std::ops::RangeInclusive<u64> = 1..=10_000;
/// CFS periods libvirt accepts, µs.
pub const CPU_PERIOD_RANGE: std::ops::RangeInclusive<u64> = 1000..=1_000_000;
/// CFS quotas libvirt accepts, µs (and -1: no limit).
pub const CPU_QUOTA_RANGE: std::ops::RangeInclusive<i64> =
    crate::core::cpu::MIN_QUOTA_US as i64..=crate::core::cpu::MAX_QUOTA_US;

// Memory and vCPU setters take their own flag enums; `with_persist` passes
// the generic AFFECT_* values, which libvirt defines to be the same bits.
const _: () = assert!(
    sys::VIR_DOMAIN_MEM_LIVE == sys::VIR_DOMAIN_AFFECT_LIVE
        && sys::VIR_DOMAIN_MEM_CONFIG == sys::VIR_DOMAIN_AFFECT_CONFIG
        && sys::VIR_DOMAIN_VCPU_LIVE == sys::VIR_DOMAIN_AFFECT_LIVE
        && sys::VIR_DOMAIN_VCPU_CONFIG == sys::VIR_DOMAIN_AFFECT_CONFIG
);

/// Makes an I/O limit acceptable to libvirt/QEMU: each `*_max` must be at
/// least its rate (libvirt rejects rate > max, even when max is 0), and a
/// max without a rate is rejected by QEMU, so it is cleared.
pub fn normalize_iotune(t: &IoTune) -> IoTune {
    let fix = |rate: u64, max: u64| if rate == 0 { 0 } else { max.max(rate) };
    IoTune {
        total_bytes_sec: t.total_bytes_sec,
        total_bytes_sec_max: fix(t.total_bytes_sec, t.total_bytes_sec_max),
        total_iops_sec: t.total_iops_sec,
        total_iops_sec_max: fix(t.total_iops_sec, t.total_iops_sec_max),
    }
}

/// Runs a setter on the live domain and, with `persist`, on its persistent
/// config too. Tries both in one call (atomic on QEMU); drivers that take
/// one target per call (the test driver) get LIVE then CONFIG.
pub(super) fn with_persist(
    persist: bool,
    mut call: impl FnMut(u32) -> Result<(), VirtError>,
) -> Result<(), VirtError> {
    let live = sys::VIR_DOMAIN_AFFECT_LIVE;
    if !persist {
        return call(live);
    }
    match call(live | sys::VIR_DOMAIN_AFFECT_CONFIG) {
        Err(e) if is_exclusive_flags(&e) => {
            call(live)?;
            call(sys::VIR_DOMAIN_AFFECT_CONFIG)
        }
        other => other,
    }
}

/// Refuses, before any call, an action whose values libvirt cannot take
/// (out of the cgroup-safe ranges, or not representable).
pub(super) fn validate(action: &Action) -> Result<(), HvError> {
    let ctx = |what: String| format!("domain {}: {what}", action.domain());
    match action {
        Action::SetVcpus { to, .. } if u32::try_from(*to).is_err() => {
            Err(HvError::InvalidArg(ctx(format!("{to} vCPUs"))))
        }
        Action::SetCpuShares { to, .. } if !CPU_SHARES_RANGE.contains(to) => {
            Err(HvError::InvalidArg(ctx(format!(
                "cpu_shares {to} outside {}..={}",
                CPU_SHARES_RANGE.start(),
                CPU_SHARES_RANGE.end()
            ))))
        }
        Action::SetBlkioWeight { to, .. } if !BLKIO_WEIGHT_RANGE.contains(to) => {
            Err(HvError::InvalidArg(ctx(format!(
                "blkio weight {to} outside {}..={}",
                BLKIO_WEIGHT_RANGE.start(),
                BLKIO_WEIGHT_RANGE.end()
            ))))
        }
        Action::SetStatsPeriod { secs, .. } if i32::try_from(*secs).is_err() => {
            Err(HvError::InvalidArg(ctx(format!("stats period {secs} s"))))
        }
        Action::SetCpuQuota { quota, .. }
            if !CPU_PERIOD_RANGE.contains(&quota.period)
                || !(quota.quota == -1 || CPU_QUOTA_RANGE.contains(&quota.quota)) =>
        {
            Err(HvError::InvalidArg(ctx(format!(
                "CPU quota {} µs per {} µs (period {}..={} µs, quota -1 or {}..={} µs)",
                quota.quota,
                quota.period,
                CPU_PERIOD_RANGE.start(),
                CPU_PERIOD_RANGE.end(),
                CPU_QUOTA_RANGE.start(),
                CPU_QUOTA_RANGE.end()
            ))))
        }
        _ => Ok(()),
    }
}

/// Makes the libvirt call of a [`validate`]d action on its domain.
pub(super) fn write(d: &Domain, action: &Action, calls: &CallCounter) -> Res<()> {
    let ctx = |what: String| format!("domain {}: {what}", action.domain());
    let fail = |what: String| move |e: VirtError| Failure::new(e, ctx(what));
    match action {
        Action::SetVcpus { to, persist, .. } => {
            let n = u32::try_from(*to).unwrap_or(u32::MAX);
            with_persist(*persist, |flags| {
                calls.add(Call::SetVcpus);
                d.set_vcpus_flags(n, flags)
            })
            .map_err(fail(format!("set vCPUs to {n}")))
        }
        Action::SetMemory { to, persist, .. } => {
            let kib = to / KIB;
            // Never Domain::set_memory: it discards the error.
            // (VIR_DOMAIN_MEM_LIVE/CONFIG equal AFFECT_LIVE/CONFIG.)
            with_persist(*persist, |flags| {
                calls.add(Call::SetMemory);
                d.set_memory_flags(kib, flags)
            })
            .map_err(fail(format!("set memory to {kib} KiB")))
        }
        Action::SetBlockIoTune {
            disk, to, persist, ..
        } => {
            let tune = normalize_iotune(to);
            with_persist(*persist, |flags| {
                calls.add(Call::SetIoTune);
                ffi::set_block_iotune(d, disk, &tune, flags)
            })
            .map_err(fail(format!("set I/O limits of {disk}")))
        }
        Action::SetCpuShares { to, persist, .. } => with_persist(*persist, |flags| {
            calls.add(Call::SetCpuShares);
            ffi::set_cpu_shares(d, *to, flags)
        })
        .map_err(fail(format!("set cpu_shares to {to}"))),
        Action::SetBlkioWeight { to, persist, .. } => {
            let weight = u32::try_from(*to).unwrap_or(u32::MAX);
            with_persist(*persist, |flags| {
                calls.add(Call::SetBlkioWeight);
                ffi::set_blkio_weight(d, weight, flags)
            })
            .map_err(fail(format!("set blkio weight to {weight}")))
        }
        Action::SetCpuQuota { quota, persist, .. } => with_persist(*persist, |flags| {
            calls.add(Call::SetCpuQuota);
            ffi::set_cpu_quota(d, quota, flags)
        })
        .map_err(fail(format!(
            "set CPU quota to {} µs per {} µs ({:?})",
            quota.quota, quota.period, quota.scope
        ))),
        Action::SetStatsPeriod { secs, .. } => {
            let period = i32::try_from(*secs).unwrap_or(i32::MAX);
            calls.add(Call::SetStatsPeriod);
            d.set_memory_stats_period(period, sys::VIR_DOMAIN_MEM_LIVE)
                .map_err(fail(format!("set memory stats period to {secs} s")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iotune_max_never_below_rate() {
        let t = normalize_iotune(&IoTune {
            total_bytes_sec: 100,
            total_bytes_sec_max: 0,
            total_iops_sec: 50,
            total_iops_sec_max: 80,
        });
        assert_eq!(t.total_bytes_sec_max, 100);
        assert_eq!(t.total_iops_sec_max, 80);
        let cleared = normalize_iotune(&IoTune {
            total_bytes_sec: 0,
            total_bytes_sec_max: 500,
            total_iops_sec: 0,
            total_iops_sec_max: 0,
        });
        assert_eq!(cleared, IoTune::default());
    }

    #[test]
    fn persist_adds_config_and_splits_when_driver_wants_one_target() {
        let mut seen = Vec::new();
        with_persist(false, |f| {
            seen.push(f);
            Ok(())
        })
        .expect("ok");
        assert_eq!(seen, vec![sys::VIR_DOMAIN_AFFECT_LIVE]);
        seen.clear();
        with_persist(true, |f| {
            seen.push(f);
            Ok(())
        })
        .expect("ok");
        assert_eq!(
            seen,
            vec![sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG]
        );
        // Any other error is returned as is, without a retry.
        seen.clear();
        let bad = || VirtError::from(std::ffi::CString::new("\0").expect_err("NUL"));
        assert!(with_persist(true, |f| {
            seen.push(f);
            Err(bad())
        })
        .is_err());
        assert_eq!(seen.len(), 1);
    }
}
