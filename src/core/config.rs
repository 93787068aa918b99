//! The configuration file (`/etc/virtpool/virtpool.toml`): parsed with serde
//! (unknown keys rejected), then validated into a [`Config`]. Every error
//! names the file, the key and the problem.
//!
//! Pools are written as TOML tables; the API accepts the same shape as JSON
//! ([`PoolSpec`]), so a runtime pool and a configured pool validate alike.

use crate::core::cpu::{self, Cores, CpuTuning, RawCpuTuning};
use crate::core::model::{PerResource, Resource};
use crate::core::names;
use crate::core::units::{self, Amount, Bytes, Secs};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod live;
mod problems;
pub use crate::core::names::NameError;
pub use problems::{
    BudgetProblem, BudgetProblems, MembershipConflict, PoolError, PoolErrors, PoolProblem,
};

/// Default place of the config file.
pub const DEFAULT_PATH: &str = "/etc/virtpool/virtpool.toml";
/// Shares a member gets when none are configured.
pub const DEFAULT_SHARES: u64 = 1000;
/// Largest accepted `shares` value.
pub const MAX_SHARES: u64 = 1_000_000;
/// Default `agent.audit_max_size`: rotate the audit log past this.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 10 << 20;
/// Default `agent.audit_keep`: rotated audit files kept.
pub const DEFAULT_AUDIT_KEEP: usize = 3;
/// Default `agent.resync_interval`: slow facts read again at the latest
/// after this.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);

/// Why a log filter (`agent.log_level`, `RUST_LOG`) is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogFilterError {
    #[error("the filter is empty")]
    Empty,
    #[error("{0}")]
    Invalid(String),
}

/// Parses a log filter: `level` (`error`, `warn`, `info`, `debug`,
/// `trace`, `off`), `target=level` (the target and the modules under it:
/// `virtpool::agent::reconciler=debug`), or several of them separated by
/// commas. A bare level is the default for targets no directive names;
/// without one, only the named targets log.
pub fn parse_log_filter(s: &str) -> Result<tracing_subscriber::filter::Targets, LogFilterError> {
    if s.trim().is_empty() {
        return Err(LogFilterError::Empty);
    }
    s.parse()
        .map_err(|e: tracing_subscriber::filter::ParseError| LogFilterError::Invalid(e.to_string()))
}

/// Why a config was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: {}", .problems.join("; "))]
    Invalid {
        file: PathBuf,
        problems: Vec<String>,
    },
}

/// `enforce` changes domains; `observe` plans and reports only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Observe,
}

/// How a pool sizes its members' memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryPolicy {
    /// Each member gets its weighted share of the budget.
    #[default]
    Share,
    /// Each member gets what its guest uses plus `target_free`, at most its share.
    Demand,
}

// ---------------------------------------------------------------- raw file

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    host: RawHost,
    #[serde(default)]
    memory: RawMemoryTuning,
    #[serde(default)]
    vcpus: RawVcpuTuning,
    #[serde(default)]
    disk: RawDiskTuning,
    #[serde(default)]
    cpu: RawCpuTuning,
    #[serde(default)]
    pools: BTreeMap<String, PoolSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    mode: Option<Mode>,
    interval: Option<Secs>,
    libvirt_uri: Option<String>,
    state_dir: Option<PathBuf>,
    log_level: Option<String>,
    metrics_listen: Option<SocketAddr>,
    resync_interval: Option<Secs>,
    audit_max_size: Option<Bytes>,
    audit_keep: Option<u64>,
    on_release: Option<OnRelease>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    socket: Option<PathBuf>,
    group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    cpus: Option<u64>,
    memory: Option<Bytes>,
    reserved_cpus: Option<u64>,
    reserved_memory: Option<Bytes>,
    cpu_allocation_ratio: Option<f64>,
    memory_allocation_ratio: Option<f64>,
    disk_bytes_sec: Option<Bytes>,
    disk_iops_sec: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemoryTuning {
    min_change: Option<Bytes>,
    #[serde(default, deserialize_with = "opt_bytes_amount")]
    max_shrink: Option<Amount>,
    #[serde(default, deserialize_with = "opt_bytes_amount")]
    guest_free_min: Option<Amount>,
    #[serde(default, deserialize_with = "opt_bytes_amount")]
    target_free: Option<Amount>,
    #[serde(default, deserialize_with = "opt_bytes_amount")]
    pressure_threshold: Option<Amount>,
    stats_period: Option<Secs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVcpuTuning {
    cooldown: Option<Secs>,
    unplug_backoff: Option<Secs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiskTuning {
    burst_factor: Option<f64>,
}

fn opt_bytes_amount<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Amount>, D::Error> {
    units::bytes_amount::deserialize(d).map(Some)
}

fn opt_count_amount<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Amount>, D::Error> {
    units::count_amount::deserialize(d).map(Some)
}

fn ser_opt_amount<S: serde::Serializer>(a: &Option<Amount>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => a.serialize(s),
        None => s.serialize_none(),
    }
}

/// A pool as written in the config file (`[pools.NAME]`) or sent to
/// `PUT /v1/pools/NAME`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Domains (names or UUIDs) that belong to this pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// Glob patterns on domain names (`"web-*"`): one string or a list.
    #[serde(
        default,
        rename = "match",
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub match_: Vec<String>,
    /// Also write changes to the persistent domain config.
    #[serde(default)]
    pub persist: bool,
    /// Leave the members untouched (planned and reported only).
    #[serde(default)]
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<CountPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<BytesPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes_sec: Option<BytesPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_iops_sec: Option<CountPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPolicy>,
    /// Per-domain overrides of min / max / shares, keyed by name or UUID.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<String, MemberSpec>,
}

/// Per-domain overrides inside a pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<CountPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<BytesPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes_sec: Option<BytesPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_iops_sec: Option<CountPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPolicy>,
}

/// Budget and member defaults of CPU time, in cores (`0.5`, `"6.5"`;
/// `min` and `max` also as a percentage of one core, `"650%"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuPolicy {
    /// Pool budget: cores, or a share of allocatable CPU time (`"25%"`).
    /// Pool level only.
    #[serde(default, with = "cpu::budget", skip_serializing_if = "Option::is_none")]
    pub budget: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Cores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Cores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    /// `share` (default) or `demand`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<MemoryPolicy>,
}

/// Budget and member defaults of a counted resource (vCPUs, IOPS).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountPolicy {
    /// Pool budget: a number or a share of allocatable (`"25%"`). Pool level only.
    #[serde(
        default,
        deserialize_with = "opt_count_amount",
        serialize_with = "ser_opt_amount",
        skip_serializing_if = "Option::is_none"
    )]
    pub budget: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
}

