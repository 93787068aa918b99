//! What `virtpoolctl top` draws, from what it last read of the agent: a
//! header (the last cycle and its timings, the host, its memory pressure),
//! the pools with budget bars, the history of the chosen pool, and the
//! members with target / actual / used and the reason, sorted and
//! filtered as asked. Pure: [`draw`] renders into any ratatui frame, and
//! [`text`] into lines of text (`top --once`, the tests).

use crate::api::history::PoolHistory;
use crate::api::types::{MemberView, PoolView, StatusResponse};
use crate::cli::history_text::clock;
use crate::cli::sparkline::{bar, sparkline};
use crate::core::model::{Reason, Resource};
use crate::core::units::human_bytes;
use ratatui::backend::TestBackend;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::{Frame, Terminal};

/// The order of the member list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Name,
    Pool,
    Vcpus,
    Memory,
    Used,
    Why,
}

impl SortKey {
    /// The next key (`s`).
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Name => SortKey::Pool,
            SortKey::Pool => SortKey::Vcpus,
            SortKey::Vcpus => SortKey::Memory,
            SortKey::Memory => SortKey::Used,
            SortKey::Used => SortKey::Why,
            SortKey::Why => SortKey::Name,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Pool => "pool",
            SortKey::Vcpus => "vcpus",
            SortKey::Memory => "memory",
            SortKey::Used => "used",
            SortKey::Why => "why",
        }
    }
}

/// Everything one screen shows.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub status: Option<StatusResponse>,
    pub pools: Vec<PoolView>,
    /// The history of [`Model::history_pool`], when read.
    pub history: Option<PoolHistory>,
    pub sort: SortKey,
    /// Largest first (names: Z to A).
    pub reverse: bool,
    /// Only this pool's members (and its history).
    pub filter: Option<String>,
    /// The last thing said: an action's outcome, an error.
    pub message: Option<String>,
    /// Members scrolled past.
    pub scroll: usize,
    /// Refreshes stopped (`space` resumes).
    pub frozen: bool,
}

impl Model {
    /// The pool whose history is shown: the filter, else the first pool.
    pub fn history_pool(&self) -> Option<&str> {
        self.filter
            .as_deref()
            .or_else(|| self.pools.first().map(|p| p.name.as_str()))
    }

    /// The next pool filter (`f`): all, then each pool in turn.
    pub fn next_filter(&mut self, back: bool) {
        let names: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
        let at = self
            .filter
            .as_deref()
            .and_then(|f| names.iter().position(|n| *n == f));
        let len = names.len() + 1; // "all" is the last slot
        let cur = at.unwrap_or(names.len());
        let next = if back {
            (cur + len - 1) % len
        } else {
            (cur + 1) % len
        };
        self.filter = names.get(next).map(|s| s.to_string());
        self.scroll = 0;
    }

    /// The members shown, with their pools, in the chosen order.
    pub fn members(&self) -> Vec<(&str, &MemberView)> {
        let mut v: Vec<(&str, &MemberView)> = self
            .pools
            .iter()
            .filter(|p| self.filter.as_deref().is_none_or(|f| f == p.name))
            .flat_map(|p| p.members.iter().map(move |m| (p.name.as_str(), m)))
            .collect();
        let target = |m: &MemberView, r: Resource| m.resources.get(r).map_or(0, |a| a.target);
        v.sort_by(|(pa, a), (pb, b)| {
            let o = match self.sort {
                SortKey::Name => a.name.cmp(&b.name),
                SortKey::Pool => pa.cmp(pb).then_with(|| a.name.cmp(&b.name)),
                SortKey::Vcpus => target(a, Resource::Vcpus).cmp(&target(b, Resource::Vcpus)),
                SortKey::Memory => target(a, Resource::Memory).cmp(&target(b, Resource::Memory)),
                SortKey::Used => used(a).cmp(&used(b)),
                SortKey::Why => why(a).cmp(&why(b)),
            };
            // Numbers: largest first unless reversed; names: A to Z.
            let o = if matches!(self.sort, SortKey::Vcpus | SortKey::Memory | SortKey::Used) {
                o.reverse()
            } else {
                o
            };
            let o = o.then_with(|| a.name.cmp(&b.name));
            if self.reverse {
                o.reverse()
            } else {
                o
            }
        });
        v
    }
}

