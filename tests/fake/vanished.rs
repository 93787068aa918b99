//! Domains that vanish under the reconciler, on the in-memory fake: one
//! gone between a cycle's observation and its writes fails those writes as
//! `NoDomain` (the others apply) and is forgotten by the next cycle; an
//! observation that fails leaves the last report's domains alone.
#![allow(clippy::unwrap_used)]

use crate::support::fake::{Fake, FakeCtl};
use crate::support::inproc::dom;
use std::path::Path;
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::adapters::libvirt::HvError;
use virtpool::agent::reconciler::{Handle, Reconciler};
use virtpool::agent::report::ActionErrorKind;
use virtpool::agent::state::RuntimeState;
use virtpool::core::config::Config;
use virtpool::core::model::DomainObs;

/// 16 vCPUs for four `v-*` of 1 vCPU (max 8): 4 each while all four run.
fn config() -> Config {
    let text = "[agent]\nstate_dir = \"/nonexistent\"\ninterval = \"1h\"\n\
                [host]\ncpus = 64\nmemory = \"256GiB\"\n\
                [vcpus]\ncooldown = \"0s\"\n\
                [pools.v]\nmatch = \"v-*\"\nvcpus = { budget = 16 }\n";
    Config::parse(text, Path::new("vanished.toml")).unwrap()
}

/// A reconciler over the fake holding `domains`, on [`config`].
fn reconciler(domains: Vec<DomainObs>, observe_only: bool) -> (FakeCtl, Reconciler, Handle) {
    let fake = Fake::new(domains);
    let ctl = fake.ctl();
    let hv = HvWorker::spawn(Box::new(fake)).unwrap();
    let (m, h) = Reconciler::new(
        hv,
        Host::new().unwrap(),
        config(),
        RuntimeState::new(),
        observe_only,
    );
    (ctl, m, h)
}

#[tokio::test]
async fn a_domain_gone_between_observe_and_apply_fails_cleanly_and_is_forgotten() {
    let domains: Vec<_> = (1..=4).map(|i| dom(&format!("v-{i}"), 1, 8, 4)).collect();
    let gone = domains[2].uuid.to_string();
    let (ctl, mut m, _h) = reconciler(domains, false);

    let ctl2 = ctl.clone();
    let uuid = gone.clone();
    ctl.after_observe(move || ctl2.vanish(&uuid));
    let st = m.cycle_once().await;
    assert!(st.libvirt.connected);
    let on_gone: Vec<_> = st
        .results
        .iter()
        .filter(|r| r.action.uuid() == gone)
        .collect();
    assert!(
        !on_gone.is_empty(),
        "no action planned for v-3: {:?}",
        st.results
    );
    for r in &on_gone {
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.error.as_ref().unwrap().kind, ActionErrorKind::NoDomain);
    }
    assert!(
        st.results
            .iter()
            .filter(|r| r.action.uuid() != gone)
            .all(|r| r.ok),
        "{:?}",
        st.results
    );
    // The fake recorded each write and what came of it.
    let applied = ctl.applied();
    assert_eq!(applied.len(), st.results.len());
    assert!(applied
        .iter()
        .filter(|(a, _)| a.uuid() == gone)
        .all(|(_, r)| matches!(r, Err(HvError::NoDomain(_)))));

    // The next cycle no longer sees it and re-shares among the other three.
    let st = m.cycle_once().await;
    assert!(
        st.domains.iter().all(|d| *d.uuid != *gone),
        "v-3 not forgotten"
    );
    assert!(st.results.iter().all(|r| r.ok && r.action.uuid() != gone));
    let vcpus: Vec<u64> = ctl
        .domains()
        .iter()
        .filter(|d| *d.uuid != *gone)
        .map(|d| d.vcpus)
        .collect();
    assert!(vcpus.iter().sum::<u64>() <= 16, "{vcpus:?}");
    assert!(vcpus.iter().all(|v| *v > 4), "not re-shared: {vcpus:?}");
}

#[tokio::test]
async fn a_failed_observation_keeps_the_last_domains() {
    let (ctl, mut m, _h) = reconciler(
        (1..=2).map(|i| dom(&format!("v-{i}"), 1, 8, 4)).collect(),
        true,
    );
    assert_eq!(m.cycle_once().await.domains.len(), 2);
    ctl.fail_observe(Some(HvError::Other("injected".into())));
    let st = m.cycle_once().await;
    assert_eq!(st.domains.len(), 2, "{:?}", st.domains);
    ctl.fail_observe(None);
    assert_eq!(m.cycle_once().await.domains.len(), 2);
    assert_eq!(ctl.full_observes(), 3);
}
