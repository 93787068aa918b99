//! Raw libvirt calls the `virt` crate does not wrap: block I/O limits,
//! blkio and scheduler typed parameters, bulk statistics, event and close
//! callbacks. This is the only module of the agent with `unsafe`;
//! everything it exports is safe. One file per concern:
//!
//! - [`params`]: typed-parameter lists and arrays, and who frees them;
//! - [`tune`]: per-domain tunables (I/O limits, blkio weight, `cpu_shares`);
//! - [`stats`]: `virConnectGetAllDomainStats`, copied out and freed;
//! - [`callbacks`]: lifecycle, device, tunable, metadata and close
//!   callbacks (a `catch_unwind` in every trampoline, owners freed on
//!   deregistration);
//! - [`watch`]: a socket watched by libvirt's event loop.
//!
//! Memory rules kept here:
//! - parameter lists built by `virTypedParamsAdd*` are owned by
//!   [`TypedParams`] and released with `virTypedParamsFree` on drop;
//! - parameter arrays filled by a `virDomainGet*Parameters` call live in a
//!   Rust `Vec` owned by `ParamArray`, whose drop runs
//!   `virTypedParamsClear` to release strings libvirt put inside.
//!
//! Only functions present in libvirt 9.0.0 are called (`virt::sys`
//! declares newer ones that would fail at link time).

mod callbacks;
mod params;
mod stats;
mod tune;
mod watch;

pub use callbacks::*;
pub use params::TypedParams;
pub use stats::{all_domain_stats, StatsRecord};
pub use tune::*;
pub use watch::{watch_readable, ReadableFn};
