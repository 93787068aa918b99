#!/usr/bin/env bash
# Checks systemd/virtpoold.service with systemd-analyze verify (and prints
# its `systemd-analyze security` score), with the ExecStart binary pointed
# at this build and its man page (Documentation=man:virtpoold(8)) generated
# from the same build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bins
bin="$PWD/target/debug/virtpoold"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# virtpoolctl writes both binaries' man pages.
target/debug/virtpoolctl --generate-assets "$tmp/assets"
mkdir -p "$tmp/man/man8"
cp "$tmp/assets/virtpoold.8" "$tmp/man/man8/"
sed "s|/usr/bin/virtpoold|$bin|g" systemd/virtpoold.service > "$tmp/virtpoold.service"
if command -v man >/dev/null; then
  man_opt=--man=yes
else
  man_opt=--man=no   # no man-db: nothing to check the Documentation= page with
fi
out=$(MANPATH="$tmp/man" systemd-analyze verify "$man_opt" "$tmp/virtpoold.service" 2>&1 || true)
# Units this one orders itself after may be absent on a build machine.
bad=$(printf '%s\n' "$out" | grep -v -E 'libvirtd|virtqemud|not found|^$' || true)
if [ -n "$bad" ]; then
  printf '%s\n' "$out"
  echo "systemd-analyze verify: FAILED"
  exit 1
fi
echo "systemd-analyze verify: ok"
if score=$(systemd-analyze security --offline=yes "$tmp/virtpoold.service" 2>/dev/null | tail -1); then
  echo "systemd-analyze security: ${score#→ }"
fi
