//! Reading one domain: state, vCPUs, memory, guest statistics and CPU time
//! every time (from bulk stats where the driver fills them), and the slow
//! facts — XML, maximum vCPUs, I/O limits, weights, CPU quota — unless the read cache holds
//! them (then only the parts the agent's own writes made stale).

use std::sync::Arc;

use virt::domain::{Domain, DomainState as VirtState};
use virt::error::Error as VirtError;
use virt::sys;

use super::cache::{Refresh, Slow};
use super::calls::{Call, CallCounter};
use super::errors::{is_fatal_for_read, is_unsupported, Failure, Res};
use super::{ffi, xml};
use crate::core::model::{BalloonStats, DiskObs, DomainObs, DomainState, IoTune};

pub(super) const KIB: u64 = 1024;

/// What the connected driver turned out not to offer; reset on reconnect.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ReadCaps {
    /// The scheduler parameters (`cpu_shares`, CPU quota) cannot be read:
    /// skip the two round trips per domain.
    pub(super) no_cpu_shares: bool,
    /// Bulk stats filled no group beyond `state.*` (the test driver): the
    /// per-domain reads give everything, so the bulk call is skipped.
    pub(super) bulk_state_only: bool,
}

fn map_state(s: virt::domain::DomainStateEnum) -> DomainState {
    if s.is(VirtState::Running) {
        DomainState::Running
    } else if s.is(VirtState::Paused) {
        DomainState::Paused
    } else if s.is(VirtState::Shutoff) {
        DomainState::Shutoff
    } else {
        DomainState::Other
    }
}

/// Turns `memory_stats` tags into [`BalloonStats`] (bytes). `None` when the
/// guest reports neither `unused` nor `available`.
pub fn balloon_from_stats(stats: &[(u32, u64)], fallback_actual_kib: u64) -> Option<BalloonStats> {
    let get = |tag: u32| {
        stats
            .iter()
            .rev()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| v.saturating_mul(KIB))
    };
    let unused = get(sys::VIR_DOMAIN_MEMORY_STAT_UNUSED);
    let available = get(sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE);
    if unused.is_none() && available.is_none() {
        return None;
    }
    Some(BalloonStats {
        actual: get(sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON)
            .unwrap_or(fallback_actual_kib.saturating_mul(KIB)),
        unused,
        available,
        usable: get(sys::VIR_DOMAIN_MEMORY_STAT_USABLE),
    })
}

/// Bulk stats groups asked for in one call per observation. Where a driver
/// leaves a group empty (the test driver fills only `state.*`), the values
/// are read per domain instead.
pub(super) const BULK_GROUPS: u32 = sys::VIR_DOMAIN_STATS_STATE
    | sys::VIR_DOMAIN_STATS_VCPU
    | sys::VIR_DOMAIN_STATS_BALLOON
    | sys::VIR_DOMAIN_STATS_CPU_TOTAL;

/// The bulk stats parameters the observation reads (the others are not
/// copied out of libvirt).
pub(super) const BULK_FIELDS: [&str; 10] = [
    "state.state",
    "cpu.time",
    "vcpu.current",
    "vcpu.maximum",
    "balloon.current",
    "balloon.maximum",
    "balloon.unused",
    "balloon.available",
    "balloon.usable",
    "balloon.rss",
];

/// Live (current, maximum) vCPUs from a bulk record, when the `vcpu` group
/// is filled.
pub fn bulk_vcpus(rec: &ffi::StatsRecord) -> Option<(u64, u64)> {
    Some((rec.number("vcpu.current")?, rec.number("vcpu.maximum")?))
}

