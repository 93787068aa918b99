//! A validated [`Config`]: read, parsed, built from its sections and checked against a host.

use super::agent::{self, AgentConfig, RawAgent, RawApi};
use super::bounds::MAX_CONFIG_BYTES;
use super::host::{self, Allocatable, HostConfig, RawHost};
use super::pool::{budget_problems, build_pool, membership_conflicts, Pool};
use super::problems::PoolErrors;
use super::spec::PoolSpec;
use super::tuning::{self, RawDiskTuning, RawMemoryTuning, RawVcpuTuning, Tuning};
use crate::core::cpu::RawCpuTuning;
use crate::core::model::{HostCapacity, PerResource};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The whole file as written: its sections, each refusing unknown keys.
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
        valid(cfg, path, problems)
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
        valid(
            (),
            &self.source,
            problems.iter().map(ToString::to_string).collect(),
        )
    }

    /// Checks the config against this host: the reservations leave
    /// something of the host (each named by its key), and Σ pool budgets
    /// fit allocatable. Returns allocatable.
    pub fn check_host(&self, cap: &HostCapacity) -> Result<Allocatable, ConfigError> {
        let mut problems = self.host.reservation_problems(cap);
        let alloc = self.host.allocatable(cap);
        problems.extend(
            budget_problems(&self.pools, &alloc)
                .iter()
                .map(ToString::to_string),
        );
        valid(alloc, &self.source, problems)
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

/// `value` when there are no `problems`, else the problems of `file`.
fn valid<T>(value: T, file: &Path, problems: Vec<String>) -> Result<T, ConfigError> {
    if problems.is_empty() {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            file: file.to_owned(),
            problems,
        })
    }
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

fn build(raw: RawConfig, path: &Path, problems: &mut Vec<String>) -> Config {
    let agent = agent::build(raw.agent, raw.api, path, problems);
    let host = host::build(raw.host, problems);
    let tuning = tuning::build(raw.memory, raw.vcpus, raw.disk, raw.cpu, problems);
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