/// Budget and member defaults of a sized resource (memory, disk bandwidth).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BytesPolicy {
    /// Pool budget: a size or a share of allocatable (`"25%"`). Pool level only.
    #[serde(
        default,
        deserialize_with = "opt_bytes_amount",
        serialize_with = "ser_opt_amount",
        skip_serializing_if = "Option::is_none"
    )]
    pub budget: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    /// Memory only: `share` (default) or `demand`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<MemoryPolicy>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => Ok(vec![s]),
        OneOrMany::Many(v) => Ok(v),
    }
}

/// Smallest `agent.audit_max_size` (a rotation per few hundred records
/// below that would lose history for nothing).
pub const MIN_AUDIT_BYTES: u64 = 64 << 10;
/// Largest `agent.audit_max_size`.
pub const MAX_AUDIT_BYTES: u64 = 1 << 30;
/// Most rotated audit files (`agent.audit_keep`).
pub const MAX_AUDIT_KEEP: u64 = 100;

/// Largest vCPU amount anywhere (budgets, `min`, `max`, reservations,
/// `host.cpus`): 65,536.
pub const MAX_VCPUS: u64 = 1 << 16;
/// Largest byte amount (memory, disk bandwidth): 1 EiB.
pub const MAX_BYTES: u64 = 1 << 60;
/// Largest IOPS amount.
pub const MAX_IOPS: u64 = 1 << 40;

/// Largest amount of a resource, in its unit, in the config file, in an
/// API request and in the state file.
pub fn max_amount(r: Resource) -> u64 {
    match r {
        Resource::Vcpus => MAX_VCPUS,
        Resource::Memory | Resource::DiskBytesSec => MAX_BYTES,
        Resource::DiskIopsSec => MAX_IOPS,
        Resource::Cpu => cpu::MAX_MILLI,
    }
}

/// Shortest `agent.interval`.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest duration of any setting (`agent.interval`,
/// `agent.resync_interval`, `memory.stats_period`, `vcpus.cooldown`,
/// `vcpus.unplug_backoff`): one day. Timers and deadlines are computed
/// from them; nothing longer is useful.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

// ---------------------------------------------------------------- validated

/// Agent-wide settings (`[agent]`, `[api]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentConfig {
    pub mode: Mode,
    pub interval: Duration,
    pub libvirt_uri: String,
    pub state_dir: PathBuf,
    pub log_level: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    /// Longest a domain's slow facts (XML, I/O limits, weights) are reused
    /// without an event saying they changed; zero reads them every cycle.
    pub resync_interval: Duration,
    /// The audit log rotates when it would grow past this many bytes.
    pub audit_max_bytes: u64,
    /// Rotated audit files kept (`audit.jsonl.1` …).
    pub audit_keep: usize,
    pub socket: PathBuf,
    pub api_group: String,
    /// What happens to what the agent changed on a domain that leaves
    /// management (removed from its pool, pool deleted, config changed).
    pub on_release: OnRelease,
}

/// `agent.on_release`: give back what the agent changed on a domain that
/// leaves management, or leave it as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRelease {
    /// Set back what the domain had before the agent first changed it.
    #[default]
    Restore,
    /// Leave the values the agent set.
    Keep,
}

/// Host capacity settings (`[host]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostConfig {
    /// Declared CPUs instead of measured ones.
    pub cpus: Option<u64>,
    /// Declared memory instead of measured memory, bytes.
    pub memory: Option<u64>,
    pub reserved_cpus: u64,
    pub reserved_memory: u64,
    pub cpu_allocation_ratio: f64,
    pub memory_allocation_ratio: f64,
    pub disk_bytes_sec: Option<u64>,
    pub disk_iops_sec: Option<u64>,
}

/// Stability and safety knobs of the planner (`[memory]`, `[vcpus]`, `[disk]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tuning {
    /// Memory changes smaller than this are not issued (bytes).
    pub memory_min_change: u64,
    /// Largest balloon shrink per cycle: bytes or a fraction of current memory.
    pub memory_max_shrink: Amount,
    /// Margin above guest used memory: bytes or a fraction of the domain's max memory.
    pub guest_free_min: Amount,
    /// Demand policy: free fraction to leave in the guest (0..1).
    pub target_free: f64,
    /// Host available memory below this is memory pressure: bytes or fraction of total.
    pub pressure_threshold: Amount,
    pub stats_period: Duration,
    pub vcpu_cooldown: Duration,
    /// `vcpus.unplug_backoff`: accepted for compatibility, not used. A
    /// timed-out vCPU change holds the domain's vCPUs for the rest of its
    /// run instead of being retried after a delay.
    pub vcpu_unplug_backoff: Duration,
    /// `*_max` sent with each disk rate = rate × burst_factor.
    pub disk_burst_factor: f64,
    /// `[cpu]`.
    pub cpu: CpuTuning,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            memory_min_change: 16 << 20,
            memory_max_shrink: Amount::Fraction(0.05),
            guest_free_min: Amount::Fraction(0.10),
            target_free: 0.20,
            pressure_threshold: Amount::Fraction(0.10),
            stats_period: Duration::from_secs(5),
            vcpu_cooldown: Duration::from_secs(60),
            vcpu_unplug_backoff: Duration::from_secs(300),
            disk_burst_factor: 1.0,
            cpu: CpuTuning::default(),
        }
    }
}

/// Member limits for one resource: reservation, limit, weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    pub min: Option<u64>,
    pub max: Option<u64>,
    pub shares: Option<u64>,
}

impl Limits {
    /// `other`'s fields where set, else ours.
    pub fn overlay(self, other: Limits) -> Limits {
        Limits {
            min: other.min.or(self.min),
            max: other.max.or(self.max),
            shares: other.shares.or(self.shares),
        }
    }
}

/// A resource a pool manages: its budget and the member defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PoolResource {
    pub budget: Amount,
    pub defaults: Limits,
}

/// A validated pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pool {
    pub name: String,
    pub domains: Vec<String>,
    pub globs: Vec<String>,
    pub persist: bool,
    pub paused: bool,
    pub memory_policy: MemoryPolicy,
    /// The same for CPU time (`cpu.policy`).
    pub cpu_policy: MemoryPolicy,
    /// `None` for a resource the pool does not manage.
    pub resources: PerResource<Option<PoolResource>>,
    /// Per-domain overrides, keyed by name or UUID.
    pub members: BTreeMap<String, PerResource<Limits>>,
    /// Defined at run time through the API (not in the config file).
    pub runtime: bool,
    /// Domains removed from this pool at run time (names or UUIDs): the
    /// pool never matches them.
    pub exclude: Vec<String>,
}

