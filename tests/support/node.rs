//! Nodes of the in-process libvirt test driver: fixture node files under
//! tests/fixtures (a file-based `test:///` URI has private state per
//! connection), configs on them, and one cycle on a fresh connection.

use std::path::{Path, PathBuf};
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::adapters::libvirt::{Hypervisor, Libvirt};
use virtpool::agent::reconciler::Reconciler;
use virtpool::agent::report::Report;
use virtpool::agent::state::RuntimeState;
use virtpool::core::config::Config;
use virtpool::core::model::{Action, DomainObs, Reason};

/// Absolute path of a fixture under tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A test-driver URI for a fixture node file.
pub fn uri(name: &str) -> String {
    format!("test://{}", fixture(name).display())
}

/// A config from TOML text with `libvirt_uri` pointing at `node`.
pub fn config(node: &str, body: &str) -> Config {
    let text = format!(
        "[agent]\nlibvirt_uri = \"{}\"\nstate_dir = \"/nonexistent\"\n{body}",
        uri(node)
    );
    Config::parse(&text, Path::new("test.toml")).unwrap()
}

/// One cycle on a fresh connection; returns the status and a handle to the
/// same connection (file-backed test nodes are private per connection).
pub async fn one_cycle(cfg: Config, observe: bool) -> (std::sync::Arc<Report>, HvWorker) {
    virtpool::adapters::libvirt::quiet_errors();
    let hv = HvWorker::spawn(Box::new(Libvirt::new(&cfg.agent.libvirt_uri))).unwrap();
    let (mut m, _h) = Reconciler::new(
        hv.clone(),
        Host::new().unwrap(),
        cfg,
        RuntimeState::new(),
        observe,
    );
    let st = m.cycle_once().await;
    (st, hv)
}

/// Looks a domain up by name.
pub fn dom<'a>(doms: &'a [DomainObs], name: &str) -> &'a DomainObs {
    doms.iter()
        .find(|d| *d.name == *name)
        .unwrap_or_else(|| panic!("no domain {name}"))
}

/// One domain as a full observation on `hv` reads it.
pub fn observe_one(hv: &mut Libvirt, name: &str) -> DomainObs {
    let doms = hv.observe().unwrap();
    dom(&doms, name).clone()
}

/// A live (not persisted) change of the domain `uuid` to `to`, as the
/// `Action` variant `$kind` (`SetVcpus` or `SetMemory`).
macro_rules! live_change {
    ($kind:ident, $uuid:expr, $to:expr) => {
        Action::$kind {
            uuid: $uuid.into(),
            domain: "dom".into(),
            from: 0,
            to: $to,
            reason: Reason::Share,
            persist: false,
        }
    };
}

/// A live (not persisted) vCPU change of the domain `uuid` to `to`.
pub fn set_vcpus(uuid: &str, to: u64) -> Action {
    live_change!(SetVcpus, uuid, to)
}

/// A live (not persisted) memory change of the domain `uuid` to `to` bytes.
pub fn set_memory(uuid: &str, to: u64) -> Action {
    live_change!(SetMemory, uuid, to)
}

/// Every domain as a fresh connection to a fixture node sees it.
pub async fn fresh_observe(node: &str) -> Vec<DomainObs> {
    let hv = HvWorker::spawn(Box::new(Libvirt::new(&uri(node)))).unwrap();
    hv.observe().await.unwrap()
}

/// The UUID of test domain `i` (as [`domain_xml`] gives it).
pub fn test_uuid(i: usize) -> String {
    format!("5c0bed00-0000-4000-8000-{i:012x}")
}

/// Test-driver domain `i` named `name`: 1 of 4 vCPUs, 1 GiB, with
/// `devices` (XML) inside `<devices>`.
pub fn domain_xml(name: &str, i: usize, devices: &str) -> String {
    format!(
        "<domain type='test'><name>{name}</name><uuid>{}</uuid>\
         <memory unit='MiB'>1024</memory><currentMemory unit='MiB'>1024</currentMemory>\
         <vcpu placement='static' current='1'>4</vcpu>\
         <os><type arch='x86_64'>hvm</type></os><devices>{devices}</devices></domain>",
        test_uuid(i)
    )
}
