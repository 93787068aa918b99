//! The planner, pure: worked examples with exact numbers, and properties
//! over generated hosts (proptest). Nothing outside this process.
#![allow(clippy::unwrap_used)]

mod cpu;
mod cpu_config;
mod cpu_props;
mod examples;
mod promises;
mod props;
mod rng;
