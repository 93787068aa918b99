//! What the Debian package ships besides the binaries' code: man pages,
//! shell completions and the `[package.metadata.deb]` asset list, and the
//! systemd unit.
#![allow(clippy::unwrap_used)]

mod package_assets;
mod service_unit;
