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

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::fake::Fake;
use support::inproc::Agent;
use tempfile::TempDir;
use virtpool::api::ServeOptions;

/// An agent in `dir` with `pools` over `hv`: API group root, default
/// serve options.
async fn root_agent(dir: &Path, pools: &str, hv: Fake) -> Agent {
    Agent::start(dir, "root", pools, hv, ServeOptions::default()).await
}

/// A standard agent ([`Agent::standard`]) in a fresh temp dir, which must
/// outlive it.
async fn standard_agent() -> (TempDir, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::standard(dir.path()).await;
    (dir, a)
}

/// A standard agent whose `?wait=true` callers wait at most `wait_limit`,
/// with every full observation held in libvirt (`a.hv.set_stall(false)`
/// lets them go).
async fn stalled_agent(wait_limit: Duration) -> (TempDir, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::standard_with(dir.path(), None, wait_limit).await;
    a.hv.set_stall(true);
    (dir, a)
}

/// `POST path` with the JSON `body`, which must answer 200: its JSON.
async fn post_ok(a: &Agent, path: &str, body: &str) -> Value {
    let (code, v) = a.post(path, body).await;
    assert_eq!(code, 200, "{v}");
    v
}
