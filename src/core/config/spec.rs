//! A pool as written ([`PoolSpec`]), the settings' words, and the serde helpers of amounts.

use crate::core::cpu::{self, Cores};
use crate::core::units::{self, Amount, Bytes};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

pub(super) fn opt_bytes_amount<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Amount>, D::Error> {
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
