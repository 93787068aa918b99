//! One monitor cycle against the real libvirt test driver: what the plan
//! says is what libvirt reports afterwards.
#![allow(clippy::unwrap_used)]

use crate::support::node::*;
use virtpool::core::model::{DomainObs, DomainState, Resource};

/// Each domain of `doms` has the vCPUs and memory its namesake in `other`
/// has (`what` names the failure).
fn assert_sizes_as_in<'a>(
    doms: impl IntoIterator<Item = &'a DomainObs>,
    other: &[DomainObs],
    what: &str,
) {
    for d in doms {
        let o = dom(other, &d.name);
        assert_eq!(
            (d.vcpus, d.memory),
            (o.vcpus, o.memory),
            "{} {what}",
            d.name
        );
    }
}

const DEMO_POOLS: &str = include_str!("../../config/demo.toml");

/// The demo pools, with the demo's own agent section dropped.
fn demo_pools() -> String {
    let start = DEMO_POOLS.find("[host]").unwrap();
    DEMO_POOLS[start..].to_string()
}

#[tokio::test]
async fn one_cycle_brings_managed_domains_to_their_targets() {
    let cfg = config("cycle-host.xml", &demo_pools());
    let (st, hv) = one_cycle(cfg, false).await;
    assert!(st.libvirt.connected);
    let plan = st.plan.as_ref().unwrap();
    assert!(!plan.actions.is_empty(), "the demo host starts off target");
    assert!(st.results.iter().all(|r| r.ok), "{:?}", st.results);

    let after = hv.observe().await.unwrap();
    let mut checked = 0;
    for pool in &plan.pools {
        for r in [Resource::Vcpus, Resource::Memory] {
            let budget = pool.budget.get(r).unwrap();
            let sum: u64 = pool
                .members
                .iter()
                .filter_map(|m| m.alloc.get(r).map(|a| a.target))
                .sum();
            assert!(sum <= budget, "pool {} {r}: {sum} > {budget}", pool.name);
        }
        for m in pool.members.iter().filter(|m| m.admitted) {
            let d = dom(&after, &m.name);
            let v = m.alloc.vcpus.unwrap();
            let mem = m.alloc.memory.unwrap();
            assert_eq!(d.vcpus, v.next, "{} vcpus", m.name);
            assert_eq!(d.memory, mem.next, "{} memory", m.name);
            checked += 1;
        }
    }
    assert_eq!(checked, 10, "ten managed active domains on the demo host");
    // The published domains are what the domains have after the changes.
    let running = st
        .domains
        .iter()
        .filter(|d| d.state == DomainState::Running);
    assert_sizes_as_in(running, &after, "published");

    // Unmanaged and shut-off domains are untouched.
    let before = fresh_observe("cycle-host.xml").await;
    for name in ["dev-sandbox", "db-old"] {
        let (b, a) = (dom(&before, name), dom(&after, name));
        assert_eq!(
            (b.vcpus, b.memory),
            (a.vcpus, a.memory),
            "{name} was touched"
        );
    }
    assert_eq!(dom(&after, "db-old").state, DomainState::Shutoff);
    assert!(plan.unmanaged.iter().any(|u| *u.name == *"dev-sandbox"));
    let db = plan.pools.iter().find(|p| p.name == "db").unwrap();
    let old = db.members.iter().find(|m| *m.name == *"db-old").unwrap();
    assert!(old.alloc.vcpus.is_none() && old.alloc.memory.is_none());
}

#[tokio::test]
async fn a_domain_whose_max_is_below_its_share_gets_its_max_and_the_rest_is_reshared() {
    let cfg = config(
        "reshare-host.xml",
        "[host]\ncpus = 8\nmemory = \"32GiB\"\n[pools.app]\nmatch = \"app-*\"\nvcpus = { budget = 12 }\n",
    );
    let (st, hv) = one_cycle(cfg, false).await;
    let after = hv.observe().await.unwrap();
    // app-small can hot-plug only 2: the other two share the remaining 10.
    assert_eq!(dom(&after, "app-small").vcpus, 2);
    assert_eq!(dom(&after, "app-1").vcpus, 5);
    assert_eq!(dom(&after, "app-2").vcpus, 5);
    // The shut-off member holds nothing, the unmanaged one is untouched.
    assert_eq!(dom(&after, "app-off").state, DomainState::Shutoff);
    assert_eq!(dom(&after, "other").vcpus, 3);
    let pool = &st.plan.as_ref().unwrap().pools[0];
    assert_eq!(pool.allocated.vcpus, 12);
    let small = pool
        .members
        .iter()
        .find(|m| *m.name == *"app-small")
        .unwrap();
    assert_eq!(
        small.alloc.vcpus.unwrap().reason,
        virtpool::core::model::Reason::HardwareMax
    );
}

#[tokio::test]
async fn observe_mode_changes_nothing() {
    let before = fresh_observe("cycle-host.xml").await;
    let cfg = config("cycle-host.xml", &demo_pools());
    let (st, hv) = one_cycle(cfg, true).await;
    assert!(
        !st.plan.as_ref().unwrap().actions.is_empty(),
        "observe still plans"
    );
    assert!(st.results.is_empty(), "observe applies nothing");
    let after = hv.observe().await.unwrap();
    assert_sizes_as_in(&before, &after, "changed");
}

#[tokio::test]
async fn unreachable_libvirt_is_reported_not_fatal() {
    let mut cfg = config("cycle-host.xml", "");
    cfg.agent.libvirt_uri = "test+unix:///default?socket=/nonexistent/libvirt-sock".into();
    let (st, _hv) = one_cycle(cfg, false).await;
    assert!(!st.libvirt.connected);
    assert!(
        st.libvirt.error.as_deref().unwrap().contains("libvirt"),
        "{:?}",
        st.libvirt.error
    );
    assert!(st.plan.is_none());
}
