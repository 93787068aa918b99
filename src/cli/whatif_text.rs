//! `virtpoolctl plan --config FILE | --what-if CHANGE | --with-domain
//! NAME:VCPUS:MEMORY[:POOL]`: the request (`POST /v1/plan`) from the
//! command line, and the answer as a difference from today's targets.

use crate::api::whatif::{ChangeOp, ExtraDomain, WhatIf, WhatIfChange, WhatIfResponse};
use crate::cli::report::{header, table};
use crate::core::model::Resource;
use crate::core::plan_diff::{MemberDiff, PoolDiff, Presence, ResourceDiff};
use crate::core::units::{self, Bytes};
use crate::core::words;
use clap::{Args, Parser, Subcommand};
use std::fmt::Write;
use std::path::PathBuf;

/// `plan`'s options: with any of them, a what-if (nothing is applied).
#[derive(Args, Debug, Default, Clone)]
pub struct PlanArgs {
    /// Plan with this config file instead of the running one, checked as
    /// a reload checks it (nothing is applied).
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub config: Option<PathBuf>,
    /// Plan as if this change were made: 'allocate POOL DOMAIN --memory
    /// 8GiB', 'release POOL DOMAIN ...', 'pool add POOL DOMAIN', 'pool
    /// remove POOL DOMAIN' (repeatable: made in order; nothing is applied).
    #[arg(long = "what-if", value_name = "CHANGE")]
    pub what_if: Vec<String>,
    /// Plan as if this domain were running (not there yet):
    /// NAME:VCPUS:MEMORY, or NAME:VCPUS:MEMORY:POOL to add it to POOL
    /// (repeatable).
    #[arg(long = "with-domain", value_name = "NAME:VCPUS:MEMORY[:POOL]")]
    pub with_domain: Vec<String>,
}

impl PlanArgs {
    /// Whether a candidate is named (else `plan` shows the live plan).
    pub fn is_what_if(&self) -> bool {
        self.config.is_some() || !self.what_if.is_empty() || !self.with_domain.is_empty()
    }
}

/// Why a what-if could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum WhatIfArgError {
    #[error("{}: cannot read: {source}", .file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--what-if {arg:?}: {message}")]
    Change { arg: String, message: String },
    #[error("--with-domain {arg:?}: {message} (NAME:VCPUS:MEMORY[:POOL], e.g. web-9:4:8GiB)")]
    Domain { arg: String, message: String },
}

impl WhatIfArgError {
    /// A file that could not be read (the others are usage errors).
    pub fn is_read(&self) -> bool {
        matches!(self, WhatIfArgError::Read { .. })
    }
}

/// A `--what-if` change, parsed as the command it names.
#[derive(Parser, Debug)]
#[command(no_binary_name = true, name = "--what-if")]
enum ChangeCmd {
    Allocate(ChangeArgs),
    Release(ChangeArgs),
    #[command(subcommand)]
    Pool(PoolChange),
}

#[derive(Subcommand, Debug)]
enum PoolChange {
    Add {
        pool: String,
        domain: String,
        /// Take the domain from the pool it is in.
        #[arg(long = "move")]
        move_: bool,
    },
    Remove {
        pool: String,
        domain: String,
    },
}

#[derive(Args, Debug)]
struct ChangeArgs {
    pool: String,
    domain: String,
    #[arg(long)]
    vcpus: Option<u64>,
    #[arg(long, value_parser = units::parse_bytes)]
    memory: Option<u64>,
    #[arg(long, value_parser = units::parse_bytes)]
    disk_bytes_sec: Option<u64>,
    #[arg(long)]
    disk_iops_sec: Option<u64>,
    /// CPU time in cores (`0.5`, `650%` of one core).
    #[arg(long, value_parser = crate::core::cpu::parse_cores)]
    cpu: Option<u64>,
}

