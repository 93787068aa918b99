#!/bin/bash
# tests/realvm/run.sh - virtpool against real QEMU guests (opt-in, not CI).
#
# Boots two tiny direct-kernel guests under a private libvirtd (own mount
# namespace, own config and state, nothing of the host's libvirt touched),
# runs the real `virtpoold --once` twice with pool configs that
#   pass 1: grow vCPUs to 2, shrink the balloon to 300 MiB, cap disk bandwidth
#   pass 2: take vCPUs down to 1 (hot-unplug), then run the same pass again
# and checks from virsh/QEMU and from INSIDE the guests (status lines on the
# serial console: online CPUs, MemTotal, time of a 4 MiB O_DIRECT read) that
# the changes happened; runs the daemon (60 s interval) and checks that a
# `virsh suspend`/`resume` makes it run a cycle at once; then restarts
# libvirtd and grows vCPUs back (pass 3). Prints a PASS/FAIL summary; exit 1
# on any FAIL (KNOWN lines are QEMU/libvirt failures expected on this host).
#
#   sudo tests/realvm/run.sh
#
# Guests: vp-pc   machine pc,  <vcpu current=1>2 (vcpu1 hot-added by pass 1)
#         vp-q35  machine q35, 2 vCPUs, vcpu1 declared hotpluggable='yes' in
#                 <vcpus> (present at boot as a device, so it can be unplugged)
#
# Env: ACCEL=auto|kvm|tcg   (auto: boot the kernel under KVM for a few
#                            seconds and fall back to TCG if it does not come up)
#      VIRTPOOLD=PATH       (default: cargo build, target/debug/virtpoold)
#      REALVM_CACHE=DIR     (guest kernel cache; default /var/cache/virtpool-realvm)
#      KEEP=1               (leave libvirtd, guests and the work dir for inspection)
#      DEBUG_LIBVIRT=1      (log QEMU monitor traffic and hotplug to libvirtd.log)
set -u -o pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ACCEL=${ACCEL:-auto}
LOG_FILTERS_LINE=
if [ "${DEBUG_LIBVIRT:-0}" = 1 ]; then
  LIBVIRT_LOG_OUTPUT=1
  LOG_FILTERS_LINE='log_filters = "1:qemu.qemu_monitor 1:qemu.qemu_hotplug 1:qemu.qemu_driver 1:qemu.qemu_process 3:*"'
fi
CACHE=${REALVM_CACHE:-/var/cache/virtpool-realvm}
DOMS="vp-pc vp-q35"
MODS="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_balloon virtio_blk"

if [ "$(id -u)" != 0 ]; then echo "run as root: sudo $0" >&2; exit 2; fi

R=$(mktemp -d /tmp/virtpool-realvm.XXXXXX)
chmod 755 "$R"
URI="qemu:///system?socket=$R/sock/libvirt-sock"
LIBVIRTD_PID=
AGENT_PID=
T_ALL=$(date +%s.%N)

