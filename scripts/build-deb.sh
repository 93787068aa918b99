#!/usr/bin/env bash
# Builds target/debian/virtpool_*.deb: release binaries, the man pages and
# shell completions of both binaries generated from the same build, then
# `cargo deb`.
# Needs cargo-deb (`cargo install cargo-deb`). Not part of CI (slow).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "cargo-deb not found: cargo install cargo-deb" >&2; exit 1; }
cargo build --release --bins
rm -rf target/assets
target/release/virtpoolctl --generate-assets target/assets
# Debug symbols go to a separate virtpool-dbgsym .ddeb (Debian practice);
# the main package ships stripped binaries.
cargo deb --no-build --dbgsym "$@"
ls -l target/debian/
