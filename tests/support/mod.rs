//! Support shared by the integration test binaries (each pulls it in with
//! `#[path = "../support/mod.rs"] mod support;`): the one libvirtd
//! harness, the one recording fake hypervisor, test-driver nodes and
//! configs, an in-process agent, and the black-box harness around the real
//! binaries. Not every binary uses every part.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

pub mod blackbox;
pub mod ctl;
pub mod daemon;
pub mod fake;
pub mod inproc;
pub mod libvirtd;
pub mod node;
pub mod process;
pub mod promtool;
pub mod status;
