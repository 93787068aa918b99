//! virtpool: a host agent that carves a KVM host into resource pools and
//! keeps every running libvirt domain inside its pool's allocation.
//!
//! A cycle flows: [`host`] + [`libvirt`] observe → [`membership`] assigns
//! domains to pools → [`planner`] decides targets (pure) → [`monitor`]
//! enforces through [`libvirt`] and publishes a status snapshot that [`api`]
//! serves. See `docs/ARCHITECTURE.md`.

pub mod api;
pub mod assets;
pub mod audit;
pub mod client;
pub mod config;
pub mod daemon_args;
pub mod glob;
pub mod host;
pub mod libvirt;
pub mod membership;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod observability;
pub mod planner;
pub mod report;
pub mod safe_fs;
pub mod service;
pub mod state;
pub mod state_check;
pub mod units;
