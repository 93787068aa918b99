//! `POST /v1/plan`: what a change would do before it is made. The body
//! names a candidate — a config file's text, domains not there yet,
//! runtime changes (allocate, release, add, remove) — and the answer is the
//! plan against the live observation (the last published cycle's domains
//! and planner history, as `GET /v1/plan` plans) with the candidate
//! applied, as a difference from today's plan ([`crate::core::plan_diff`]).
//! Nothing is applied or saved.
//!
//! The candidate is checked as the real change would be: a config as a
//! reload checks it ([`crate::agent::load::check_candidate`]: refused
//! with the reload's message), each runtime change by the same
//! transaction the API runs for it (refused with its message), on a copy
//! of the runtime state.

use super::controller::{self, AppState, Ctx};
use super::error::Error;
use super::transactions;
use super::types::{AddMember, Reservation, MAX_VCPUS};
use crate::agent::load;
use crate::agent::report::Report;
use crate::agent::state::RuntimeState;
use crate::core::config::{self, Config};
use crate::core::model::{DomainObs, Resource};
use crate::core::plan_diff::{self, PlanDiff};
use crate::core::units::{self, Bytes};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// The most domains a what-if may add.
pub const MAX_EXTRA_DOMAINS: usize = 1000;

/// `POST /v1/plan`: a candidate. Empty, it is today's plan against
/// itself (no difference).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatIf {
    /// A config file's text, in place of the running config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// The file's path: it names the file in messages and is what
    /// `{config_dir}` stands for (default `candidate.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
    /// Domains not there yet, as if running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<ExtraDomain>,
    /// Runtime changes, made in this order after the domains are added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<WhatIfChange>,
}

/// A domain that is not there yet: running with this many vCPUs and
/// this much memory (also its maxima), no disks, no guest statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraDomain {
    pub name: String,
    pub vcpus: u64,
    /// Bytes, or a size like `"8GiB"`.
    pub memory: Bytes,
    /// Added to this pool (as `pool add` would); without it, it joins
    /// the pool whose rules match its name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// Which runtime change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// `POST /v1/pools/{pool}/allocate`.
    Allocate,
    /// `POST /v1/pools/{pool}/release`.
    Release,
    /// `POST /v1/pools/{pool}/members`.
    Add,
    /// `DELETE /v1/pools/{pool}/members/{domain}`.
    Remove,
}

/// One runtime change, as its endpoint takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatIfChange {
    pub op: ChangeOp,
    pub pool: String,
    /// Domain name or UUID.
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes_sec: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_iops_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<crate::core::cpu::Cores>,
    /// With `add`: take the domain from the pool it is in, as
    /// `"move": true` does for `POST /v1/pools/{pool}/members`.
    #[serde(default, rename = "move", skip_serializing_if = "std::ops::Not::not")]
    pub move_: bool,
}

impl WhatIfChange {
    fn reservation(&self) -> Reservation {
        Reservation {
            domain: self.domain.clone(),
            vcpus: self.vcpus,
            memory: self.memory,
            disk_bytes_sec: self.disk_bytes_sec,
            disk_iops_sec: self.disk_iops_sec,
            cpu: self.cpu,
        }
    }

    /// The change in the words of the command line.
    pub fn words(&self) -> String {
        let mut s = match self.op {
            ChangeOp::Allocate => format!("allocate {} {}", self.pool, self.domain),
            ChangeOp::Release => format!("release {} {}", self.pool, self.domain),
            ChangeOp::Add => format!("pool add {} {}", self.pool, self.domain),
            ChangeOp::Remove => format!("pool remove {} {}", self.pool, self.domain),
        };
        let r = self.reservation().amounts();
        for x in Resource::ALL {
            if let Some(v) = r.get(x) {
                s.push_str(&format!(" {x} {}", x.human(*v)));
            }
        }
        s
    }
}

/// The answer: the candidate's plan as a difference from today's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhatIfResponse {
    /// The cycle whose observation both plans are made on.
    pub cycle: u64,
    /// What was tried, in words, in the order applied.
    pub candidate: Vec<String>,
    /// Settings the candidate config changes that a reload keeps until a
    /// restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_only: Vec<String>,
    /// What would not fit besides members' floors: runtime pools whose
    /// budgets no longer fit the host, a runtime state the candidate
    /// config does not take (the agent then runs the file alone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Actions today's plan issues, and the candidate's.
    pub actions_before: usize,
    pub actions_after: usize,
    pub diff: PlanDiff,
}

fn check_domain(d: &ExtraDomain, observed: &[DomainObs]) -> Result<(), Error> {
    controller::parse_name("domain", &d.name)?;
    if let Some(p) = &d.pool {
        controller::parse_name("pool", p)?;
    }
    if super::views::find_domain(observed, &d.name).is_some() {
        return Err(Error::Conflict(format!(
            "domain {:?} is already there: name a domain that is not",
            d.name
        )));
    }
    if d.vcpus == 0 || d.vcpus > MAX_VCPUS {
        return Err(Error::BadRequest(format!(
            "domain {:?}: vcpus {} is out of range (1 to {MAX_VCPUS})",
            d.name, d.vcpus
        )));
    }
    let max = super::types::max_amount(Resource::Memory);
    if d.memory.0 < (1 << 20) || d.memory.0 > max {
        return Err(Error::BadRequest(format!(
            "domain {:?}: memory {} is out of range (1 MiB to {})",
            d.name,
            units::human_bytes(d.memory.0),
            units::human_bytes(max)
        )));
    }
    Ok(())
}