/// Balloon stats from a bulk record: `None` when the `balloon` group is
/// missing or was read without asking QEMU (read per domain then),
/// `Some(None)` when QEMU was asked and the guest reports neither `unused`
/// nor `available`.
///
/// With `NOWAIT`, libvirt answers for a domain busy with another job
/// (a balloon change, another client's query) from its own records:
/// `balloon.current` and `balloon.maximum` only. That is not a guest
/// without statistics — taking it for one made a `demand` guest jump to
/// its full share — so it is read again per domain. When QEMU was asked,
/// libvirt always adds the process's `rss`.
pub fn bulk_balloon(rec: &ffi::StatsRecord) -> Option<Option<BalloonStats>> {
    let current = rec.number("balloon.current")?;
    let asked = ["balloon.rss", "balloon.unused", "balloon.available"]
        .iter()
        .any(|k| rec.number(k).is_some());
    if !asked {
        return None;
    }
    let mut pairs = vec![(sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON, current)];
    for (key, tag) in [
        ("balloon.unused", sys::VIR_DOMAIN_MEMORY_STAT_UNUSED),
        ("balloon.available", sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE),
        ("balloon.usable", sys::VIR_DOMAIN_MEMORY_STAT_USABLE),
    ] {
        if let Some(v) = rec.number(key) {
            pairs.push((tag, v));
        }
    }
    Some(balloon_from_stats(&pairs, current))
}

/// State, vCPUs and memory (KiB) from a bulk record, when its `state`,
/// `vcpu` and `balloon` groups are all filled (real QEMU): no `info` call.
pub fn bulk_info(rec: &ffi::StatsRecord) -> Option<(DomainState, u64, u64, u64, u64)> {
    let state = rec.number("state.state")?;
    let state = match u32::try_from(state).ok()? {
        sys::VIR_DOMAIN_RUNNING => DomainState::Running,
        sys::VIR_DOMAIN_PAUSED => DomainState::Paused,
        sys::VIR_DOMAIN_SHUTOFF => DomainState::Shutoff,
        _ => DomainState::Other,
    };
    let (vcpus, vcpus_max) = bulk_vcpus(rec)?;
    let current = rec.number("balloon.current")?;
    let maximum = rec.number("balloon.maximum")?;
    Some((state, vcpus, vcpus_max, current, maximum))
}

/// Where a domain's slow facts came from.
pub(super) enum SlowFrom {
    /// The cache, whole.
    Cache,
    /// The cache, with the parts the agent wrote read again.
    Refreshed(Slow),
    /// Read in full now.
    Read(Slow),
}

/// How one domain was read.
pub(super) struct Read {
    pub(super) obs: DomainObs,
    pub(super) slow: SlowFrom,
}

