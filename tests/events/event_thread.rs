//! `HvWorker` jobs on libvirt's event-loop thread (the process runs the
//! loop, as `virtpoold` does): lifecycle events still arrive while jobs run,
//! a reconnect registers again, several workers share the thread one job at
//! a time, and a panicking job stops only its own worker.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtpool::adapters::libvirt::events::{EventReceiver, HvEvent, LifecycleKind};
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::adapters::libvirt::{HvError, Libvirt};
use virtpool::core::model::{DomainObs, DomainState};

use crate::support::fake::{Fake, FakeCtl};
use crate::support::libvirtd::{start_events as setup, suspend_from_outside};
use crate::{libvirtd, worker};

/// Waits for a "suspended" event, skipping others.
async fn suspended_within(rx: &mut EventReceiver, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(HvEvent::Domain(e))) if e.kind == LifecycleKind::Suspended => {
                assert_eq!(e.name, "test");
                return;
            }
            Ok(Some(_)) => continue,
            other => panic!("no suspended event within {within:?}: {other:?}"),
        }
    }
}

async fn thread_name(w: &HvWorker) -> String {
    w.run(|_| std::thread::current().name().unwrap_or("").to_string())
        .await
        .unwrap()
}

fn state_of(obs: &[DomainObs], name: &str) -> Option<DomainState> {
    obs.iter().find(|d| &*d.name == name).map(|d| d.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_while_jobs_run_on_the_event_thread() {
    let Some(daemon) = libvirtd() else { return };
    let uri = daemon.uri();
    let (hv, mut rx) = worker(&uri);
    assert_eq!(thread_name(&hv).await, "libvirt-events");
    let obs = hv.observe().await.unwrap();
    assert_eq!(state_of(&obs, "test"), Some(DomainState::Running));

    // Keep the thread busy with observations while the domain changes.
    let busy = hv.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let observer = tokio::spawn(async move {
        let mut n = 0u32;
        while !stop2.load(Ordering::Relaxed) {
            busy.observe().await.unwrap();
            n += 1;
        }
        n
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = Instant::now();
    tokio::task::spawn_blocking({
        let uri = uri.clone();
        move || suspend_from_outside(&uri)
    })
    .await
    .unwrap();
    suspended_within(&mut rx, Duration::from_secs(1)).await;
    eprintln!("suspend -> event after {:?}", t0.elapsed());
    stop.store(true, Ordering::Relaxed);
    let n = observer.await.unwrap();
    assert!(n > 0, "no observation ran meanwhile");
    let obs = hv.observe().await.unwrap();
    assert_eq!(state_of(&obs, "test"), Some(DomainState::Paused));
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_registers_again() {
    let Some(mut daemon) = libvirtd() else { return };
    let (hv, mut rx) = worker(&daemon.uri());
    hv.connect().await.unwrap();
    assert_eq!(thread_name(&hv).await, "libvirt-events");

    daemon.sigterm();
    match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        Ok(Some(HvEvent::ConnectionClosed(_))) => {}
        other => panic!("no close event: {other:?}"),
    }
    daemon.stop();
    daemon.restart();
    // The old connection is dead: connect() opens and registers anew.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        match hv.connect().await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reconnect: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no reconnect: {e}"),
        }
    }
    assert!(hv.run(|hv| hv.is_connected()).await.unwrap());
    let uri = daemon.uri();
    tokio::task::spawn_blocking(move || suspend_from_outside(&uri))
        .await
        .unwrap();
    suspended_within(&mut rx, Duration::from_secs(1)).await;
    drop(daemon);
}

/// The fake hypervisor, no domains: every call takes 1 ms (it panics if
/// two calls ever overlap), its close (drop) takes 200 ms.
fn exclusive() -> (Fake, FakeCtl) {
    let fake = Fake::new(Vec::new());
    let ctl = fake.ctl();
    ctl.set_delay(Duration::from_millis(1));
    ctl.set_close_delay(Duration::from_millis(200));
    (fake, ctl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_thread_one_job_at_a_time() {
    setup();
    let (a, a_ctl) = exclusive();
    let (b, b_ctl) = exclusive();
    let wa = HvWorker::spawn(Box::new(a)).unwrap();
    let wb = HvWorker::spawn(Box::new(b)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let w = if i % 2 == 0 { wa.clone() } else { wb.clone() };
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                // observe() is connect() then observe(): two entries.
                w.observe().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(a_ctl.call_count(), 80);
    assert_eq!(b_ctl.call_count(), 80);
    assert!(!a_ctl.busy());
    assert_eq!(thread_name(&wa).await, "libvirt-events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_handle_waits_for_the_close_on_the_event_thread() {
    setup();
    let (hv, ctl) = exclusive();
    let w = HvWorker::spawn(Box::new(hv)).unwrap();
    assert_eq!(thread_name(&w).await, "libvirt-events");
    let t = Instant::now();
    drop(w);
    assert!(
        ctl.closed(),
        "the drop returned after {:?}, before the close",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_job_stops_only_its_worker() {
    let Some(daemon) = libvirtd() else { return };
    let uri = daemon.uri();
    let (healthy, mut rx) = worker(&uri);
    healthy.connect().await.unwrap();
    let doomed = HvWorker::spawn(Box::new(Libvirt::new(&uri))).unwrap();
    doomed.connect().await.unwrap();

    let r = doomed
        .run(|_| -> u32 { panic!("deliberate panic in a job") })
        .await;
    assert_eq!(
        r,
        Err(HvError::Other("hypervisor thread stopped".into())),
        "the panicking job"
    );
    // Every later job of that worker fails the same way ...
    let r = doomed.observe().await;
    assert_eq!(
        r.map(|o| o.len()),
        Err(HvError::Other("hypervisor thread stopped".into()))
    );
    // ... while the other worker and the event loop go on.
    let obs = healthy.observe().await.unwrap();
    assert_eq!(state_of(&obs, "test"), Some(DomainState::Running));
    tokio::task::spawn_blocking(move || suspend_from_outside(&uri))
        .await
        .unwrap();
    suspended_within(&mut rx, Duration::from_secs(1)).await;
    drop(daemon);
}
