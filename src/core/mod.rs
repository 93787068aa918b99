//! The pure core: what the agent decides, with no I/O (the config module
//! reads its file and nothing else).

pub mod capacity;
pub mod config;
pub mod cpu;
pub mod event;
pub mod glob;
pub mod keys;
pub mod membership;
pub mod model;
pub mod names;
pub mod plan_diff;
pub mod planner;
pub mod units;
pub mod words;
