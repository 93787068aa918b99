//! The libvirt adapter on a private libvirtd hosting the test driver: a
//! daemon that dies under a live connection, then comes back.
#![allow(clippy::unwrap_used)]

use crate::support::libvirtd::Libvirtd;
use virtpool::adapters::libvirt::{HvError, Hypervisor, Libvirt};
use virtpool::core::model::{Action, DomainObs, DomainState, Reason};

/// One domain as a full observation reads it.
fn observe_one(hv: &mut Libvirt, name: &str) -> DomainObs {
    let doms = hv.observe().unwrap();
    doms.iter()
        .find(|d| *d.name == *name)
        .unwrap_or_else(|| panic!("{name} not observed"))
        .clone()
}

fn set_vcpus(uuid: &str, to: u64) -> Action {
    Action::SetVcpus {
        uuid: uuid.into(),
        domain: "dom".into(),
        from: 0,
        to,
        reason: Reason::Share,
        persist: false,
    }
}

/// A daemon that dies under a live connection: the next call reports
/// ConnectionLost, the adapter drops the connection, and `connect()` opens a
/// new one once the daemon is back.
#[test]
fn daemon_restart_is_connection_lost_then_reconnects() {
    let Some(mut daemon) = Libvirtd::start_temp() else {
        return;
    };
    let uri = daemon.uri();
    let mut hv = Libvirt::new(&uri);
    hv.connect().unwrap();
    assert!(hv.is_connected());
    assert_eq!(observe_one(&mut hv, "test").state, DomainState::Running);

    daemon.stop();
    match hv.observe() {
        Err(HvError::ConnectionLost(m)) => eprintln!("observe after daemon death: {m}"),
        other => panic!("observe after daemon death: {other:?}"),
    }
    assert!(!hv.is_connected(), "dead connection dropped");
    assert!(matches!(
        hv.apply(&set_vcpus("6695eb01-f6a4-8304-79aa-97f2502e193f", 1)),
        Err(HvError::ConnectionLost(_))
    ));
    assert!(matches!(hv.connect(), Err(HvError::ConnectionLost(_))));

    daemon.restart();
    hv.connect().unwrap();
    assert!(hv.is_connected());
    assert_eq!(observe_one(&mut hv, "test").state, DomainState::Running);
}
