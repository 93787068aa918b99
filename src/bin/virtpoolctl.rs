//! virtpoolctl: the command-line client of virtpoold's control API.
//!
//! Exit codes: 0 ok, 1 refused or failed (the agent's message is printed),
//! 2 usage.

use clap::{Args, Parser, Subcommand};
use hyper::Method;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use virtpool::api::types::*;
use virtpool::client::{Client, ClientError, DEFAULT_SOCKET};
use virtpool::config::{BytesPolicy, CountPolicy};
use virtpool::model::{PerResource, Resource};
use virtpool::report::table;
use virtpool::units::{self, Amount, Bytes, Unit};

/// Control a running virtpoold: pools, members, reservations, pause.
#[derive(Parser, Debug)]
#[command(name = "virtpoolctl", version, long_about = None)]
struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "VIRTPOOL_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Agent, libvirt connection, mode, last cycle, host.
    Status,
    /// Every pool: budget, allocated, free, members.
    Pools,
    /// One pool, or change pools.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Every domain and its pool.
    Domains,
    /// One domain (by name or UUID).
    Domain { name: String },
    /// What the next cycle would do, with reasons (dry run).
    Plan,
    /// Set a member's reservation (guaranteed minimum), if it fits the pool.
    Allocate(ReserveArgs),
    /// Lower a member's reservation by the given amounts; with none, clear it.
    Release(ReserveArgs),
    /// Run a cycle now.
    Reconcile {
        /// Wait for the cycle to finish.
        #[arg(long)]
        wait: bool,
    },
    /// Re-read the agent's config file (as SIGHUP does) and wait for the
    /// outcome: exit 1 with the reason if the file is refused (the running
    /// config stays).
    Reload,
    /// Stop changing domains (the agent, or one pool); keep planning.
    Pause { pool: Option<String> },
    /// Resume changing domains (the agent, or one pool).
    Resume { pool: Option<String> },
    /// Recent decisions and errors.
    Events {
        /// At most this many (the newest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Prometheus metrics, as served.
    Metrics,
}

#[derive(Subcommand, Debug)]
enum PoolCmd {
    /// Show one pool.
    Show { pool: String },
    /// Add a domain to a pool.
    Add { pool: String, domain: String },
    /// Remove a domain from a pool.
    Remove { pool: String, domain: String },
    /// Create or update a runtime pool from a file (JSON or TOML) or flags.
    Create(CreateArgs),
    /// Delete a runtime pool.
    Delete { pool: String },
}

#[derive(Args, Debug)]
struct CreateArgs {
    pool: String,
    /// Pool spec file, JSON or TOML (the shape of a `[pools.NAME]` table).
    #[arg(long, conflicts_with_all = ["domain", "match_", "vcpus", "memory", "disk_bytes_sec", "disk_iops_sec"])]
    file: Option<PathBuf>,
    /// A member domain (repeatable).
    #[arg(long)]
    domain: Vec<String>,
    /// A glob on domain names (repeatable).
    #[arg(long = "match", id = "match_", value_name = "GLOB")]
    match_: Vec<String>,
    /// vCPU budget: a number or a share like "25%".
    #[arg(long)]
    vcpus: Option<String>,
    /// Memory budget: a size like "16GiB" or a share like "25%".
    #[arg(long)]
    memory: Option<String>,
    /// Disk bandwidth budget: a size per second like "200MiB" or a share.
    #[arg(long)]
    disk_bytes_sec: Option<String>,
    /// Disk IOPS budget: a number or a share.
    #[arg(long)]
    disk_iops_sec: Option<String>,
    /// Also write changes to the persistent domain config.
    #[arg(long)]
    persist: bool,
    /// Wait for the cycle the change triggers.
    #[arg(long)]
    wait: bool,
}

#[derive(Args, Debug)]
struct ReserveArgs {
    pool: String,
    domain: String,
    /// vCPUs.
    #[arg(long)]
    vcpus: Option<u64>,
    /// Memory, a size like "4GiB" or bytes.
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Disk bandwidth, a size per second like "100MiB".
    #[arg(long, value_parser = parse_size)]
    disk_bytes_sec: Option<u64>,
    /// Disk operations per second.
    #[arg(long)]
    disk_iops_sec: Option<u64>,
    /// Wait for the cycle the change triggers.
    #[arg(long)]
    wait: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    units::parse_bytes(s)
}

/// A failure to print: message and exit code.
struct Fail(String, u8);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Fail {
        Fail(e.to_string(), 1)
    }
}

