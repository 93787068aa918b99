#!/usr/bin/env bash
# Runs virtpoold on the demo host (libvirt test driver, no KVM, no root).
#   scripts/demo.sh            one cycle: print the pools and exit
#   scripts/demo.sh --daemon   run the agent; drive it with virtpoolctl
#                              (VIRTPOOL_SOCKET=target/virtpool-demo/virtpool.sock)
# State and socket live in target/virtpool-demo (config/demo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet --bins
if [ "${1:-}" = "--daemon" ]; then
  echo "virtpoold running; in another shell:"
  echo "  VIRTPOOL_SOCKET=$PWD/target/virtpool-demo/virtpool.sock target/release/virtpoolctl pools"
  exec target/release/virtpoold --config config/demo.toml
fi
exec target/release/virtpoold --once --config config/demo.toml
