//! The agent in this process over the recording fake hypervisor
//! (`support::fake`): the API on a real Unix socket, `virtpoolctl` against
//! it, the reconciler's watchdog and reloads. No libvirt at all.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod api_concurrency;
mod api_endpoints;
mod api_promises;
mod cpu_time;
mod ctl_cli;
mod service_watchdog;
mod vanished;