fn main() -> ExitCode {
    if let Some(dir) = virtpool::assets::requested() {
        use clap::CommandFactory;
        // Both binaries' pages and completions (virtpoold has no clap).
        let written = virtpool::assets::generate(Cli::command(), "1", &dir).and_then(|_| {
            virtpool::assets::generate(virtpool::assets::daemon_command(), "8", &dir)
        });
        return match written {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("virtpoolctl: {e}");
                ExitCode::from(1)
            }
        };
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("virtpoolctl: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(Fail(msg, code)) => {
            eprintln!("virtpoolctl: {msg}");
            ExitCode::from(code)
        }
    }
}

fn path_seg(s: &str) -> Result<&str, Fail> {
    virtpool::config::valid_name(s).map_err(|e| Fail(e, 2))?;
    Ok(s)
}

fn wait_q(wait: bool) -> &'static str {
    if wait {
        "?wait=true"
    } else {
        ""
    }
}

async fn run(cli: Cli) -> Result<String, Fail> {
    let c = Client::new(&cli.socket);
    let json = cli.json;
    // (method, path, body) of the one request each command makes.
    let (method, path, body): (Method, String, Option<Vec<u8>>) = match &cli.cmd {
        Cmd::Status => (Method::GET, "/v1/status".into(), None),
        Cmd::Pools => (Method::GET, "/v1/pools".into(), None),
        Cmd::Pool(PoolCmd::Show { pool }) => {
            (Method::GET, format!("/v1/pools/{}", path_seg(pool)?), None)
        }
        Cmd::Pool(PoolCmd::Add { pool, domain }) => (
            Method::POST,
            format!("/v1/pools/{}/members", path_seg(pool)?),
            Some(to_json(&AddMember {
                domain: domain.clone(),
            })?),
        ),
        Cmd::Pool(PoolCmd::Remove { pool, domain }) => (
            Method::DELETE,
            format!(
                "/v1/pools/{}/members/{}",
                path_seg(pool)?,
                path_seg(domain)?
            ),
            None,
        ),
        Cmd::Pool(PoolCmd::Create(a)) => (
            Method::PUT,
            format!("/v1/pools/{}{}", path_seg(&a.pool)?, wait_q(a.wait)),
            Some(to_json(&pool_spec(a)?)?),
        ),
        Cmd::Pool(PoolCmd::Delete { pool }) => (
            Method::DELETE,
            format!("/v1/pools/{}", path_seg(pool)?),
            None,
        ),
        Cmd::Domains => (Method::GET, "/v1/domains".into(), None),
        Cmd::Domain { name } => (
            Method::GET,
            format!("/v1/domains/{}", path_seg(name)?),
            None,
        ),
        Cmd::Plan => (Method::GET, "/v1/plan".into(), None),
        Cmd::Allocate(a) | Cmd::Release(a) => {
            let verb = if matches!(cli.cmd, Cmd::Allocate(_)) {
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
            };
            if verb == "allocate" && req.is_empty() {
                return Err(Fail(
                    "allocate needs at least one of --vcpus, --memory, --disk-bytes-sec, --disk-iops-sec".into(),
                    2,
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
        Cmd::Pause { pool: None } => (Method::POST, "/v1/pause".into(), None),
        Cmd::Resume { pool: None } => (Method::POST, "/v1/resume".into(), None),
        Cmd::Pause { pool: Some(p) } => (
            Method::POST,
            format!("/v1/pools/{}/pause", path_seg(p)?),
            None,
        ),
        Cmd::Resume { pool: Some(p) } => (
            Method::POST,
            format!("/v1/pools/{}/resume", path_seg(p)?),
            None,
        ),
        Cmd::Events { limit } => (Method::GET, format!("/v1/events?limit={limit}"), None),
        Cmd::Metrics => (Method::GET, "/metrics".into(), None),
    };
    let ans = c.request(method, &path, body).await?;
    ans.ok()?;
    if matches!(cli.cmd, Cmd::Metrics) {
        return Ok(String::from_utf8_lossy(&ans.body).into_owned());
    }
    if json {
        let v: serde_json::Value = ans.json()?;
        return serde_json::to_string_pretty(&v)
            .map(|s| s + "\n")
            .map_err(|e| Fail(e.to_string(), 1));
    }
    Ok(match &cli.cmd {
        Cmd::Status => render_status(&ans.json()?),
        Cmd::Pools => {
            let p: PoolsResponse = ans.json()?;
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
        Cmd::Pool(PoolCmd::Show { .. }) => render_pool(&ans.json()?),
        Cmd::Domains => render_domains(&ans.json()?),
        Cmd::Domain { .. } => render_domain(&ans.json()?),
        Cmd::Plan => render_plan(&ans.json()?),
        Cmd::Allocate(a) | Cmd::Release(a) => {
            let r: ReservationResponse = ans.json()?;
            let mut s = format!(
                "{} in pool {}: reservation {}{}\n",
                r.domain,
                r.pool,
                describe(&r.reservation),
                if r.changed { "" } else { " (unchanged)" }
            );
            s.push_str(&render_waited(a.wait && r.changed, r.cycle.as_ref()));
            s
        }
        Cmd::Reconcile { .. } => {
            let r: ReconcileResponse = ans.json()?;
            match &r.cycle {
                Some(c) => render_cycle(c),
                None => "cycle requested\n".into(),
            }
        }
        Cmd::Reload => {
            let r: ReloadResponse = ans.json()?;
            let mut s = format!("config reloaded from {}\n", r.file);
            if !r.restart_only.is_empty() {
                s.push_str(&format!(
                    "changed, applied only on restart: {}\n",
                    r.restart_only.join(", ")
                ));
            }
            s
        }
        Cmd::Events { .. } => render_events(&ans.json()?),
        Cmd::Pool(_) | Cmd::Pause { .. } | Cmd::Resume { .. } => {
            let r: ChangeResponse = ans.json()?;
            let mut s = format!(
                "{}{}\n",
                r.message,
                if r.changed {
                    ""
                } else {
                    " (nothing to change)"
                }
            );
            let waited = matches!(&cli.cmd, Cmd::Pool(PoolCmd::Create(a)) if a.wait);
            s.push_str(&render_waited(waited && r.changed, r.cycle.as_ref()));
            s
        }
        Cmd::Metrics => String::new(),
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Fail> {
    serde_json::to_vec(v).map_err(|e| Fail(e.to_string(), 1))
}

fn pool_spec(a: &CreateArgs) -> Result<PoolSpec, Fail> {
    if let Some(f) = &a.file {
        let text =
            std::fs::read_to_string(f).map_err(|e| Fail(format!("{}: {e}", f.display()), 1))?;
        let is_toml = f.extension().is_some_and(|e| e == "toml");
        let spec: Result<PoolSpec, String> = if is_toml {
            toml::from_str(&text).map_err(|e| e.to_string())
        } else {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        };
        return spec.map_err(|e| Fail(format!("{}: {}", f.display(), e.trim()), 1));
    }
    let amount = |s: &Option<String>, unit: Unit, flag: &str| -> Result<Option<Amount>, Fail> {
        s.as_deref()
            .map(|v| Amount::parse(v, unit).map_err(|e| Fail(format!("--{flag}: {e}"), 2)))
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
        ..Default::default()
    })
}

// ------------------------------------------------------------------ output

fn opt(r: Resource, v: Option<u64>) -> String {
    v.map_or("-".into(), |v| r.human(v))
}

fn describe(r: &PerResource<Option<u64>>) -> String {
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

/// The cycle a change waited for; when it waited and none came (the
/// agent's wait limit), says so: the change itself is saved.
fn render_waited(waited: bool, cycle: Option<&CycleResult>) -> String {
    match cycle {
        Some(c) => render_cycle(c),
        None if waited => "no cycle finished within the agent's wait limit (its cycle is still \
                           running): the change is saved and applies when that cycle ends\n"
            .into(),
        None => String::new(),
    }
}

fn render_cycle(c: &CycleResult) -> String {
    format!(
        "cycle {}: {} action(s), {} failed{}\n",
        c.cycle,
        c.actions,
        c.failed,
        if c.libvirt_connected {
            ""
        } else {
            " (libvirt not connected)"
        }
    )
}

fn render_status(s: &StatusResponse) -> String {
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
    if let Some(h) = &s.host {
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
    if let Some(a) = &s.allocatable {
        rows.push(vec![
            "allocatable".into(),
            format!("{} vCPUs, {}", a.vcpus, units::human_bytes(a.memory)),
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

fn render_pool(p: &PoolView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pool {} ({}){} — {} member(s){}",
        p.name,
        match p.source {
            PoolSource::Config => "config",
            PoolSource::Runtime => "runtime",
        },
        if p.paused { " [paused]" } else { "" },
        p.members.len(),
        if p.unadmitted.is_empty() {
            String::new()
        } else {
            format!(", UNADMITTED: {}", p.unadmitted.join(", "))
        }
    );
    let mut rows = vec![vec![
        "  RESOURCE".to_string(),
        "BUDGET".into(),
        "ALLOCATED".into(),
        "FREE".into(),
        "RESERVED".into(),
    ]];
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
    let mut rows = vec![vec![
        "  DOMAIN".to_string(),
        "STATE".into(),
        "RESOURCE".into(),
        "FLOOR".into(),
        "TARGET".into(),
        "ACTUAL".into(),
        "USED".into(),
        "RESERVED".into(),
        "WHY".into(),
    ]];
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
                    why = format!("{why}; {note}");
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
            let why = m.note.clone().unwrap_or_else(|| {
                if m.admitted {
                    "-".into()
                } else {
                    "unadmitted".into()
                }
            });
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
    if p.members.is_empty() {
        rows.push(vec!["  (no members)".into()]);
    }
    out.push_str(&table(&rows));
    out
}

fn render_domains(d: &DomainsResponse) -> String {
    let mut rows = vec![vec![
        "NAME".to_string(),
        "STATE".into(),
        "POOL".into(),
        "VCPUS".into(),
        "MEMORY".into(),
        "USED".into(),
        "UUID".into(),
    ]];
    for x in &d.domains {
        rows.push(vec![
            x.name.clone(),
            x.state.to_string(),
            x.pool.clone().unwrap_or_else(|| "(unmanaged)".into()),
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

fn render_domain(d: &DomainView) -> String {
    let mut rows = vec![
        vec!["name".to_string(), d.name.clone()],
        vec!["uuid".into(), d.uuid.clone()],
        vec!["state".into(), d.state.to_string()],
        vec![
            "pool".into(),
            match (&d.pool, d.admitted) {
                (Some(p), Some(false)) => format!("{p} (UNADMITTED)"),
                (Some(p), _) => p.clone(),
                (None, _) => "(unmanaged: never touched)".into(),
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
        vec!["reservation".into(), describe(&d.reservation)],
    ];
    for r in Resource::ALL {
        if let Some(a) = d.resources.get(r) {
            rows.push(vec![
                r.key().into(),
                format!(
                    "floor {}, target {}, actual {}, cap {} ({})",
                    r.human(a.floor),
                    r.human(a.target),
                    r.human(a.actual),
                    a.cap.map_or_else(|| "none".to_string(), |c| r.human(c)),
                    a.reason
                ),
            ]);
        }
    }
    table(&rows)
}

fn render_plan(p: &PlanResponse) -> String {
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
        use virtpool::model::Action as A;
        let what = match &a.action {
            A::SetVcpus {
                from, to, reason, ..
            } => format!("vcpus {from} → {to} ({reason})"),
            A::SetMemory {
                from, to, reason, ..
            } => format!(
                "memory {} → {} ({reason})",
                units::human_bytes(*from),
                units::human_bytes(*to)
            ),
            A::SetBlockIoTune { disk, from, to, .. } => format!(
                "disk {disk}: {}/s {} IOPS → {}/s {} IOPS",
                units::human_bytes(from.total_bytes_sec),
                from.total_iops_sec,
                units::human_bytes(to.total_bytes_sec),
                to.total_iops_sec
            ),
            A::SetCpuShares { from, to, .. } => format!(
                "cpu_shares {} → {to}",
                from.map_or("?".into(), |v| v.to_string())
            ),
            A::SetBlkioWeight { from, to, .. } => format!(
                "blkio weight {} → {to}",
                from.map_or("?".into(), |v| v.to_string())
            ),
        };
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

fn render_events(e: &EventsResponse) -> String {
    if e.events.is_empty() {
        return "no events\n".into();
    }
    let mut rows = Vec::new();
    for ev in &e.events {
        let (kind, text) = match &ev.kind {
            EventKind::Action {
                domain,
                resource,
                before,
                after,
                reason,
                result,
                error,
                ..
            } => (
                "action",
                match error {
                    None => format!("{domain} {resource} {before} -> {after} ({reason}): {result}"),
                    Some(e) => {
                        format!("{domain} {resource} {before} -> {after} ({reason}): {result}: {e}")
                    }
                },
            ),
            EventKind::ConfigReload { file, ok, error } => (
                "reload",
                match (ok, error) {
                    (true, _) => format!("{file}: ok"),
                    (false, e) => format!("{file}: refused: {}", e.as_deref().unwrap_or("")),
                },
            ),
            EventKind::LibvirtLost { uri, error } => ("libvirt", format!("{uri} lost: {error}")),
            EventKind::LibvirtRestored { uri } => ("libvirt", format!("{uri} restored")),
            EventKind::Unadmitted {
                pool, domain, note, ..
            } => (
                "unadmitted",
                match note {
                    None => format!("{domain} in pool {pool}"),
                    Some(n) => format!("{domain} in pool {pool}: {n}"),
                },
            ),
            EventKind::Started { version } => ("started", format!("virtpoold {version}")),
            EventKind::Stopping => ("stopping", String::new()),
            EventKind::Change { uid, message } => ("change", format!("uid {uid}: {message}")),
            EventKind::StateSetAside { file, problems } => (
                "set-aside",
                format!("{} (kept in {file})", problems.join("; ")),
            ),
        };
        rows.push(vec![
            ev.seq.to_string(),
            ev.time.clone(),
            kind.to_string(),
            text,
        ]);
    }
    table(&rows)
}
