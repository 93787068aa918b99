//! The answers of `virtpoolctl status`, `pools`, `pool show`, `domains`,
//! `domain` and `plan` as tables.

use crate::api::types::{
    DomainView, DomainsResponse, PlanResponse, PoolSource, PoolView, PoolsResponse, StatusResponse,
};
use crate::cli::report::{self, header, table};
use crate::core::model::Resource;
use crate::core::{units, words};
use std::fmt::Write as _;

/// An amount in `r`'s unit, or `-` when there is none.
pub fn opt(r: Resource, v: Option<u64>) -> String {
    v.map_or("-".into(), |v| r.human(v))
}

/// `status`: the agent, libvirt, the last cycle, the host and the counts.
pub fn render_status(s: &StatusResponse) -> String {
    let mut rows = vec![
        vec![
            "agent".to_string(),
            format!("virtpoold {}", s.agent.version),
        ],
        vec![
            "mode".into(),
            format!(
                "{:?}{}",
                s.agent.mode,
                if s.agent.paused { " (PAUSED)" } else { "" }
            )
            .to_lowercase(),
        ],
        vec![
            "libvirt".into(),
            format!(
                "{} {}{}",
                s.libvirt.uri,
                if s.libvirt.connected {
                    "connected"
                } else {
                    "NOT CONNECTED"
                },
                s.libvirt
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        ],
        vec![
            "last cycle".into(),
            match &s.last_cycle {
                Some(c) => format!(
                    "#{} took {:.1} ms, {} action(s), {} failed",
                    s.cycle, c.duration_ms, c.actions, c.failed
                ),
                None => "none yet".into(),
            },
        ],
    ];
    if let Some(c) = &s.capacity {
        rows.extend(report::capacity_rows(c));
    } else if let Some(h) = &s.host {
        rows.push(vec![
            "host".into(),
            format!(
                "{} CPUs, {} memory ({} available)",
                h.cpus,
                units::human_bytes(h.memory_total),
                units::human_bytes(h.memory_available)
            ),
        ]);
    }
    if let (None, Some(a)) = (&s.capacity, &s.allocatable) {
        rows.push(vec![
            "allocatable".into(),
            format!(
                "{} vCPUs, {}, {} of CPU time",
                a.vcpus,
                units::human_bytes(a.memory),
                Resource::Cpu.human(a.cpu)
            ),
        ]);
    }
    rows.push(vec!["pools".into(), s.pools.to_string()]);
    rows.push(vec![
        "domains".into(),
        format!(
            "{} ({} active): {} managed, {} unmanaged{}",
            s.domains.total,
            s.domains.active,
            s.domains.managed,
            s.domains.unmanaged,
            if s.domains.unadmitted > 0 {
                format!(", {} UNADMITTED", s.domains.unadmitted)
            } else {
                String::new()
            }
        ),
    ]);
    if !s.agent.paused_pools.is_empty() {
        rows.push(vec!["paused pools".into(), s.agent.paused_pools.join(", ")]);
    }
    if let Some(e) = &s.config_error {
        rows.push(vec!["CONFIG ERROR".into(), e.clone()]);
    }
    table(&rows)
}

/// One pool: its resources, then its members (one line per resource).
pub fn render_pool(p: &PoolView) -> String {
    let leaving = |name: &str| p.leaving.iter().any(|l| l == name);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pool {} ({}){} — {} member(s){}{}",
        p.name,
        match p.source {
            PoolSource::Config => "config",
            PoolSource::Runtime => "runtime",
        },
        if p.paused { " [paused]" } else { "" },
        p.member_count,
        if p.pending.is_empty() {
            String::new()
        } else {
            format!(", {} pending", p.pending.len())
        },
        if p.unadmitted.is_empty() {
            String::new()
        } else {
            format!(", {} UNADMITTED", p.unadmitted.len())
        }
    );
    let mut rows = vec![header(&[
        "  RESOURCE",
        "BUDGET",
        "ALLOCATED",
        "FREE",
        "RESERVED",
    ])];
    for r in Resource::ALL {
        if let Some(b) = p.budget.get(r) {
            rows.push(vec![
                format!("  {r}"),
                r.human(*b),
                r.human(*p.allocated.get(r)),
                opt(r, *p.free.get(r)),
                r.human(*p.reserved.get(r)),
            ]);
        }
    }
    out.push_str(&table(&rows));
    let mut rows = vec![header(&[
        "  DOMAIN", "STATE", "RESOURCE", "FLOOR", "TARGET", "ACTUAL", "USED", "RESERVED", "WHY",
    ])];
    for m in &p.members {
        let mut first = true;
        let head = |first: bool| {
            if first {
                (format!("  {}", m.name), m.state.to_string())
            } else {
                (String::new(), String::new())
            }
        };
        for r in Resource::ALL {
            let Some(a) = m.resources.get(r) else {
                continue;
            };
            let (n, s) = head(first);
            let mut why = a.reason.to_string();
            if first {
                if let Some(note) = &m.note {
                    // A note that starts with the reason says it already.
                    why = if note.starts_with(&why) {
                        note.clone()
                    } else {
                        format!("{why}; {note}")
                    };
                }
                if leaving(&m.name) {
                    why = format!("{why}; {LEAVING}");
                }
            }
            rows.push(vec![
                n,
                s,
                r.key().into(),
                r.human(a.floor),
                r.human(a.target),
                r.human(a.actual),
                opt(r, a.used),
                opt(r, *m.reservation.get(r)),
                why,
            ]);
            first = false;
        }
        if first {
            let (n, s) = head(true);
            let mut why = m.note.clone().unwrap_or_else(|| {
                if m.admitted {
                    "-".into()
                } else {
                    "unadmitted".into()
                }
            });
            if leaving(&m.name) {
                why = format!("{why}; {LEAVING}");
            }
            rows.push(vec![
                n,
                s,
                "-".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                why,
            ]);
        }
    }
    for d in &p.pending {
        rows.push(vec![
            format!("  {d}"),
            "pending".into(),
            "-".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            "added; joins with the next cycle".into(),
        ]);
    }
    if p.members.is_empty() && p.pending.is_empty() {
        rows.push(vec!["  (no members)".into()]);
    }
    out.push_str(&table(&rows));
    if !p.unadmitted.is_empty() {
        let _ = writeln!(
            out,
            "  UNADMITTED ({}): floors do not fit the budget; left untouched",
            p.unadmitted.len()
        );
        for name in &p.unadmitted {
            let _ = writeln!(out, "    {name}");
        }
    }
    out
}

