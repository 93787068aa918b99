//! What `virtpoolctl`'s one-request commands send (method, path, body)
//! and how their answers are printed.

use crate::api::types::*;
use crate::cli::change_text;
use crate::cli::client::{path_segment, Client};
use crate::cli::ctl_args::{Cmd, CreateArgs, PoolCmd};
use crate::cli::ctl_output::{pretty, to_json, Fail};
use crate::cli::views_text;
use crate::cli::whatif_text;
use crate::core::config::{BytesPolicy, CountPolicy};
use crate::core::units::{Amount, Bytes, Unit};
use hyper::Method;

/// A pool name as a path segment (checked first: a usage error).
pub fn path_seg(s: &str) -> Result<String, Fail> {
    crate::core::config::valid_name(s).map_err(|e| Fail::usage(e.to_string()))?;
    Ok(path_segment(s))
}

/// A domain name (or UUID) as a path segment, percent-encoded: any name
/// libvirt takes but for control characters.
pub fn domain_seg(s: &str) -> Result<String, Fail> {
    crate::core::config::valid_domain_name(s).map_err(|e| Fail::usage(e.to_string()))?;
    Ok(path_segment(s))
}

/// The query of a change: `?wait=true` with `--wait`.
fn wait_q(wait: bool) -> &'static str {
    if wait {
        "?wait=true"
    } else {
        ""
    }
}

/// The one request a command makes: method, path and body.
type Request = (Method, String, Option<Vec<u8>>);

/// The request of `cmd` (a command that makes one).
fn request(cmd: &Cmd) -> Result<Request, Fail> {
    Ok(match cmd {
        Cmd::Status => (Method::GET, "/v1/status".into(), None),
        Cmd::Pools => (Method::GET, "/v1/pools".into(), None),
        Cmd::Pool(PoolCmd::Show { pool }) => {
            (Method::GET, format!("/v1/pools/{}", path_seg(pool)?), None)
        }
        Cmd::Pool(PoolCmd::History { pool }) => (
            Method::GET,
            format!("/v1/pools/{}/history", path_seg(pool)?),
            None,
        ),
        Cmd::Pool(PoolCmd::Add {
            pool,
            domain,
            move_,
            wait,
        }) => (
            Method::POST,
            format!("/v1/pools/{}/members{}", path_seg(pool)?, wait_q(*wait)),
            Some(to_json(&AddMember {
                domain: domain.clone(),
                move_: *move_,
            })?),
        ),
        Cmd::Pool(PoolCmd::Remove { pool, domain, wait }) => (
            Method::DELETE,
            format!(
                "/v1/pools/{}/members/{}{}",
                path_seg(pool)?,
                domain_seg(domain)?,
                wait_q(*wait)
            ),
            None,
        ),
        Cmd::Pool(PoolCmd::Create(a)) => (
            Method::PUT,
            format!("/v1/pools/{}{}", path_seg(&a.pool)?, wait_q(a.wait)),
            Some(to_json(&PutPool {
                spec: pool_spec(a)?,
                move_: a.move_,
            })?),
        ),
        Cmd::Pool(PoolCmd::Delete { pool, wait }) => (
            Method::DELETE,
            format!("/v1/pools/{}{}", path_seg(pool)?, wait_q(*wait)),
            None,
        ),
        Cmd::Domains => (Method::GET, "/v1/domains".into(), None),
        Cmd::Domain { domain } => (
            Method::GET,
            format!("/v1/domains/{}", domain_seg(domain)?),
            None,
        ),
        Cmd::Plan(a) if a.is_what_if() => {
            let req = whatif_text::request(a).map_err(|e| {
                if e.is_read() {
                    Fail::failed("bad_file", e.to_string())
                } else {
                    Fail::usage(e.to_string())
                }
            })?;
            (Method::POST, "/v1/plan".into(), Some(to_json(&req)?))
        }
        Cmd::Plan(_) => (Method::GET, "/v1/plan".into(), None),
        Cmd::Allocate(a) | Cmd::Release(a) => {
            let verb = if matches!(cmd, Cmd::Allocate(_)) {
                "allocate"
            } else {
                "release"
            };
            let req = Reservation {
                domain: a.domain.clone(),
                vcpus: a.vcpus,
                memory: a.memory.map(Bytes),
                disk_bytes_sec: a.disk_bytes_sec.map(Bytes),
                disk_iops_sec: a.disk_iops_sec,
                cpu: a.cpu.map(crate::core::cpu::Cores),
            };
            if verb == "allocate" && req.is_empty() {
                return Err(Fail::usage(
                    "allocate needs at least one of --vcpus, --memory, --disk-bytes-sec, --disk-iops-sec, --cpu",
                ));
            }
            (
                Method::POST,
                format!("/v1/pools/{}/{verb}{}", path_seg(&a.pool)?, wait_q(a.wait)),
                Some(to_json(&req)?),
            )
        }
        Cmd::Reconcile { wait } => (
            Method::POST,
            format!("/v1/reconcile{}", wait_q(*wait)),
            None,
        ),
        Cmd::Reload => (Method::POST, "/v1/reload".into(), None),
        Cmd::Pause { pool: None, wait } => {
            (Method::POST, format!("/v1/pause{}", wait_q(*wait)), None)
        }
        Cmd::Resume { pool: None, wait } => {
            (Method::POST, format!("/v1/resume{}", wait_q(*wait)), None)
        }
        Cmd::Pause {
            pool: Some(p),
            wait,
        } => (
            Method::POST,
            format!("/v1/pools/{}/pause{}", path_seg(p)?, wait_q(*wait)),
            None,
        ),
        Cmd::Resume {
            pool: Some(p),
            wait,
        } => (
            Method::POST,
            format!("/v1/pools/{}/resume{}", path_seg(p)?, wait_q(*wait)),
            None,
        ),
        Cmd::Metrics => (Method::GET, "/metrics".into(), None),
        Cmd::Events(_) | Cmd::Complete(_) | Cmd::Top(_) => {
            return Err(Fail::failed("failed", "not a one-request command"))
        }
    })
}

