//! The libvirt adapter on a private libvirtd hosting the test driver: a
//! daemon that dies under a live connection, then comes back.
#![allow(clippy::unwrap_used)]

use crate::support::libvirtd::Libvirtd;
use crate::support::node::{observe_one, set_vcpus};
use virtpool::adapters::libvirt::{HvError, Hypervisor, Libvirt};
use virtpool::core::model::DomainState;

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