/// What the WHY column adds for a member removed through the API.
const LEAVING: &str = "removed; leaves with the next cycle";

/// Every pool, one after the other (or that there is none).
pub fn render_pools(p: &PoolsResponse) -> String {
    if p.pools.is_empty() {
        "no pools\n".into()
    } else {
        p.pools
            .iter()
            .map(render_pool)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `domains`: every domain, its pool and its size.
pub fn render_domains(d: &DomainsResponse) -> String {
    let mut rows = vec![header(&[
        "NAME", "STATE", "POOL", "VCPUS", "MEMORY", "USED", "UUID",
    ])];
    for x in &d.domains {
        rows.push(vec![
            x.name.clone(),
            x.state.to_string(),
            x.pool.clone().unwrap_or_else(|| match x.release {
                Some(_) => "(released)".into(),
                None => "(unmanaged)".into(),
            }),
            format!("{}/{}", x.vcpus, x.vcpus_max),
            format!(
                "{} / {}",
                units::human_bytes(x.memory),
                units::human_bytes(x.memory_max)
            ),
            opt(Resource::Memory, x.memory_used),
            x.uuid.clone(),
        ]);
    }
    table(&rows)
}

/// `domain`: one domain, and per resource its target and why.
pub fn render_domain(d: &DomainView) -> String {
    let mut rows = vec![
        vec!["name".to_string(), d.name.clone()],
        vec!["uuid".into(), d.uuid.clone()],
        vec!["state".into(), d.state.to_string()],
        vec![
            "pool".into(),
            match (&d.pool, d.admitted) {
                (Some(p), Some(false)) => format!("{p} (UNADMITTED)"),
                (Some(p), _) => p.clone(),
                (None, _) => format!(
                    "(unmanaged: {})",
                    crate::core::planner::Release::words(d.release)
                ),
            },
        ],
        vec!["vcpus".into(), format!("{} (max {})", d.vcpus, d.vcpus_max)],
        vec![
            "memory".into(),
            format!(
                "{} (max {}, used {})",
                units::human_bytes(d.memory),
                units::human_bytes(d.memory_max),
                opt(Resource::Memory, d.memory_used)
            ),
        ],
        vec![
            "disks".into(),
            if d.disks.is_empty() {
                "-".into()
            } else {
                d.disks.join(", ")
            },
        ],
        vec!["reservation".into(), words::amounts(&d.reservation)],
    ];
    if d.cpu_used.is_some() || d.cpu_limit.is_some() {
        rows.insert(
            5,
            vec![
                "cpu".into(),
                format!(
                    "used {}, limit {}",
                    opt(Resource::Cpu, d.cpu_used),
                    d.cpu_limit
                        .map_or_else(|| "none".to_string(), |l| Resource::Cpu.human(l))
                ),
            ],
        );
    }
    for r in Resource::ALL {
        if let Some(a) = d.resources.get(r) {
            rows.push(vec![
                r.key().into(),
                format!(
                    "target {} (reason: {}), actual {}, floor {}, cap {}",
                    r.human(a.target),
                    a.reason,
                    r.human(a.actual),
                    r.human(a.floor),
                    a.cap.map_or_else(|| "none".to_string(), |c| r.human(c)),
                ),
            ]);
        }
    }
    table(&rows)
}

/// `plan`: the actions the next cycle would take, then every pool.
pub fn render_plan(p: &PlanResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan from cycle {}: {} action(s){}",
        p.cycle,
        p.actions.len(),
        if p.paused {
            " — NOT issued (paused or observe mode)"
        } else {
            ""
        }
    );
    let mut rows = Vec::new();
    for a in &p.actions {
        let what = report::action(&a.action);
        rows.push(vec![
            format!("  {}", a.action.domain()),
            a.pool.clone().unwrap_or_default(),
            what,
        ]);
    }
    out.push_str(&table(&rows));
    for pool in &p.pools {
        out.push('\n');
        out.push_str(&render_pool(pool));
    }
    out
}