fn used(m: &MemberView) -> u64 {
    m.resources
        .memory
        .as_ref()
        .and_then(|a| a.used)
        .unwrap_or(0)
}

/// Why a member is where it is: the reasons other than its fair share,
/// or its note.
pub fn why(m: &MemberView) -> String {
    if !m.admitted {
        return m.note.clone().unwrap_or_else(|| "not admitted".to_string());
    }
    let v: Vec<String> = Resource::ALL
        .iter()
        .filter_map(|r| {
            m.resources
                .get(*r)
                .filter(|a| a.reason != Reason::Share)
                .map(|a| format!("{}:{}", r.key(), a.reason))
        })
        .collect();
    if v.is_empty() {
        "share".into()
    } else {
        v.join(" ")
    }
}

fn ms(v: f64) -> String {
    format!("{v:.1}")
}

fn header(m: &Model) -> Vec<Line<'static>> {
    let Some(s) = &m.status else {
        return vec![Line::from("virtpool top — waiting for the agent")];
    };
    let mut first = format!("virtpool top — cycle {}", s.cycle);
    if let Some(c) = &s.last_cycle {
        first.push_str(&format!(" at {} UTC", clock(c.finished_at)));
    }
    let mode = format!("{:?}", s.agent.mode).to_lowercase();
    first.push_str(&format!(
        " — {mode}{}",
        if s.agent.paused { " (PAUSED)" } else { "" }
    ));
    if s.libvirt.connected {
        first.push_str(" — libvirt connected");
    } else {
        first.push_str(" — libvirt NOT CONNECTED");
        if let Some(e) = &s.libvirt.error {
            first.push_str(&format!(": {e}"));
        }
    }
    first.push_str(&format!(
        " — {} domains ({} active), {} unmanaged",
        s.domains.total, s.domains.active, s.domains.unmanaged
    ));
    if s.domains.unadmitted > 0 {
        first.push_str(&format!(", {} UNADMITTED", s.domains.unadmitted));
    }
    let second = match &s.last_cycle {
        Some(c) => format!(
            "last cycle {} ms: observe {}, plan {}, enforce {}; {} action(s), {} failed",
            ms(c.duration_ms),
            ms(c.observe_ms),
            ms(c.plan_ms),
            ms(c.enforce_ms),
            c.actions,
            c.failed
        ),
        None => "no cycle yet".to_string(),
    };
    let mut third = String::from("host: ");
    if let Some(h) = &s.host {
        third.push_str(&format!(
            "{} CPUs, {} memory ({} available)",
            h.cpus,
            human_bytes(h.memory_total),
            human_bytes(h.memory_available)
        ));
    }
    if let Some(a) = &s.allocatable {
        third.push_str(&format!(
            "; the pools share {} vCPUs, {}",
            a.vcpus,
            human_bytes(a.memory)
        ));
    }
    third.push_str(if s.memory_pressure {
        " — MEMORY PRESSURE: memory targets lowered"
    } else {
        " — no memory pressure"
    });
    let mut lines = vec![
        Line::from(Span::styled(
            first,
            Style::new().add_modifier(Modifier::BOLD),
        )),
        Line::from(second),
        Line::from(third),
    ];
    if let Some(e) = &s.config_error {
        lines.push(Line::from(format!("CONFIG ERROR: {e}")));
    }
    lines
}

/// `a/b unit` when both amounts print in the same unit, else `a/b`.
fn of(r: Resource, a: u64, b: u64) -> String {
    let (x, y) = (r.human(a), r.human(b));
    match (x.split_once(' '), y.split_once(' ')) {
        (Some((xn, xu)), Some((yn, yu))) if xu == yu => format!("{xn}/{yn} {yu}"),
        _ => format!("{x}/{y}"),
    }
}

/// `allocated/budget` of one pool resource as a bar with numbers.
fn budget_cell(p: &PoolView, r: Resource) -> String {
    let Some(b) = *p.budget.get(r) else {
        return "-".into();
    };
    let a = *p.allocated.get(r);
    format!("{} {}", bar(a, b, 6), of(r, a, b))
}

