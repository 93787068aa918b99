//! The reconciler in-process with the fake hypervisor and a recording notifier:
//! a hung libvirt call stops the watchdog pings; a refused reload stays
//! visible until a good one.
#![allow(clippy::unwrap_used)]

use crate::support::fake::{Fake, FakeCtl};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::agent::audit::{AuditLog, EventKind};
use virtpool::agent::load::LoadError;
use virtpool::agent::notify::{Notice, RecordingNotifier};
use virtpool::agent::reconciler::{Handle, Reconciler, ReconcilerOptions};
use virtpool::agent::state::RuntimeState;
use virtpool::core::config::Config;
use virtpool::core::config::ConfigError;

fn config(text: &str) -> Config {
    Config::parse(
        &format!("[agent]\ninterval = \"30s\"\nstate_dir = \"/nonexistent\"\n{text}"),
        Path::new("test.toml"),
    )
    .unwrap()
}

/// A reconciler over a fresh fake hypervisor with no domains and an empty
/// config; the fake's control comes back with it.
fn reconciler(opts: ReconcilerOptions) -> (FakeCtl, Reconciler, Handle) {
    let fake = Fake::new(Vec::new());
    let ctl = fake.ctl();
    let hv = HvWorker::spawn(Box::new(fake)).unwrap();
    let (monitor, handle) = Reconciler::with_options(
        hv,
        Host::new().unwrap(),
        config(""),
        RuntimeState::new(),
        opts,
    );
    (ctl, monitor, handle)
}

/// The watchdog interval of the watchdog tests.
const WATCHDOG: Duration = Duration::from_millis(200);

/// A watchdog of [`WATCHDOG`] pinging into `rec`.
fn watched(rec: &Arc<RecordingNotifier>) -> ReconcilerOptions {
    ReconcilerOptions {
        notifier: rec.clone(),
        watchdog: Some(WATCHDOG),
        ..ReconcilerOptions::default()
    }
}

/// Audited into `audit`.
fn audited(audit: &AuditLog) -> ReconcilerOptions {
    ReconcilerOptions {
        audit: audit.clone(),
        ..ReconcilerOptions::default()
    }
}

