//! A domain event during a long full observation: the observation gives
//! way, and a cycle scoped to that domain runs before the full one (as an
//! `allocate` does), so the event is acted on within the debounce instead
//! of after the rest of the full cycle. The same holds for a full cycle
//! that starts while an event waits in its debounce window.
//!
//! In-process `test:///default` with a few thousand extra domains (its own
//! test binary: the driver state is per process).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use virt::connect::Connect;
use virtpool::adapters::libvirt::events;
use virtpool::core::model::DomainState;

#[path = "support/status.rs"]
mod status;
use status::{run_observer, state_of, wait_status};

const URI: &str = "test:///default";
const EXTRA: usize = 12_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_event_goes_before_a_running_full_observation() {
    virtpool::adapters::libvirt::quiet_errors();
    events::start_event_loop().unwrap();
    let other = Connect::open(Some(URI)).unwrap();
    for i in 0..EXTRA {
        let d = other
            .define_domain_xml(&format!(
                "<domain type='test'><name>x{i}</name><memory unit='MiB'>64</memory>\
                 <vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"
            ))
            .unwrap();
        d.create().unwrap();
    }
    let test = other.lookup_domain_by_name("test").unwrap();
    let test_uuid = test.uuid_string().unwrap();

    let agent = run_observer(URI);
    let handle = &agent.handle;
    let mut status = handle.reports();
    wait_status(&mut status, Duration::from_secs(60), |s| s.cycle >= 1).await;

    // How long a steady full observation takes here.
    let st = handle.reconcile(true).await.unwrap();
    let observe = Duration::from_secs_f64(st.last_cycle.as_ref().unwrap().observe_ms / 1e3);
    assert_eq!(st.domains.len(), EXTRA + 1);
    eprintln!(
        "full observation of {} domains: {observe:?}",
        st.domains.len()
    );
    assert!(
        observe > Duration::from_millis(60),
        "too fast to land an event inside it: {observe:?}"
    );

    // A full cycle; a quarter of an observation later, the domain pauses.
    let before = st.cycle;
    handle.reconcile(false).await;
    tokio::time::sleep(observe / 4).await;
    let t0 = Instant::now();
    test.suspend().unwrap();
    let st = scoped_then_full(&mut status, before, &test_uuid, "the full cycle went first").await;
    eprintln!(
        "suspend -> scoped cycle {}, full one finished {:?} after the suspend: {:?}",
        st.cycle,
        t0.elapsed(),
        st.last_cycle
    );

    // A full cycle asked for inside an event's debounce window (as a
    // periodic tick can be): the event's domain still goes first.
    test.resume().unwrap();
    let st = wait_status(&mut status, Duration::from_secs(30), |s| {
        state_of(s, "test") == Some(DomainState::Running)
    })
    .await;
    let before = st.cycle;
    test.suspend().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle.reconcile(false).await;
    scoped_then_full(
        &mut status,
        before,
        &test_uuid,
        "the full cycle asked in the debounce window went first",
    )
    .await;

    test.resume().unwrap();
    agent.stop().await;
}

/// After cycle `before`: the first cycle to finish is the one scoped to the
/// paused domain `uuid` (else fails with `why`), showing it paused; then
/// the full cycle, whole. Returns the scoped cycle's status.
async fn scoped_then_full(
    status: &mut tokio::sync::watch::Receiver<std::sync::Arc<virtpool::agent::report::Report>>,
    before: u64,
    uuid: &str,
    why: &str,
) -> std::sync::Arc<virtpool::agent::report::Report> {
    let scoped = wait_status(status, Duration::from_secs(30), |s| s.cycle > before).await;
    assert_eq!(
        scoped.last_cycle.as_ref().unwrap().scope.as_deref(),
        Some(&[uuid.to_string()][..]),
        "{why}"
    );
    assert_eq!(state_of(&scoped, "test"), Some(DomainState::Paused));
    let full = wait_status(status, Duration::from_secs(30), |s| s.cycle > before + 1).await;
    assert!(full.last_cycle.as_ref().unwrap().scope.is_none());
    assert_eq!(full.domains.len(), EXTRA + 1);
    scoped
}
