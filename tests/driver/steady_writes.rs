//! A converged agent issues no hypervisor writes: once a cycle has nothing
//! to change, further cycles only read. Writes are counted at the adapter
//! boundary (every `Hypervisor` call that changes a domain), around the
//! real libvirt adapter on the test driver.
#![allow(clippy::unwrap_used)]

use crate::support::fake::Fake;
use crate::support::node::*;
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::adapters::libvirt::Libvirt;
use virtpool::agent::reconciler::Reconciler;
use virtpool::agent::state::RuntimeState;

#[tokio::test]
async fn a_converged_cycle_makes_no_writes() {
    // The demo pools manage vCPUs, memory, disk bytes and IOPS.
    let demo = include_str!("../../config/demo.toml");
    let pools = &demo[demo.find("[host]").unwrap()..];
    let cfg = config("cycle-host.xml", pools);
    virtpool::adapters::libvirt::quiet_errors();
    let fake = Fake::wrap(Libvirt::new(&cfg.agent.libvirt_uri));
    let calls = fake.ctl();
    let hv = HvWorker::spawn(Box::new(fake)).unwrap();
    let (mut m, _h) = Reconciler::new(hv, Host::new().unwrap(), cfg, RuntimeState::new(), false);

    let st = m.cycle_once().await;
    assert!(st.libvirt.connected);
    let first = calls.writes();
    assert!(
        first > 0,
        "the demo host starts off target: the first cycle writes"
    );
    assert!(st.results.iter().all(|r| r.ok), "{:?}", st.results);
    // The status counts libvirt calls: at least one per write (the test
    // driver takes live and config in separate calls) and the reads.
    let c = st.last_cycle.as_ref().unwrap();
    assert!(c.libvirt_writes >= first as u64, "{c:?} vs {first} writes");
    assert!(c.libvirt_reads > st.domains.len() as u64, "{c:?}");
    // Where the cycle's time went: each phase took some, together no more
    // than the whole.
    assert!(
        c.observe_ms > 0.0 && c.plan_ms > 0.0 && c.enforce_ms > 0.0,
        "{c:?}"
    );
    assert!(
        c.observe_ms + c.plan_ms + c.enforce_ms <= c.duration_ms,
        "{c:?}"
    );

    // Converge (balloon shrinks are rate-limited: it may take a few cycles).
    let mut converged = false;
    for _ in 0..50 {
        if m.cycle_once().await.results.is_empty() {
            converged = true;
            break;
        }
    }
    assert!(converged, "no fixed point within 50 cycles");

    let before = calls.writes();
    let observed = calls.full_observes();
    for _ in 0..3 {
        let st = m.cycle_once().await;
        assert!(st.libvirt.connected);
        assert!(st.results.is_empty(), "{:?}", st.results);
        let c = st.last_cycle.as_ref().unwrap();
        assert_eq!(c.libvirt_writes, 0, "{c:?}");
        // No events here, so nothing is cached: list, then per domain at
        // least info, max vCPUs and the XML.
        assert!(c.libvirt_reads > 3 * st.domains.len() as u64, "{c:?}");
    }
    assert_eq!(
        calls.writes(),
        before,
        "steady-state cycles wrote to the hypervisor"
    );
    assert_eq!(calls.full_observes(), observed + 3);
}

/// The libvirt reads and writes of one steady cycle of the demo pools,
/// with `extra` appended to the last pool (`[pools.batch]`).
async fn steady_cycle_calls(extra: &str) -> (u64, u64, Vec<virtpool::core::model::Reason>) {
    let demo = include_str!("../../config/demo.toml");
    let pools = format!("{}{extra}", &demo[demo.find("[host]").unwrap()..]);
    let cfg = config("cycle-host.xml", &pools);
    virtpool::adapters::libvirt::quiet_errors();
    let hv = HvWorker::spawn(Box::new(Libvirt::new(&cfg.agent.libvirt_uri))).unwrap();
    let (mut m, _h) = Reconciler::new(hv, Host::new().unwrap(), cfg, RuntimeState::new(), false);
    for _ in 0..50 {
        if m.cycle_once().await.results.is_empty() {
            break;
        }
    }
    let st = m.cycle_once().await;
    assert!(st.results.is_empty(), "{:?}", st.results);
    let c = st.last_cycle.as_ref().unwrap();
    let reasons = st
        .plan
        .as_ref()
        .unwrap()
        .pools
        .iter()
        .flat_map(|p| &p.members)
        .filter_map(|m| m.alloc.cpu.map(|a| a.reason))
        .collect();
    (c.libvirt_reads, c.libvirt_writes, reasons)
}

#[tokio::test]
async fn cpu_time_in_a_pool_costs_no_read_and_no_write_on_the_test_driver() {
    // The test driver's scheduler has no quota: the batch pool's CPU time
    // is planned (no_quota), never written, and read with what a cycle
    // reads anyway (CPU time comes with `info`, or with bulk stats on
    // QEMU).
    let (reads, writes, none) = steady_cycle_calls("").await;
    assert!(none.is_empty());
    let (cpu_reads, cpu_writes, reasons) =
        steady_cycle_calls("cpu = { budget = 2, policy = \"demand\" }\n").await;
    assert_eq!((writes, cpu_writes), (0, 0));
    assert_eq!(cpu_reads, reads, "a CPU budget adds libvirt reads");
    assert!(!reasons.is_empty());
    assert!(
        reasons.iter().all(|r| matches!(
            r,
            virtpool::core::model::Reason::NoQuota | virtpool::core::model::Reason::Share
        )),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn cpu_use_is_read_from_the_test_drivers_cpu_time() {
    // The test driver's `info` reports wall-clock time as CPU time: every
    // running domain uses one core, as far as it says.
    let demo = include_str!("../../config/demo.toml");
    let pools = format!(
        "{}cpu = {{ budget = 2 }}\n",
        &demo[demo.find("[host]").unwrap()..]
    );
    let cfg = config("cycle-host.xml", &pools);
    virtpool::adapters::libvirt::quiet_errors();
    let hv = HvWorker::spawn(Box::new(Libvirt::new(&cfg.agent.libvirt_uri))).unwrap();
    let (mut m, _h) = Reconciler::new(hv, Host::new().unwrap(), cfg, RuntimeState::new(), false);
    let st = m.cycle_once().await;
    assert!(st.domains.iter().all(|d| d.cpu_used.is_none()));
    let running: Vec<_> = st
        .domains
        .iter()
        .filter(|d| d.state == virtpool::core::model::DomainState::Running)
        .map(|d| d.name.clone())
        .collect();
    assert!(!running.is_empty());
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let st = m.cycle_once().await;
    for d in st.domains.iter().filter(|d| running.contains(&d.name)) {
        let used = d
            .cpu_used
            .unwrap_or_else(|| panic!("{}: no use measured", d.name));
        assert!(
            (900..=1100).contains(&used),
            "{}: {used} millicores",
            d.name
        );
    }
}
