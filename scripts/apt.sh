# Sourced by the scripts that install packages: apt-get that waits for
# another apt or dpkg (an unattended upgrade, another build's setup) instead
# of failing. `apt_get` waits up to APT_WAIT seconds for the dpkg lock;
# `apt_update` also retries while the package lists are locked (apt-get
# update takes that lock without waiting). Run as root, or with SUDO=sudo.
APT_WAIT=${APT_WAIT:-300}
apt_get() {
  DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get -o DPkg::Lock::Timeout="$APT_WAIT" "$@"
}
apt_update() {
  local end=$((SECONDS + APT_WAIT)) out
  until out=$(apt_get update "$@" 2>&1); do
    if ! grep -q "Could not get lock" <<<"$out" || [ "$SECONDS" -ge "$end" ]; then
      printf '%s\n' "$out" >&2
      return 1
    fi
    sleep 5
  done
  printf '%s\n' "$out"
}