/// Column widths that fit the widest cell of each column; the last one
/// takes what is left (cut when too long, never the others).
fn widths(rows: &[Vec<String>]) -> Vec<Constraint> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    (0..cols)
        .map(|c| {
            let w = rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0) as u16;
            if c + 1 == cols {
                Constraint::Fill(1)
            } else {
                Constraint::Length(w)
            }
        })
        .collect()
}

fn pools_table(m: &Model) -> Table<'static> {
    // CPU time where a pool manages it.
    let cpu = m.pools.iter().any(|p| p.budget.cpu.is_some());
    let mut head: Vec<String> = [
        "POOL",
        "MEMBERS",
        "VCPUS",
        "MEMORY",
        "DISK BANDWIDTH",
        "DISK IOPS",
    ]
    .map(String::from)
    .to_vec();
    if cpu {
        head.push("CPU TIME".into());
    }
    let mut cells = vec![head.clone()];
    for p in &m.pools {
        let chosen = m.filter.as_deref() == Some(p.name.as_str());
        let mut name = format!("{}{}", if chosen { "▶ " } else { "  " }, p.name);
        if p.paused {
            name.push_str(" [paused]");
        }
        let mut members = p.member_count.to_string();
        if !p.unadmitted.is_empty() {
            members.push_str(&format!(", {} UNADMITTED", p.unadmitted.len()));
        }
        let mut row = vec![
            name,
            members,
            budget_cell(p, Resource::Vcpus),
            budget_cell(p, Resource::Memory),
            budget_cell(p, Resource::DiskBytesSec),
            budget_cell(p, Resource::DiskIopsSec),
        ];
        if cpu {
            row.push(budget_cell(p, Resource::Cpu));
        }
        cells.push(row);
    }
    let w = widths(&cells);
    let rows: Vec<Row> = cells.into_iter().skip(1).map(Row::new).collect();
    Table::new(rows, w)
        .header(Row::new(head).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(" pools: allocated / budget "))
}

fn history_lines(m: &Model, width: usize) -> Vec<Line<'static>> {
    let Some(h) = &m.history else {
        return vec![Line::from("  (no history read yet)")];
    };
    let mut lines = Vec::new();
    for r in [Resource::Vcpus, Resource::Memory, Resource::Cpu] {
        let Some(s) = h.resources.get(&r) else {
            continue;
        };
        let top = s
            .budget
            .iter()
            .chain(&s.allocated)
            .chain(&s.actual)
            .flatten()
            .max()
            .copied()
            .unwrap_or(0);
        let last = |v: &[Option<u64>]| {
            v.last()
                .copied()
                .flatten()
                .map_or_else(|| "-".to_string(), |x| r.human(x))
        };
        for (i, (name, v)) in [("allocated", &s.allocated), ("actual", &s.actual)]
            .into_iter()
            .enumerate()
        {
            let res = if i == 0 { r.key() } else { "" };
            let label = format!("  {res:<7}{name:<10}{:>11} ", last(v));
            let room = width.saturating_sub(label.chars().count() + 2);
            lines.push(Line::from(format!("{label}{}", sparkline(v, top, room))));
        }
    }
    lines
}