impl Pool {
    /// The limits of one member for one resource: pool defaults, then the
    /// member's override (looked up by name, then UUID).
    pub fn member_limits(&self, name: &str, uuid: &str, r: Resource) -> Limits {
        let base = self
            .resources
            .get(r)
            .map(|p| p.defaults)
            .unwrap_or_default();
        match self.members.get(name).or_else(|| self.members.get(uuid)) {
            Some(m) => base.overlay(*m.get(r)),
            None => base,
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The file it came from (for messages).
    pub source: PathBuf,
    pub agent: AgentConfig,
    pub host: HostConfig,
    pub tuning: Tuning,
    pub pools: BTreeMap<String, Pool>,
}

/// Allocatable capacity per resource (0 where the host declares none).
pub type Allocatable = PerResource<u64>;

impl HostConfig {
    /// Allocatable = (capacity − reserved) × ratio, per resource.
    pub fn allocatable(&self, cap: &crate::core::model::HostCapacity) -> Allocatable {
        let cpus = self.cpus.unwrap_or(cap.cpus);
        let mem = self.memory.unwrap_or(cap.memory_total);
        let scale = |v: u64, ratio: f64| -> u64 {
            let x = (v as f64 * ratio).floor();
            if x >= u64::MAX as f64 {
                u64::MAX
            } else {
                x as u64
            }
        };
        PerResource {
            vcpus: scale(
                cpus.saturating_sub(self.reserved_cpus),
                self.cpu_allocation_ratio,
            ),
            memory: units::floor_mib(scale(
                mem.saturating_sub(self.reserved_memory),
                self.memory_allocation_ratio,
            )),
            disk_bytes_sec: self.disk_bytes_sec.unwrap_or(0),
            disk_iops_sec: self.disk_iops_sec.unwrap_or(0),
            // Real cores, not overcommitted: CPU time is a rate of the
            // host's cores (see docs/allocation.md, "CPU time").
            cpu: cpus
                .saturating_sub(self.reserved_cpus)
                .saturating_mul(cpu::MILLI),
        }
    }
}

impl Config {
    /// Reads and validates a config file (not checked against a host yet:
    /// see [`Config::check_budgets`]).
    /// Reads at most [`MAX_CONFIG_BYTES`] from a regular file (a FIFO or a
    /// device is refused, not waited on); text that is not UTF-8 is refused
    /// with the line and column of the first bad byte.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = read_config_file(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::parse_bytes(&bytes, path)
    }

    /// [`Config::parse`] of raw bytes: invalid UTF-8 is refused with its
    /// position.
    pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<Config, ConfigError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Config::parse(text, path),
            Err(e) => Err(ConfigError::Parse {
                file: path.to_owned(),
                message: utf8_position(bytes, e.valid_up_to()),
            }),
        }
    }

    /// Parses and validates config text; `path` is used in messages. A
    /// text with no setting at all (empty, or only blank lines and
    /// comments) is refused: it is what a truncated write or a wrong
    /// file leaves, and taken as valid it would drop every pool.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        if text
            .lines()
            .map(str::trim)
            .all(|l| l.is_empty() || l.starts_with('#'))
        {
            return Err(ConfigError::Parse {
                file: path.to_owned(),
                message: "the file has no settings (empty, or only comments): refusing it \
                          (a truncated or wrong file would drop every pool); an agent with \
                          no pools needs at least one setting, e.g. [agent] mode = \"observe\""
                    .into(),
            });
        }
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let mut problems = Vec::new();
        let cfg = build(raw, path, &mut problems);
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                file: path.to_owned(),
                problems,
            })
        }
    }

    /// The budget of each pool resolved against `alloc`.
    pub fn pool_budget(pool: &Pool, alloc: &Allocatable) -> PerResource<Option<u64>> {
        PerResource::from_fn(|r| {
            pool.resources
                .get(r)
                .map(|p| p.budget.resolve(*alloc.get(r)))
        })
    }

    /// Σ pool budgets must fit allocatable, per resource. Percent budgets of
    /// disk resources need the host to declare its disk capacity.
    pub fn check_budgets(&self, alloc: &Allocatable) -> Result<(), ConfigError> {
        let problems = budget_problems(&self.pools, alloc);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                file: self.source.clone(),
                problems: problems.iter().map(ToString::to_string).collect(),
            })
        }
    }

    /// Checks the config against this host: the reservations leave
    /// something of the host (each named by its key), and Σ pool budgets
    /// fit allocatable. Returns allocatable.
    pub fn check_host(
        &self,
        cap: &crate::core::model::HostCapacity,
    ) -> Result<Allocatable, ConfigError> {
        let mut problems = Vec::new();
        let h = &self.host;
        let (cpus, cpus_from) = match h.cpus {
            Some(c) => (c, "host.cpus"),
            None => (cap.cpus, "measured"),
        };
        if h.reserved_cpus > cpus {
            problems.push(format!(
                "host.reserved_cpus ({}) is more than the host's {cpus} CPUs ({cpus_from})",
                h.reserved_cpus
            ));
        }
        let (mem, mem_from) = match h.memory {
            Some(m) => (m, "host.memory"),
            None => (cap.memory_total, "measured"),
        };
        if h.reserved_memory > mem {
            problems.push(format!(
                "host.reserved_memory ({}) is more than the host's memory, {} ({mem_from})",
                units::human_bytes(h.reserved_memory),
                units::human_bytes(mem)
            ));
        }
        let alloc = h.allocatable(cap);
        problems.extend(
            budget_problems(&self.pools, &alloc)
                .iter()
                .map(ToString::to_string),
        );
        if problems.is_empty() {
            Ok(alloc)
        } else {
            Err(ConfigError::Invalid {
                file: self.source.clone(),
                problems,
            })
        }
    }

    /// Validates one pool spec (from the API) under this config's rules.
    pub fn validate_pool(name: &str, spec: &PoolSpec) -> Result<Pool, PoolErrors> {
        let mut problems = Vec::new();
        let pool = build_pool(name, spec, &mut problems);
        if problems.is_empty() {
            Ok(pool)
        } else {
            Err(PoolErrors(problems))
        }
    }

    /// A config with no pools and defaults everywhere.
    pub fn empty(path: &Path) -> Config {
        let mut p = Vec::new();
        build(RawConfig::default(), path, &mut p)
    }
}

/// Problems with Σ budgets against allocatable (empty when they fit).
pub fn budget_problems(pools: &BTreeMap<String, Pool>, alloc: &Allocatable) -> Vec<BudgetProblem> {
    let mut problems = Vec::new();
    for r in Resource::ALL {
        let mut sum: u64 = 0;
        let mut parts = Vec::new();
        for p in pools.values() {
            if let Some(res) = p.resources.get(r) {
                if res.budget.is_fraction()
                    && *alloc.get(r) == 0
                    && matches!(r, Resource::DiskBytesSec | Resource::DiskIopsSec)
                {
                    problems.push(BudgetProblem::PercentOfUndeclared {
                        pool: p.name.clone(),
                        resource: r,
                    });
                }
                let b = res.budget.resolve(*alloc.get(r));
                sum = sum.saturating_add(b);
                parts.push((p.name.clone(), b));
            }
        }
        let a = *alloc.get(r);
        let declared = match r {
            Resource::Vcpus | Resource::Memory | Resource::Cpu => true,
            _ => a > 0,
        };
        if declared && sum > a {
            problems.push(BudgetProblem::AboveAllocatable {
                resource: r,
                sum,
                parts,
                allocatable: a,
            });
        }
    }
    problems
}