/// Reads one domain: state, vCPUs and memory (from `bulk` when its groups
/// are filled, else `info`), balloon stats (bulk or per domain), and the
/// slow facts (XML, I/O limits, weights) unless `cached` has them (then
/// only the parts it says the agent wrote).
/// `uuid` is the domain's UUID if the caller has read it already; `ids`
/// gives the UUID and name strings kept from earlier observations, to be
/// shared instead of allocated again.
/// Per-field read errors that are not fatal (see [`is_fatal_for_read`])
/// leave the field empty.
pub(super) fn read_domain(
    dom: &Domain,
    uuid: Option<&str>,
    bulk: Option<&ffi::StatsRecord>,
    caps: &mut ReadCaps,
    calls: &CallCounter,
    ids: impl FnOnce(&str, &str) -> Option<(Arc<str>, Option<Arc<str>>)>,
    cached: impl FnOnce(Option<u32>, bool) -> Option<(Slow, Refresh)>,
) -> Res<Read> {
    let name = dom
        .name()
        .map_err(|e| Failure::new(e, "reading a domain name"))?;
    let ctx = |what: &str| format!("domain {name}: {what}");
    let read_uuid;
    let uuid = match uuid {
        Some(u) => u,
        None => {
            read_uuid = dom
                .uuid_string()
                .map_err(|e| Failure::new(e, ctx("uuid")))?;
            &read_uuid
        }
    };

    // Optional reads: fatal errors propagate, others leave the field empty.
    let soft = |r: Result<Option<u64>, VirtError>, what: &str| -> Res<Option<u64>> {
        match r {
            Ok(v) => Ok(v),
            Err(e) if is_fatal_for_read(&e) => Err(Failure::new(e, ctx(what))),
            Err(e) => {
                tracing::debug!(domain = %name, error = %e, "{what} not read");
                Ok(None)
            }
        }
    };

    // (state, live vCPUs, max vCPUs if known, memory KiB, max memory KiB,
    // CPU time in ns): `info` only where bulk stats lack the first five.
    let bulk_cpu_time = bulk.and_then(|r| r.number("cpu.time"));
    let (state, nr_vcpus, bulk_max, mem_kib, max_kib, cpu_time) = match bulk.and_then(bulk_info) {
        Some((state, vcpus, max, cur, maxmem)) => {
            (state, vcpus, Some(max), cur, maxmem, bulk_cpu_time)
        }
        None => {
            calls.add(Call::Info);
            let info = dom.info().map_err(|e| Failure::new(e, ctx("info")))?;
            let state = map_state(info.state);
            // info's vCPU count is the live one for a running domain (the
            // same value `vcpus_flags(LIVE)` returns).
            let from_bulk = bulk.and_then(bulk_vcpus);
            (
                state,
                from_bulk.map_or(u64::from(info.nr_virt_cpu), |v| v.0),
                from_bulk.map(|v| v.1),
                info.memory,
                info.max_mem,
                bulk_cpu_time.or(Some(info.cpu_time)),
            )
        }
    };
    let active = state.is_active();
    let id = dom.id().filter(|_| active);

    let balloon = if !active {
        None
    } else if let Some(b) = bulk.and_then(bulk_balloon) {
        b
    } else {
        calls.add(Call::MemoryStats);
        match dom.memory_stats(0) {
            Ok(stats) => {
                let pairs: Vec<(u32, u64)> = stats.iter().map(|s| (s.tag, s.val)).collect();
                balloon_from_stats(&pairs, mem_kib)
            }
            Err(e) if is_fatal_for_read(&e) => return Err(Failure::new(e, ctx("memory stats"))),
            Err(_) => None,
        }
    };

    let (slow, from) = match cached(id, active) {
        Some((slow, refresh)) if refresh.is_empty() => (slow, SlowFrom::Cache),
        Some((mut slow, refresh)) => {
            refresh_slow(dom, &name, active, &mut slow, refresh, caps, calls, &soft)?;
            (slow.clone(), SlowFrom::Refreshed(slow))
        }
        None => {
            let slow = read_slow(dom, &name, active, nr_vcpus, caps, calls, &soft)?;
            (slow.clone(), SlowFrom::Read(slow))
        }
    };

    let (uuid, name) = match ids(uuid, &name) {
        Some((u, n)) => (u, n.unwrap_or_else(|| name.as_str().into())),
        None => (uuid.into(), name.as_str().into()),
    };
    Ok(Read {
        obs: DomainObs {
            name,
            uuid,
            id,
            state,
            vcpus: if active { nr_vcpus } else { 0 },
            vcpus_max: bulk_max.filter(|_| active).unwrap_or(slow.vcpus_max),
            memory: mem_kib.saturating_mul(KIB),
            memory_max: max_kib.saturating_mul(KIB),
            balloon,
            disks: slow.disks,
            metadata_pool: slow.metadata_pool,
            balloon_device: slow.balloon_device,
            cpu_shares: slow.cpu_shares,
            blkio_weight: slow.blkio_weight,
            cpu_quota: slow.cpu_quota.filter(|_| active),
            cpu_time: cpu_time.filter(|_| active),
            cpu_used: None,
            active_secs: None,
        },
        slow: from,
    })
}

/// Maps an optional read's error: fatal ones propagate, others give `None`.
type SoftRead<'a> = dyn Fn(Result<Option<u64>, VirtError>, &str) -> Res<Option<u64>> + 'a;

