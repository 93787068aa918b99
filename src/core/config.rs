//! The configuration file (`/etc/virtpool/virtpool.toml`): parsed with serde
//! (unknown keys rejected), then validated into a [`Config`]. Every error
//! names the file, the key and the problem.
//!
//! Pools are written as TOML tables; the API accepts the same shape as JSON
//! ([`PoolSpec`]), so a runtime pool and a configured pool validate alike.
//!
//! The parts, each using only those before it: `bounds` (defaults, bounds
//! and the checks that name them), `spec` (a pool as written, and the
//! settings' words), `agent`, `host` and `tuning` (each section as written
//! and checked), `problems` and `pool` (pools), `load` (the whole file and
//! [`Config`]); `live` checks a config against the host's domains.

mod agent;
mod bounds;
mod host;
pub mod live;
mod load;
mod pool;
mod problems;
mod spec;
mod tuning;

pub use crate::core::names::NameError;
pub use agent::{parse_log_filter, AgentConfig, LogFilterError};
pub use bounds::{
    max_amount, DEFAULT_AUDIT_KEEP, DEFAULT_AUDIT_MAX_BYTES, DEFAULT_PATH, DEFAULT_RESYNC,
    DEFAULT_SHARES, MAX_AUDIT_BYTES, MAX_AUDIT_KEEP, MAX_BYTES, MAX_CONFIG_BYTES, MAX_DURATION,
    MAX_IOPS, MAX_SHARES, MAX_SOCKET_PATH, MAX_VCPUS, MIN_AUDIT_BYTES, MIN_INTERVAL,
};
pub use host::{Allocatable, HostConfig};
pub use load::{Config, ConfigError};
pub use pool::{
    budget_problems, membership_conflicts, valid_domain_name, valid_name, Limits, Pool,
    PoolResource,
};
pub use problems::{
    BudgetProblem, BudgetProblems, MembershipConflict, PoolError, PoolErrors, PoolProblem,
};
pub use spec::{
    BytesPolicy, CountPolicy, CpuPolicy, MemberSpec, MemoryPolicy, Mode, OnRelease, PoolSpec,
};
pub use tuning::Tuning;

#[cfg(test)]
mod tests;
