#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# libvirt_vm: a libvirt domain runs on a named vms clone (issue 17,
# deliverable 4), with the domain XML of docs/QEMU.md.
#
#   libvirt_vm.sh VMSCTL KERNEL INITRD
#
# - `vmsctl clone create IMAGE --name NAME` makes /dev/vms-clone/NAME;
# - `virsh create` starts a transient domain whose RAM is that clone,
#   given to QEMU with <qemu:commandline> (libvirt itself cannot name a
#   file for main RAM); the guest becomes ready and its agent answers;
# - the clone's counters show its pages were served by vms at stage-2
#   fault time (vms.ko claims the memslots libvirt's QEMU makes);
# - `virsh destroy` ends QEMU; the clone and its pages stay with its name.
#
# libvirt runs in session mode (qemu:///session) as user nobody: the test
# VM's root is this machine's, read-only, and has no libvirt-qemu user,
# which the system daemon needs. The domain XML is the same for
# qemu:///system; docs/QEMU.md says what its qemu.conf needs.
#
# TAP output (kselftest style); exit 0 pass, 1 fail, 4 skip.
set -u

vmsctl=$1 kernel=$2 initrd=$3
export VMS_RUN_DIR=/tmp/vms-libvirt-$$
. "$(dirname "$0")/tap.sh"
qemu=$(command -v qemu-system-x86_64)
img=lv-base-$$ name=lv-$$ dom=vms-lv-$$
d=/tmp/vms-libvirt-$$/home
as_nobody() {
	runuser -u nobody -- env HOME="$d" XDG_RUNTIME_DIR="$d/run" XDG_CONFIG_HOME="$d/config" \
		XDG_CACHE_HOME="$d/cache" "$@"
}
virsh_() { as_nobody timeout 120 virsh -q -c qemu:///session "$@"; }
kvm_mode=
cleanup() {
	virsh_ destroy "$dom" >/dev/null 2>&1
	pkill -u nobody -f "libvirtd.*--timeout" 2>/dev/null
	"$vmsctl" clone delete "$name" >/dev/null 2>&1
	"$vmsctl" image delete "$img" >/dev/null 2>&1
	[ -n "$kvm_mode" ] && chmod "$kvm_mode" /dev/kvm
	rm -rf "/tmp/vms-libvirt-$$"
}
trap cleanup EXIT
field() { python3 -c "import json,sys; r=[c for c in json.load(sys.stdin) if c['name']=='$name']; print(r[0]['$1'] if r else -1)"; }

[ -c /dev/vms ] || skip_all "no /dev/vms (vms.ko not loaded)"
[ -c /dev/kvm ] || skip_all "no /dev/kvm"
[ -n "$qemu" ] || skip_all "no qemu-system-x86_64"
command -v virsh >/dev/null && [ -x /usr/sbin/libvirtd ] ||
	skip_all "no libvirt (scripts/setup installs libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients)"
[ -f "$kernel" ] && [ -f "$initrd" ] || skip_all "no guest kernel/initramfs ($kernel, $initrd)"
echo "TAP version 13"
mkdir -p "$d/run" "$d/config" "$d/cache"
chmod 700 "$d/run"
# QEMU runs as nobody: it needs the guest's files, /dev/kvm and the clone.
cp "$kernel" "$d/bzImage"
cp "$initrd" "$d/initrd"
chown -R nobody "$d"
chmod 755 "/tmp/vms-libvirt-$$"
kvm_mode=$(stat -c %a /dev/kvm)
chmod 666 /dev/kvm

truncate -s 256M "$VMS_RUN_DIR/base.mem"
"$vmsctl" image create "$img" --file "$VMS_RUN_DIR/base.mem" >/dev/null || fail "image create"
check "vmsctl clone create --name --owner nobody" "$vmsctl" clone create "$img" --name "$name" --owner nobody
check "the device is nobody's" test "$(stat -c %U "/dev/vms-clone/$name")" = nobody

cat >"$d/dom.xml" <<EOF
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$dom</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$d/bzImage</kernel>
    <initrd>$d/initrd</initrd>
    <cmdline>console=ttyS0 panic=-1</cmdline>
  </os>
  <!-- ACPI on: without it libvirt 9.0 passes -no-acpi, which QEMU 10 no
       longer has -->
  <features><acpi/></features>
  <cpu mode='host-passthrough'/>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>$qemu</emulator>
    <serial type='file'><source path='$d/console.log'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='$d/agent.sock'/><target port='1'/></serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-object'/>
    <qemu:arg value='memory-backend-file,id=vmsram,mem-path=/dev/vms-clone/$name,share=on,size=256M'/>
    <qemu:arg value='-machine'/>
    <qemu:arg value='memory-backend=vmsram'/>
  </qemu:commandline>
</domain>
EOF
chown nobody "$d/dom.xml"
if out=$(virsh_ create "$d/dom.xml" 2>&1); then
	msg "$out"
	ok "virsh create: a domain whose RAM is /dev/vms-clone/$name"
else
	msg "$out"
	tail -n 20 "$d/cache/libvirt/qemu/log/$dom.log" 2>/dev/null | sed 's/^/#   /'
	fail "virsh create: a domain whose RAM is /dev/vms-clone/$name"
	echo "1..$n"
	exit 1
fi
msg "QEMU's command line: $(tr '\0' ' ' </proc/"$(pgrep -u nobody -f "guest=$dom" | head -1)"/cmdline 2>/dev/null | grep -o 'memory-backend[^ ]*' | tr '\n' ' ')"
t=0
while [ $t -lt 300 ] && ! grep -q "vms-guest: ready" "$d/console.log" 2>/dev/null; do
	sleep 1
	t=$((t + 1))
done
if grep -q "vms-guest: ready" "$d/console.log" 2>/dev/null; then
	ok "the libvirt guest on the named clone is ready ($t s)"
else
	tail -n 15 "$d/console.log" "$d/cache/libvirt/qemu/log/$dom.log" 2>/dev/null | sed 's/^/#   /'
	fail "the libvirt guest on the named clone is ready (waited $t s)"
fi
r=$(timeout 90 "$vmsctl" qemu exec --agent "$d/agent.sock" --timeout 60 -- 'echo through-libvirt >/run/marker; cat /run/marker' 2>&1)
check "its agent answers ($r)" test "$r" = through-libvirt
json=$("$vmsctl" clone list --json)
msg "clone list: $json"
private=$(field private_pages <<<"$json") mfaults=$(field mmap_faults <<<"$json") s2=$(field faults <<<"$json")
check "the guest's pages came from the clone ($private private pages)" test "$private" -gt 1000
check "KVM asked the clone at stage-2 fault time ($s2 stage-2 faults, $mfaults of QEMU's mapping)" \
	test "$s2" -gt 1000 -a "$s2" -gt "$mfaults"
check "virsh destroy ends the domain" virsh_ destroy "$dom"
after=$("$vmsctl" clone list --json | field private_pages)
check "the name keeps the clone and its pages ($after private pages)" test "$after" -ge "$private"
check "vmsctl clone delete removes the name" "$vmsctl" clone delete "$name"
check "the image deletes" "$vmsctl" image delete "$img"
echo "1..$n"
[ $failed = 0 ]
