//! The running agent: the loop that keeps domains inside their pools, and
//! what it keeps and reports (runtime state, audit log, metrics, systemd).

pub mod audit;
pub mod metrics;
pub mod monitor;
pub mod observability;
pub mod service;
pub mod state;
