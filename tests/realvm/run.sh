#!/bin/bash
# tests/realvm/run.sh - a real QEMU guest under a private libvirtd, for the
# real-VM test (tests/realvm.rs drives it; it can also be used by hand).
#
#   tests/realvm/run.sh up DIR     set everything up in the empty folder DIR
#   tests/realvm/run.sh down DIR   tear it down (always safe to call)
#   tests/realvm/run.sh restart-libvirtd DIR   stop libvirtd and start it again
#
# `up` installs what is missing (apt), builds the guest (Debian cloud kernel
# unpacked from its package, cached; busybox initramfs), probes KVM and falls
# back to TCG, starts libvirtd by hand in a private mount namespace (own
# /etc/libvirt, /var/{lib,log,cache}/libvirt, /run/libvirt, passwd/group;
# nothing of the host's libvirt is touched or mounted outside it), defines
# and starts the guests (default one, `vp-pc`; GUESTS below), booted in
# parallel, and waits until every one reports. It writes DIR/env (URI=,
# DTYPE=, DOMAIN= and SERIAL= of the first guest, GUESTS=, LIBVIRTD_PID=,
# KERNEL=, T_*= phase seconds). On any failure it tears down what it
# started and exits non-zero. `down` destroys the guests, stops libvirtd
# and any QEMU it left (by pid), and removes DIR.
#
# Each guest NAME prints on its serial console (ttyS0, file DIR/NAME.serial):
#   VP-READY online=.. present=.. MemTotal=.. MemFree=..
# (kernel command line `no_timer_check`: the boot-time timer check fails
# on a TCG vCPU starved by a busy host, "IO-APIC + timer doesn't work")
#   STATUS up=.. online=0-1 present=0-1 MemTotal=<kB> MemFree=<kB>
#          MemAvailable=<kB> oom=<oom kills> fill=<MiB> cpu=<n> disk=<n> dd4M=<s>
# every GUEST_PERIOD s (dd4M: time of a 4 MiB O_DIRECT read of its disk, or
# `-` with GUEST_DD=0), and onlines hot-added CPUs itself (no udev).
# Its second serial port (ttyS1) is a control channel, the Unix socket
# DIR/NAME.ctl: a line `SEQ CMD ARG` runs CMD and prints `ACK SEQ CMD ARG
# rc=..` on the console. Commands: `mem N` (hold N MiB in a tmpfs, in 8 MiB
# files), `cpu N` (N busy loops), `disk N` (N loops of O_DIRECT reads of
# vda), `stop` (cpu 0, disk 0).
#
# Env: ACCEL=auto|kvm|tcg  (auto: boot the kernel under KVM for up to
#                           KVM_PROBE_S=6 s, TCG if it does not come up)
#      REALVM_CACHE=DIR    (kernel + libvirt capabilities cache;
#                           default /var/cache/virtpool-realvm)
#      REALVM_MACHINE=pc|q35 (q35: vCPU 1 declared hotpluggable in <vcpus>)
#      GUESTS="NAME:MEM_MIB:MAX_VCPUS:VCPUS ..." (default "vp-pc:512:2:1")
#      GUEST_PERIOD=2      (seconds between STATUS lines)
#      GUEST_DD=1          (0: no disk read in STATUS)
#      DEBUG_LIBVIRT=1     (QEMU monitor traffic in DIR/libvirtd.log)
#
# apt and dpkg calls wait for their locks (another apt may be running).
set -u -o pipefail

CMD=${1:-}
R=${2:-}
if [ -z "$CMD" ] || [ -z "$R" ]; then
  echo "usage: $0 up|down|restart-libvirtd DIR" >&2
  exit 2
