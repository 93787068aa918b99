//! What is wrong with a pool, with the pools' budgets against a host, or
//! with the membership of a set of pools: typed, each variant carrying the
//! offending names and values; the messages name the pool, the key, the
//! value and the bound (`pool "web": memory.min (12.0 GiB) exceeds
//! memory.max (8.0 GiB)`).

use crate::core::glob::GlobError;
use crate::core::model::Resource;
use crate::core::names::NameError;
use crate::core::units::Amount;

/// `members."NAME".` for a member's key, nothing for the pool's own.
fn at(member: &Option<String>) -> String {
    member
        .as_ref()
        .map_or_else(String::new, |m| format!("members.{m:?}."))
}

fn human(r: &Resource, v: &u64) -> String {
    r.human(*v)
}

/// An amount as written in the file: cores for CPU time, the plain number
/// otherwise.
fn shown(r: &Resource, v: &u64) -> String {
    match r {
        Resource::Cpu => crate::core::cpu::cores_text(*v),
        _ => v.to_string(),
    }
}

/// What a CPU budget in percent means, after a percentage above 100%.
fn budget_hint(r: &Resource) -> &'static str {
    match r {
        Resource::Cpu => {
            " (a percentage is a share of the host's allocatable CPU time; write 6.5 for 6.5 cores)"
        }
        _ => "",
    }
}

/// One problem of one pool (see [`PoolError`] for the pool's name).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoolProblem {
    #[error("{0}")]
    Name(NameError),
    #[error("match pattern {pattern:?} is invalid: {error}")]
    Glob { pattern: String, error: GlobError },
    #[error("domains: {0}")]
    DomainName(NameError),
    #[error("members: {0}")]
    MemberName(NameError),
    #[error("{resource}.policy is only valid for memory and cpu")]
    PolicyNotMemory { resource: Resource },
    #[error("{resource}.budget is missing")]
    MissingBudget { resource: Resource },
    #[error("{resource}.budget ({budget}) is more than 100%{}", budget_hint(.resource))]
    BudgetAboveAll { resource: Resource, budget: Amount },
    #[error(
        "{resource}.budget ({}) is out of range: at most {}",
        shown(.resource, .budget), shown(.resource, .max)
    )]
    BudgetOutOfRange {
        resource: Resource,
        budget: u64,
        max: u64,
    },
    #[error(
        "{}{resource}.min ({}) exceeds {}{resource}.max ({})",
        at(.member), human(.resource, .min), at(.member), human(.resource, .max)
    )]
    MinAboveMax {
        member: Option<String>,
        resource: Resource,
        min: u64,
        max: u64,
    },
    #[error(
        "{}{resource}.min ({}) exceeds the pool's {resource}.budget ({})",
        at(.member), human(.resource, .min), human(.resource, .budget)
    )]
    MinAboveBudget {
        member: Option<String>,
        resource: Resource,
        min: u64,
        budget: u64,
    },
    #[error(
        "{}{resource}.{key} ({}) is out of range: at most {}",
        at(.member), shown(.resource, .value), shown(.resource, .max)
    )]
    LimitOutOfRange {
        member: Option<String>,
        resource: Resource,
        /// `min` or `max`.
        key: &'static str,
        value: u64,
        max: u64,
    },
    #[error("{}vcpus.max must be at least 1", at(.member))]
    NoVcpus { member: Option<String> },
    #[error("{}cpu.max must be at least 0.01 (1 ms of every 100 ms)", at(.member))]
    CpuMaxBelowQuota { member: Option<String> },
    #[error("{}{resource}.shares ({shares}) must be between 1 and {max}", at(.member))]
    Shares {
        member: Option<String>,
        resource: Resource,
        shares: u64,
        max: u64,
    },
    #[error("members.{member:?}.{resource}.budget is not allowed (budgets are per pool)")]
    MemberBudget { member: String, resource: Resource },
    #[error("members.{member:?}.{resource}.policy is not allowed (the policy is per pool)")]
    MemberPolicy { member: String, resource: Resource },
    #[error("members.{member:?} sets {resource} but the pool has no {resource} budget")]
    MemberWithoutBudget { member: String, resource: Resource },
}

/// A problem of the pool named `pool`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("pool {pool:?}: {problem}")]
pub struct PoolError {
    pub pool: String,
    pub problem: PoolProblem,
}

/// Every problem of a pool spec (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", join(.0))]
pub struct PoolErrors(pub Vec<PoolError>);

fn join<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Σ pool budgets against what the host has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetProblem {
    #[error(
        "pool {pool:?}: {resource}.budget is a percentage but [host] {resource} is not declared"
    )]
    PercentOfUndeclared { pool: String, resource: Resource },
    #[error(
        "pool budgets for {resource} add up to {} ({}) but the host has only {} allocatable",
        human(.resource, .sum),
        .parts.iter().map(|(p, b)| format!("{p} {}", resource.human(*b))).collect::<Vec<_>>().join(" + "),
        human(.resource, .allocatable)
    )]
    AboveAllocatable {
        resource: Resource,
        sum: u64,
        /// Each pool's budget, by name.
        parts: Vec<(String, u64)>,
        allocatable: u64,
    },
}

/// Every budget problem of a set of pools, as one message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join(.0))]
pub struct BudgetProblems(pub Vec<BudgetProblem>);

/// A domain listed explicitly in two pools.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "domain {domain:?} is listed in pool {first:?} and pool {second:?}: a domain belongs to at most one pool"
)]
pub struct MembershipConflict {
    pub domain: String,
    pub first: String,
    pub second: String,
}