fn change(arg: &str) -> Result<WhatIfChange, WhatIfArgError> {
    let fail = |message: String| WhatIfArgError::Change {
        arg: arg.to_string(),
        message,
    };
    let cmd = ChangeCmd::try_parse_from(arg.split_whitespace()).map_err(|e| {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or("not a change").to_string();
        fail(first.strip_prefix("error: ").unwrap_or(&first).to_string())
    })?;
    let amounts = |op, a: ChangeArgs| WhatIfChange {
        op,
        pool: a.pool,
        domain: a.domain,
        vcpus: a.vcpus,
        memory: a.memory.map(Bytes),
        disk_bytes_sec: a.disk_bytes_sec.map(Bytes),
        disk_iops_sec: a.disk_iops_sec,
        cpu: a.cpu.map(crate::core::cpu::Cores),
        move_: false,
    };
    let bare = |op, pool, domain| WhatIfChange {
        op,
        pool,
        domain,
        vcpus: None,
        memory: None,
        disk_bytes_sec: None,
        disk_iops_sec: None,
        cpu: None,
        move_: false,
    };
    Ok(match cmd {
        ChangeCmd::Allocate(a) => {
            if a.vcpus.is_none()
                && a.memory.is_none()
                && a.disk_bytes_sec.is_none()
                && a.disk_iops_sec.is_none()
                && a.cpu.is_none()
            {
                return Err(fail(
                    "allocate needs at least one of --vcpus, --memory, --disk-bytes-sec, --disk-iops-sec, --cpu".into(),
                ));
            }
            amounts(ChangeOp::Allocate, a)
        }
        ChangeCmd::Release(a) => amounts(ChangeOp::Release, a),
        ChangeCmd::Pool(PoolChange::Add {
            pool,
            domain,
            move_,
        }) => WhatIfChange {
            move_,
            ..bare(ChangeOp::Add, pool, domain)
        },
        ChangeCmd::Pool(PoolChange::Remove { pool, domain }) => {
            bare(ChangeOp::Remove, pool, domain)
        }
    })
}

fn domain(arg: &str) -> Result<ExtraDomain, WhatIfArgError> {
    let fail = |message: &str| WhatIfArgError::Domain {
        arg: arg.to_string(),
        message: message.to_string(),
    };
    let parts: Vec<&str> = arg.split(':').collect();
    let (name, vcpus, memory, pool) = match parts[..] {
        [n, v, m] => (n, v, m, None),
        [n, v, m, p] => (n, v, m, Some(p.to_string())),
        _ => return Err(fail("three or four fields")),
    };
    let vcpus = vcpus
        .parse::<u64>()
        .map_err(|_| fail("VCPUS is not a number"))?;
    let memory = units::parse_bytes(memory).map_err(|e| fail(&format!("MEMORY: {e}")))?;
    Ok(ExtraDomain {
        name: name.to_string(),
        vcpus,
        memory: Bytes(memory),
        pool,
    })
}

/// The body of `POST /v1/plan` for these options (reads the config file).
pub fn request(a: &PlanArgs) -> Result<WhatIf, WhatIfArgError> {
    let mut req = WhatIf::default();
    if let Some(f) = &a.config {
        let read = |source| WhatIfArgError::Read {
            file: f.clone(),
            source,
        };
        // The agent resolves `{config_dir}` from the path: send it whole.
        let abs = std::fs::canonicalize(f).map_err(read)?;
        req.config = Some(std::fs::read_to_string(&abs).map_err(read)?);
        req.config_file = Some(abs.display().to_string());
    }
    for d in &a.with_domain {
        req.domains.push(domain(d)?);
    }
    for c in &a.what_if {
        req.changes.push(change(c)?);
    }
    Ok(req)
}

// ------------------------------------------------------------------ output

fn amount(r: Resource, v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| r.human(v))
}

/// `a → b` in digits that show the move, or `a` when they are the same.
fn pair(r: Resource, a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(x), Some(y)) if x == y => r.human(x),
        (Some(x), Some(y)) => {
            let (f, t) = words::change(r, x, y);
            format!("{f} → {t}")
        }
        _ if a == b => "-".into(),
        _ => format!("{} → {}", amount(r, a), amount(r, b)),
    }
}

/// `n` with the words for one or for several.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The counts of a difference in one line.
fn summary(r: &WhatIfResponse) -> String {
    let d = &r.diff;
    let mut parts = vec![
        count(d.moved, "member moves", "members move"),
        count(
            d.regrouped,
            "joins or leaves a pool",
            "join or leave a pool",
        ),
        count(d.unadmitted, "becomes unadmitted", "become unadmitted"),
    ];
    if d.admitted > 0 {
        parts.push(count(d.admitted, "becomes admitted", "become admitted"));
    }
    let budgets = if d.budgets_short == 0 {
        "every budget holds its members' floors".to_string()
    } else {
        count(
            d.budgets_short,
            "budget no longer holds its members' floors",
            "budgets no longer hold their members' floors",
        )
    };
    format!(
        "{}; {budgets}; actions next cycle {} → {}",
        parts.join(", "),
        r.actions_before,
        r.actions_after
    )
}

/// What happens to a member, in a few words.
fn what(m: &MemberDiff, pool: &str) -> String {
    let mut w = Vec::new();
    match (&m.pool_before, &m.pool_after) {
        (None, Some(_)) => w.push("joins".to_string()),
        (Some(_), None) => w.push("leaves: unmanaged".to_string()),
        (Some(b), Some(a)) if b != a && a == pool => w.push(format!("from pool {b}")),
        (Some(b), Some(a)) if b != a => w.push(format!("to pool {a}")),
        _ => {}
    }
    if m.becomes_unadmitted() {
        w.push("UNADMITTED".into());
    } else if m.becomes_admitted() {
        w.push("admitted".into());
    } else if w.is_empty() {
        w.push("moves".into());
    }
    w.join(", ")
}

