//! Lifecycle events through a real daemon: a private `libvirtd` serves the
//! test driver on a socket; the agent's monitor (60 s interval) wakes on a
//! change made by a second client, notices the daemon's death through the
//! close callback, reconnects when it is back and is registered again.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::events::{CloseReason, HvEvent};
use virtpool::agent::reconciler::Reconciler;
use virtpool::agent::state::RuntimeState;
use virtpool::core::config::Config;
use virtpool::core::model::DomainState;

use crate::support::libvirtd::suspend_from_outside;
use crate::support::status::{state_of, wait_status};
use crate::{connected, libvirtd, worker};

/// The adapter alone: the daemon's death fires the close callback (EOF).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_death_fires_the_close_callback() {
    let Some(mut daemon) = libvirtd() else { return };
    let (hv, mut rx) = connected(&daemon.uri());
    assert!(hv.events_registered());
    let t0 = Instant::now();
    daemon.sigterm();
    let ev = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
    eprintln!("after SIGTERM to the daemon: {ev:?} in {:?}", t0.elapsed());
    daemon.stop();
    assert!(
        matches!(
            ev,
            Ok(Some(HvEvent::ConnectionClosed(
                CloseReason::Eof | CloseReason::Error
            )))
        ),
        "{ev:?}"
    );
    drop(hv);
    let end = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
    assert!(matches!(end, Ok(None)), "callbacks not released: {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_wakes_on_events_and_after_a_daemon_restart() {
    let Some(mut daemon) = libvirtd() else { return };
    let uri = daemon.uri();
    let text = format!(
        "[agent]\nlibvirt_uri = \"{uri}\"\nstate_dir = \"/nonexistent\"\nmode = \"observe\"\ninterval = \"60s\"\n"
    );
    let cfg = Config::parse(&text, Path::new("events.toml")).unwrap();
    let (hv, rx) = worker(&uri);
    let (monitor, handle) =
        Reconciler::new(hv, Host::new().unwrap(), cfg, RuntimeState::new(), true);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(monitor.with_events(rx).run(shutdown.clone()));
    let mut status = handle.reports();
    let mut log = handle.reports();
    let start = Instant::now();
    tokio::spawn(async move {
        while log.changed().await.is_ok() {
            let s = log.borrow_and_update().clone();
            eprintln!(
                "  [{:>6.0?}] cycle {} connected={} {:?}",
                start.elapsed(),
                s.cycle,
                s.libvirt.connected,
                s.libvirt.error
            );
        }
    });

    let st = wait_status(&mut status, Duration::from_secs(5), |s| s.cycle >= 1).await;
    assert!(st.libvirt.connected, "{:?}", st.libvirt);
    assert_eq!(state_of(&st, "test"), Some(DomainState::Running));

    // 1. A change by another client: a cycle within 1 s.
    let t0 = Instant::now();
    suspend_from_outside(&uri);
    let st = wait_status(&mut status, Duration::from_secs(1), |s| s.cycle >= 2).await;
    eprintln!("suspend -> cycle {} after {:?}", st.cycle, t0.elapsed());
    assert_eq!(state_of(&st, "test"), Some(DomainState::Paused));

    // 2. The daemon dies: the close callback runs a cycle, which reports
    //    the connection lost (not 60 s later).
    let t0 = Instant::now();
    daemon.sigterm();
    let st = wait_status(&mut status, Duration::from_secs(1), |s| {
        s.cycle >= 3 && !s.libvirt.connected
    })
    .await;
    eprintln!(
        "SIGTERM to the daemon -> cycle {} (disconnected: {:?}) after {:?}",
        st.cycle,
        st.libvirt.error,
        t0.elapsed()
    );
    daemon.stop();

    // 3. Back again: the monitor's reconnect backoff (1 s, 2 s, ...) opens a
    //    new connection and registers on it.
    let t0 = Instant::now();
    daemon.restart();
    let st = wait_status(&mut status, Duration::from_secs(8), |s| s.libvirt.connected).await;
    eprintln!("reconnected at cycle {} after {:?}", st.cycle, t0.elapsed());
    // The restarted daemon's test driver starts afresh.
    assert_eq!(state_of(&st, "test"), Some(DomainState::Running));

    // 4. Events arrive on the new connection.
    let before = st.cycle;
    let t0 = Instant::now();
    suspend_from_outside(&daemon.uri());
    let st = wait_status(&mut status, Duration::from_secs(1), |s| s.cycle > before).await;
    eprintln!(
        "suspend after restart -> cycle {} after {:?}",
        st.cycle,
        t0.elapsed()
    );
    assert_eq!(state_of(&st, "test"), Some(DomainState::Paused));

    shutdown.cancel();
    task.await.unwrap();
    drop(daemon);
}
