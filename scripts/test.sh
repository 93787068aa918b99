#!/usr/bin/env bash
# The whole test suite: installs what it needs, then format, lints, unit,
# property, integration and black-box tests, and the systemd unit check.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== systemd-analyze verify"
scripts/verify-unit.sh
echo "== cargo test"
cargo test --all-targets --no-fail-fast 2>&1