fn resource_rows(p: &PoolDiff) -> Vec<Vec<String>> {
    let mut rows = vec![header(&["  RESOURCE", "BUDGET", "ALLOCATED", "FLOORS"])];
    for r in &p.resources {
        let ResourceDiff { resource: x, .. } = *r;
        let floors = if r.fits_after {
            x.human(r.floors_after)
        } else {
            format!("{} — BUDGET NO LONGER FITS THEM", x.human(r.floors_after))
        };
        rows.push(vec![
            format!("  {x}"),
            pair(x, r.budget_before, r.budget_after),
            pair(x, Some(r.allocated_before), Some(r.allocated_after)),
            floors,
        ]);
    }
    rows
}

fn member_rows(p: &PoolDiff) -> Vec<Vec<String>> {
    let mut rows = vec![header(&["  DOMAIN", "CHANGE", "RESOURCE", "TARGET", "WHY"])];
    for m in &p.members {
        let head = vec![format!("  {}", m.name), what(m, &p.name)];
        // Unadmitted (or leaving): no target after, one line with why.
        if m.targets.is_empty() || m.targets.iter().all(|t| t.after.is_none()) {
            let mut row = head;
            let left = if m.admitted_after == Some(false) {
                "left as it is"
            } else {
                "-"
            };
            row.extend(["-".to_string(), left.into()]);
            row.push(m.note_after.clone().unwrap_or_else(|| "-".into()));
            rows.push(row);
            continue;
        }
        for (i, t) in m.targets.iter().enumerate() {
            let mut row = if i == 0 {
                head.clone()
            } else {
                vec![String::new(), String::new()]
            };
            let why = t.reason.map_or_else(|| "-".to_string(), |r| r.to_string());
            row.extend([
                t.resource.key().to_string(),
                pair(t.resource, t.before, t.after),
                why,
            ]);
            rows.push(row);
        }
    }
    rows
}

/// The answer as text: what was tried, the counts, then per pool the
/// budgets and members that differ.
pub fn render(r: &WhatIfResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "what-if on the observation of cycle {} — nothing applied",
        r.cycle
    );
    for c in &r.candidate {
        let _ = writeln!(out, "  with {c}");
    }
    if !r.restart_only.is_empty() {
        let _ = writeln!(
            out,
            "  a reload applies these only on restart: {}",
            r.restart_only.join(", ")
        );
    }
    for p in &r.problems {
        let _ = writeln!(out, "  PROBLEM: {p}");
    }
    let d = &r.diff;
    let _ = writeln!(out, "{}", summary(r));
    if d.is_empty() {
        out.push_str("no difference: today's targets stand\n");
        return out;
    }
    for p in &d.pools {
        out.push('\n');
        let _ = writeln!(
            out,
            "pool {}{}",
            p.name,
            match p.presence {
                Presence::Both => "",
                Presence::Added => " (new)",
                Presence::Removed => " (gone)",
            }
        );
        if !p.resources.is_empty() {
            out.push_str(&table(&resource_rows(p)));
        }
        if !p.members.is_empty() {
            out.push_str(&table(&member_rows(p)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn changes_and_domains_parse_as_their_commands() {
        let c = change("allocate web web-1 --memory 8GiB --vcpus 2").unwrap();
        assert_eq!(c.op, ChangeOp::Allocate);
        assert_eq!((c.pool.as_str(), c.domain.as_str()), ("web", "web-1"));
        assert_eq!((c.vcpus, c.memory), (Some(2), Some(Bytes(8 << 30))));
        let c = change("pool remove db db-1").unwrap();
        assert_eq!((c.op, c.pool.as_str()), (ChangeOp::Remove, "db"));
        let e = change("allocate web web-1").unwrap_err().to_string();
        assert!(e.contains("at least one of"), "{e}");
        let e = change("grow web").unwrap_err().to_string();
        assert!(
            e.starts_with("--what-if \"grow web\": ") && e.contains("grow"),
            "{e}"
        );
        let d = domain("web-9:4:8GiB").unwrap();
        assert_eq!(
            (d.name.as_str(), d.vcpus, d.memory, d.pool),
            ("web-9", 4, Bytes(8 << 30), None)
        );
        assert_eq!(domain("x:1:1GiB:db").unwrap().pool.as_deref(), Some("db"));
        assert!(domain("x:many:1GiB")
            .unwrap_err()
            .to_string()
            .contains("VCPUS"));
        assert!(domain("x:1").is_err());
    }
}
