//! Black-box harness: the real `virtpoold` binary on a temp socket, driving
//! a private `libvirtd` ([`Libvirtd`]) that hosts the test driver, and a
//! second libvirt connection ([`Host2`]) that checks what the host really
//! has. The `default` test node is shared by every client of that daemon
//! while at least one connection stays open, so the checker keeps one open
//! for the whole test.

mod checker;
mod fleet;
mod virtpoold;

pub use super::libvirtd::{poll, test_dir, Libvirtd};
pub use checker::{Host2, Live};
pub use fleet::*;
pub use virtpoold::*;

pub const POOL_NS: &str = "https://virtpool.dev/xmlns/pool/1";
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// A fresh test dir ([`test_dir`]), a private libvirtd in it and a second
/// connection to check the host with; `None` when [`Libvirtd::start`]
/// skips. Drop them in reverse: the connection, the daemon, the dir.
pub fn private_host(tag: &str) -> Option<(tempfile::TempDir, Libvirtd, Host2)> {
    let dir = test_dir(tag);
    let lv = Libvirtd::start(dir.path())?;
    let h = Host2::open(&lv.uri());
    Some((dir, lv, h))
}
