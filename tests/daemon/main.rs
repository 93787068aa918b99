//! Tests against daemons in processes of their own: a private `libvirtd`
//! hosting the test driver (`support::libvirtd`, one per test) and/or the
//! real `virtpoold` and `virtpoolctl` binaries (`support::blackbox`). No
//! libvirt event loop runs in this process (see `tests/events/`).
//!
//! A missing libvirtd fails these tests unless `VIRTPOOL_LIBVIRTD=skip`.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod adapter_reconnect;
mod blackbox_api;
mod blackbox_config;
mod blackbox_libvirtd_restart;
mod blackbox_lifecycle;
mod blackbox_midcycle;
mod blackbox_state;
mod blackbox_steady;
mod cli_virtpoold;
mod ctl_daemon;
mod names_libvirt;
mod operator_views;
mod promises_daemon;
mod promises_live;
mod scoped_cycle;
mod service_daemon;
mod top_tmux;
mod unsafe_files;
mod vcpu_holds;
