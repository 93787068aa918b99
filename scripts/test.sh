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
# tests/realvm.rs boots a real QEMU guest and tests/systemd_boot.rs a
# systemd container; both need root. As another user they are skipped,
# loudly (they fail if VIRTPOOL_REALVM / VIRTPOOL_SYSTEMD are left unset).
if [ "$(id -u)" -ne 0 ] && [ -z "${VIRTPOOL_REALVM:-}" ]; then
  echo "== NOTE: not root: the real-VM tests (tests/realvm.rs, tests/realguests.rs) are SKIPPED (VIRTPOOL_REALVM=skip)"
  export VIRTPOOL_REALVM=skip
fi
if [ "$(id -u)" -ne 0 ] && [ -z "${VIRTPOOL_SYSTEMD:-}" ]; then
  echo "== NOTE: not root: the systemd test (tests/systemd_boot.rs) is SKIPPED (VIRTPOOL_SYSTEMD=skip)"
  export VIRTPOOL_SYSTEMD=skip
fi
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-targets --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# A test binary killed by a signal (an abort, a crash) prints no more than
# that. Run it again under gdb, up to 3 times, to show where it died if it
# dies again.
crashed=$(grep -oE "process didn't exit successfully: \`[^\`]+\` \(signal: [0-9]+" "$log" |
  sed -E 's/^[^`]*`([^`]+)`.*/\1/' | sort -u || true)
for bin in $crashed; do
  echo "== $bin died by a signal; running it again under gdb (up to 3 times)"
  if ! command -v gdb >/dev/null; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    # shellcheck source=scripts/apt.sh
    . scripts/apt.sh
    apt_get install -y -qq --no-install-recommends gdb >/dev/null || true
  fi
  command -v gdb >/dev/null || { echo "gdb is not available: no backtrace"; continue; }
  for _ in 1 2 3; do
    gdb -q -batch -ex "set pagination off" -ex run -ex "thread apply all bt 40" \
      --args "$bin" >"$log.gdb" 2>&1 || true
    if grep -q "received signal" "$log.gdb"; then
      cat "$log.gdb"
      break
    fi
    echo "   (it passed this time)"
  done
  rm -f "$log.gdb"
done
# One closing line for the whole suite (benches run last and print their own figures).
grep -E '^test result:' "$log" | awk '{p += $4; f += $6} END {printf "tests: %d passed, %d failed\n", p, f}'
exit "$rc"
