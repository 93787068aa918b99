//! The config file as written: the sections serde reads, unknown keys refused.

use crate::core::cpu::{self, Cores, RawCpuTuning};
use crate::core::units::{self, Amount, Bytes, Secs};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) agent: RawAgent,
    #[serde(default)]
    pub(super) api: RawApi,
    #[serde(default)]
    pub(super) host: RawHost,
    #[serde(default)]
    pub(super) memory: RawMemoryTuning,
    #[serde(default)]
    pub(super) vcpus: RawVcpuTuning,
    #[serde(default)]
    pub(super) disk: RawDiskTuning,
    #[serde(default)]
    pub(super) cpu: RawCpuTuning,
    #[serde(default)]
    pub(super) pools: BTreeMap<String, PoolSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) mode: Option<Mode>,
    pub(super) interval: Option<Secs>,
    pub(super) libvirt_uri: Option<String>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) log_level: Option<String>,
    pub(super) metrics_listen: Option<SocketAddr>,
    pub(super) resync_interval: Option<Secs>,
    pub(super) audit_max_size: Option<Bytes>,
    pub(super) audit_keep: Option<u64>,
    pub(super) on_release: Option<OnRelease>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) socket: Option<PathBuf>,
    pub(super) group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    pub(super) cpus: Option<u64>,
    pub(super) memory: Option<Bytes>,
    pub(super) reserved_cpus: Option<u64>,
    pub(super) reserved_memory: Option<Bytes>,
    pub(super) cpu_allocation_ratio: Option<f64>,
    pub(super) memory_allocation_ratio: Option<f64>,
    pub(super) disk_bytes_sec: Option<Bytes>,
    pub(super) disk_iops_sec: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMemoryTuning {
    pub(super) min_change: Option<Bytes>,
    #[serde(default, deserialize_with = "opt_bytes_amount")]
    pub(super) max_shrink: Option<Amount>,
    #[serde(default, deserialize_with = "opt_bytes_amount")]
    pub(super) guest_free_min: Option<Amount>,
    #[serde(default, deserialize_with = "opt_bytes_amount")]
    pub(super) target_free: Option<Amount>,
    #[serde(default, deserialize_with = "opt_bytes_amount")]
    pub(super) pressure_threshold: Option<Amount>,
    pub(super) stats_period: Option<Secs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVcpuTuning {
    pub(super) cooldown: Option<Secs>,
    pub(super) unplug_backoff: Option<Secs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiskTuning {
    pub(super) burst_factor: Option<f64>,
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
