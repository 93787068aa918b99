//! A timed-out vCPU removal holds the domain's vCPUs for the rest of its
//! run, across agent restarts: the hold is saved in
//! `state_dir/vcpu-holds.json`, a new monitor loaded from it plans no vCPU
//! change for that domain, and the hold ends (and leaves the file) when the
//! domain restarts. A private libvirtd hosts the test driver, so the domain
//! and its ID outlive each monitor; the timeout itself is injected (the
//! test driver never times out), the rest is the real adapter.
#![allow(clippy::unwrap_used)]

use virt::connect::Connect;
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::adapters::libvirt::{HvError, Libvirt};
use virtpool::agent::reconciler::{Reconciler, ReconcilerOptions};
use virtpool::agent::report::Report;
use virtpool::agent::state::{RuntimeState, VcpuHolds, HOLDS_FILE};
use virtpool::core::config::Config;
use virtpool::core::model::{Action, Reason};

use crate::support::fake::Fake;
use crate::support::libvirtd::Libvirtd;

const UUID: &str = "5c0bed00-0000-4000-8000-00000000a001";

fn config(uri: &str, state: &std::path::Path, max_vcpus: u64) -> Config {
    let text = format!(
        "[agent]\nlibvirt_uri = \"{uri}\"\nstate_dir = \"{}\"\n\
         [host]\ncpus = 16\nmemory = \"64GiB\"\n\
         [pools.p]\ndomains = [\"vm1\"]\nvcpus = {{ budget = 8, max = {max_vcpus} }}\n",
        state.display()
    );
    Config::parse(&text, std::path::Path::new("holds.toml")).unwrap()
}

fn monitor(cfg: Config, state: &std::path::Path) -> Reconciler {
    // The real adapter; vCPU removals time out without taking effect, as a
    // guest that ignores the unplug request makes QEMU do.
    let fake = Fake::wrap(Libvirt::new(&cfg.agent.libvirt_uri));
    fake.ctl().fail_apply_when(|a| match a {
        Action::SetVcpus { from, to, .. } if to < from => {
            Some(HvError::Timeout("vcpu unplug request timed out".into()))
        }
        _ => None,
    });
    let hv = HvWorker::spawn(Box::new(fake)).unwrap();
    let opts = ReconcilerOptions {
        holds_dir: Some(state.to_path_buf()),
        holds: VcpuHolds::load(state).unwrap(),
        ..ReconcilerOptions::default()
    };
    Reconciler::with_options(hv, Host::new().unwrap(), cfg, RuntimeState::new(), opts).0
}

/// vm1's vCPU (target, next, reason).
fn vm1_vcpus(st: &Report) -> (u64, u64, Reason) {
    let m = st.plan.as_ref().unwrap().pools[0]
        .members
        .iter()
        .find(|m| *m.name == *"vm1")
        .unwrap();
    let v = m.alloc.vcpus.as_ref().unwrap();
    (v.target, v.next, v.reason)
}

fn vcpu_actions(st: &Report) -> usize {
    st.results
        .iter()
        .filter(|r| matches!(r.action, Action::SetVcpus { .. }))
        .count()
}

#[tokio::test]
async fn a_timed_out_removal_holds_across_agent_restarts_until_the_domain_restarts() {
    virtpool::adapters::libvirt::quiet_errors();
    let Some(daemon) = Libvirtd::start_temp() else {
        return;
    };
    let uri = daemon.uri();
    let c2 = Connect::open(Some(&uri)).unwrap();
    let dom = c2
        .define_domain_xml(&format!(
            "<domain type='test'><name>vm1</name><uuid>{UUID}</uuid>\
             <memory unit='MiB'>1024</memory><vcpu placement='static'>4</vcpu>\
             <os><type arch='x86_64'>hvm</type></os></domain>"
        ))
        .unwrap();
    dom.create().unwrap();
    let state = tempfile::tempdir().unwrap();

    // Run 1: max 2 → a removal 4 → 2, which times out: held, and saved.
    let mut m = monitor(config(&uri, state.path(), 2), state.path());
    let st = m.cycle_once().await;
    assert_eq!(vcpu_actions(&st), 1, "{:?}", st.results);
    assert!(!st.results[0].ok);
    let saved = VcpuHolds::load(state.path()).unwrap();
    let run = dom.id().unwrap();
    let held = saved.holds.get(UUID).expect("the hold is saved");
    assert_eq!((held.from, held.to, held.run), (4, 2, run));
    drop(m);

    // Run 2 (agent restarted, same domain run): the hold is there from the
    // first cycle on; no vCPU change is sent, in either direction.
    let mut m = monitor(config(&uri, state.path(), 2), state.path());
    let st = m.cycle_once().await;
    assert_eq!(vcpu_actions(&st), 0, "{:?}", st.results);
    assert_eq!(vm1_vcpus(&st), (2, 4, Reason::Pending));
    drop(m);
    let mut m = monitor(config(&uri, state.path(), 3), state.path());
    let st = m.cycle_once().await;
    assert_eq!(vcpu_actions(&st), 0, "max 3: still held");
    assert_eq!(vm1_vcpus(&st), (3, 4, Reason::Pending));

    // The domain restarts (new ID): the hold ends and leaves the file; the
    // next removal is tried again (and times out again: a new hold).
    dom.destroy().unwrap();
    dom.create().unwrap();
    assert_ne!(dom.id().unwrap(), run);
    let st = m.cycle_once().await;
    assert_eq!(vcpu_actions(&st), 1, "{:?}", st.results);
    let saved = VcpuHolds::load(state.path()).unwrap();
    assert_eq!(saved.holds[UUID].run, dom.id().unwrap());

    // Without a state file the holds start empty; a corrupt one is refused
    // with the file named.
    std::fs::write(state.path().join(HOLDS_FILE), "{not json").unwrap();
    let err = VcpuHolds::load(state.path()).unwrap_err().to_string();
    assert!(err.contains(HOLDS_FILE), "{err}");
    std::fs::remove_file(state.path().join(HOLDS_FILE)).unwrap();
    assert!(VcpuHolds::load(state.path()).unwrap().holds.is_empty());
}
