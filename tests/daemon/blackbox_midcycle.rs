//! Black-box scenario 4 — a domain destroyed or undefined between observe
//! and enforce. Real libvirt (a private libvirtd), deterministic
//! interleaving: the reconciler's hypervisor is the real [`Libvirt`] behind
//! the recording fake, whose hook, right after the real `observe`, destroys
//! domains through another connection; `apply` then goes to the real
//! libvirt.
#![allow(clippy::unwrap_used)]

use crate::support::blackbox::*;
use crate::support::fake::Fake;
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::adapters::libvirt::Libvirt;
use virtpool::agent::reconciler::Reconciler;
use virtpool::agent::report::ActionErrorKind;
use virtpool::agent::state::RuntimeState;
use virtpool::core::model::{Action, DomainState};

/// 16 vCPUs and 24 GiB for the active `mc-*` (max 8 / 8 GiB, min 5 GiB):
/// four active → 4 vCPUs, 6 GiB each; two active → 8 vCPUs, 8 GiB each.
fn pools() -> String {
    prefix_pool("mc", 16, 24)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_destroyed_or_undefined_between_observe_and_enforce() {
    let Some((dir, lv, h)) = private_host("midcycle") else {
        return;
    };
    let fleet: Vec<DomSpec> = (1..=4)
        .map(|i| DomSpec::new(&format!("mc-{i}"), uuid(4, i), 1, 8, 5632, 8192))
        .collect();
    h.define_fleet(&fleet);

    let text = config_text(dir.path(), &lv.uri(), "1h", &pools());
    let (_, cfg) = write_config(dir.path(), &text);
    virtpool::adapters::libvirt::quiet_errors();
    let fake = Fake::wrap(Libvirt::new(&lv.uri()));
    let ctl = fake.ctl();
    let hv = HvWorker::spawn(Box::new(fake)).unwrap();
    let (mut monitor, _handle) = Reconciler::new(
        hv,
        Host::new().unwrap(),
        cfg.clone(),
        RuntimeState::new(),
        false,
    );

    // Between this cycle's observe and enforce: mc-2 shut off, mc-3 gone.
    let inj = Host2::open(&lv.uri());
    ctl.after_observe(move || {
        inj.destroy("mc-2");
        inj.destroy("mc-3");
        inj.undefine("mc-3");
    });
    let st = monitor.cycle_once().await;
    assert!(st.libvirt.connected);
    let plan = st.plan.as_ref().unwrap();
    let planned: Vec<&str> = plan.actions.iter().map(Action::domain).collect();
    for d in ["mc-1", "mc-2", "mc-3", "mc-4"] {
        assert!(planned.contains(&d), "{d} not in the plan: {planned:?}");
    }
    // Each action was tried; those on mc-2 / mc-3 failed cleanly, the others applied.
    assert_eq!(ctl.applied().len(), plan.step_count());
    for r in &st.results {
        match r.action.domain() {
            "mc-2" => {
                assert!(!r.ok, "{r:?}");
                let e = r.error.as_ref().unwrap();
                assert_eq!(e.kind, ActionErrorKind::OperationInvalid, "{e}");
            }
            "mc-3" => {
                assert!(!r.ok, "{r:?}");
                let e = r.error.as_ref().unwrap();
                assert_eq!(e.kind, ActionErrorKind::NoDomain, "{e}");
            }
            _ => assert!(r.ok, "{r:?}"),
        }
    }
    let failed = st.results.iter().filter(|r| !r.ok).count();
    assert_eq!(
        failed, 4,
        "vCPUs and memory of mc-2 and mc-3: {:?}",
        st.results
    );
    for d in ["mc-1", "mc-4"] {
        let l = h.get(d);
        assert_eq!((l.vcpus, l.memory), (4, 6 * GIB), "{d}");
    }
    assert_eq!(h.get("mc-2").state, DomainState::Shutoff);
    assert!(h.live("mc-3").is_none());
    check_safety(&h, &cfg);

    // Next cycle: mc-3 is forgotten, mc-2 holds nothing, the rest is re-shared.
    let st2 = monitor.cycle_once().await;
    assert!(
        st2.domains.iter().all(|d| *d.name != *"mc-3"),
        "mc-3 not forgotten"
    );
    let plan2 = st2.plan.as_ref().unwrap();
    assert!(plan2.pools[0].members.iter().all(|m| *m.name != *"mc-3"));
    assert!(
        plan2
            .actions
            .iter()
            .all(|a| a.domain() == "mc-1" || a.domain() == "mc-4"),
        "{:?}",
        plan2.actions
    );
    assert!(st2.results.iter().all(|r| r.ok), "{:?}", st2.results);
    for d in ["mc-1", "mc-4"] {
        let l = h.get(d);
        assert_eq!((l.vcpus, l.memory), (8, 8 * GIB), "{d}");
    }
    check_safety(&h, &cfg);
    // A third cycle is a fixed point.
    let st3 = monitor.cycle_once().await;
    let again = &st3.plan.as_ref().unwrap().actions;
    assert!(again.is_empty(), "{again:?}");
    eprintln!(
        "midcycle: {} actions in the faulted cycle, {failed} failed cleanly (mc-2 shut off, mc-3 undefined), next cycle {} actions all ok",
        st.results.len(),
        st2.results.len()
    );
}