# ------------------------------------------------------------------ helpers
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
say() { printf '\n=== [%ss] %s\n' "$(since "$T_ALL")" "$*"; }
declare -a RESULTS
FAILS=0
pass() { RESULTS+=("PASS  $1"); echo ">>> PASS  $1"; }
fail() { RESULTS+=("FAIL  $1"); echo ">>> FAIL  $1"; FAILS=$((FAILS + 1)); }
info() { RESULTS+=("INFO  $1"); echo ">>> INFO  $1"; }
# a failure of QEMU/libvirt on this host that the run expects (no exit 1)
known() { RESULTS+=("KNOWN $1"); echo ">>> KNOWN $1"; }
check() { # description, then a command that must succeed
  local what=$1; shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
vsh() { virsh -c "$URI" "$@"; }
serial() { echo "$R/$1.serial"; }
status_of() { grep -a '^STATUS' "$(serial "$1")" 2>/dev/null | tail -1; }
field() { status_of "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1==k{print $2}'; }
wait_for() { # timeout_s, command...: poll every 0.5 s
  local t=$1; shift
  local i
  for i in $(seq 1 $((t * 2))); do "$@" && return 0; sleep 0.5; done
  return 1
}
# a fresh STATUS line written after now (the guest prints one every ~2 s)
next_status() {
  local n
  n=$(grep -ac '^STATUS' "$(serial "$1")")
  wait_for "${2:-20}" sh -c "[ \$(grep -ac '^STATUS' '$(serial "$1")') -gt $n ]"
}
vcpus_live() { vsh vcpucount "$1" --live 2>/dev/null | head -1 | tr -d ' '; }
qemu_cpus() { vsh qemu-monitor-command "$1" --hmp 'info cpus' 2>/dev/null | grep -c 'CPU #'; }
balloon_kib() { vsh dommemstat "$1" 2>/dev/null | awk '/^actual /{print $2}'; }
iotune_bps() { vsh blkdeviotune "$1" vda 2>/dev/null | awk '/^total_bytes_sec:/{print $2}'; }
show() { # one line per domain: what libvirt, QEMU and the guest say
  local d
  for d in $DOMS; do
    printf '    %-7s libvirt vcpus=%s qemu cpus=%s balloon=%sKiB iotune=%sB/s | guest %s\n' \
      "$d" "$(vcpus_live "$d")" "$(qemu_cpus "$d")" "$(balloon_kib "$d")" "$(iotune_bps "$d")" \
      "$(status_of "$d" | cut -d' ' -f3-)"
  done
}

cleanup() {
  local rc=$?
  if [ "${KEEP:-0}" = 1 ]; then
    echo "KEEP=1: libvirtd pid ${LIBVIRTD_PID:-?}, URI $URI, work dir $R"
    exit $rc
  fi
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null
  if [ -n "$LIBVIRTD_PID" ] && kill -0 "$LIBVIRTD_PID" 2>/dev/null; then
    for d in $DOMS; do vsh destroy "$d" >/dev/null 2>&1; vsh undefine "$d" >/dev/null 2>&1; done
    kill "$LIBVIRTD_PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$LIBVIRTD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$LIBVIRTD_PID" 2>/dev/null
  fi
  # QEMU processes still running from our work dir (their command lines
  # name files under $R): ours, ended by pid.
  local p
  for p in $(pgrep -f -- "$R/" 2>/dev/null); do
    [ "$p" = $$ ] || kill -9 "$p" 2>/dev/null
  done
  rm -rf "$R"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

exec > >(tee "$R/run.log") 2>&1
echo "virtpool real-VM harness; work dir $R"

# ------------------------------------------------------------------ 1. packages
say "1. packages"
PKGS="qemu-system-x86 qemu-utils busybox-static libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v virsh >/dev/null \
   || [ ! -x /usr/sbin/libvirtd ] || [ ! -x /bin/busybox ] || ! command -v qemu-img >/dev/null \
   || [ ! -e /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so ]; then
  ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=600 $PKGS >"$R/apt.log" 2>&1 || { tail -20 "$R/apt.log"; fail "apt install"; exit 1; }
fi
dpkg-query -W -f='    ${Package} ${Version}\n' qemu-system-x86 libvirt-daemon

# ------------------------------------------------------------------ 2. agent binary
say "2. virtpoold"
if [ -z "${VIRTPOOLD:-}" ]; then
  (cd "$REPO" && cargo build --quiet --bin virtpoold) || { fail "cargo build virtpoold"; exit 1; }
  VIRTPOOLD=$REPO/target/debug/virtpoold
fi
echo "    $VIRTPOOLD ($($VIRTPOOLD --version))"

# ------------------------------------------------------------------ 3. guest
say "3. guest kernel + busybox initramfs"
T=$(now)
mkdir -p "$CACHE"
KPKG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
K=${KPKG#linux-image-}
if [ ! -f "$CACHE/kern/boot/vmlinuz-$K" ]; then
  (cd "$CACHE" && rm -f ./*.deb && apt-get download "$KPKG" >/dev/null 2>&1) || { fail "download $KPKG"; exit 1; }
  dpkg-deb -x "$CACHE"/"${KPKG}"_*.deb "$CACHE/kern" || { fail "unpack $KPKG"; exit 1; }
fi
KERNEL=$CACHE/kern/boot/vmlinuz-$K
I=$R/initramfs
mkdir -p "$I"/{bin,dev,proc,sys,lib/modules}
cp /bin/busybox "$I/bin/"
for m in $MODS; do find "$CACHE/kern/lib/modules/$K" -name "$m.ko*" -exec cp {} "$I/lib/modules/" \; ; done
{
  echo '#!/bin/busybox sh'
  echo "MODS=\"$MODS\""
  cat <<'EOF'
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $MODS; do insmod /lib/modules/$m.ko* 2>/dev/null || echo "VP-WARN insmod $m failed"; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 25 ]; do sleep 0.2; i=$((i+1)); done
cpus() { echo "online=$(cat /sys/devices/system/cpu/online) present=$(cat /sys/devices/system/cpu/present)"; }
mem() { awk '/^MemTotal:/{t=$2} /^MemFree:/{f=$2} END{printf "MemTotal=%s MemFree=%s", t, f}' /proc/meminfo; }
echo "VP-READY $(cpus) $(mem)"
while :; do
  # no udev here: online hot-added CPUs ourselves
  for c in /sys/devices/system/cpu/cpu[0-9]*; do
    if [ -f $c/online ] && [ "$(cat $c/online)" = 0 ]; then
      echo 1 > $c/online 2>/dev/null && echo "VP-ONLINED ${c##*/}"
    fi
  done
  t0=$(cut -d' ' -f1 /proc/uptime)
  dd if=/dev/vda of=/dev/null bs=1M count=4 iflag=direct 2>/dev/null
  t1=$(cut -d' ' -f1 /proc/uptime)
  echo "STATUS up=$t1 $(cpus) $(mem) dd4M=$(awk -v a=$t0 -v b=$t1 'BEGIN{printf "%.2f", b-a}')"
  sleep 2
done
EOF
} >"$I/init"
chmod +x "$I/init"
(cd "$I" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$R/initrd.img"
pass "guest kernel $K + initramfs ($(stat -c %s "$R/initrd.img") B) in $(since "$T")s"

# ------------------------------------------------------------------ 4. accelerator
say "4. accelerator (ACCEL=$ACCEL)"
DTYPE=qemu
if [ "$ACCEL" = kvm ]; then
  DTYPE=kvm
elif [ "$ACCEL" = auto ] && [ -c /dev/kvm ]; then
  T=$(now)
  timeout 12 qemu-system-x86_64 -accel kvm -m 256 -nodefaults -display none \
    -serial "file:$R/kvmprobe.serial" -kernel "$KERNEL" -initrd "$R/initrd.img" \
    -append "console=ttyS0 panic=-1 quiet" -no-reboot >"$R/kvmprobe.err" 2>&1 &
  QP=$!
  if wait_for 12 grep -qa VP-READY "$R/kvmprobe.serial"; then DTYPE=kvm; fi
  kill "$QP" 2>/dev/null; wait "$QP" 2>/dev/null
  echo "    KVM probe: $([ $DTYPE = kvm ] && echo "guest up in $(since "$T")s" || echo "no guest within 12 s")"
fi
info "domain type $DTYPE ($([ $DTYPE = qemu ] && echo 'TCG, software emulation' || echo KVM))"

# ------------------------------------------------------------------ 5. libvirtd
say "5. private libvirtd"
mkdir -p "$R"/etc/libvirt "$R"/state/{lib,log,cache,run} "$R/sock"
cat >"$R/etc/libvirt/libvirtd.conf" <<EOF
unix_sock_dir = "$R/sock"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "${LIBVIRT_LOG_OUTPUT:-3}:file:$R/libvirtd.log"
$LOG_FILTERS_LINE
EOF
cat >"$R/etc/libvirt/qemu.conf" <<'EOF'
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
stdio_handler = "file"
EOF
# The QEMU driver looks up its default user before reading qemu.conf.
cp /etc/passwd "$R/etc/passwd"; cp /etc/group "$R/etc/group"
getent group kvm >/dev/null || echo "kvm:x:64999:" >>"$R/etc/group"
getent group libvirt-qemu >/dev/null || echo "libvirt-qemu:x:64998:" >>"$R/etc/group"
getent passwd libvirt-qemu >/dev/null \
  || echo "libvirt-qemu:x:64998:64998:libvirt qemu:/var/lib/libvirt:/usr/sbin/nologin" >>"$R/etc/passwd"
for d in /etc/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt /run/libvirt; do mkdir -p "$d"; done
start_libvirtd() {
  rm -f "$R/libvirtd.pid"
  setsid unshare -m --propagation private sh -c "
    mount --bind '$R/etc/libvirt' /etc/libvirt &&
    mount --bind '$R/etc/passwd' /etc/passwd &&
    mount --bind '$R/etc/group' /etc/group &&
    mount --bind '$R/state/lib' /var/lib/libvirt &&
    mount --bind '$R/state/log' /var/log/libvirt &&
    mount --bind '$R/state/cache' /var/cache/libvirt &&
    mount --bind '$R/state/run' /run/libvirt &&
    exec /usr/sbin/libvirtd -f /etc/libvirt/libvirtd.conf -p '$R/libvirtd.pid'" \
    >>"$R/libvirtd.out" 2>&1 </dev/null &
  local ok=1
  wait_for 60 vsh version >/dev/null 2>&1 || ok=0
  LIBVIRTD_PID=$(cat "$R/libvirtd.pid" 2>/dev/null)
  [ $ok = 1 ]
}
T=$(now)
if start_libvirtd; then
  pass "libvirtd (pid $LIBVIRTD_PID) answering after $(since "$T")s"
else
  fail "libvirtd did not answer"; tail -5 "$R/libvirtd.out" "$R/libvirtd.log"; exit 1
fi

# ------------------------------------------------------------------ 6. guests
say "6. define + start guests"
domxml() { # name machine vcpu-xml
  cat <<EOF
<domain type='$DTYPE'>
  <name>$1</name>
  <memory unit='MiB'>512</memory>
  <currentMemory unit='MiB'>512</currentMemory>
  $3
  <os>
    <type arch='x86_64' machine='$2'>hvm</type>
    <kernel>$KERNEL</kernel>
    <initrd>$R/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='native'/>
      <source file='$R/$1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='$R/$1.serial'/><target port='0'/></serial>
    <memballoon model='virtio'><stats period='2'/></memballoon>
  </devices>
</domain>
EOF
}
domxml vp-pc pc "<vcpu placement='static' current='1'>2</vcpu>" >"$R/vp-pc.xml"
domxml vp-q35 q35 "<vcpu placement='static' current='2'>2</vcpu>
  <vcpus>
    <vcpu id='0' enabled='yes' hotpluggable='no' order='1'/>
    <vcpu id='1' enabled='yes' hotpluggable='yes' order='2'/>
  </vcpus>" >"$R/vp-q35.xml"
for d in $DOMS; do
  qemu-img create -q -f qcow2 "$R/$d.qcow2" 64M
  T=$(now)
  if vsh define "$R/$d.xml" >/dev/null && vsh start "$d" >/dev/null; then
    if wait_for 120 grep -qa VP-READY "$(serial "$d")" && next_status "$d" 30; then
      pass "$d boots: $(grep -a VP-READY "$(serial "$d")" | cut -d' ' -f2-) in $(since "$T")s"
    else
      fail "$d: no ready marker"; tail -5 "$(serial "$d")"
    fi
  else
    fail "$d: define/start"; tail -5 "$R/state/log/qemu/$d.log" 2>/dev/null
  fi
done
[ "$FAILS" = 0 ] || exit 1
echo "    before:"; show
MEM0_PC=$(field vp-pc MemTotal)
MEM0_Q35=$(field vp-q35 MemTotal)
DD0=$(field vp-pc dd4M)

# ------------------------------------------------------------------ 7. pass 1
agent_config() { # file vcpus-min vcpus-max
  cat >"$1" <<EOF
[agent]
libvirt_uri = "$URI"
state_dir = "$R/agent-state"
mode = "enforce"

[host]
cpus = 8
memory = "4GiB"
disk_bytes_sec = "8MiB"
disk_iops_sec = 2000

[memory]
max_shrink = "100%"
min_change = "8MiB"

[pools.realvm]
match = "vp-*"
vcpus = { budget = 4, min = $2, max = $3 }
memory = { budget = "1GiB", max = "300MiB" }
disk_bytes_sec = { budget = "2MiB" }
EOF
}
run_agent() { # label config
  local t rc
  t=$(now)
  timeout 300 "$VIRTPOOLD" --once --config "$2" >"$R/$1.out" 2>&1
  rc=$?
  AGENT_S=$(since "$t")
  sed 's/^/    | /' "$R/$1.out"
  return $rc
}

say "7. pass 1: virtpoold --once (vCPUs -> 2, balloon -> 300 MiB, disk cap)"
agent_config "$R/pass1.toml" 2 2
if run_agent pass1 "$R/pass1.toml"; then pass "pass 1: virtpoold --once exit 0 in ${AGENT_S}s"
else fail "pass 1: virtpoold --once exit $? in ${AGENT_S}s"; fi
for d in $DOMS; do next_status "$d" 30; next_status "$d" 30; done
echo "    after pass 1:"; show

check "vp-pc: libvirt reports 2 live vCPUs (hot-add)" [ "$(vcpus_live vp-pc)" = 2 ]
check "vp-pc: guest has CPUs 0-1 online ($(field vp-pc online))" wait_for 20 sh -c "grep -a '^STATUS' '$(serial vp-pc)' | tail -1 | grep -q 'online=0-1 '"
for d in $DOMS; do
  b=$(balloon_kib "$d")
  check "$d: balloon actual ${b} KiB <= 307200 KiB (300 MiB)" [ "${b:-999999999}" -le 307200 ]
done
check "vp-pc: guest MemTotal shrank ${MEM0_PC} -> $(field vp-pc MemTotal) kB" \
  wait_for 20 sh -c "[ \$(grep -a '^STATUS' '$(serial vp-pc)' | tail -1 | sed 's/.*MemTotal=\([0-9]*\).*/\1/') -lt $((MEM0_PC - 150000)) ]"
check "vp-q35: guest MemTotal shrank ${MEM0_Q35} -> $(field vp-q35 MemTotal) kB" \
  wait_for 20 sh -c "[ \$(grep -a '^STATUS' '$(serial vp-q35)' | tail -1 | sed 's/.*MemTotal=\([0-9]*\).*/\1/') -lt $((MEM0_Q35 - 150000)) ]"
BPS=$(iotune_bps vp-pc)
if [ -n "$BPS" ] && [ "$BPS" != 0 ]; then
  pass "vp-pc: agent set total_bytes_sec=$BPS on vda"
  next_status vp-pc 30; next_status vp-pc 30
  DD1=$(field vp-pc dd4M)
  check "vp-pc: guest 4 MiB O_DIRECT read slowed ${DD0}s -> ${DD1}s" awk -v a="$DD0" -v b="$DD1" 'BEGIN{exit !(b > a * 5 && b > 1)}'
else
  info "no disk limit set: this planner emits no block I/O actions (total_bytes_sec=${BPS:-?})"
fi

# ------------------------------------------------------------------ 7b. events
say "7b. virtpoold daemon (60 s interval): a lifecycle event runs a cycle at once"
sed 's/^mode = "enforce"/mode = "enforce"\ninterval = "60s"/' "$R/pass1.toml" >"$R/daemon.toml"
JOURNAL_STREAM= RUST_LOG=virtpool=debug "$VIRTPOOLD" --config "$R/daemon.toml" >"$R/daemon.log" 2>&1 &
AGENT_PID=$!
sleep 3   # first cycle (immediate) and registration
ev_lines() { grep -c 'libvirt event: cycle now' "$R/daemon.log"; }
for step in suspend resume; do
  n=$(ev_lines); t=$(now)
  vsh "$step" vp-q35 >/dev/null
  ok=0
  for _ in $(seq 1 50); do [ "$(ev_lines)" -gt "$n" ] && { ok=1; break; }; sleep 0.1; done
  if [ $ok = 1 ]; then
    kind=$(grep 'libvirt event: cycle now' "$R/daemon.log" | tail -1 | grep -o 'kind: [A-Za-z]*')
    pass "virsh $step vp-q35 -> agent cycle after $(since "$t")s (${kind}; 60 s interval)"
  else
    fail "virsh $step vp-q35: no event-driven cycle within 5 s"
  fi
done
kill "$AGENT_PID" 2>/dev/null
for _ in $(seq 1 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$AGENT_PID" 2>/dev/null && { fail "virtpoold did not stop on SIGTERM"; kill -9 "$AGENT_PID"; }
grep -E 'WARN|ERROR' "$R/daemon.log" | sed 's/^/    | /' | head -5

# ------------------------------------------------------------------ 8. pass 2
say "8. pass 2: virtpoold --once (vCPUs -> 1: hot-unplug)"
agent_config "$R/pass2.toml" 1 1
if run_agent pass2a "$R/pass2.toml"; then pass "pass 2: virtpoold --once exit 0 in ${AGENT_S}s"
else fail "pass 2: virtpoold --once exit $? in ${AGENT_S}s"; fi
PASS2A_S=$AGENT_S
sleep 6; next_status vp-pc 30; next_status vp-q35 30
echo "    after pass 2:"; show
for d in $DOMS; do
  line=$(grep -a "$d vcpus" "$R/pass2a.out" | head -1 | sed 's/^ *//')
  if [ "$(vcpus_live "$d")" = 1 ] && [ "$(qemu_cpus "$d")" = 1 ]; then
    pass "$d: vCPU unplug 2 -> 1 done (libvirt 1, QEMU 1, guest online=$(field "$d" online) present=$(field "$d" present))"
  elif [ -n "$line" ]; then
    info "$d: vCPU unplug 2 -> 1 NOT done: agent said '${line}'; libvirt $(vcpus_live "$d"), QEMU $(qemu_cpus "$d"), guest online=$(field "$d" online) present=$(field "$d" present)"
  else
    info "$d: vCPU unplug 2 -> 1 NOT done, no error from the agent; libvirt $(vcpus_live "$d"), QEMU $(qemu_cpus "$d"), guest online=$(field "$d" online)"
  fi
done
if grep -q 'timed out' "$R/pass2a.out"; then
  check "an unplug timeout is reported as 'timed out' (HvError::Timeout), not as a lost connection" \
    sh -c "! grep -q 'connection lost' '$R/pass2a.out'"
fi

say "8b. pass 2 again: a second --once on the same state"
if run_agent pass2b "$R/pass2.toml"; then pass "pass 2 again: virtpoold --once exit 0 in ${AGENT_S}s"
else fail "pass 2 again: virtpoold --once exit $? in ${AGENT_S}s"; fi
echo "    after pass 2 again:"; show
for d in $DOMS; do
  line=$(grep -a "$d vcpus" "$R/pass2b.out" | head -1 | sed 's/^ *//')
  [ -n "$line" ] && info "$d: second --once: '${line}'"
done
info "pass 2 took ${PASS2A_S}s, the second run ${AGENT_S}s"
for d in $DOMS; do next_status "$d" 30 || fail "$d: guest stopped printing status"; done
for d in $DOMS; do
  state=$(vsh domstate "$d" 2>/dev/null | head -1)
  check "$d still running ($state)" [ "$state" = running ]
done

say "8c. virtpoold daemon (2 s interval) for 15 s after the timed-out unplug: does it retry every cycle?"
sed 's/^mode = "enforce"/mode = "enforce"\ninterval = "2s"/' "$R/pass2.toml" >"$R/daemon2.toml"
JOURNAL_STREAM= RUST_LOG=virtpool=info "$VIRTPOOLD" --config "$R/daemon2.toml" >"$R/daemon2.log" 2>&1 &
AGENT_PID=$!
sleep 15
kill "$AGENT_PID" 2>/dev/null
for _ in $(seq 1 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
AGENT_PID=
for d in $DOMS; do
  n=$(grep -c "action failed domain=\"$d\" resource=\"vcpus\"" "$R/daemon2.log")
  last=$(grep "action failed domain=\"$d\" resource=\"vcpus\"" "$R/daemon2.log" | tail -1 | sed 's/.*error=//')
  check "$d: after a timed-out unplug the daemon does not retry every cycle (${n} failed vCPU attempts in 15 s at a 2 s interval; last: ${last:-none})" [ "$n" -le 1 ]
done

# ------------------------------------------------------------------ 9. resync
say "9. libvirtd restart: does libvirt's vCPU count catch up with QEMU's?"
restart_libvirtd() {
  kill "$LIBVIRTD_PID"
  for _ in $(seq 1 100); do kill -0 "$LIBVIRTD_PID" 2>/dev/null || break; sleep 0.1; done
  start_libvirtd
}
T=$(now)
if restart_libvirtd; then
  pass "libvirtd restarted (pid $LIBVIRTD_PID) in $(since "$T")s"
  for d in $DOMS; do
    lv=$(vcpus_live "$d"); qc=$(qemu_cpus "$d")
    if [ "$lv" = "$qc" ]; then info "$d: after the restart libvirt reports $lv vCPU(s), QEMU has $qc: in sync"
    else info "$d: after the restart libvirt still reports $lv vCPU(s), QEMU has $qc"; fi
  done
else
  fail "libvirtd restart"
fi

# ------------------------------------------------------------------ 10. re-grow
say "10. pass 3: virtpoold --once (vCPUs back to 2 after the unplug)"
agent_config "$R/pass3.toml" 2 2
if run_agent pass3 "$R/pass3.toml"; then pass "pass 3: virtpoold --once exit 0 in ${AGENT_S}s"
else fail "pass 3: virtpoold --once exit $? in ${AGENT_S}s"; fi
sleep 5
echo "    after pass 3:"; show
for d in $DOMS; do
  state=$(vsh domstate "$d" 2>/dev/null | head -1)
  if [ "$state" = running ] && [ "$(vcpus_live "$d")" = 2 ] && [ "$(qemu_cpus "$d")" = 2 ]; then
    pass "$d: vCPUs back to 2 (guest online=$(field "$d" online))"
  elif [ "$state" != running ]; then
    crash=$(grep -aE 'corrupt|malloc|free\(\)|assert|Segmentation|Abort' "$R/state/log/qemu/$d.log" | tail -1)
    crash=${crash:-no message, $(grep -ao 'reason=[a-z]*' "$R/state/log/qemu/$d.log" | tail -1)}
    known "$d: QEMU died re-adding a vCPU after the unplug ($state; qemu log: '$crash')"
  else
    info "$d: vCPUs not back to 2 (libvirt $(vcpus_live "$d"), QEMU $(qemu_cpus "$d"), state $state)"
  fi
done

# ------------------------------------------------------------------ summary
say "SUMMARY (total $(since "$T_ALL")s, domain type $DTYPE)"
for r in "${RESULTS[@]}"; do echo "  $r"; done
if [ "$FAILS" = 0 ]; then echo "RESULT: PASS"; exit 0; else echo "RESULT: FAIL ($FAILS)"; exit 1; fi
