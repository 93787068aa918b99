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
