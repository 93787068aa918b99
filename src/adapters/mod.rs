//! Adapters to the outside world: libvirt and the host's kernel.

pub mod host;
pub mod libvirt;
