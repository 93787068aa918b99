#!/bin/bash
# tests/realvm/run.sh - a real QEMU guest under a private libvirtd, for the
# real-VM test (tests/realvm.rs drives it; it can also be used by hand).
#
#   tests/realvm/run.sh up DIR     set everything up in the empty folder DIR
#   tests/realvm/run.sh down DIR   tear it down (always safe to call)
#
# `up` installs what is missing (apt), builds the guest (Debian cloud kernel
# unpacked from its package, cached; busybox initramfs), probes KVM and falls
# back to TCG, starts libvirtd by hand in a private mount namespace (own
# /etc/libvirt, /var/{lib,log,cache}/libvirt, /run/libvirt, passwd/group;
# nothing of the host's libvirt is touched or mounted outside it), defines
# and starts the guest `vp-pc` and waits until it reports. It writes
# DIR/env (URI=, DTYPE=, DOMAIN=, SERIAL=, LIBVIRTD_PID=, KERNEL=, T_*=
# phase seconds). On any failure it tears down what it started and exits
# non-zero. `down` destroys the guest, stops libvirtd and any QEMU it left
# (by pid), and removes DIR.
#
# The guest prints on its serial console (file DIR/vp-pc.serial):
#   VP-READY online=.. present=.. MemTotal=.. MemFree=..
#   STATUS up=.. online=0-1 present=0-1 MemTotal=<kB> MemFree=<kB> dd4M=<s>
# every ~2 s (dd4M: time of a 4 MiB O_DIRECT read of its disk), and onlines
# hot-added CPUs itself (no udev).
#
# Env: ACCEL=auto|kvm|tcg  (auto: boot the kernel under KVM for up to
#                           KVM_PROBE_S=6 s, TCG if it does not come up)
#      REALVM_CACHE=DIR    (kernel + libvirt capabilities cache;
#                           default /var/cache/virtpool-realvm)
#      REALVM_MACHINE=pc|q35 (q35: vCPU 1 declared hotpluggable in <vcpus>)
#      DEBUG_LIBVIRT=1     (QEMU monitor traffic in DIR/libvirtd.log)
set -u -o pipefail

CMD=${1:-}
R=${2:-}
if [ -z "$CMD" ] || [ -z "$R" ]; then
  echo "usage: $0 up|down DIR" >&2
  exit 2
fi
# shellcheck source=scripts/apt.sh
. "$(cd "$(dirname "$0")/../.." && pwd)/scripts/apt.sh"
DOM=vp-pc
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

down() {
  [ -d "$R" ] || return 0
  local lp qp
  stop_pid "$(cat "$R/agent.pid" 2>/dev/null)"
  lp=$(cat "$R/libvirtd.pid" 2>/dev/null)
  # QEMU's pid, as libvirt wrote it (its /run/libvirt is $R/state/run).
  qp=$(cat "$R/state/run/qemu/$DOM.pid" 2>/dev/null)
  if alive "$lp"; then
    vsh destroy "$DOM" >/dev/null 2>&1
    vsh undefine "$DOM" >/dev/null 2>&1
  fi
  stop_pid "$lp"
  stop_pid "$qp"
  stop_pid "$(cat "$R/kvmprobe.pid" 2>/dev/null)"
  # libvirtd's mounts live in its own namespace: gone with its processes.
  rm -rf "$R"
}

case "$CMD" in
down)
  down
  exit 0
  ;;
up) ;;
*)
  echo "usage: $0 up|down DIR" >&2
  exit 2
  ;;
esac

if [ "$(id -u)" != 0 ]; then echo "needs root (libvirtd, QEMU, mount namespace)" >&2; exit 2; fi
mkdir -p "$R" && chmod 755 "$R" || exit 1
trap 'rc=$?; [ $rc = 0 ] || { echo "up failed (exit $rc): tearing down" >&2; down; }; exit $rc' EXIT
trap 'exit 130' INT TERM
ACCEL=${ACCEL:-auto}
KVM_PROBE_S=${KVM_PROBE_S:-6}
CACHE=${REALVM_CACHE:-/var/cache/virtpool-realvm}
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
  dpkg-query -W -f='${Report}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
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
qemu-img create -q -f qcow2 "$R/$DOM.qcow2" 64M || die "qemu-img create"
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
say "define + start $DOM (machine $MACHINE)"
T=$(now)
if [ "$MACHINE" = q35 ]; then
  VCPUS="<vcpu placement='static' current='1'>2</vcpu>
  <vcpus>
    <vcpu id='0' enabled='yes' hotpluggable='no' order='1'/>
    <vcpu id='1' enabled='no' hotpluggable='yes'/>
  </vcpus>"
else
  VCPUS="<vcpu placement='static' current='1'>2</vcpu>"
fi
cat >"$R/$DOM.xml" <<EOF
<domain type='$DTYPE'>
  <name>$DOM</name>
  <memory unit='MiB'>512</memory>
  <currentMemory unit='MiB'>512</currentMemory>
  $VCPUS
  <os>
    <type arch='x86_64' machine='$MACHINE'>hvm</type>
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
      <source file='$R/$DOM.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='$R/$DOM.serial'/><target port='0'/></serial>
    <memballoon model='virtio'><stats period='2'/></memballoon>
  </devices>
</domain>
EOF
vsh define "$R/$DOM.xml" >/dev/null || die "virsh define"
vsh start "$DOM" >/dev/null || { tail -5 "$R/state/log/qemu/$DOM.log" 2>/dev/null; die "virsh start"; }
wait_for 120 grep -qa '^STATUS' "$R/$DOM.serial" || { tail -5 "$R/$DOM.serial"; die "no STATUS from the guest"; }
echo "    $(grep -a VP-READY "$R/$DOM.serial")"
echo "    $(grep -a '^STATUS' "$R/$DOM.serial" | tail -1)"
T_BOOT=$(since "$T")

cat >"$R/env" <<EOF
URI=$URI
DTYPE=$DTYPE
MACHINE=$MACHINE
DOMAIN=$DOM
SERIAL=$R/$DOM.serial
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