fi
# shellcheck source=scripts/apt.sh
. "$(cd "$(dirname "$0")/../.." && pwd)/scripts/apt.sh"
GUESTS=${GUESTS:-vp-pc:512:2:1}
NAMES=$(for g in $GUESTS; do printf '%s ' "${g%%:*}"; done)
DOM=${NAMES%% *}
URI="qemu:///system?socket=$R/sock/libvirt-sock"
vsh() { timeout 30 virsh -c "$URI" "$@"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
wait_for() { # timeout_s, command...: poll every 0.2 s
  local t=$1 i
  shift
  for i in $(seq 1 $((t * 5))); do "$@" && return 0; sleep 0.2; done
  return 1
}
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
stop_pid() { # pid: TERM, up to 5 s, then KILL
  local p=$1
  alive "$p" || return 0
  kill "$p" 2>/dev/null
  for _ in $(seq 1 50); do alive "$p" || return 0; sleep 0.1; done
  kill -9 "$p" 2>/dev/null
}

CACHE=${REALVM_CACHE:-/var/cache/virtpool-realvm}

down() {
  [ -d "$R" ] || return 0
  local lp qp d names
  stop_pid "$(cat "$R/agent.pid" 2>/dev/null)"
  lp=$(cat "$R/libvirtd.pid" 2>/dev/null)
  names=$(cat "$R/guests" 2>/dev/null)
  if alive "$lp"; then
    for d in $names; do
      vsh destroy "$d" >/dev/null 2>&1
      vsh undefine "$d" >/dev/null 2>&1
    done
  fi
  stop_pid "$lp"
  # QEMU's pids, as libvirt wrote them (its /run/libvirt is $R/state/run).
  for qp in "$R"/state/run/qemu/*.pid; do
    [ -f "$qp" ] && stop_pid "$(cat "$qp" 2>/dev/null)"
  done
  stop_pid "$(cat "$R/kvmprobe.pid" 2>/dev/null)"
  # libvirtd's mounts live in its own namespace: gone with its processes.
  rm -rf "$R"
}

# libvirtd in its own mount namespace (the binds exist only there).
start_libvirtd() {
  setsid unshare -m --propagation private sh -c "
    mount --bind '$R/etc/libvirt' /etc/libvirt &&
    mount --bind '$R/etc/passwd' /etc/passwd &&
    mount --bind '$R/etc/group' /etc/group &&
    mount --bind '$R/state/lib' /var/lib/libvirt &&
    mount --bind '$R/state/log' /var/log/libvirt &&
    mount --bind '$CACHE/libvirt-cache' /var/cache/libvirt &&
    mount --bind '$R/state/run' /run/libvirt &&
    exec /usr/sbin/libvirtd -f /etc/libvirt/libvirtd.conf -p '$R/libvirtd.pid'" \
    >>"$R/libvirtd.out" 2>&1 </dev/null &
}

case "$CMD" in
down)
  down
  exit 0
  ;;
restart-libvirtd)
  # Stop libvirtd (the guests' QEMU keeps running) and start it again.
  stop_pid "$(cat "$R/libvirtd.pid" 2>/dev/null)"
  rm -f "$R/libvirtd.pid"
  start_libvirtd
  wait_for 90 vsh version >/dev/null 2>&1 || { tail -5 "$R/libvirtd.log"; exit 1; }
  exit 0
  ;;
up) ;;
*)
  echo "usage: $0 up|down|restart-libvirtd DIR" >&2
  exit 2
  ;;
esac

if [ "$(id -u)" != 0 ]; then echo "needs root (libvirtd, QEMU, mount namespace)" >&2; exit 2; fi
mkdir -p "$R" && chmod 755 "$R" || exit 1
trap 'rc=$?; [ $rc = 0 ] || { echo "up failed (exit $rc): tearing down" >&2; down; }; exit $rc' EXIT
trap 'exit 130' INT TERM
ACCEL=${ACCEL:-auto}
KVM_PROBE_S=${KVM_PROBE_S:-6}
MACHINE=${REALVM_MACHINE:-pc}
MODS="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_balloon virtio_blk"
T_ALL=$(now)
say() { printf '=== [%ss] %s\n' "$(since "$T_ALL")" "$*"; }
die() { echo "FAIL: $*" >&2; exit 1; }

# ------------------------------------------------------------------ packages
say "packages"
T=$(now)
PKGS="qemu-system-x86 qemu-utils busybox-static libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
missing=
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "    installing:$missing"
  ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt_update -q >"$R/apt.log" 2>&1
  # shellcheck disable=SC2086
  APT_WAIT=600 apt_get install -y -q --no-install-recommends $missing >>"$R/apt.log" 2>&1 || { tail -20 "$R/apt.log"; die "apt-get install$missing"; }
fi
# A qemu-utils of another release (a backport) that was already there is
# removed by apt when it installs this release's QEMU: put this release's
# back, its qemu-img makes the guest's disk below.
if ! command -v qemu-img >/dev/null; then
  echo "    installing: qemu-utils (qemu-img is missing)"
  ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt_update -q >>"$R/apt.log" 2>&1
  APT_WAIT=600 apt_get install -y -q --no-install-recommends qemu-utils >>"$R/apt.log" 2>&1 || { tail -20 "$R/apt.log"; die "apt-get install qemu-utils"; }
fi
dpkg-query -W -f='    ${Package} ${Version}\n' qemu-system-x86 libvirt-daemon
T_PACKAGES=$(since "$T")

# ------------------------------------------------------------------ libvirtd (starts while the guest is built)
say "libvirtd (private mount namespace)"
T_LV=$(now)
mkdir -p "$R"/etc/libvirt "$R"/state/{lib,log,run} "$R/sock" "$CACHE/libvirt-cache"
{
  echo "unix_sock_dir = \"$R/sock\""
  echo 'unix_sock_rw_perms = "0700"'
  echo 'auth_unix_rw = "none"'
  echo 'auth_unix_ro = "none"'
  if [ "${DEBUG_LIBVIRT:-0}" = 1 ]; then
    echo "log_outputs = \"1:file:$R/libvirtd.log\""
    echo 'log_filters = "1:qemu.qemu_monitor 1:qemu.qemu_hotplug 1:qemu.qemu_driver 3:*"'
  else
    echo "log_outputs = \"3:file:$R/libvirtd.log\""
  fi
} >"$R/etc/libvirt/libvirtd.conf"
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
# /var/cache/libvirt is the shared cache: QEMU capabilities (probed in ~8 s)
# are re-used by the next run.
start_libvirtd

# ------------------------------------------------------------------ guest
say "guest kernel + busybox initramfs"
T=$(now)
mkdir -p "$CACHE"
KERNEL=$(ls "$CACHE"/kern/boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)
if [ -z "$KERNEL" ]; then
  kpkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
  KPKG=$(kpkg)
  [ -n "$KPKG" ] || { apt_update -q >>"$R/apt.log" 2>&1; KPKG=$(kpkg); }
  [ -n "$KPKG" ] || die "no linux-image-cloud-amd64 in apt"
  (cd "$CACHE" && rm -f ./*.deb && apt-get download "$KPKG" >>"$R/apt.log" 2>&1) || die "apt-get download $KPKG"
  dpkg-deb -x "$CACHE/${KPKG}"_*.deb "$CACHE/kern" || die "unpack $KPKG"
  KERNEL=$(ls "$CACHE"/kern/boot/vmlinuz-* | sort -V | tail -1)
fi
K=${KERNEL##*/vmlinuz-}
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
P=2; DD=1
for a in $(cat /proc/cmdline); do
  case $a in vp.period=*) P=${a#*=} ;; vp.dd=*) DD=${a#*=} ;; esac
done
mkdir -p /m /run
mount -t tmpfs -o size=95% tmpfs /m
cpus() { echo "online=$(cat /sys/devices/system/cpu/online) present=$(cat /sys/devices/system/cpu/present)"; }
mem() { awk '/^MemTotal:/{t=$2} /^MemFree:/{f=$2} /^MemAvailable:/{a=$2} END{printf "MemTotal=%s MemFree=%s MemAvailable=%s", t, f, a}' /proc/meminfo; }
oom() { awk '/^oom_kill /{print $2}' /proc/vmstat; }
fill() { echo $(( $(ls /m | wc -l) * 8 )); }
count() { if [ -f /run/$1.pids ]; then wc -l < /run/$1.pids; else echo 0; fi; }
# Workloads, started and stopped over the control channel (ttyS1).
burn() { echo 0 > /proc/self/oom_score_adj; while :; do :; done; }
reader() { echo 0 > /proc/self/oom_score_adj; while :; do dd if=/dev/vda of=/dev/null bs=1M count=32 iflag=direct 2>/dev/null; done; }
setn() { # KIND N FUNCTION: exactly N loops of FUNCTION
  [ -f /run/$1.pids ] && kill $(cat /run/$1.pids) 2>/dev/null
  rm -f /run/$1.pids
  n=0; while [ $n -lt $2 ]; do $3 & echo $! >> /run/$1.pids; n=$((n+1)); done
}
setmem() { # N: hold N MiB in the tmpfs /m, in 8 MiB files
  want=$(( $1 / 8 )); have=$(ls /m | wc -l)
  while [ $have -lt $want ]; do
    (echo 0 > /proc/self/oom_score_adj; exec dd if=/dev/zero of=/m/$have bs=1M count=8 2>/dev/null) || return 1
    have=$((have+1))
  done
  while [ $have -gt $want ]; do have=$((have-1)); rm -f /m/$have; done
}
ctl() {
  while :; do
    stty -F /dev/ttyS1 raw -echo clocal 2>/dev/null
    while read -r seq c a; do
      case $c in
        mem) setmem "$a"; rc=$? ;;
        cpu) setn cpu "$a" burn; rc=$? ;;
        disk) setn disk "$a" reader; rc=$? ;;
        stop) setn cpu 0 burn; setn disk 0 reader; rc=0 ;;
        *) rc=127 ;;
      esac
      echo "ACK $seq $c $a rc=$rc fill=$(fill)"
    done < /dev/ttyS1
    sleep 1
  done
}
ctl &
echo -1000 > /proc/$!/oom_score_adj
echo "VP-READY $(cpus) $(mem)"
while :; do
  # no udev here: online hot-added CPUs ourselves
  for c in /sys/devices/system/cpu/cpu[0-9]*; do
    if [ -f $c/online ] && [ "$(cat $c/online)" = 0 ]; then
      echo 1 > $c/online 2>/dev/null && echo "VP-ONLINED ${c##*/}"
    fi
  done
  d=-
  if [ "$DD" = 1 ]; then
    t0=$(cut -d' ' -f1 /proc/uptime)
    dd if=/dev/vda of=/dev/null bs=1M count=4 iflag=direct 2>/dev/null
    t1=$(cut -d' ' -f1 /proc/uptime)
    d=$(awk -v a=$t0 -v b=$t1 'BEGIN{printf "%.2f", b-a}')
  fi
  echo "STATUS up=$(cut -d' ' -f1 /proc/uptime) $(cpus) $(mem) oom=$(oom) fill=$(fill) cpu=$(count cpu) disk=$(count disk) dd4M=$d"
  sleep $P