/// Reads what changes only on redefinition, hot-plug, retuning or restart:
/// maximum vCPUs, the XML (disks, virtpool metadata), each tunable disk's
/// I/O limits and the weights.
fn read_slow(
    dom: &Domain,
    name: &str,
    active: bool,
    fallback_max: u64,
    caps: &mut ReadCaps,
    calls: &CallCounter,
    soft: &SoftRead,
) -> Res<Slow> {
    let ctx = |what: &str| format!("domain {name}: {what}");
    calls.add(Call::MaxVcpus);
    let vcpus_max = soft(
        dom.vcpus_flags(sys::VIR_DOMAIN_VCPU_MAXIMUM)
            .map(|v| Some(u64::from(v))),
        "max vcpus",
    )?
    .unwrap_or(fallback_max);

    calls.add(Call::Xml);
    let domain_xml = dom.xml_desc(0).map_err(|e| Failure::new(e, ctx("xml")))?;
    // The metadata element is in the XML just read: no second round trip.
    let metadata_pool = xml::metadata_pool(&domain_xml);
    let balloon_device = xml::has_balloon(&domain_xml);

    let mut disks = Vec::new();
    for d in xml::disks(&domain_xml) {
        let mut obs = DiskObs {
            target: d.target.into(),
            device: d.device,
            readonly: d.readonly,
            iotune: None,
        };
        if active && obs.is_tunable() {
            obs.iotune = read_iotune(dom, name, &obs.target, calls)?;
        }
        disks.push(obs);
    }

    let sched = read_scheduler(dom, name, caps, calls)?;
    let blkio_weight = read_blkio_weight(dom, calls, soft)?;
    Ok(Slow {
        vcpus_max,
        metadata_pool,
        balloon_device,
        disks: disks.into(),
        cpu_shares: sched.cpu_shares,
        blkio_weight,
        cpu_quota: sched.quota,
    })
}

/// Reads again the parts of cached slow facts that the agent wrote.
#[allow(clippy::too_many_arguments)]
fn refresh_slow(
    dom: &Domain,
    name: &str,
    active: bool,
    slow: &mut Slow,
    refresh: Refresh,
    caps: &mut ReadCaps,
    calls: &CallCounter,
    soft: &SoftRead,
) -> Res<()> {
    if refresh.iotune && active {
        let mut disks = slow.disks.to_vec();
        for d in disks.iter_mut().filter(|d| d.is_tunable()) {
            d.iotune = read_iotune(dom, name, &d.target, calls)?;
        }
        slow.disks = disks.into();
    }
    if refresh.scheduler {
        let sched = read_scheduler(dom, name, caps, calls)?;
        slow.cpu_shares = sched.cpu_shares;
        slow.cpu_quota = sched.quota;
    }
    if refresh.blkio_weight {
        slow.blkio_weight = read_blkio_weight(dom, calls, soft)?;
    }
    Ok(())
}

/// One disk's live I/O limits (`None` when they cannot be read).
fn read_iotune(dom: &Domain, name: &str, disk: &str, calls: &CallCounter) -> Res<Option<IoTune>> {
    calls.add(Call::GetIoTune);
    match ffi::get_block_iotune(dom, disk, sys::VIR_DOMAIN_AFFECT_LIVE) {
        Ok(t) => Ok(Some(t)),
        Err(e) if is_fatal_for_read(&e) => {
            Err(Failure::new(e, format!("domain {name}: iotune of {disk}")))
        }
        Err(e) => {
            tracing::debug!(domain = %name, %disk, error = %e, "iotune not read");
            Ok(None)
        }
    }
}

/// The CPU weight and CPU quota: current values (live when active, config
/// when shut off). A driver whose scheduler cannot be read (the test
/// driver rejects the call) is not asked again on this connection.
fn read_scheduler(
    dom: &Domain,
    name: &str,
    caps: &mut ReadCaps,
    calls: &CallCounter,
) -> Res<ffi::Scheduler> {
    if caps.no_cpu_shares {
        return Ok(ffi::Scheduler::default());
    }
    calls.add(Call::GetCpuShares);
    match ffi::get_scheduler(dom, sys::VIR_DOMAIN_AFFECT_CURRENT) {
        Ok(s) => Ok(s),
        Err(e) if is_fatal_for_read(&e) => Err(Failure::new(
            e,
            format!("domain {name}: scheduler parameters"),
        )),
        Err(e) => {
            if is_unsupported(&e) {
                caps.no_cpu_shares = true;
            }
            tracing::debug!(domain = %name, error = %e, "scheduler parameters not read");
            Ok(ffi::Scheduler::default())
        }
    }
}

