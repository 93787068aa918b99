//! `virtpoolctl pool history NAME`: a pool's last hour
//! (`GET /v1/pools/{pool}/history`) as a table of sparklines, one per
//! resource and series, each resource's scaled to the largest value it
//! shows (the budget, unless the members hold more).

use crate::api::history::{PoolHistory, ResourceSeries};
use crate::cli::report::{header, table};
use crate::cli::sparkline::sparkline;
use crate::core::model::Resource;
use std::fmt::Write;

/// Widest sparkline drawn.
pub const WIDTH: usize = 60;

/// `HH:MM:SS` (UTC) of a Unix time.
pub fn clock(t: u64) -> String {
    let s = t % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn span(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{} h {} min", s / 3600, s / 60 % 60),
        s if s >= 60 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{s} s"),
    }
}

/// The largest value a series reaches (for scaling against the budget).
fn peak(v: &[Option<u64>]) -> u64 {
    v.iter().flatten().max().copied().unwrap_or(0)
}

/// Rows of one resource: each series with now, min, max and its line.
fn rows(r: Resource, s: &ResourceSeries, width: usize) -> Vec<Vec<String>> {
    let top = peak(&s.budget)
        .max(peak(&s.allocated))
        .max(peak(&s.actual))
        .max(peak(&s.used));
    let mut out = Vec::new();
    let series = [
        ("budget", &s.budget),
        ("allocated", &s.allocated),
        ("actual", &s.actual),
        ("used", &s.used),
    ];
    for (name, v) in series {
        if v.is_empty() || v.iter().all(Option::is_none) {
            continue;
        }
        let now = v.last().copied().flatten();
        let known: Vec<u64> = v.iter().flatten().copied().collect();
        let fmt = |x: Option<u64>| x.map_or_else(|| "-".to_string(), |x| r.human(x));
        out.push(vec![
            if out.is_empty() {
                format!("  {r}")
            } else {
                String::new()
            },
            name.to_string(),
            fmt(now),
            fmt(known.iter().min().copied()),
            fmt(known.iter().max().copied()),
            sparkline(v, top, width),
        ]);
    }
    out
}

/// The whole answer as text.
pub fn render(h: &PoolHistory) -> String {
    let mut out = String::new();
    let n = h.time.len();
    match (h.time.first(), h.time.last()) {
        (Some(first), Some(last)) => {
            let _ = writeln!(
                out,
                "pool {}: {n} point(s), one per {} s, {} → {} UTC ({}; the last hour is kept: {} points)",
                h.pool,
                h.step_secs,
                clock(*first),
                clock(*last),
                span(last - first),
                h.capacity
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "pool {}: no point yet (one per {} s from its first cycle on)",
                h.pool, h.step_secs
            );
            return out;
        }
    }
    let mut table_rows = vec![header(&[
        "  RESOURCE",
        "SERIES",
        "NOW",
        "MIN",
        "MAX",
        "OLDEST → NEWEST (full block: the largest value shown)",
    ])];
    for (r, s) in &h.resources {
        table_rows.extend(rows(*r, s, WIDTH));
    }
    out.push_str(&table(&table_rows));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_pool_history_as_sparklines() {
        let gib = 1u64 << 30;
        let mut resources = BTreeMap::new();
        resources.insert(
            Resource::Memory,
            ResourceSeries {
                budget: vec![Some(8 * gib); 4],
                allocated: vec![Some(8 * gib), Some(8 * gib), Some(6 * gib), Some(8 * gib)],
                actual: vec![Some(12 * gib), None, Some(10 * gib), Some(8 * gib)],
                used: Vec::new(),
            },
        );
        let h = PoolHistory {
            pool: "web".into(),
            step_secs: 10,
            capacity: 360,
            time: vec![3600, 3610, 3620, 3630],
            cycle: vec![1, 2, 3, 4],
            resources,
        };
        let text = render(&h);
        assert_eq!(
            text,
            "pool web: 4 point(s), one per 10 s, 01:00:00 → 01:00:30 UTC (30 s; the last hour is kept: 360 points)\n\
             \x20 RESOURCE  SERIES     NOW      MIN      MAX       OLDEST → NEWEST (full block: the largest value shown)\n\
             \x20 memory    budget     8.0 GiB  8.0 GiB  8.0 GiB   ▅▅▅▅\n\
             \x20           allocated  8.0 GiB  6.0 GiB  8.0 GiB   ▅▅▄▅\n\
             \x20           actual     8.0 GiB  8.0 GiB  12.0 GiB  █·▇▅\n"
        );
        let empty = PoolHistory {
            time: Vec::new(),
            cycle: Vec::new(),
            resources: BTreeMap::new(),
            ..h
        };
        assert!(render(&empty).contains("no point yet"));
    }
}