/// A running domain as a what-if adds it (a UUID made from its name).
fn extra_domain(d: &ExtraDomain) -> DomainObs {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in d.name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let uuid = format!("00000000-0000-4000-8000-{:012x}", h & 0xffff_ffff_ffff);
    // Just started: admitted after every domain already there.
    DomainObs::started(&d.name, &uuid, d.vcpus, d.memory.0)
}

/// The last report with `extra` domains added (the rest of what a plan
/// reads kept; no plan or outcomes: nothing reads them).
fn with_domains(st: &Arc<Report>, extra: Vec<DomainObs>) -> Arc<Report> {
    if extra.is_empty() {
        return st.clone();
    }
    let mut domains = st.domains.clone();
    domains.extend(extra);
    Arc::new(Report {
        cycle: st.cycle,
        mode: st.mode,
        paused: st.paused,
        libvirt: st.libvirt.clone(),
        host: st.host,
        last_cycle: None,
        plan: None,
        domains,
        results: Vec::new(),
        config_error: None,
        basis: st.basis.clone(),
        capacity: st.capacity,
    })
}

/// Runs the candidate's runtime changes on `rt` as the API's transactions.
fn apply_changes(
    ctx: &Ctx,
    rt: &mut RuntimeState,
    req: &WhatIf,
    words: &mut Vec<String>,
) -> Result<(), Error> {
    for d in &req.domains {
        let mut w = format!(
            "domain {} ({} vCPUs, {})",
            d.name,
            d.vcpus,
            units::human_bytes(d.memory.0)
        );
        if let Some(p) = &d.pool {
            let body = AddMember {
                domain: d.name.clone(),
                move_: false,
            };
            transactions::add_member(ctx, rt, p, &body)?;
            w.push_str(&format!(" in pool {p}"));
        }
        words.push(w);
    }
    for c in &req.changes {
        let (pool, res) = (&c.pool, c.reservation());
        match c.op {
            ChangeOp::Allocate => transactions::allocate(ctx, rt, pool, &res).map(drop)?,
            ChangeOp::Release => transactions::release(ctx, rt, pool, &res).map(drop)?,
            ChangeOp::Add => {
                let body = AddMember {
                    domain: c.domain.clone(),
                    move_: c.move_,
                };
                transactions::add_member(ctx, rt, pool, &body).map(drop)?
            }
            ChangeOp::Remove => transactions::remove_member(ctx, rt, pool, &c.domain).map(drop)?,
        }
        words.push(c.words());
    }
    Ok(())
}

/// What runs the candidate's effective config would not take: runtime
/// entries set aside (they no longer fit it), budgets that no longer fit
/// allocatable with the runtime pools.
fn problems(rt: &RuntimeState, cfg: &Config, st: &Report) -> Vec<String> {
    let eff = rt.effective(cfg);
    let mut out: Vec<String> = eff
        .problems
        .iter()
        .map(|p| format!("runtime entry set aside: {p}"))
        .collect();
    if let Some(host) = st.host {
        let alloc = eff.config.host.allocatable(&host);
        out.extend(
            config::budget_problems(&eff.config.pools, &alloc)
                .into_iter()
                .map(|p| format!("with the runtime pools: {p}")),
        );
    }
    out
}

/// `POST /v1/plan`.
pub fn what_if(s: &AppState, req: &WhatIf) -> Result<WhatIfResponse, Error> {
    if req.domains.len() > MAX_EXTRA_DOMAINS {
        return Err(Error::BadRequest(format!(
            "{} domains: at most {MAX_EXTRA_DOMAINS} may be added",
            req.domains.len()
        )));
    }
    let st = s.control().report();
    let host = st.host.ok_or(Error::NotReady)?;
    let rt = s.control().runtime_copy();
    let running = s.control().config();
    let before = controller::current_plan(&st, &rt, &running)?;
    let mut words = Vec::new();
    let mut restart_only = Vec::new();
    let config = match &req.config {
        None => running.clone(),
        Some(text) => {
            let file = req.config_file.as_deref().unwrap_or("candidate.toml");
            let cfg = load::check_candidate(text, Path::new(file), &s.overrides(), &host)
                .map_err(|e| Error::CandidateRefused(e.to_string()))?;
            restart_only = load::restart_only_changes(&running, &cfg)
                .into_iter()
                .map(str::to_owned)
                .collect();
            words.push(format!("config {file}"));
            Arc::new(cfg)
        }
    };
    for (i, d) in req.domains.iter().enumerate() {
        check_domain(d, &st.domains)?;
        if req.domains[..i].iter().any(|o| o.name == d.name) {
            return Err(Error::BadRequest(format!(
                "domain {:?} is named twice",
                d.name
            )));
        }
    }
    let status = with_domains(&st, req.domains.iter().map(extra_domain).collect());
    let ctx = Ctx {
        status: status.clone(),
        config: config.clone(),
    };
    let mut next = rt.clone();
    apply_changes(&ctx, &mut next, req, &mut words)?;
    let after = controller::current_plan(&status, &next, &config)?;
    Ok(WhatIfResponse {
        cycle: st.cycle,
        candidate: words,
        restart_only,
        problems: problems(&next, &config, &status),
        actions_before: before.actions.len(),
        actions_after: after.actions.len(),
        diff: plan_diff::diff(&before, &after),
    })
}

/// A copy of the runtime state in force.
trait RuntimeCopy {
    fn runtime_copy(&self) -> RuntimeState;
}

impl RuntimeCopy for dyn crate::agent::reconciler::Control {
    fn runtime_copy(&self) -> RuntimeState {
        match self.runtime().lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}
