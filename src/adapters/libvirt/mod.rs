//! The libvirt adapter: the only module that touches the `virt` crate.
//!
//! [`Hypervisor`] is the blocking interface the rest of the agent sees;
//! [`Libvirt`] implements it over a real connection, and [`worker::HvWorker`]
//! owns one and runs its calls off the runtime (on libvirt's event-loop
//! thread when it runs, else on a thread of its own) so libvirt never
//! blocks a tokio worker.
//! Tests put a fake behind the same trait for faults libvirt can't produce.

pub mod cache;
pub mod calls;
pub mod conn;
mod errors;
pub mod events;
pub mod ffi;
mod hypervisor;
mod read;
pub mod worker;
mod write;
pub mod xml;

pub use conn::Libvirt;
pub use errors::{classify, classify_parts};
pub use hypervisor::{HvError, Hypervisor};
pub use read::{balloon_from_stats, bulk_balloon, bulk_info, bulk_vcpus};
pub use write::{normalize_iotune, BLKIO_WEIGHT_RANGE, CPU_SHARES_RANGE};

/// Stops libvirt from printing every error to stderr (errors are returned
/// and logged by the agent). Call once at start.
pub fn quiet_errors() {
    virt::error::clear_error_callback();
}