async fn poll(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The loop of a [`reconciler`] running on its own task until `shutdown`.
struct Running {
    ctl: FakeCtl,
    handle: Handle,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn running(opts: ReconcilerOptions) -> Running {
    let (ctl, monitor, handle) = reconciler(opts);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(monitor.run(shutdown.clone()));
    Running {
        ctl,
        handle,
        shutdown,
        task,
    }
}

/// A loop with a watchdog pinging into `rec`, once it has pinged `n` times.
async fn pinging(rec: &Arc<RecordingNotifier>, n: usize) -> Running {
    let r = running(watched(rec));
    let what = format!("{n} pings");
    poll(&what, Duration::from_secs(10), || rec.pings().len() >= n).await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_hypervisor_stops_the_watchdog_pings() {
    let rec = RecordingNotifier::new();
    // Healthy: pings at about watchdog/2 although the interval is 30 s.
    let r = pinging(&rec, 6).await;
    let pings = rec.pings();
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    // About half the interval, and never as long as the interval itself.
    let mut sorted = gaps.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(
        median >= Duration::from_millis(70) && median <= Duration::from_millis(150),
        "gaps {gaps:?}"
    );
    assert!(sorted.iter().all(|g| *g < WATCHDOG), "gaps {gaps:?}");
    assert!(r.handle.report().cycle >= 1);
    assert!(rec
        .events()
        .iter()
        .any(|(_, n)| matches!(n, Notice::Status(s) if s.starts_with("cycle 1"))));

    // libvirt hangs inside a cycle: no ping after that, for well over the
    // watchdog interval (systemd would restart the agent).
    r.ctl.set_hang(true);
    r.handle.reconcile(false).await;
    poll("the hang", Duration::from_secs(5), || r.ctl.held() > 0).await;
    let hung_at = Instant::now();
    let before = rec.pings().len();
    tokio::time::sleep(WATCHDOG * 4).await;
    let after: Vec<Instant> = rec.pings().into_iter().filter(|t| *t > hung_at).collect();
    assert!(
        after.is_empty(),
        "{} pings while hung (had {before} before)",
        after.len()
    );
    assert!(!r.task.is_finished());
    r.shutdown.cancel();
}

/// A job that panicked stopped the libvirt thread for good: the loop still
/// runs (and reports libvirt down), but pings no more, so systemd restarts
/// the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_libvirt_thread_stops_the_watchdog_pings() {
    let rec = RecordingNotifier::new();
    let r = pinging(&rec, 3).await;

    r.ctl.set_panic(true);
    let st = r.handle.reconcile(true).await.unwrap();
    assert!(!st.libvirt.connected, "{:?}", st.libvirt);
    let stopped_at = Instant::now();
    // Ticks at watchdog/2 and cycles on request: none of them pings.
    tokio::time::sleep(WATCHDOG * 2).await;
    r.handle.reconcile(true).await.unwrap();
    tokio::time::sleep(WATCHDOG * 2).await;
    let after = rec.pings().into_iter().filter(|t| *t > stopped_at).count();
    assert_eq!(after, 0, "pings after the libvirt thread stopped");
    assert!(!r.task.is_finished(), "the loop itself goes on");
    r.shutdown.cancel();
}

#[tokio::test]
async fn a_refused_reload_stays_visible_until_a_good_one() {
    let audit = AuditLog::memory();
    let r = running(audited(&audit));

    let st = r.handle.reconcile(true).await.unwrap();
    assert_eq!(st.config_error, None);

    assert!(
        r.handle
            .reload_checked(Err(LoadError::from(ConfigError::Parse {
                file: "test.toml".into(),
                message: "pool \"x\": broken".into(),
            })))
            .await
    );
    let st = r.handle.reconcile(true).await.unwrap();
    let err = st.config_error.clone().unwrap();
    assert!(
        err.contains("reload refused") && err.contains("broken"),
        "{err}"
    );
    // Still there on later cycles.
    let st = r.handle.reconcile(true).await.unwrap();
    assert!(st.config_error.is_some());
    assert_eq!(r.handle.counters().reloads_refused, 1);
    assert_eq!(r.handle.counters().last_reload_ok, Some(false));
    assert!(r.handle.config().pools.is_empty(), "old config kept");

    let good = config("[pools.p]\ndomains = [\"a\"]\nvcpus = { budget = 1 }\n");
    assert!(r.handle.reload_checked(Ok(good)).await);
    let st = r.handle.reconcile(true).await.unwrap();
    assert_eq!(st.config_error, None);
    assert_eq!(r.handle.config().pools.len(), 1);
    assert_eq!(st.plan.as_ref().unwrap().pools.len(), 1);
    assert_eq!(r.handle.counters().reloads_ok, 1);
    assert_eq!(r.handle.counters().last_reload_ok, Some(true));

    let reloads: Vec<bool> = audit
        .recent(100)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::ConfigReload { ok, .. } => Some(ok),
            _ => None,
        })
        .collect();
    assert_eq!(reloads, vec![false, true]);
    r.shutdown.cancel();
    r.task.await.unwrap();
    assert!(matches!(
        audit.recent(1).unwrap()[0].kind,
        EventKind::Stopping
    ));
}

#[tokio::test]
async fn libvirt_lost_and_restored_are_audited_once_each() {
    let audit = AuditLog::memory();
    let (ctl, mut m, handle) = reconciler(audited(&audit));
    assert!(m.cycle_once().await.libvirt.connected);
    ctl.set_down(true);
    for _ in 0..3 {
        let st = m.cycle_once().await;
        assert!(!st.libvirt.connected);
        let text = virtpool::agent::metrics::render(&st, &handle.counters());
        assert!(
            text.contains("\nvirtpool_libvirt_up{uri=\"qemu:///system\"} 0\n"),
            "{text}"
        );
    }
    ctl.set_down(false);
    assert!(m.cycle_once().await.libvirt.connected);
    assert!(m.cycle_once().await.libvirt.connected);
    let kinds: Vec<String> = audit
        .recent(100)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::LibvirtLost { error, .. } => Some(format!("lost: {error}")),
            EventKind::LibvirtRestored { .. } => Some("restored".into()),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "lost: libvirt connection lost: fake libvirt is down".to_string(),
            "restored".to_string()
        ]
    );
    assert_eq!(handle.counters().libvirt_lost, 1);
}
