//! virtpool: a host agent that carves a KVM host into resource pools and
//! keeps every running libvirt domain inside its pool's allocation.
//!
//! The folders are the layers; a module only uses modules of its own layer
//! or of the layers above it in this list:
//!
//! - [`core`]: the pure core: the vocabulary ([`core::model`], units),
//!   the config file, membership and the [`core::planner`]. No I/O except
//!   reading the config file.
//! - [`adapters`]: the outside world: [`adapters::libvirt`] (the only code
//!   that touches the `virt` crate) and [`adapters::host`] (`sysinfo`).
//! - [`agent`]: the running agent: the reconciler (observe → plan →
//!   enforce → publish), runtime state, audit log, metrics, systemd.
//! - [`api`]: the control API over a Unix socket, served from what the
//!   agent publishes.
//! - [`cli`]: the client and the command-line surfaces of both binaries.
//!
//! See `docs/ARCHITECTURE.md`.

pub mod adapters;
pub mod agent;
pub mod api;
pub mod cli;
pub mod core;
