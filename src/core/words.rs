//! How amounts and actions read to a person: one wording for the tables,
//! the logs and the audit log.

use crate::core::model::{Action, IoTune, PerResource, Resource};

/// Binary units from the largest down, with their power of two.
const UNITS: [(&str, u32); 6] = [
    ("EiB", 60),
    ("PiB", 50),
    ("TiB", 40),
    ("GiB", 30),
    ("MiB", 20),
    ("KiB", 10),
];

/// The amounts set, by resource (`vcpus 2, memory 4.0 GiB`), or `none`.
pub fn amounts(r: &PerResource<Option<u64>>) -> String {
    let parts: Vec<String> = Resource::ALL
        .iter()
        .filter_map(|x| r.get(*x).map(|v| format!("{x} {}", x.human(v))))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The two ends of a change of `r` as a person reads them: as
/// [`Resource::human`] writes them, unless two different amounts would
/// print the same text (`5.3 GiB → 5.3 GiB`); then with more decimals, or
/// in a smaller unit, until the move shows (`5.30 GiB → 5.34 GiB`,
/// `5141 MiB → 5142 MiB`), at worst in bytes.
pub fn change(r: Resource, from: u64, to: u64) -> (String, String) {
    let (a, b) = (r.human(from), r.human(to));
    if a != b || from == to || matches!(r, Resource::Vcpus | Resource::DiskIopsSec) {
        return (a, b);
    }
    let per = if r == Resource::DiskBytesSec {
        "/s"
    } else {
        ""
    };
    let big = from.max(to);
    for (i, (unit, shift)) in UNITS.iter().enumerate() {
        if big >> shift == 0 {
            continue;
        }
        // The unit `human` used gets two and three decimals (it showed
        // one); the smaller ones none or one.
        let human_unit = UNITS
            .get(i.wrapping_sub(1))
            .is_none_or(|(_, s)| big >> s == 0);
        let decimals = if human_unit { 2..=3 } else { 0..=1 };
        for decimals in decimals {
            let f = |v: u64| {
                format!(
                    "{:.*} {unit}{per}",
                    decimals,
                    v as f64 / (1u64 << shift) as f64
                )
            };
            if f(from) != f(to) {
                return (f(from), f(to));
            }
        }
    }
    (format!("{from} B{per}"), format!("{to} B{per}"))
}

/// An action in words: what changes, from what to what (see [`change`]),
/// and why: `vcpus 2 → 4 (share)`, `disk vda 128.0 MiB/s, 500 IOPS →
/// 64.0 MiB/s, unlimited IOPS`.
pub fn action(a: &Action) -> String {
    match a {
        Action::SetVcpus {
            from, to, reason, ..
        } => format!("vcpus {from} → {to} ({reason})"),
        Action::SetMemory {
            from, to, reason, ..
        } => {
            let (f, t) = change(Resource::Memory, *from, *to);
            format!("memory {f} → {t} ({reason})")
        }
        Action::SetBlockIoTune { disk, from, to, .. } => {
            // libvirt's 0 is no limit.
            let (fb, tb) = change(
                Resource::DiskBytesSec,
                from.total_bytes_sec,
                to.total_bytes_sec,
            );
            let bytes = |v: u64, text: String| {
                if v == 0 {
                    "unlimited bandwidth".to_string()
                } else {
                    text
                }
            };
            let iops = |v: u64| {
                if v == 0 {
                    "unlimited IOPS".to_string()
                } else {
                    format!("{v} IOPS")
                }
            };
            format!(
                "disk {disk} {}, {} → {}, {}",
                bytes(from.total_bytes_sec, fb),
                iops(from.total_iops_sec),
                bytes(to.total_bytes_sec, tb),
                iops(to.total_iops_sec)
            )
        }
        Action::SetCpuShares { from, to, .. } => format!(
            "cpu_shares {} → {to}",
            from.map_or("?".into(), |v| v.to_string())
        ),
        Action::SetBlkioWeight { from, to, .. } => format!(
            "blkio weight {} → {to}",
            from.map_or("?".into(), |v| v.to_string())
        ),
        Action::SetCpuQuota { .. } => {
            let Change {
                before,
                after,
                reason,
            } = action_change(a);
            format!("cpu {before} → {after} ({reason})")
        }
        Action::SetStatsPeriod { secs, .. } => format!("balloon stats period {secs} s"),
    }
}

/// A CPU-time limit change in words: the limits in cores, `no limit`
/// where nothing limits the domain.
fn cpu_change(
    from: u64,
    to: u64,
    was: Option<crate::core::model::CpuQuota>,
    quota: crate::core::model::CpuQuota,
) -> (String, String) {
    let side = |m: u64, limited: bool| {
        if limited {
            Resource::Cpu.human(m)
        } else {
            "no limit".to_string()
        }
    };
    (
        side(from, was.is_some_and(|q| q.is_limited())),
        side(to, quota.is_limited()),
    )
}

/// What an action changes, in words (for logs and the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub before: String,
    pub after: String,
    pub reason: String,
}