done
EOF
} >"$I/init"
chmod +x "$I/init"
(cd "$I" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$R/initrd.img"
echo "    kernel $K, initramfs $(stat -c %s "$R/initrd.img") bytes"
T_GUEST_BUILD=$(since "$T")

# ------------------------------------------------------------------ accelerator (while libvirtd probes QEMU)
say "accelerator (ACCEL=$ACCEL)"
T=$(now)
DTYPE=qemu
if [ "$ACCEL" = kvm ]; then
  DTYPE=kvm
elif [ "$ACCEL" = auto ] && [ -c /dev/kvm ]; then
  timeout "$KVM_PROBE_S" qemu-system-x86_64 -accel kvm -m 256 -nodefaults -display none \
    -serial "file:$R/kvmprobe.serial" -kernel "$KERNEL" -initrd "$R/initrd.img" \
    -append "console=ttyS0 panic=-1 quiet" -no-reboot >"$R/kvmprobe.err" 2>&1 &
  echo $! >"$R/kvmprobe.pid"
  if wait_for "$KVM_PROBE_S" grep -sqa VP-READY "$R/kvmprobe.serial"; then DTYPE=kvm; fi
  stop_pid "$(cat "$R/kvmprobe.pid")"
  wait "$(cat "$R/kvmprobe.pid")" 2>/dev/null
  echo "    KVM probe: $([ $DTYPE = kvm ] && echo "guest up under KVM in $(since "$T")s" || echo "no guest under KVM within ${KVM_PROBE_S}s")"
fi
echo "    domain type: $DTYPE ($([ $DTYPE = qemu ] && echo 'TCG, software emulation' || echo KVM))"
T_ACCEL=$(since "$T")

wait_for 90 vsh version >/dev/null 2>&1 || { tail -5 "$R/libvirtd.out" "$R/libvirtd.log"; die "libvirtd did not answer"; }
LIBVIRTD_PID=$(cat "$R/libvirtd.pid")
echo "    libvirtd pid $LIBVIRTD_PID answering $(since "$T_LV")s after its start"
T_LIBVIRTD=$(since "$T_LV")

# ------------------------------------------------------------------ domain
say "define + start $NAMES(machine $MACHINE)"
T=$(now)
echo "$NAMES" >"$R/guests"
for g in $GUESTS; do
  IFS=: read -r N MEM VMAX VCUR <<<"$g"
  if [ "$MACHINE" = q35 ]; then
    VCPUS="<vcpu placement='static' current='$VCUR'>$VMAX</vcpu>
  <vcpus>"
    for id in $(seq 0 $((VMAX - 1))); do
      if [ "$id" -lt "$VCUR" ]; then
        VCPUS="$VCPUS<vcpu id='$id' enabled='yes' hotpluggable='$([ "$id" = 0 ] && echo no || echo yes)' order='$((id + 1))'/>"
      else
        VCPUS="$VCPUS<vcpu id='$id' enabled='no' hotpluggable='yes'/>"
      fi
    done
    VCPUS="$VCPUS</vcpus>"
  else
    VCPUS="<vcpu placement='static' current='$VCUR'>$VMAX</vcpu>"
  fi
  qemu-img create -q -f qcow2 "$R/$N.qcow2" 64M || die "qemu-img create"
  cat >"$R/$N.xml" <<EOF
<domain type='$DTYPE'>
  <name>$N</name>
  <memory unit='MiB'>$MEM</memory>
  <currentMemory unit='MiB'>$MEM</currentMemory>
  $VCPUS
  <os>
    <type arch='x86_64' machine='$MACHINE'>hvm</type>
    <kernel>$KERNEL</kernel>
    <initrd>$R/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet no_timer_check vp.period=${GUEST_PERIOD:-2} vp.dd=${GUEST_DD:-1}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='native'/>
      <source file='$R/$N.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='$R/$N.serial' append='on'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='$R/$N.ctl'/><target port='1'/></serial>
    <memballoon model='virtio'><stats period='2'/></memballoon>
  </devices>
</domain>
EOF
  vsh define "$R/$N.xml" >/dev/null || die "virsh define $N"
  vsh start "$N" >/dev/null || { tail -5 "$R/state/log/qemu/$N.log" 2>/dev/null; die "virsh start $N"; }
done
# The guests boot in parallel; wait for every one.
# A guest that died (a kernel panic under a starved TCG vCPU, say) is
# reported at once instead of waited for.
booted() { grep -qa '^STATUS' "$R/$1.serial" || { [ "$(vsh domstate "$1" 2>/dev/null)" != running ] && return 0; false; }; }
for N in $NAMES; do
  wait_for 300 booted "$N" && grep -qa '^STATUS' "$R/$N.serial" || { tail -5 "$R/$N.serial"; die "no STATUS from $N"; }
  echo "    $N: $(grep -a '^STATUS' "$R/$N.serial" | tail -1)"
done
T_BOOT=$(since "$T")

cat >"$R/env" <<EOF
URI=$URI
DTYPE=$DTYPE
MACHINE=$MACHINE
DOMAIN=$DOM
SERIAL=$R/$DOM.serial
GUESTS=$NAMES
LIBVIRTD_PID=$LIBVIRTD_PID
KERNEL=$K
T_PACKAGES=$T_PACKAGES
T_GUEST_BUILD=$T_GUEST_BUILD
T_ACCEL=$T_ACCEL
T_LIBVIRTD=$T_LIBVIRTD
T_BOOT=$T_BOOT
T_UP=$(since "$T_ALL")
EOF
say "up"
