//! Disk I/O: a domain's disk targets (bytes/s, IOPS) are split across its
//! tunable disks and turned into `SetBlockIoTune` actions.

use crate::core::model::{DiskObs, IoTune};

/// Splits `total` equally across `n` disks, the remainder one unit each to
/// the first disks. Every part is ≥ 1 when `total ≥ n` (the planner's disk
/// floor guarantees it: a 0 rate would mean "unlimited" to libvirt).
pub fn split(total: u64, n: usize) -> impl Iterator<Item = u64> {
    let n64 = n.max(1) as u64;
    let base = total / n64;
    let extra = total % n64;
    (0..n64).map(move |k| base + u64::from(k < extra))
}

/// `*_max` sent with a rate: `ceil(rate × factor)`, never below the rate
/// (libvirt rejects a max below the rate), saturating.
pub fn burst(rate: u64, factor: f64) -> u64 {
    let x = (rate as f64 * factor).ceil();
    let m = if !x.is_finite() || x >= u64::MAX as f64 {
        u64::MAX
    } else if x <= 0.0 {
        0
    } else {
        x as u64
    };
    m.max(rate)
}

/// The limits one disk should have: the managed rates replaced, the
/// unmanaged ones kept as observed.
pub fn desired(
    observed: Option<IoTune>,
    bytes: Option<u64>,
    iops: Option<u64>,
    factor: f64,
) -> IoTune {
    let mut t = observed.unwrap_or_default();
    if let Some(b) = bytes {
        t.total_bytes_sec = b;
        t.total_bytes_sec_max = burst(b, factor);
    }
    if let Some(i) = iops {
        t.total_iops_sec = i;
        t.total_iops_sec_max = burst(i, factor);
    }
    t
}

/// Number of disks that take part in the domain's disk allocation.
pub fn tunable_count(disks: &[DiskObs]) -> usize {
    disks.iter().filter(|d| d.is_tunable()).count()
}

/// The tunable disks of a domain in one pass over its disks: how many, and
/// the observed bytes/s and IOPS as [`crate::core::model::DomainObs::actual`]
/// sums them (0 = unlimited on any disk makes the sum 0).
pub(crate) fn observed(disks: &[DiskObs]) -> (usize, u64, u64) {
    let (mut n, mut bytes, mut iops) = (0, Some(0u64), Some(0u64));
    for t in disks.iter().filter(|d| d.is_tunable()).map(|d| d.iotune) {
        n += 1;
        let t = t.unwrap_or_default();
        let add = |sum: Option<u64>, v: u64| sum.filter(|_| v != 0).map(|s| s.saturating_add(v));
        bytes = add(bytes, t.total_bytes_sec);
        iops = add(iops, t.total_iops_sec);
    }
    (n, bytes.unwrap_or(0), iops.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_remainder_to_first() {
        assert_eq!(split(10, 3).collect::<Vec<_>>(), vec![4, 3, 3]);
        assert_eq!(split(11, 3).collect::<Vec<_>>(), vec![4, 4, 3]);
        assert_eq!(split(7, 1).collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn observed_agrees_with_actual() {
        use crate::core::model::Resource;
        let mut d = crate::core::planner::testing::domain("d", None);
        let t = |b: u64, i: u64| IoTune {
            total_bytes_sec: b,
            total_bytes_sec_max: b,
            total_iops_sec: i,
            total_iops_sec_max: i,
        };
        let mut cd = crate::core::planner::testing::disk("hdc");
        cd.device = "cdrom".into();
        cd.iotune = Some(t(0, 0));
        let mut ro = crate::core::planner::testing::disk("vdz");
        ro.readonly = true;
        let cases = [
            vec![],
            vec![(Some(t(5, 7)), "vda"), (Some(t(u64::MAX, 1)), "vdb")],
            vec![(Some(t(5, 0)), "vda"), (Some(t(6, 3)), "vdb")],
            vec![(None, "vda"), (Some(t(6, 3)), "vdb")],
        ];
        for case in cases {
            let mut disks: Vec<_> = case
                .iter()
                .map(|(io, name)| {
                    let mut k = crate::core::planner::testing::disk(name);
                    k.iotune = *io;
                    k
                })
                .collect();
            disks.push(cd.clone());
            disks.push(ro.clone());
            d.disks = disks.into();
            let (n, b, i) = observed(&d.disks);
            assert_eq!(n, tunable_count(&d.disks));
            assert_eq!(b, d.actual(Resource::DiskBytesSec), "{case:?}");
            assert_eq!(i, d.actual(Resource::DiskIopsSec), "{case:?}");
        }
    }

    #[test]
    fn burst_never_below_rate() {
        assert_eq!(burst(100, 1.0), 100);
        assert_eq!(burst(100, 1.5), 150);
        assert_eq!(burst(3, 1.1), 4);
        assert_eq!(burst(u64::MAX, 2.0), u64::MAX);
        assert_eq!(burst((1 << 60) + 1, 1.0), (1 << 60) + 1);
    }

    #[test]
    fn desired_keeps_unmanaged_rates() {
        let obs = IoTune {
            total_bytes_sec: 5,
            total_bytes_sec_max: 6,
            total_iops_sec: 7,
            total_iops_sec_max: 8,
        };
        let t = desired(Some(obs), None, Some(100), 2.0);
        assert_eq!(
            t,
            IoTune {
                total_bytes_sec: 5,
                total_bytes_sec_max: 6,
                total_iops_sec: 100,
                total_iops_sec_max: 200,
            }
        );
    }
}