/// What an action changes: the value before and after, and why.
pub fn action_change(a: &Action) -> Change {
    let (before, after, reason) = match a {
        Action::SetVcpus {
            from, to, reason, ..
        } => (from.to_string(), to.to_string(), reason.to_string()),
        Action::SetMemory {
            from, to, reason, ..
        } => {
            let (f, t) = change(Resource::Memory, *from, *to);
            (f, t, reason.to_string())
        }
        Action::SetBlockIoTune { disk, from, to, .. } => {
            let side = |t: &IoTune| {
                let bytes = match t.total_bytes_sec {
                    0 => "unlimited".to_string(),
                    b => Resource::DiskBytesSec.human(b),
                };
                let iops = match t.total_iops_sec {
                    0 => "unlimited IOPS".to_string(),
                    i => format!("{i} IOPS"),
                };
                format!("{disk} {bytes}, {iops}")
            };
            (side(from), side(to), "share".into())
        }
        Action::SetCpuShares { from, to, .. } | Action::SetBlkioWeight { from, to, .. } => (
            from.map_or("unknown".into(), |v| v.to_string()),
            to.to_string(),
            "shares".into(),
        ),
        Action::SetCpuQuota {
            from,
            to,
            was,
            quota,
            reason,
            ..
        } => {
            let (f, t) = cpu_change(*from, *to, *was, *quota);
            (f, t, reason.to_string())
        }
        Action::SetStatsPeriod { secs, .. } => (
            "unset".into(),
            format!("{secs}s"),
            "guest statistics".into(),
        ),
    };
    Change {
        before,
        after,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{CpuQuota, QuotaScope, Reason};

    #[test]
    fn a_change_shows_its_move() {
        const MIB: u64 = 1 << 20;
        const GIB: u64 = 1 << 30;
        let m = |a, b| {
            let (x, y) = change(Resource::Memory, a, b);
            format!("{x} → {y}")
        };
        // Different texts already: as `human` has them.
        assert_eq!(m(4 * GIB, 5 * GIB), "4.0 GiB → 5.0 GiB");
        assert_eq!(m(4 * GIB, 4 * GIB), "4.0 GiB → 4.0 GiB");
        // 5.3 GiB → 5.3 GiB: two decimals show the move.
        assert_eq!(m(5427 * MIB, 5468 * MIB), "5.30 GiB → 5.34 GiB");
        // One MiB apart: three decimals, else MiB.
        assert_eq!(m(5427 * MIB, 5428 * MIB), "5.300 GiB → 5.301 GiB");
        assert_eq!(m(5141 * MIB, 5142 * MIB), "5141 MiB → 5142 MiB");
        // A few bytes: at worst bytes.
        assert_eq!(m(GIB, GIB + 3), "1073741824 B → 1073741827 B");
        assert_eq!(m(100 * MIB, 100 * MIB + 4096), "100.000 MiB → 100.004 MiB");
        let (x, y) = change(Resource::DiskBytesSec, 128 * MIB, 128 * MIB + 20 * 1024);
        assert_eq!(format!("{x} → {y}"), "128.00 MiB/s → 128.02 MiB/s");
        assert_eq!(change(Resource::Vcpus, 2, 3), ("2".into(), "3".into()));
    }

    #[test]
    fn actions_in_words() {
        use crate::core::model::IoTune;
        const MIB: u64 = 1 << 20;
        let io = |b, i| IoTune {
            total_bytes_sec: b,
            total_iops_sec: i,
            ..Default::default()
        };
        let a = Action::SetBlockIoTune {
            uuid: "u".into(),
            domain: "web-1".into(),
            disk: "vda".into(),
            from: io(134_217_728, 500),
            to: io(64 * MIB, 0),
            persist: false,
        };
        assert_eq!(
            action(&a),
            "disk vda 128.0 MiB/s, 500 IOPS → 64.0 MiB/s, unlimited IOPS"
        );
        let a = Action::SetMemory {
            uuid: "u".into(),
            domain: "web-1".into(),
            from: 5427 * MIB,
            to: 5468 * MIB,
            reason: Reason::Share,
            persist: false,
        };
        assert_eq!(action(&a), "memory 5.30 GiB → 5.34 GiB (share)");
        // A CPU-time limit reads as its change does.
        let scope = QuotaScope::Global;
        let a = Action::SetCpuQuota {
            uuid: "u".into(),
            domain: "web-1".into(),
            from: 4000,
            to: 1500,
            was: Some(CpuQuota::unlimited(scope)),
            quota: CpuQuota::for_limit(1500, 4, scope),
            reason: Reason::Share,
            persist: false,
        };
        assert_eq!(action(&a), "cpu no limit → 1.5 cores (share)");
    }
}