fn members_table(m: &Model, height: usize) -> Table<'static> {
    let head: Vec<String> = [
        "DOMAIN",
        "POOL",
        "STATE",
        "VCPUS T/A",
        "MEMORY TARGET",
        "ACTUAL",
        "USED",
        "WHY",
    ]
    .map(String::from)
    .to_vec();
    let members = m.members();
    let mut cells = vec![head.clone()];
    let mut styles = Vec::new();
    for (pool, x) in members.iter().skip(m.scroll).take(height) {
        let v = x.resources.vcpus.as_ref();
        let mem = x.resources.memory.as_ref();
        let dash = || "-".to_string();
        cells.push(vec![
            x.name.clone(),
            pool.to_string(),
            x.state.to_string(),
            v.map_or_else(dash, |a| format!("{}/{}", a.target, a.actual)),
            mem.map_or_else(dash, |a| human_bytes(a.target)),
            mem.map_or_else(dash, |a| human_bytes(a.actual)),
            mem.and_then(|a| a.used).map_or_else(dash, human_bytes),
            why(x),
        ]);
        // Unadmitted members stand out.
        styles.push(if x.admitted || !x.state.is_active() {
            Style::new()
        } else {
            Style::new().add_modifier(Modifier::REVERSED)
        });
    }
    let title = format!(
        " members of {} — {} shown of {}, sorted by {}{} ",
        m.filter.as_deref().unwrap_or("every pool"),
        cells.len() - 1,
        members.len(),
        m.sort.label(),
        if m.reverse { " (reversed)" } else { "" }
    );
    let w = widths(&cells);
    let rows: Vec<Row> = cells
        .into_iter()
        .skip(1)
        .zip(styles)
        .map(|(c, st)| Row::new(c).style(st))
        .collect();
    Table::new(rows, w)
        .header(Row::new(head).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(title))
}

fn footer(m: &Model) -> Line<'static> {
    let keys = format!(
        "q quit  s sort  S reverse  f/F pool: {}  p pause  r resume  ↑↓ scroll  space {}",
        m.filter.as_deref().unwrap_or("all"),
        if m.frozen { "resume refresh" } else { "freeze" }
    );
    match &m.message {
        Some(msg) => Line::from(vec![
            Span::raw(keys),
            Span::raw("  │ "),
            Span::styled(msg.clone(), Style::new().add_modifier(Modifier::BOLD)),
        ]),
        None => Line::from(keys),
    }
}

/// The rows the pools panel takes (borders and header included).
fn pools_height(m: &Model) -> u16 {
    (m.pools.len() as u16).saturating_add(3)
}

/// The rows the history panel takes.
fn history_height(m: &Model) -> u16 {
    let n = m
        .history
        .as_ref()
        .map_or(1, |h| {
            [Resource::Vcpus, Resource::Memory, Resource::Cpu]
                .iter()
                .filter(|r| h.resources.contains_key(r))
                .count()
                * 2
        })
        .max(1);
    n as u16 + 2
}

/// Draws the whole screen.
pub fn draw(f: &mut Frame, m: &Model) {
    let head = header(m);
    let [top, pools, hist, members, foot] = Layout::vertical([
        Constraint::Length(head.len() as u16),
        Constraint::Length(pools_height(m)),
        Constraint::Length(history_height(m)),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(head), top);
    f.render_widget(pools_table(m), pools);
    let title = match (&m.history, m.history_pool()) {
        (Some(h), Some(p)) => format!(
            " {p}: the last {} point(s), one per {} s ",
            h.time.len(),
            h.step_secs
        ),
        (_, Some(p)) => format!(" {p}: history "),
        _ => " history ".to_string(),
    };
    f.render_widget(
        Paragraph::new(history_lines(m, hist.width as usize)).block(Block::bordered().title(title)),
        hist,
    );
    let rows = members.height.saturating_sub(3) as usize;
    f.render_widget(members_table(m, rows), members);
    f.render_widget(Paragraph::new(footer(m)), foot);
}

/// The members that fit on a screen of `height` rows.
pub fn member_rows(m: &Model, height: u16) -> usize {
    let used = header(m).len() as u16 + pools_height(m) + history_height(m) + 1 + 3;
    height.saturating_sub(used) as usize
}

/// One screen as text, `width` × `height` (the height grown to show every
/// member when `height` is 0), lines right-trimmed.
pub fn text(m: &Model, width: u16, height: u16) -> String {
    let height = if height == 0 {
        let head = header(m).len() as u16;
        head + pools_height(m) + history_height(m) + (m.members().len() as u16).max(1) + 3 + 1
    } else {
        height
    };
    let Ok(mut t) = Terminal::new(TestBackend::new(width, height)) else {
        return String::new();
    };
    if t.draw(|f| draw(f, m)).is_err() {
        return String::new();
    }
    let buf = t.backend().buffer();
    let area: Rect = buf.area;
    let mut out = String::new();
    for y in 0..area.height {
        let mut line = String::new();
        for x in 0..area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