/// Expands `{config_dir}` (the config file's absolute directory) in paths
/// and URIs, so a config can point at files beside it from any folder.
fn expand(s: &str, path: &Path) -> String {
    if !s.contains("{config_dir}") {
        return s.to_owned();
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    s.replace("{config_dir}", &abs.to_string_lossy())
}

/// Reads a config file: a regular file (followed if a link: the config
/// is the operator's), opened without blocking, at most
/// [`MAX_CONFIG_BYTES`].
fn read_config_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_CONFIG_BYTES + 1), &mut out)?;
    if out.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than the {MAX_CONFIG_BYTES} bytes allowed"),
        ));
    }
    Ok(out)
}

/// "not valid UTF-8 at line L, column C (byte N)" for the first bad byte.
fn utf8_position(bytes: &[u8], bad: usize) -> String {
    let before = &bytes[..bad.min(bytes.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    // The bytes before it on its line are valid UTF-8: count characters.
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    format!("not valid UTF-8 at line {line}, column {column} (byte {bad})")
}

/// A duration outside `[min, max]`: the key, the value and the range.
fn check_duration(
    key: &str,
    d: Duration,
    min: Duration,
    max: Duration,
    problems: &mut Vec<String>,
) {
    if d < min || d > max {
        problems.push(format!(
            "{key} ({}) is out of range: {} to {}",
            humantime::format_duration(d),
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
}

/// An amount above the largest of its kind: the key, the value, the bound.
fn check_at_most(key: &str, v: u64, max: u64, bytes: bool, problems: &mut Vec<String>) {
    if v > max {
        let show = |x: u64| {
            if bytes {
                units::human_bytes(x)
            } else {
                x.to_string()
            }
        };
        problems.push(format!(
            "{key} ({}) is out of range: at most {}",
            show(v),
            show(max)
        ));
    }
}

/// A path setting (`agent.state_dir`, `api.socket`) must be absolute: the
/// agent's working directory is not a place to keep anything.
fn check_path(key: &str, p: &Path, problems: &mut Vec<String>) {
    if p.as_os_str().is_empty() {
        problems.push(format!("{key} is empty: give an absolute path"));
    } else if !p.is_absolute() {
        problems.push(format!("{key} ({}) is not an absolute path", p.display()));
    }
}

fn build(raw: RawConfig, path: &Path, problems: &mut Vec<String>) -> Config {
    let a = raw.agent;
    let interval = a.interval.map_or(Duration::from_secs(10), |s| s.0);
    check_duration(
        "agent.interval",
        interval,
        MIN_INTERVAL,
        MAX_DURATION,
        problems,
    );
    let audit_max_bytes = a.audit_max_size.map_or(DEFAULT_AUDIT_MAX_BYTES, |b| b.0);
    if audit_max_bytes < MIN_AUDIT_BYTES {
        problems.push(format!(
            "agent.audit_max_size ({}) is below the smallest size, {}",
            units::human_bytes(audit_max_bytes),
            units::human_bytes(MIN_AUDIT_BYTES)
        ));
    }
    check_at_most(
        "agent.audit_max_size",
        audit_max_bytes,
        MAX_AUDIT_BYTES,
        true,
        problems,
    );
    let audit_keep = a.audit_keep.unwrap_or(DEFAULT_AUDIT_KEEP as u64);
    if audit_keep > MAX_AUDIT_KEEP {
        problems.push(format!(
            "agent.audit_keep ({audit_keep}) is above {MAX_AUDIT_KEEP} rotated files"
        ));
    }
    if let Some(l) = &a.log_level {
        if let Err(e) = parse_log_filter(l) {
            problems.push(format!(
                "agent.log_level ({l:?}) is not a valid log filter: {e}"
            ));
        }
    }
    let agent = AgentConfig {
        on_release: a.on_release.unwrap_or_default(),
        mode: a.mode.unwrap_or_default(),
        interval,
        libvirt_uri: expand(a.libvirt_uri.as_deref().unwrap_or("qemu:///system"), path),
        state_dir: expand(
            &a.state_dir.map_or("/var/lib/virtpool".into(), |p| {
                p.to_string_lossy().into_owned()
            }),
            path,
        )
        .into(),
        log_level: a.log_level,
        metrics_listen: a.metrics_listen,
        resync_interval: a.resync_interval.map_or(DEFAULT_RESYNC, |s| s.0),
        audit_max_bytes,
        audit_keep: usize::try_from(audit_keep.min(MAX_AUDIT_KEEP)).unwrap_or(0),
        socket: expand(
            &raw.api
                .socket
                .map_or("/run/virtpool/virtpool.sock".into(), |p| {
                    p.to_string_lossy().into_owned()
                }),
            path,
        )
        .into(),
        api_group: raw.api.group.unwrap_or_else(|| "libvirt".into()),
    };
    check_duration(
        "agent.resync_interval",
        agent.resync_interval,
        Duration::ZERO,
        MAX_DURATION,
        problems,
    );
    check_path("agent.state_dir", &agent.state_dir, problems);
    check_path("api.socket", &agent.socket, problems);
    let sock_len = agent.socket.as_os_str().len();
    if sock_len > MAX_SOCKET_PATH {
        problems.push(format!(
            "api.socket ({}) is {sock_len} bytes long: a Unix socket path has at most {MAX_SOCKET_PATH}",
            agent.socket.display()
        ));
    }
    if agent.socket.file_name().is_none() && agent.socket.is_absolute() {
        problems.push(format!(
            "api.socket ({}) names a directory, not a socket file",
            agent.socket.display()
        ));
    }
    if agent.libvirt_uri.trim().is_empty() {
        problems.push("agent.libvirt_uri is empty (the default is qemu:///system)".into());
    }
    if agent.api_group.is_empty() {
        problems.push("api.group is empty (the default is libvirt)".into());
    }

    let h = raw.host;
    let host = HostConfig {
        cpus: h.cpus,
        memory: h.memory.map(|b| b.0),
        reserved_cpus: h.reserved_cpus.unwrap_or(1),
        reserved_memory: h.reserved_memory.map_or(1 << 30, |b| b.0),
        cpu_allocation_ratio: h.cpu_allocation_ratio.unwrap_or(4.0),
        memory_allocation_ratio: h.memory_allocation_ratio.unwrap_or(1.0),
        disk_bytes_sec: h.disk_bytes_sec.map(|b| b.0),
        disk_iops_sec: h.disk_iops_sec,
    };
    if host.cpus == Some(0) {
        problems.push("host.cpus must be at least 1".into());
    }
    if host.memory == Some(0) {
        problems.push("host.memory must be more than 0".into());
    }
    for (key, v, max, bytes) in [
        ("host.cpus", host.cpus, MAX_VCPUS, false),
        ("host.memory", host.memory, MAX_BYTES, true),
        (
            "host.reserved_cpus",
            Some(host.reserved_cpus),
            MAX_VCPUS,
            false,
        ),
        (
            "host.reserved_memory",
            Some(host.reserved_memory),
            MAX_BYTES,
            true,
        ),
        ("host.disk_bytes_sec", host.disk_bytes_sec, MAX_BYTES, true),
        ("host.disk_iops_sec", host.disk_iops_sec, MAX_IOPS, false),
    ] {
        if let Some(v) = v {
            check_at_most(key, v, max, bytes, problems);
        }
    }
    for (key, v, hi) in [
        ("host.cpu_allocation_ratio", host.cpu_allocation_ratio, 64.0),
        (
            "host.memory_allocation_ratio",
            host.memory_allocation_ratio,
            4.0,
        ),
    ] {
        if !(v.is_finite() && v > 0.0 && v <= hi) {
            problems.push(format!("{key} ({v}) must be > 0 and ≤ {hi}"));
        }
    }

    let d = Tuning::default();
    let m = raw.memory;
    let fraction_only =
        |key: &str, a: Option<Amount>, default: f64, problems: &mut Vec<String>| -> f64 {
            match a {
                None => default,
                Some(Amount::Fraction(f)) if f < 1.0 => f,
                Some(other) => {
                    problems.push(format!("{key} ({other}) must be a percentage below 100%"));
                    default
                }
            }
        };
    let max_shrink = m.max_shrink.unwrap_or(d.memory_max_shrink);
    if max_shrink == Amount::Absolute(0) || max_shrink == Amount::Fraction(0.0) {
        problems
            .push("memory.max_shrink must be more than 0 (it would forbid every shrink)".into());
    }
    if let Amount::Fraction(f) = max_shrink {
        if f > 1.0 {
            problems.push(format!(
                "memory.max_shrink ({max_shrink}) must be at most 100%"
            ));
        }
    }
    let guest_free_min = m.guest_free_min.unwrap_or(d.guest_free_min);
    if let Amount::Fraction(f) = guest_free_min {
        if f >= 1.0 {
            problems.push(format!(
                "memory.guest_free_min ({guest_free_min}) must be below 100%"
            ));
        }
    }
    let pressure_threshold = m.pressure_threshold.unwrap_or(d.pressure_threshold);
    if let Amount::Fraction(f) = pressure_threshold {
        if f >= 1.0 {
            problems.push(format!(
                "memory.pressure_threshold ({pressure_threshold}) must be below 100%"
            ));
        }
    }
    let tuning = Tuning {
        memory_min_change: m.min_change.map_or(d.memory_min_change, |b| b.0),
        memory_max_shrink: max_shrink,
        guest_free_min,
        target_free: fraction_only("memory.target_free", m.target_free, d.target_free, problems),
        pressure_threshold,
        stats_period: m.stats_period.map_or(d.stats_period, |s| s.0),
        vcpu_cooldown: raw.vcpus.cooldown.map_or(d.vcpu_cooldown, |s| s.0),
        vcpu_unplug_backoff: raw
            .vcpus
            .unplug_backoff
            .map_or(d.vcpu_unplug_backoff, |s| s.0),
        disk_burst_factor: raw.disk.burst_factor.unwrap_or(d.disk_burst_factor),
        cpu: raw.cpu.build(MAX_DURATION, problems),
    };
    if !(tuning.disk_burst_factor.is_finite()
        && tuning.disk_burst_factor >= 1.0
        && tuning.disk_burst_factor <= 100.0)
    {
        problems.push(format!(
            "disk.burst_factor ({}) must be between 1.0 and 100.0 (libvirt rejects a max below the rate)",
            tuning.disk_burst_factor
        ));
    }
    for (key, d) in [
        ("memory.stats_period", tuning.stats_period),
        ("vcpus.cooldown", tuning.vcpu_cooldown),
        ("vcpus.unplug_backoff", tuning.vcpu_unplug_backoff),
    ] {
        check_duration(key, d, Duration::ZERO, MAX_DURATION, problems);
    }
    check_at_most(
        "memory.min_change",
        tuning.memory_min_change,
        MAX_BYTES,
        true,
        problems,
    );
    for (key, a) in [
        ("memory.max_shrink", tuning.memory_max_shrink),
        ("memory.guest_free_min", tuning.guest_free_min),
        ("memory.pressure_threshold", tuning.pressure_threshold),
    ] {
        if let Amount::Absolute(v) = a {
            check_at_most(key, v, MAX_BYTES, true, problems);
        }
    }

    let mut pools = BTreeMap::new();
    let mut pool_problems = Vec::new();
    for (name, spec) in &raw.pools {
        let pool = build_pool(name, spec, &mut pool_problems);
        pools.insert(name.clone(), pool);
    }
    problems.extend(pool_problems.iter().map(ToString::to_string));
    problems.extend(membership_conflicts(&pools).iter().map(ToString::to_string));

    Config {
        source: path.to_owned(),
        agent,
        host,
        tuning,
        pools,
    }
}

/// A domain explicitly listed in two pools is a config error.
pub fn membership_conflicts(pools: &BTreeMap<String, Pool>) -> Vec<MembershipConflict> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    let mut problems = Vec::new();
    for p in pools.values() {
        for d in &p.domains {
            if let Some(other) = seen.insert(d.as_str(), p.name.as_str()) {
                if other != p.name {
                    problems.push(MembershipConflict {
                        domain: d.clone(),
                        first: other.to_owned(),
                        second: p.name.clone(),
                    });
                }
            }
        }
    }
    problems
}

/// A pool name: what an operator can type and a URL can carry as it is
/// (see [`names::pool_name`]).
pub fn valid_name(s: &str) -> Result<(), NameError> {
    names::pool_name(s)
}

/// A domain name (or UUID): any name libvirt takes but for control
/// characters (see [`names::domain_name`]).
pub fn valid_domain_name(s: &str) -> Result<(), NameError> {
    names::domain_name(s)
}

fn build_pool(name: &str, spec: &PoolSpec, out: &mut Vec<PoolError>) -> Pool {
    let mut problems = Vec::new();
    if let Err(e) = valid_name(name) {
        problems.push(PoolProblem::Name(e));
    }
    for g in &spec.match_ {
        if let Err(error) = crate::core::glob::Glob::new(g) {
            problems.push(PoolProblem::Glob {
                pattern: g.clone(),
                error,
            });
        }
    }
    for d in &spec.domains {
        if let Err(e) = valid_domain_name(d) {
            problems.push(PoolProblem::DomainName(e));
        }
    }
    for m in spec.members.keys() {
        if let Err(e) = valid_domain_name(m) {
            problems.push(PoolProblem::MemberName(e));
        }
    }
    let mut policy = MemoryPolicy::Share;
    let mut cpu_policy = MemoryPolicy::Share;
    let mut resources: PerResource<Option<PoolResource>> = PerResource::default();
    for r in Resource::ALL {
        let Some((budget, limits, pol)) = policy_of(spec_resource(spec, r)) else {
            continue;
        };
        if pol.is_some() && !matches!(r, Resource::Memory | Resource::Cpu) {
            problems.push(PoolProblem::PolicyNotMemory { resource: r });
        }
        match (r, pol) {
            (Resource::Cpu, Some(p)) => cpu_policy = p,
            (_, Some(p)) => policy = p,
            _ => {}
        }
        let Some(budget) = budget else {
            problems.push(PoolProblem::MissingBudget { resource: r });
            continue;
        };
        match budget {
            Amount::Fraction(f) if f > 1.0 => {
                problems.push(PoolProblem::BudgetAboveAll {
                    resource: r,
                    budget,
                });
            }
            Amount::Absolute(b) if b > max_amount(r) => {
                problems.push(PoolProblem::BudgetOutOfRange {
                    resource: r,
                    budget: b,
                    max: max_amount(r),
                });
            }
            _ => {}
        }
        check_limits(None, r, limits, Some(budget), &mut problems);
        resources.get_mut(r).replace(PoolResource {
            budget,
            defaults: limits,
        });
    }
    let mut members = BTreeMap::new();
    for (m, ms) in &spec.members {
        let mut lim: PerResource<Limits> = PerResource::default();
        for r in Resource::ALL {
            let Some((budget, limits, pol)) = policy_of(member_resource(ms, r)) else {
                continue;
            };
            let member = || m.clone();
            if budget.is_some() {
                problems.push(PoolProblem::MemberBudget {
                    member: member(),
                    resource: r,
                });
            }
            if pol.is_some() {
                problems.push(PoolProblem::MemberPolicy {
                    member: member(),
                    resource: r,
                });
            }
            if resources.get(r).is_none() {
                problems.push(PoolProblem::MemberWithoutBudget {
                    member: member(),
                    resource: r,
                });
            }
            let pool_defaults = resources.get(r).map(|p| p.defaults).unwrap_or_default();
            check_limits(
                Some(m),
                r,
                pool_defaults.overlay(limits),
                resources.get(r).map(|p| p.budget),
                &mut problems,
            );
            *lim.get_mut(r) = limits;
        }
        members.insert(m.clone(), lim);
    }
    out.extend(problems.into_iter().map(|problem| PoolError {
        pool: name.to_owned(),
        problem,
    }));
    Pool {
        name: name.to_owned(),
        domains: spec.domains.clone(),
        globs: spec.match_.clone(),
        persist: spec.persist,
        paused: spec.paused,
        memory_policy: policy,
        cpu_policy,
        resources,
        members,
        runtime: false,
        exclude: Vec::new(),
    }
}

enum AnyPolicy<'a> {
    Count(&'a CountPolicy),
    Bytes(&'a BytesPolicy),
    Cpu(&'a CpuPolicy),
}

fn spec_resource(spec: &PoolSpec, r: Resource) -> Option<AnyPolicy<'_>> {
    match r {
        Resource::Vcpus => spec.vcpus.as_ref().map(AnyPolicy::Count),
        Resource::Memory => spec.memory.as_ref().map(AnyPolicy::Bytes),
        Resource::DiskBytesSec => spec.disk_bytes_sec.as_ref().map(AnyPolicy::Bytes),
        Resource::DiskIopsSec => spec.disk_iops_sec.as_ref().map(AnyPolicy::Count),
        Resource::Cpu => spec.cpu.as_ref().map(AnyPolicy::Cpu),
    }
}

fn member_resource(spec: &MemberSpec, r: Resource) -> Option<AnyPolicy<'_>> {
    match r {
        Resource::Vcpus => spec.vcpus.as_ref().map(AnyPolicy::Count),
        Resource::Memory => spec.memory.as_ref().map(AnyPolicy::Bytes),
        Resource::DiskBytesSec => spec.disk_bytes_sec.as_ref().map(AnyPolicy::Bytes),
        Resource::DiskIopsSec => spec.disk_iops_sec.as_ref().map(AnyPolicy::Count),
        Resource::Cpu => spec.cpu.as_ref().map(AnyPolicy::Cpu),
    }
}

fn policy_of(p: Option<AnyPolicy<'_>>) -> Option<(Option<Amount>, Limits, Option<MemoryPolicy>)> {
    Some(match p? {
        AnyPolicy::Count(c) => (
            c.budget,
            Limits {
                min: c.min,
                max: c.max,
                shares: c.shares,
            },
            None,
        ),
        AnyPolicy::Bytes(b) => (
            b.budget,
            Limits {
                min: b.min.map(|x| x.0),
                max: b.max.map(|x| x.0),
                shares: b.shares,
            },
            b.policy,
        ),
        AnyPolicy::Cpu(c) => (
            c.budget,
            Limits {
                min: c.min.map(|x| x.0),
                max: c.max.map(|x| x.0),
                shares: c.shares,
            },
            c.policy,
        ),
    })
}

/// The limits of the pool (`member` = `None`) or of one member.
fn check_limits(
    member: Option<&String>,
    r: Resource,
    l: Limits,
    budget: Option<Amount>,
    problems: &mut Vec<PoolProblem>,
) {
    let member = || member.cloned();
    if let (Some(min), Some(max)) = (l.min, l.max) {
        if min > max {
            problems.push(PoolProblem::MinAboveMax {
                member: member(),
                resource: r,
                min,
                max,
            });
        }
    }
    if let (Some(min), Some(Amount::Absolute(b))) = (l.min, budget) {
        if min > b {
            problems.push(PoolProblem::MinAboveBudget {
                member: member(),
                resource: r,
                min,
                budget: b,
            });
        }
    }
    for (key, v) in [("min", l.min), ("max", l.max)] {
        if let Some(value) = v.filter(|v| *v > max_amount(r)) {
            problems.push(PoolProblem::LimitOutOfRange {
                member: member(),
                resource: r,
                key,
                value,
                max: max_amount(r),
            });
        }
    }
    if r == Resource::Vcpus && l.max == Some(0) {
        problems.push(PoolProblem::NoVcpus { member: member() });
    }
    if r == Resource::Cpu && l.max.is_some_and(|m| m < cpu::MIN_LIMIT) {
        problems.push(PoolProblem::CpuMaxBelowQuota { member: member() });
    }
    if let Some(shares) = l.shares {
        if shares == 0 || shares > MAX_SHARES {
            problems.push(PoolProblem::Shares {
                member: member(),
                resource: r,
                shares,
                max: MAX_SHARES,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::HostCapacity;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/etc/virtpool/virtpool.toml"))
    }

    #[test]
    fn defaults() {
        let c = parse("[agent]\n").unwrap();
        assert_eq!(c.agent.interval, Duration::from_secs(10));
        assert_eq!(c.agent.resync_interval, Duration::from_secs(300));
        let c = parse("[agent]\nresync_interval = \"0s\"\n").unwrap();
        assert_eq!(c.agent.resync_interval, Duration::ZERO);
        assert_eq!(c.agent.mode, Mode::Enforce);
        assert_eq!(
            (c.agent.audit_max_bytes, c.agent.audit_keep),
            (10 << 20, 3),
            "audit rotation defaults"
        );
        assert_eq!(c.agent.api_group, "libvirt");
        assert_eq!(c.tuning, Tuning::default());
        let cap = HostCapacity {
            cpus: 16,
            memory_total: 65 << 30,
            memory_available: 60 << 30,
        };
        let a = c.host.allocatable(&cap);
        assert_eq!(a.vcpus, 60);
        assert_eq!(a.memory, 64 << 30);
    }

    #[test]
    fn pool_with_units_and_members() {
        let c = parse(
            r#"
[pools.web]
match = "web-*"
domains = ["legacy"]
vcpus = { budget = 8, min = 1, max = 4 }
memory = { budget = "16GiB", min = "1GiB", policy = "demand" }
[pools.web.members.legacy]
memory = { min = "4GiB", shares = 3000 }
"#,
        )
        .unwrap();
        let p = &c.pools["web"];
        assert_eq!(p.globs, vec!["web-*"]);
        assert_eq!(p.memory_policy, MemoryPolicy::Demand);
        assert_eq!(
            p.resources.memory.unwrap().budget,
            Amount::Absolute(16 << 30)
        );
        let l = p.member_limits("legacy", "x", Resource::Memory);
        assert_eq!(l.min, Some(4 << 30));
        assert_eq!(l.shares, Some(3000));
        assert_eq!(
            p.member_limits("other", "x", Resource::Memory).min,
            Some(1 << 30)
        );
        assert!(p.resources.disk_bytes_sec.is_none());
    }

    #[test]
    fn min_above_max_names_file_and_key() {
        let e = parse(
            "[pools.web]\nmemory = { budget = \"32GiB\", min = \"12GiB\", max = \"8GiB\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("/etc/virtpool/virtpool.toml: "), "{e}");
        assert!(
            e.contains(r#"pool "web": memory.min (12.0 GiB) exceeds memory.max (8.0 GiB)"#),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_rejected() {
        let e = parse("[agent]\nintervall = \"10s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("intervall"), "{e}");
        assert!(e.contains("virtpool.toml"), "{e}");
        let e = parse("[pools.a.vcpus]\nbudget = 2\nmaxx = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("maxx"), "{e}");
    }

    #[test]
    fn bad_units_rejected() {
        let e = parse("[agent]\ninterval = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("interval") && e.contains("soon"), "{e}");
        let e = parse("[agent]\nresync_interval = \"often\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("resync_interval"), "{e}");
        let c = parse("[agent]\naudit_max_size = \"1MiB\"\naudit_keep = 0\n").unwrap();
        assert_eq!((c.agent.audit_max_bytes, c.agent.audit_keep), (1 << 20, 0));
        let e = parse("[agent]\naudit_max_size = \"4KiB\"\naudit_keep = 1000\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("agent.audit_max_size (4.0 KiB) is below")
                && e.contains("agent.audit_keep (1000)"),
            "{e}"
        );
        let e = parse("[pools.a]\nmemory = { budget = \"-4GiB\" }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("negative"), "{e}");
        let e = parse("[pools.a]\nvcpus = { budget = -4 }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("negative"), "{e}");
    }

    #[test]
    fn member_budget_and_missing_budget_rejected() {
        let e = parse("[pools.a]\nvcpus = { min = 1 }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(r#"pool "a": vcpus.budget is missing"#), "{e}");
        let e = parse(
            "[pools.a]\nvcpus = { budget = 4 }\n[pools.a.members.x]\nvcpus = { budget = 2 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("budgets are per pool"), "{e}");
    }

    #[test]
    fn domain_in_two_pools_rejected() {
        let e = parse("[pools.a]\ndomains = [\"x\"]\n[pools.b]\ndomains = [\"x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(r#"domain "x" is listed in pool "a" and pool "b""#),
            "{e}"
        );
    }

    #[test]
    fn budgets_over_allocatable_name_numbers() {
        let c = parse(
            "[host]\ncpus = 5\n[pools.a]\nvcpus = { budget = 10 }\n[pools.b]\nvcpus = { budget = \"50%\" }\n",
        )
        .unwrap();
        let cap = HostCapacity {
            cpus: 2,
            memory_total: 8 << 30,
            memory_available: 4 << 30,
        };
        let alloc = c.host.allocatable(&cap);
        assert_eq!(alloc.vcpus, 16);
        let e = c.check_budgets(&alloc).unwrap_err().to_string();
        assert!(
            e.contains("vcpus add up to 18 (a 10 + b 8) but the host has only 16"),
            "{e}"
        );
    }

    #[test]
    fn bad_glob_and_log_filter_rejected() {
        let e = parse("[pools.web]\nmatch = [\"web-*\", \"web-[0-9\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(r#"pool "web": match pattern "web-[0-9" is invalid: '[' without a closing ']' (at character 5)"#),
            "{e}"
        );
        let e = parse("[agent]\nlog_level = \"virtpool=loud\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(r#"agent.log_level ("virtpool=loud") is not a valid log filter"#),
            "{e}"
        );
        assert!(parse("[agent]\nlog_level = \"warn,virtpool=debug\"\n").is_ok());
    }

    #[test]
    fn durations_and_sizes_out_of_range_name_key_value_and_range() {
        let e = parse("[agent]\nresync_interval = \"18446744073709551615s\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("agent.resync_interval (") && e.contains("is out of range: 0s to 1day"),
            "{e}"
        );
        for (text, key) in [
            ("[agent]\ninterval = \"2days\"\n", "agent.interval (2days)"),
            ("[agent]\ninterval = \"10ms\"\n", "agent.interval (10ms)"),
            (
                "[memory]\nstats_period = 4294967296\n",
                "memory.stats_period",
            ),
            ("[vcpus]\ncooldown = \"400days\"\n", "vcpus.cooldown"),
            (
                "[vcpus]\nunplug_backoff = \"2days\"\n",
                "vcpus.unplug_backoff",
            ),
            (
                "[agent]\naudit_max_size = \"2GiB\"\n",
                "agent.audit_max_size (2.0 GiB)",
            ),
            (
                "[host]\ncpus = 100000\n",
                "host.cpus (100000) is out of range: at most 65536",
            ),
            ("[host]\nmemory = \"2EiB\"\n", "host.memory"),
            (
                "[host]\nreserved_memory = \"4EiB\"\n",
                "host.reserved_memory",
            ),
            (
                "[host]\ndisk_iops_sec = 18446744073709551615\n",
                "host.disk_iops_sec",
            ),
            ("[memory]\nmin_change = \"2EiB\"\n", "memory.min_change"),
            (
                "[memory]\nguest_free_min = \"2EiB\"\n",
                "memory.guest_free_min",
            ),
            (
                "[pools.a]\nvcpus = { budget = 18446744073709551615 }\n",
                "pool \"a\": vcpus.budget (18446744073709551615) is out of range: at most 65536",
            ),
            (
                "[pools.a]\nmemory = { budget = \"1GiB\", max = \"8EiB\" }\n",
                "pool \"a\": memory.max (9223372036854775808) is out of range",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
            assert!(e.starts_with("/etc/virtpool/virtpool.toml: "), "{e}");
        }
        // The ends of the ranges are accepted.
        let c = parse(
            "[agent]\ninterval = \"1day\"\nresync_interval = \"24h\"\n[vcpus]\ncooldown = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(c.agent.resync_interval, MAX_DURATION);
    }

    #[test]
    fn paths_that_cannot_work_are_refused() {
        for (text, want) in [
            ("[api]\nsocket = \"\"\n", "api.socket is empty"),
            ("[agent]\nstate_dir = \"\"\n", "agent.state_dir is empty"),
            (
                "[agent]\nstate_dir = \"state\"\n",
                "agent.state_dir (state) is not an absolute path",
            ),
            (
                "[api]\nsocket = \"run/v.sock\"\n",
                "api.socket (run/v.sock) is not an absolute path",
            ),
            (
                "[agent]\nlibvirt_uri = \"\"\n",
                "agent.libvirt_uri is empty",
            ),
            ("[api]\ngroup = \"\"\n", "api.group is empty"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let long = format!("[api]\nsocket = \"/{}\"\n", "s".repeat(120));
        let e = parse(&long).unwrap_err().to_string();
        assert!(e.contains("is 121 bytes long"), "{e}");
        // {config_dir} makes a relative-looking path absolute.
        let c = parse("[agent]\nstate_dir = \"{config_dir}/state\"\n").unwrap();
        assert!(c.agent.state_dir.is_absolute());
    }

    #[test]
    fn a_file_with_no_settings_is_refused() {
        for text in ["", "\n  \n", "# only a comment\n\n   # another\n"] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("the file has no settings"), "{text:?}: {e}");
        }
        assert!(parse("[agent]\n").is_ok());
    }

    #[test]
    fn invalid_utf8_is_refused_with_its_position() {
        let e = Config::parse_bytes(
            b"[agent]\nmode = \"obs\xe9rve\"\n",
            Path::new("/etc/virtpool/virtpool.toml"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "/etc/virtpool/virtpool.toml: not valid UTF-8 at line 2, column 12 (byte 19)"
        );
        let e = Config::parse_bytes(b"\xff", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1, column 1 (byte 0)"), "{e}");
    }

    #[test]
    fn load_refuses_special_files_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("virtpool.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = Config::load(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = Config::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn reservations_beyond_the_host_name_their_key() {
        let cap = HostCapacity {
            cpus: 16,
            memory_total: 64 << 30,
            memory_available: 60 << 30,
        };
        let c = parse("[host]\nreserved_cpus = 1000\n").unwrap();
        let e = c.check_host(&cap).unwrap_err().to_string();
        assert!(
            e.contains("host.reserved_cpus (1000) is more than the host's 16 CPUs (measured)"),
            "{e}"
        );
        let c = parse("[host]\nmemory = \"8GiB\"\nreserved_memory = \"9GiB\"\n").unwrap();
        let e = c.check_host(&cap).unwrap_err().to_string();
        assert!(
            e.contains("host.reserved_memory (9.0 GiB) is more than the host's memory, 8.0 GiB (host.memory)"),
            "{e}"
        );
        let c = parse("[host]\nreserved_cpus = 16\n").unwrap();
        assert_eq!(
            c.check_host(&cap).unwrap().vcpus,
            0,
            "all reserved is allowed"
        );
    }

    #[test]
    fn bad_names_rejected() {
        assert!(valid_name("web-1.prod_x").is_ok());
        assert!(valid_name("../etc").is_err());
        assert!(valid_name("").is_err());
        assert!(valid_name("a b").is_err());
        assert!(valid_name(&"x".repeat(65)).is_err());
        // Domain names are what libvirt takes.
        let c = parse(
            "[pools.web]\ndomains = [\"web with spaces\", \"web-ünïcödé\"]\nvcpus = { budget = 4 }\n[pools.web.members.\"web with spaces\"]\nvcpus = { min = 1 }\n",
        )
        .unwrap();
        assert_eq!(c.pools["web"].domains[0], "web with spaces");
        let e = parse("[pools.web]\ndomains = [\"a/b\", \"\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(r#"pool "web": domains: domain name "a/b" contains '/'"#)
                && e.contains(r#"pool "web": domains: domain name is empty"#),
            "{e}"
        );
    }

    #[test]
    fn pool_problems_are_typed_and_name_the_values() {
        let spec: PoolSpec = serde_json::from_str(
            r#"{"vcpus": {"budget": 4, "min": 6, "max": 2, "shares": 0},
                "memory": {"min": 1},
                "members": {"db": {"vcpus": {"budget": 1, "min": 9}}}}"#,
        )
        .unwrap();
        let e = Config::validate_pool("web", &spec).unwrap_err();
        let has = |p: &PoolProblem| e.0.iter().any(|x| x.pool == "web" && x.problem == *p);
        assert!(has(&PoolProblem::MinAboveMax {
            member: None,
            resource: Resource::Vcpus,
            min: 6,
            max: 2
        }));
        assert!(has(&PoolProblem::MinAboveBudget {
            member: Some("db".into()),
            resource: Resource::Vcpus,
            min: 9,
            budget: 4
        }));
        assert!(has(&PoolProblem::MissingBudget {
            resource: Resource::Memory
        }));
        assert!(has(&PoolProblem::MemberBudget {
            member: "db".into(),
            resource: Resource::Vcpus
        }));
        let text = e.to_string();
        assert!(
            text.contains(
                r#"pool "web": members."db".vcpus.min (9) exceeds the pool's vcpus.budget (4)"#
            ) && text.contains(r#"pool "web": vcpus.shares (0) must be between 1 and 1000000"#),
            "{text}"
        );
        let c = parse("[pools.a]\ndomains = [\"x\"]\n[pools.b]\ndomains = [\"x\"]\n").unwrap_err();
        assert!(c
            .to_string()
            .contains("domain \"x\" is listed in pool \"a\" and pool \"b\""));
    }
}
