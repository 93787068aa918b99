//! libvirt events: this process runs libvirt's event loop, as `virtpoold`
//! does. The loop is registered once per process, and once it runs every
//! `HvWorker` of the process runs its jobs on the loop's thread: so every
//! test here starts it first, and tests that must not have it live in
//! other binaries. The daemons are private `libvirtd`s
//! (`support::libvirtd`); `events_monitor` uses the in-process
//! `test:///default`, one test at a time.
//!
//! A missing libvirtd fails these tests unless `VIRTPOOL_LIBVIRTD=skip`.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod event_thread;
mod events_daemon;
mod events_monitor;
mod read_cache;

use support::libvirtd::{start_events, Libvirtd};
use virtpool::adapters::libvirt::events::{self, EventReceiver};
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::adapters::libvirt::{Hypervisor, Libvirt};

/// The process's event loop ([`start_events`]) and a private libvirtd in a
/// folder of its own; `None` where libvirtd is skipped.
fn libvirtd() -> Option<Libvirtd> {
    start_events();
    Libvirtd::start_temp()
}

/// An adapter connected to `uri` whose events come to the receiver.
fn connected(uri: &str) -> (Libvirt, EventReceiver) {
    let (tx, rx) = events::channel();
    let mut hv = Libvirt::new(uri).with_events(tx);
    hv.connect().unwrap();
    (hv, rx)
}

/// A worker over an adapter on `uri` whose events come to the receiver.
fn worker(uri: &str) -> (HvWorker, EventReceiver) {
    let (tx, rx) = events::channel();
    let hv = HvWorker::spawn(Box::new(Libvirt::new(uri).with_events(tx))).unwrap();
    (hv, rx)
}
