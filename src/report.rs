//! Human-readable tables of a plan, shared by `virtpoold --once` and
//! `virtpoolctl`.

use crate::model::{Action, Reason, Resource};
use crate::planner::{Alloc, Plan, PoolPlan};
use std::fmt::Write;

/// Binary units from the largest down, with their power of two.
const UNITS: [(&str, u32); 6] = [
    ("EiB", 60),
    ("PiB", 50),
    ("TiB", 40),
    ("GiB", 30),
    ("MiB", 20),
    ("KiB", 10),
];

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
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let pad = widths[c] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn pair(r: Resource, a: &Option<Alloc>) -> String {
    match a {
        Some(a) if a.next != a.target && a.next != a.actual => {
            let (from, to) = change(r, a.actual, a.next);
            format!("{from} → {to} (target {})", r.human(a.target))
        }
        Some(a) if a.next != a.actual => {
            let (from, to) = change(r, a.actual, a.next);
            format!("{from} → {to}")
        }
        Some(a) => r.human(a.actual),
        None => "-".into(),
    }
}

fn reasons(p: &crate::planner::MemberPlan) -> String {
    let mut v: Vec<String> = Vec::new();
    for r in Resource::ALL {
        if let Some(a) = p.alloc.get(r) {
            if a.reason != Reason::Share {
                v.push(format!("{}:{}", r.key(), a.reason));
            }
        }
    }
    if let Some(n) = &p.note {
        v.push(n.clone());
    }
    if v.is_empty() {
        "share".into()
    } else {
        v.join(", ")
    }
}

/// The table of one pool: budget / allocated / free, then one line per member.
pub fn pool(p: &PoolPlan) -> String {
    let mut out = String::new();
    let unadmitted = p
        .members
        .iter()
        .filter(|m| m.state.is_active() && !m.admitted)
        .count();
    let _ = writeln!(
        out,
        "pool {}{}{} — {} members{}",
        p.name,
        if p.runtime { " (runtime)" } else { "" },
        if p.paused { " [paused]" } else { "" },
        p.members.len(),
        if unadmitted > 0 {
            format!(", {unadmitted} UNADMITTED")
        } else {
            String::new()
        }
    );
    let mut rows = vec![vec![
        "  RESOURCE".to_string(),
        "BUDGET".into(),
        "ALLOCATED".into(),
        "FREE".into(),
    ]];
    for r in Resource::ALL {
        if let Some(b) = p.budget.get(r) {
            rows.push(vec![
                format!("  {}", r.key()),
                r.human(*b),
                r.human(*p.allocated.get(r)),
                r.human(p.free(r).unwrap_or(0)),
            ]);
        }
    }
    out.push_str(&table(&rows));
    let mut rows = vec![vec![
        "  DOMAIN".to_string(),
        "STATE".into(),
        "VCPUS".into(),
        "MEMORY".into(),
        "WHY".into(),
    ]];
    let mut members: Vec<_> = p.members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    for m in members {
        rows.push(vec![
            format!("  {}", m.name),
            m.state.to_string(),
            pair(Resource::Vcpus, &m.alloc.vcpus),
            pair(Resource::Memory, &m.alloc.memory),
            reasons(m),
        ]);
    }
    if p.members.is_empty() {
        rows.push(vec!["  (no members)".into()]);
    }
    out.push_str(&table(&rows));
    out
}

/// Every pool, then the unmanaged domains.
pub fn plan(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "host allocatable: {} vCPUs, {} memory{}",
        plan.allocatable.vcpus,
        crate::units::human_bytes(plan.allocatable.memory),
        if plan.pressure {
            "  [MEMORY PRESSURE]"
        } else {
            ""
        }
    );
    for p in &plan.pools {
        out.push('\n');
        out.push_str(&pool(p));
    }
    out.push('\n');
    if plan.unmanaged.is_empty() {
        out.push_str("unmanaged: none\n");
    } else {
        let _ = writeln!(out, "unmanaged ({}, never touched):", plan.unmanaged.len());
        let mut rows = Vec::new();
        for u in &plan.unmanaged {
            rows.push(vec![
                format!("  {}", u.name),
                u.state.to_string(),
                format!("{} vCPUs", u.vcpus),
                crate::units::human_bytes(u.memory),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_columns() {
        let t = table(&[
            vec!["a".into(), "bb".into(), "c".into()],
            vec!["aaa".into(), "b".into(), "c".into()],
        ]);
        assert_eq!(t, "a    bb  c\naaa  b   c\n");
    }

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
        use crate::model::IoTune;
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
    }
}
