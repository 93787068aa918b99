//! The running agent: the reconciler that keeps domains inside their
//! pools, and what it keeps and reports (runtime state, audit log,
//! metrics, systemd).

pub mod audit;
pub mod cpu_use;
pub mod load;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod observability;
pub mod reconciler;
pub mod reload_runtime;
pub mod report;
pub mod safe_fs;
pub mod samples;
pub mod service;
pub mod state;
pub mod state_check;
