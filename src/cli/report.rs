//! Human-readable tables of a plan, shared by `virtpoold --once` and
//! `virtpoolctl`.

use crate::core::model::{Reason, Resource};
use crate::core::planner::{Alloc, Plan, PoolPlan};
pub use crate::core::words::{action, change};
use std::fmt::Write;

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

/// A table's header row: the column titles as cells.
pub fn header(titles: &[&str]) -> Vec<String> {
    titles.iter().map(|t| t.to_string()).collect()
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

fn reasons(p: &crate::core::planner::MemberPlan) -> String {
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
    let mut rows = vec![header(&["  RESOURCE", "BUDGET", "ALLOCATED", "FREE"])];
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
    // A CPU column where the pool manages CPU time: the limit, and what
    // the domain used.
    let cpu = p.budget.cpu.is_some();
    let mut head = header(&["  DOMAIN", "STATE", "VCPUS", "MEMORY"]);
    if cpu {
        head.push("CPU".into());
    }
    head.push("WHY".into());
    let mut rows = vec![head];
    let mut members: Vec<_> = p.members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    for m in members {
        let mut row = vec![
            format!("  {}", m.name),
            m.state.to_string(),
            pair(Resource::Vcpus, &m.alloc.vcpus),
            pair(Resource::Memory, &m.alloc.memory),
        ];
        if cpu {
            let used = m.alloc.cpu.and_then(|a| a.used);
            row.push(match used {
                Some(u) => format!(
                    "{} (used {})",
                    pair(Resource::Cpu, &m.alloc.cpu),
                    crate::core::cpu::cores_text(u)
                ),
                None => pair(Resource::Cpu, &m.alloc.cpu),
            });
        }
        row.push(reasons(m));
        rows.push(row);
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
    let cpu = if plan.pools.iter().any(|p| p.budget.cpu.is_some()) {
        format!(
            ", {} of CPU time",
            Resource::Cpu.human(plan.allocatable.cpu)
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "host allocatable: {} vCPUs, {} memory{cpu}{}",
        plan.allocatable.vcpus,
        crate::core::units::human_bytes(plan.allocatable.memory),
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
        let _ = writeln!(out, "unmanaged ({}):", plan.unmanaged.len());
        let mut rows = Vec::new();
        for u in &plan.unmanaged {
            rows.push(vec![
                format!("  {}", u.name),
                u.state.to_string(),
                format!("{} vCPUs", u.vcpus),
                crate::core::units::human_bytes(u.memory),
                crate::core::planner::Release::words(u.release).to_string(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

/// The rows of `virtpoolctl status` about the host: capacity declared
/// beside measured, reserved, ratios, allocatable, memory pressure.
pub fn capacity_rows(c: &crate::core::capacity::Capacity) -> Vec<Vec<String>> {
    use crate::core::units::human_bytes;
    let cpus = |n: u64| format!("{n} CPU{}", if n == 1 { "" } else { "s" });
    let host_cpus = match c.host.cpus.declared {
        Some(d) => format!("{} declared ({} measured)", cpus(d), c.host.cpus.measured),
        None => format!("{} measured", cpus(c.host.cpus.measured)),
    };
    let host_memory = match c.host.memory.declared {
        Some(d) => format!(
            "{} declared ({} measured)",
            human_bytes(d),
            human_bytes(c.host.memory.measured)
        ),
        None => format!("{} measured", human_bytes(c.host.memory.measured)),
    };
    let a = &c.allocatable;
    let mut alloc = format!("{} vCPUs, {}", a.vcpus, human_bytes(a.memory));
    if a.disk_bytes_sec > 0 {
        let _ = write!(alloc, ", {}/s", human_bytes(a.disk_bytes_sec));
    }
    if a.disk_iops_sec > 0 {
        let _ = write!(alloc, ", {} IOPS", a.disk_iops_sec);
    }
    let p = &c.memory_pressure;
    vec![
        vec!["host".into(), format!("{host_cpus}, {host_memory}")],
        vec![
            "reserved".into(),
            format!(
                "{}, {}",
                cpus(c.reserved.cpus),
                human_bytes(c.reserved.memory)
            ),
        ],
        vec![
            "ratio".into(),
            format!("CPU {:.1}, memory {:.1}", c.ratio.cpus, c.ratio.memory),
        ],
        vec!["allocatable".into(), alloc],
        vec![
            "memory".into(),
            format!(
                "{} available, pressure below {}: {}",
                human_bytes(p.available),
                human_bytes(p.threshold),
                if p.under {
                    "UNDER PRESSURE (members' memory is lowered)"
                } else {
                    "no pressure"
                }
            ),
        ],
    ]
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
}
