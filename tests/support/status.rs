//! Watching a running reconciler's published report, for the tests that
//! run `Reconciler::run` against libvirt events.

use std::sync::Arc;
use std::time::Duration;

use virtpool::agent::report::Report;
use virtpool::core::config::Config;
use virtpool::core::model::DomainState;

/// Waits until the published status satisfies `f`; panics with the last
/// status after `within`.
pub async fn wait_status(
    rx: &mut tokio::sync::watch::Receiver<Arc<Report>>,
    within: Duration,
    f: impl Fn(&Report) -> bool,
) -> Arc<Report> {
    let r = tokio::time::timeout(within, rx.wait_for(|s| f(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match r {
        Ok(Ok(s)) => s,
        _ => {
            let st = rx.borrow();
            if st.domains.len() <= 20 {
                panic!("status not reached within {within:?}: {st:?}")
            }
            panic!(
                "status not reached within {within:?}: cycle {}, {:?}",
                st.cycle, st.last_cycle
            )
        }
    }
}

/// The state `st` shows for the domain called `name`.
pub fn state_of(st: &Report, name: &str) -> Option<DomainState> {
    st.domains
        .iter()
        .find(|d| *d.name == *name)
        .map(|d| d.state)
}

/// An observe-only agent on `uri` with this cycle interval (no state dir:
/// nothing is written).
pub fn observe_config(uri: &str, interval: &str) -> Config {
    let text = format!(
        "[agent]\nlibvirt_uri = \"{uri}\"\nstate_dir = \"/nonexistent\"\nmode = \"observe\"\ninterval = \"{interval}\"\n"
    );
    Config::parse(&text, std::path::Path::new("events.toml")).expect("a valid config")
}

/// An observe-only monitor on `uri` (60 s interval), registered for libvirt
/// events and running (`Reconciler::run`) until [`Running::stop`]. The event
/// loop must be started before.
pub struct Running {
    pub handle: virtpool::agent::reconciler::Handle,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub fn run_observer(uri: &str) -> Running {
    use virtpool::adapters::libvirt::{events, worker::HvWorker, Libvirt};
    let (tx, rx) = events::channel();
    let hv = HvWorker::spawn(Box::new(Libvirt::new(uri).with_events(tx)))
        .expect("the libvirt worker starts");
    let (monitor, handle) = virtpool::agent::reconciler::Reconciler::new(
        hv,
        virtpool::adapters::host::Host::new().expect("host facts"),
        observe_config(uri, "60s"),
        virtpool::agent::state::RuntimeState::new(),
        true,
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(monitor.with_events(rx).run(shutdown.clone()));
    Running {
        handle,
        shutdown,
        task,
    }
}

impl Running {
    /// Stops the monitor and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("the monitor task ends cleanly");
    }
}
