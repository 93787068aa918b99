#!/bin/bash
# tests/systemd/run.sh - the real unit under a real systemd: a Debian 12
# container booted by systemd-nspawn, with virtpoold installed by its
# Debian package, or bound in where the package puts it
# (tests/systemd_boot.rs drives it; it can also be used by hand, as root).
#
#   tests/systemd/run.sh up DIR BIN_DIR [DEB]  boot a container; DIR is empty
#   tests/systemd/run.sh down DIR              stop it (always safe to call)
#
# With DEB (a virtpool_*.deb), the package is installed in the booted
# container with dpkg (--force-confold: the test's config, bound at
# /etc/virtpool, stays); then nothing is bound in from BIN_DIR or systemd/.
#
# `up` installs what is missing (apt: debootstrap, systemd-container), makes
# the root file system once (debootstrap minbase + systemd, dbus, libvirt0,
# procps; cached in $SYSTEMD_TEST_CACHE, default
# /var/cache/virtpool-systemd-test) and boots it with --volatile=overlay,
# so nothing written inside outlives the container. Bound in (without DEB):
#   BIN_DIR/virtpoold, BIN_DIR/virtpoolctl  -> /usr/bin/ (read-only)
#   systemd/virtpoold.service               -> /lib/systemd/system/ (read-only)
#   config/demo-host.xml                    -> /usr/share/virtpool/ (read-only)
#   DIR/etc                                 -> /etc/virtpool (writable: the
#                                              test edits the config)
# The config is the demo config (libvirt test driver, no KVM) with the
# package's paths (/var/lib/virtpool, /run/virtpool/virtpool.sock). The
# service is not started: the test starts it. DIR/env gets PID= (the
# container's init, for `nsenter -t PID -a ...`) and NSPAWN_PID=.
set -u -o pipefail

CMD=${1:-}
R=${2:-}
if [ -z "$CMD" ] || [ -z "$R" ]; then
  echo "usage: $0 up DIR BIN_DIR [DEB] | down DIR" >&2
  exit 2
fi
SRC=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/apt.sh
. "$SRC/scripts/apt.sh"
CACHE=${SYSTEMD_TEST_CACHE:-/var/cache/virtpool-systemd-test}
ROOT=$CACHE/bookworm
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

down() {
  [ -f "$R/env" ] || return 0
  # shellcheck disable=SC1091
  . "$R/env"
  if alive "${PID:-}"; then
    nsenter -t "$PID" -a systemctl poweroff >/dev/null 2>&1
  fi
  for _ in $(seq 1 100); do alive "${NSPAWN_PID:-}" || break; sleep 0.1; done
  alive "${NSPAWN_PID:-}" && kill -9 "$NSPAWN_PID" 2>/dev/null
  rm -f "$R/env"
  return 0
}

fail() {
  echo "systemd test harness: $*" >&2
  [ -f "$R/console.log" ] && tail -20 "$R/console.log" >&2
  down
  exit 1
}

up() {
  local bin=${3:-} deb=${4:-}
  local binds=()
  if [ -n "$deb" ]; then
    [ -f "$deb" ] || fail "no package '$deb'"
    binds=(--bind-ro="$(realpath "$deb"):/var/tmp/virtpool.deb")
  else
    [ -x "$bin/virtpoold" ] && [ -x "$bin/virtpoolctl" ] || fail "no virtpoold/virtpoolctl in '$bin'"
    binds=(
      --bind-ro="$bin/virtpoold:/usr/bin/virtpoold"
      --bind-ro="$bin/virtpoolctl:/usr/bin/virtpoolctl"
      --bind-ro="$SRC/systemd/virtpoold.service:/lib/systemd/system/virtpoold.service"
    )
  fi
  [ "$(id -u)" = 0 ] || fail "needs root (systemd-nspawn)"
  local need=()
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v systemd-nspawn >/dev/null || need+=(systemd-container)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    apt_get install -y -qq "${need[@]}" >/dev/null ||
      { apt_update -qq >/dev/null && apt_get install -y -qq "${need[@]}" >/dev/null; } ||
      fail "apt-get install ${need[*]} failed"
  fi
  if [ ! -f "$ROOT/.complete" ]; then
    echo "building the container's root file system in $ROOT (once)" >&2
    rm -rf "$ROOT"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,libvirt0,procps \
      bookworm "$ROOT" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 ||
      fail "debootstrap failed (see $CACHE/debootstrap.log)"
    touch "$ROOT/.complete"
  fi
  mkdir -p "$R/etc"
  sed -e 's|^libvirt_uri = .*|libvirt_uri = "test:///usr/share/virtpool/demo-host.xml"|' \
    -e 's|^state_dir = .*|state_dir = "/var/lib/virtpool"|' \
    -e 's|^socket = .*|socket = "/run/virtpool/virtpool.sock"|' \
    "$SRC/config/demo.toml" >"$R/etc/virtpool.toml"
  local name="vptest-$$"
  # The host's cgroup v1 hierarchy (no unified one for the container);
  # --keep-unit: no host systemd to ask for a scope.
  SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0 setsid systemd-nspawn -D "$ROOT" --volatile=overlay \
    -b --register=no --keep-unit -M "$name" --console=passive \
    "${binds[@]}" \
    --bind-ro="$SRC/config/demo-host.xml:/usr/share/virtpool/demo-host.xml" \
    --bind="$R/etc:/etc/virtpool" \
    </dev/null >"$R/console.log" 2>&1 &
  local nspawn=$!
  echo "NSPAWN_PID=$nspawn" >"$R/env"
  local pid=""
  for _ in $(seq 1 100); do
    pid=$(pgrep -P "$nspawn" -x systemd | head -1)
    [ -n "$pid" ] && break
    alive "$nspawn" || fail "systemd-nspawn exited"
    sleep 0.1
  done
  [ -n "$pid" ] || fail "no systemd in the container"
  echo "PID=$pid" >>"$R/env"
  local state=""
  for _ in $(seq 1 300); do
    state=$(nsenter -t "$pid" -a systemctl is-system-running 2>/dev/null)
    case "$state" in running | degraded) break ;; esac
    sleep 0.2
  done
  case "$state" in running | degraded) ;; *) fail "container did not boot (state '$state')" ;; esac
  echo "container booted: systemd $(nsenter -t "$pid" -a systemctl --version | head -1 | cut -d' ' -f2), state $state" >&2
  if [ -n "$deb" ]; then
    nsenter -t "$pid" -a env DEBIAN_FRONTEND=noninteractive \
      dpkg -i --force-confold /var/tmp/virtpool.deb >"$R/dpkg.log" 2>&1 ||
      { cat "$R/dpkg.log" >&2; fail "dpkg -i $(basename "$deb") failed"; }
    echo "installed $(basename "$deb")" >&2
  fi
}

case "$CMD" in
  up) up "$@" ;;
  down) down ;;
  *) echo "usage: $0 up DIR BIN_DIR [DEB] | down DIR" >&2; exit 2 ;;
esac
