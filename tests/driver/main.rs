//! The real libvirt adapter and reconciler on libvirt's test driver, in
//! this process. Most tests open their own node file (`test:///PATH`: state
//! private to each connection); `disk_io` and one adapter test use the
//! process-wide `test:///default`, each on domains of its own. No libvirt
//! event loop runs in this process (see `tests/events/`).
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod cycle;
mod disk_io;
mod libvirt_adapter;
mod metrics_render;
mod steady_writes;