/// The blkio weight (current value).
fn read_blkio_weight(dom: &Domain, calls: &CallCounter, soft: &SoftRead) -> Res<Option<u64>> {
    calls.add(Call::GetBlkioWeight);
    soft(
        ffi::get_blkio_weight(dom, sys::VIR_DOMAIN_AFFECT_CURRENT).map(|w| w.map(u64::from)),
        "blkio weight",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balloon_needs_unused_or_available() {
        let actual = sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON;
        assert_eq!(balloon_from_stats(&[(actual, 1024)], 1024), None);
        let b = balloon_from_stats(
            &[
                (actual, 2048),
                (sys::VIR_DOMAIN_MEMORY_STAT_UNUSED, 512),
                (sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE, 2000),
                (sys::VIR_DOMAIN_MEMORY_STAT_USABLE, 1000),
            ],
            1,
        )
        .expect("stats reported");
        assert_eq!(b.actual, 2048 * 1024);
        assert_eq!(b.unused, Some(512 * 1024));
        assert_eq!(b.available, Some(2000 * 1024));
        assert_eq!(b.usable, Some(1000 * 1024));
        let fallback = balloon_from_stats(&[(sys::VIR_DOMAIN_MEMORY_STAT_UNUSED, 1)], 4096)
            .expect("unused reported");
        assert_eq!(fallback.actual, 4096 * 1024);
        assert_eq!(fallback.available, None);
    }

    /// Figures a 512 MiB QEMU guest reported with its balloon at 175 MiB:
    /// it sees only 133 MiB of it (MemTotal), 9.4 MiB of which it could
    /// still use. What it cannot give back is 165.6 MiB of balloon, not
    /// the 123.6 MiB its MemTotal minus MemAvailable says: a balloon of
    /// used + margin must leave it the margin (tests/realguests.rs).
    #[test]
    fn used_counts_the_balloon_the_guest_never_sees() {
        let b = balloon_from_stats(
            &[
                (sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON, 179_200),
                (sys::VIR_DOMAIN_MEMORY_STAT_UNUSED, 9_596),
                (sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE, 136_188),
                (sys::VIR_DOMAIN_MEMORY_STAT_USABLE, 9_628),
            ],
            1,
        )
        .expect("stats reported");
        assert_eq!(b.used(), Some((179_200 - 9_628) * 1024));
        let no_usable = BalloonStats { usable: None, ..b };
        assert_eq!(no_usable.used(), Some((179_200 - 9_596) * 1024));
    }

    fn record(pairs: &[(&str, u64)]) -> ffi::StatsRecord {
        ffi::StatsRecord {
            uuid: "u".into(),
            numbers: pairs
                .iter()
                .filter_map(|&(k, v)| BULK_FIELDS.iter().find(|f| **f == k).map(|f| (*f, v)))
                .collect(),
        }
    }

    #[test]
    fn bulk_groups_used_only_when_filled() {
        // What the test driver returns: state only.
        let state_only = record(&[("state.state", 1), ("state.reason", 1)]);
        assert_eq!(bulk_vcpus(&state_only), None);
        assert_eq!(bulk_balloon(&state_only), None);

        // What QEMU returns with a guest that reports stats (KiB).
        let qemu = record(&[
            ("vcpu.current", 3),
            ("vcpu.maximum", 8),
            ("balloon.current", 2048),
            ("balloon.maximum", 4096),
            ("balloon.unused", 1024),
            ("balloon.available", 2000),
            ("balloon.usable", 1500),
        ]);
        assert_eq!(bulk_vcpus(&qemu), Some((3, 8)));
        let b = bulk_balloon(&qemu).expect("group filled").expect("stats");
        assert_eq!(b.actual, 2048 * KIB);
        assert_eq!(b.unused, Some(1024 * KIB));
        assert_eq!(b.available, Some(2000 * KIB));
        assert_eq!(b.usable, Some(1500 * KIB));

        // QEMU asked (libvirt adds its rss), the guest reports nothing:
        // known empty.
        let silent = record(&[
            ("balloon.current", 2048),
            ("balloon.maximum", 4096),
            ("balloon.rss", 300_000),
        ]);
        assert_eq!(bulk_balloon(&silent), Some(None));

        // A domain busy with another job (NOWAIT): libvirt's own records
        // only. Not a guest without statistics: read per domain.
        let busy = record(&[("balloon.current", 2048), ("balloon.maximum", 4096)]);
        assert_eq!(bulk_balloon(&busy), None);
    }
}
