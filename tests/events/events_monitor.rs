//! Domain lifecycle events on the in-process `test:///default` driver: all
//! connections of one process share its state, so a change made through a
//! second connection raises events on the agent's connection.
//!
//! The tests share that one driver state, so they run one at a time.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;
use virtpool::adapters::libvirt::events::{
    self, DomainEvent, EventReceiver, HvEvent, LifecycleKind,
};
use virtpool::adapters::libvirt::Hypervisor;
use virtpool::core::model::DomainState;

use crate::connected;
use crate::support::status::{run_observer, state_of, wait_status};

const URI: &str = "test:///default";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test at a time; the event loop runs before any connection opens.
async fn setup() -> tokio::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().await;
    virtpool::adapters::libvirt::quiet_errors();
    events::start_event_loop().unwrap();
    guard
}

type DomainOp = fn(&Domain) -> Result<(), virt::error::Error>;

/// A second client: the "operator" changing domains behind the agent.
fn other() -> (Connect, Domain) {
    let c = Connect::open(Some(URI)).unwrap();
    let d = c.lookup_domain_by_name("test").unwrap();
    (c, d)
}

/// The next domain event within `within`, skipping none.
async fn next_domain_event(rx: &mut EventReceiver, within: Duration) -> DomainEvent {
    match tokio::time::timeout(within, rx.recv()).await {
        Ok(Some(HvEvent::Domain(e))) => e,
        other => panic!("expected a domain event within {within:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_from_a_second_connection_raise_events_on_the_agent() {
    let _g = setup().await;
    let (hv, mut rx) = connected(URI);
    assert!(hv.events_registered());

    let (c, d) = other();
    let uuid = d.uuid_string().unwrap();
    let steps: [(&str, DomainOp, LifecycleKind); 4] = [
        ("suspend", Domain::suspend, LifecycleKind::Suspended),
        ("resume", Domain::resume, LifecycleKind::Resumed),
        ("destroy", Domain::destroy, LifecycleKind::Stopped),
        ("create", Domain::create, LifecycleKind::Started),
    ];
    for (what, op, kind) in steps {
        let t0 = Instant::now();
        op(&d).unwrap();
        let e = next_domain_event(&mut rx, Duration::from_secs(1)).await;
        eprintln!("{what}: {e:?} after {:?}", t0.elapsed());
        assert_eq!(e.kind, kind, "{what}");
        assert_eq!(e.name, "test");
        assert_eq!(e.uuid, uuid);
    }
    drop(d);
    drop(c);
    drop(hv);
}

/// Disconnecting deregisters (libvirt frees the callback, dropping its
/// sender); a reconnect registers exactly one callback again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_reregisters_once_and_drop_releases_the_callbacks() {
    let _g = setup().await;
    let (mut hv, mut rx) = connected(URI);
    let (c, d) = other();

    for round in 0..3 {
        hv.disconnect();
        assert!(!hv.events_registered());
        hv.connect().unwrap();
        assert!(hv.events_registered(), "round {round}");
    }
    d.suspend().unwrap();
    let e = next_domain_event(&mut rx, Duration::from_secs(1)).await;
    assert_eq!(e.kind, LifecycleKind::Suspended);
    d.resume().unwrap();
    let e = next_domain_event(&mut rx, Duration::from_secs(1)).await;
    assert_eq!(e.kind, LifecycleKind::Resumed);
    // One registration only: no duplicate of either event.
    let extra = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
    assert!(extra.is_err(), "duplicate event: {extra:?}");

    // Dropping the adapter deregisters; every sender clone is released.
    drop(hv);
    let end = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
    assert!(
        matches!(end, Ok(None)),
        "callbacks still hold the sender: {end:?}"
    );
    drop(d);
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_runs_a_cycle_within_a_second_despite_a_60s_interval() {
    let _g = setup().await;
    let agent = run_observer(URI);
    let handle = &agent.handle;
    let mut status = handle.reports();

    // The first tick is immediate.
    let st = wait_status(&mut status, Duration::from_secs(5), |s| s.cycle >= 1).await;
    assert!(st.libvirt.connected, "{:?}", st.libvirt);
    assert_eq!(state_of(&st, "test"), Some(DomainState::Running));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handle.report().cycle, 1, "no cycle without an event");

    let (c, d) = other();
    let t0 = Instant::now();
    d.suspend().unwrap();
    let st = wait_status(&mut status, Duration::from_secs(1), |s| s.cycle >= 2).await;
    let took = t0.elapsed();
    eprintln!("suspend -> cycle {} after {took:?}", st.cycle);
    assert_eq!(state_of(&st, "test"), Some(DomainState::Paused));
    assert!(took < Duration::from_secs(1));

    // A burst of five changes within the debounce window: one cycle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    d.resume().unwrap();
    d.suspend().unwrap();
    d.resume().unwrap();
    d.destroy().unwrap();
    d.create().unwrap();
    let burst = t0.elapsed();
    let st = wait_status(&mut status, Duration::from_secs(1), |s| s.cycle >= 3).await;
    eprintln!(
        "burst of 5 in {burst:?} -> cycle {} after {:?}",
        st.cycle,
        t0.elapsed()
    );
    assert_eq!(state_of(&st, "test"), Some(DomainState::Running));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(handle.report().cycle, 3, "the burst ran one cycle");

    agent.stop().await;
    drop(d);
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_not_lost_when_a_scoped_request_arrives_in_its_debounce() {
    let _g = setup().await;
    let (c, d) = other();
    let b = c
        .define_domain_xml(
            "<domain type='test'><name>evb</name><memory unit='MiB'>64</memory>\
             <vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>",
        )
        .unwrap();
    b.create().unwrap();
    let b_uuid = b.uuid_string().unwrap();

    let agent = run_observer(URI);
    let handle = &agent.handle;
    let mut status = handle.reports();
    let st = wait_status(&mut status, Duration::from_secs(5), |s| s.cycle >= 1).await;
    assert_eq!(state_of(&st, "test"), Some(DomainState::Running));

    // `test` pauses; inside the event's debounce window, a cycle scoped to
    // the other domain is asked for (an allocate would do that).
    d.suspend().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle
        .reconcile_scope(
            virtpool::agent::reconciler::Scope::Domains(vec![b_uuid]),
            false,
        )
        .await;
    // The pause is seen by the next cycles, not at the next 60 s tick.
    let st = wait_status(&mut status, Duration::from_secs(2), |s| {
        state_of(s, "test") == Some(DomainState::Paused)
    })
    .await;
    eprintln!("pause seen in cycle {}: {:?}", st.cycle, st.last_cycle);

    agent.stop().await;
    d.resume().unwrap();
    b.destroy().unwrap();
    b.undefine().unwrap();
    drop(d);
    drop(c);
}
