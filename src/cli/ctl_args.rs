//! `virtpoolctl`'s command line: one clap definition ([`Cli`]) for the
//! parser, `--help`, the man pages and the shell completions.

use crate::cli::client::DEFAULT_SOCKET;
use crate::core::units;
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

/// Control a running virtpoold: pools, members, reservations, pause.
#[derive(Parser, Debug)]
#[command(name = "virtpoolctl", version, long_about = None)]
pub struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "VIRTPOOL_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the API's JSON instead of tables (errors too, on stdout).
    #[arg(long, global = true)]
    pub json: bool,
    /// Write the man pages and shell completions of virtpoolctl and
    /// virtpoold into DIR (for packaging), and list the files written.
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath, exclusive = true)]
    pub generate_assets: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
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
    Domain { domain: String },
    /// What the next cycle would do, with reasons (dry run); with
    /// --config, --what-if or --with-domain, what a change would do, as a
    /// difference from today's targets (nothing is applied).
    Plan(crate::cli::whatif_text::PlanArgs),
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
    Pause {
        pool: Option<String>,
        /// Wait for the cycle the change triggers.
        #[arg(long)]
        wait: bool,
    },
    /// Resume changing domains (the agent, or one pool).
    Resume {
        pool: Option<String>,
        /// Wait for the cycle the change triggers.
        #[arg(long)]
        wait: bool,
    },
    /// Decisions and errors from the audit log, newest last; with
    /// --follow, new ones as they come.
    Events(EventsArgs),
    /// Prometheus metrics, as served (--json: one object per sample).
    Metrics,
    /// A full-screen view that refreshes itself: pools with budget bars,
    /// the chosen pool's last hour, members with target / actual / used
    /// and the reason; keys sort, choose a pool, pause and resume it (q
    /// quits). Without a terminal, or with --once, one screen as text.
    Top(crate::cli::top::TopArgs),
    /// Names for shell completion (used by the completion scripts).
    #[command(name = "__complete", hide = true)]
    Complete(CompleteArgs),
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Show one pool.
    Show { pool: String },
    /// A pool's last hour: budget, allocated, actual and used per
    /// resource, one point per cycle, as sparklines.
    History { pool: String },
    /// Add a domain to a pool (--move takes it from the pool it is in).
    Add {
        pool: String,
        domain: String,
        /// Take the domain from the pool it is in (refused without: a
        /// domain belongs to at most one pool).
        #[arg(long = "move")]
        move_: bool,
        /// Wait for the cycle the change triggers.
        #[arg(long)]
        wait: bool,
    },
    /// Remove a domain from a pool.
    Remove {
        pool: String,
        domain: String,
        /// Wait for the cycle the change triggers.
        #[arg(long)]
        wait: bool,
    },
    /// Create or update a runtime pool from a file (JSON or TOML) or flags.
    Create(CreateArgs),
    /// Delete a runtime pool.
    Delete {
        pool: String,
        /// Wait for the cycle the change triggers.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub pool: String,
    /// Pool spec file, JSON or TOML (the shape of a `[pools.NAME]` table).
    #[arg(long, conflicts_with_all = ["domain", "match_", "vcpus", "memory", "disk_bytes_sec", "disk_iops_sec", "cpu"])]
    pub file: Option<PathBuf>,
    /// A member domain (repeatable).
    #[arg(long)]
    pub domain: Vec<String>,
    /// A glob on domain names (repeatable).
    #[arg(long = "match", id = "match_", value_name = "GLOB")]
    pub match_: Vec<String>,
    /// vCPU budget: a number or a share like "25%".
    #[arg(long)]
    pub vcpus: Option<String>,
    /// Memory budget: a size like "16GiB" or a share like "25%".
    #[arg(long)]
    pub memory: Option<String>,
    /// Disk bandwidth budget: a size per second like "200MiB" or a share.
    #[arg(long)]
    pub disk_bytes_sec: Option<String>,
    /// Disk IOPS budget: a number or a share.
    #[arg(long)]
    pub disk_iops_sec: Option<String>,
    /// CPU-time budget: cores like "6.5" or a share of allocatable CPU
    /// time like "25%".
    #[arg(long)]
    pub cpu: Option<String>,
    /// Also write changes to the persistent domain config.
    #[arg(long)]
    pub persist: bool,
    /// Take the listed domains from the pools they are in (refused
    /// without: a domain belongs to at most one pool).
    #[arg(long = "move")]
    pub move_: bool,
    /// Wait for the cycle the change triggers.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Args, Debug)]
pub struct ReserveArgs {
    pub pool: String,
    pub domain: String,
    /// vCPUs.
    #[arg(long)]
    pub vcpus: Option<u64>,
    /// Memory, a size like "4GiB" or bytes.
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Disk bandwidth, a size per second like "100MiB".
    #[arg(long, value_parser = parse_size)]
    pub disk_bytes_sec: Option<u64>,
    /// Disk operations per second.
    #[arg(long)]
    pub disk_iops_sec: Option<u64>,
    /// CPU time: cores like "0.5", or a percentage of one core like "50%".
    #[arg(long, value_parser = crate::core::cpu::parse_cores)]
    pub cpu: Option<u64>,
    /// Wait for the cycle the change triggers.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// At most this many, the newest [default: 50; with --since, all since
    /// then].
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only events since then: a time ago ("10m", "2h", "1d") or a UTC
    /// time ("2025-05-01 10:00:00").
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Then keep printing new events as they come, until interrupted
    /// (--json: one JSON object per line).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only events about this pool: its members' actions (members as of
    /// now), its unadmitted members, changes to it.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    /// Only events about this domain (name or UUID).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
}

#[derive(Args, Debug)]
pub struct CompleteArgs {
    /// `pools`, `domains`, or `line` (then WORDS: the command line after
    /// the program name, the last being the word completed).
    pub what: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub words: Vec<String>,
}

fn parse_size(s: &str) -> Result<u64, units::UnitError> {
    units::parse_bytes(s)
}

/// `virtpoolctl`'s clap command: what it parses, and what its man pages
/// and completions are generated from.
pub fn command() -> clap::Command {
    Cli::command()
}

impl Cmd {
    /// Whether a change waits for the cycle it triggers (`--wait`).
    pub fn waits(&self) -> bool {
        match self {
            Cmd::Pool(PoolCmd::Add { wait, .. })
            | Cmd::Pool(PoolCmd::Remove { wait, .. })
            | Cmd::Pool(PoolCmd::Delete { wait, .. })
            | Cmd::Pause { wait, .. }
            | Cmd::Resume { wait, .. } => *wait,
            Cmd::Pool(PoolCmd::Create(a)) => a.wait,
            Cmd::Allocate(a) | Cmd::Release(a) => a.wait,
            _ => false,
        }
    }
}