/// Runs a command that makes one request: its answer as text (or, with
/// `json`, as the API's JSON).
pub async fn run(c: &Client, cmd: &Cmd, json: bool) -> Result<String, Fail> {
    let (method, path, body) = request(cmd)?;
    let ans = c.request(method, &path, body).await?;
    ans.ok()?;
    if matches!(cmd, Cmd::Metrics) {
        let text = String::from_utf8_lossy(&ans.body);
        if !json {
            return Ok(text.into_owned());
        }
        let samples = crate::cli::promtext::parse(&text)
            .map_err(|e| Fail::failed("bad_answer", e.to_string()))?;
        return pretty(&serde_json::json!({ "metrics": samples }));
    }
    if json {
        let v: serde_json::Value = ans.json()?;
        return pretty(&v);
    }
    let waited = cmd.waits();
    Ok(match cmd {
        Cmd::Status => views_text::render_status(&ans.json()?),
        Cmd::Pools => views_text::render_pools(&ans.json()?),
        Cmd::Pool(PoolCmd::Show { .. }) => views_text::render_pool(&ans.json()?),
        Cmd::Pool(PoolCmd::History { .. }) => crate::cli::history_text::render(&ans.json()?),
        Cmd::Domains => views_text::render_domains(&ans.json()?),
        Cmd::Domain { .. } => views_text::render_domain(&ans.json()?),
        Cmd::Plan(a) if a.is_what_if() => whatif_text::render(&ans.json()?),
        Cmd::Plan(_) => views_text::render_plan(&ans.json()?),
        Cmd::Allocate(_) | Cmd::Release(_) => change_text::render_reservation(&ans.json()?, waited),
        Cmd::Reconcile { .. } => change_text::render_reconcile(&ans.json()?),
        Cmd::Reload => change_text::render_reload(&ans.json()?),
        Cmd::Pool(_) | Cmd::Pause { .. } | Cmd::Resume { .. } => {
            change_text::render_change(&ans.json()?, matches!(cmd, Cmd::Pause { .. }), waited)
        }
        Cmd::Metrics | Cmd::Events(_) | Cmd::Complete(_) | Cmd::Top(_) => String::new(),
    })
}

/// The spec of `pool create`: the file's, or the one the flags give.
fn pool_spec(a: &CreateArgs) -> Result<PoolSpec, Fail> {
    if let Some(f) = &a.file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Fail::failed("bad_file", format!("{}: {e}", f.display())))?;
        let is_toml = f.extension().is_some_and(|e| e == "toml");
        let spec: Result<PoolSpec, String> = if is_toml {
            toml::from_str(&text).map_err(|e| e.to_string())
        } else {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        };
        return spec
            .map_err(|e| Fail::failed("bad_file", format!("{}: {}", f.display(), e.trim())));
    }
    let amount = |s: &Option<String>, unit: Unit, flag: &str| -> Result<Option<Amount>, Fail> {
        s.as_deref()
            .map(|v| Amount::parse(v, unit).map_err(|e| Fail::usage(format!("--{flag}: {e}"))))
            .transpose()
    };
    let count = |b: Option<Amount>| {
        b.map(|budget| CountPolicy {
            budget: Some(budget),
            ..Default::default()
        })
    };
    let bytes = |b: Option<Amount>| {
        b.map(|budget| BytesPolicy {
            budget: Some(budget),
            ..Default::default()
        })
    };
    Ok(PoolSpec {
        domains: a.domain.clone(),
        match_: a.match_.clone(),
        persist: a.persist,
        vcpus: count(amount(&a.vcpus, Unit::Count, "vcpus")?),
        memory: bytes(amount(&a.memory, Unit::Bytes, "memory")?),
        disk_bytes_sec: bytes(amount(&a.disk_bytes_sec, Unit::Bytes, "disk-bytes-sec")?),
        disk_iops_sec: count(amount(&a.disk_iops_sec, Unit::Count, "disk-iops-sec")?),
        cpu: a
            .cpu
            .as_deref()
            .map(|v| {
                crate::core::cpu::parse_budget(v).map_err(|e| Fail::usage(format!("--cpu: {e}")))
            })
            .transpose()?
            .map(|budget| crate::core::config::CpuPolicy {
                budget: Some(budget),
                ..Default::default()
            }),
        ..Default::default()
    })
}
