#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# qemu_vm: an unmodified QEMU runs a guest on a named vms clone (issue 17).
#
#   qemu_vm.sh VMSCTL KERNEL INITRD
#
# - `vmsctl clone create IMAGE --name q1` makes /dev/vms-clone/q1;
# - Debian's qemu-system-x86_64 (KVM) boots our small guest with
#   `-object memory-backend-file,mem-path=/dev/vms-clone/q1,share=on`;
# - the guest becomes ready, and the clone's counters show where its
#   pages came from: faults of QEMU's mapping (KVM's GUP of it), private
#   pages the guest wrote, and no stage-2 provider faults (QEMU does not
#   set KVM_MEM_PAGE_PROVIDER; that is issue 17's next step);
# - after QEMU exits the name keeps the clone and its pages; `vmsctl clone
#   delete` removes the name and the clone, and the image deletes.
#
# TAP output (kselftest style); exit 0 pass, 1 fail, 4 skip.
set -u

vmsctl=$1 kernel=$2 initrd=$3
export VMS_RUN_DIR=/tmp/vms-qemu-$$
. "$(dirname "$0")/tap.sh"
qemu=$(command -v qemu-system-x86_64)
img=qemu-base-$$ name=q1-$$
cleanup() {
	[ -n "${qp:-}" ] && kill "$qp" 2>/dev/null
	"$vmsctl" clone delete "$name" >/dev/null 2>&1
	"$vmsctl" image delete "$img" >/dev/null 2>&1
	rm -rf "$VMS_RUN_DIR"
}
trap cleanup EXIT
field() { python3 -c "import json,sys; r=[c for c in json.load(sys.stdin) if c['name']=='$name']; print(r[0]['$1'] if r else -1)"; }

[ -c /dev/vms ] || skip_all "no /dev/vms (vms.ko not loaded)"
[ -c /dev/kvm ] || skip_all "no /dev/kvm"
[ -n "$qemu" ] || skip_all "no qemu-system-x86_64"
[ -f "$kernel" ] && [ -f "$initrd" ] || skip_all "no guest kernel/initramfs ($kernel, $initrd)"
echo "TAP version 13"
mkdir -p "$VMS_RUN_DIR"

# An empty image (a sparse file: zero pages), a named clone of it.
truncate -s 256M "$VMS_RUN_DIR/base.mem"
"$vmsctl" image create "$img" --file "$VMS_RUN_DIR/base.mem" >/dev/null || fail "image create"
if out=$("$vmsctl" clone create "$img" --name "$name" 2>&1); then
	ok "vmsctl clone create --name"
else
	msg "$out"
	fail "vmsctl clone create --name"
	echo "1..$n"
	exit 1
fi
check "/dev/vms-clone/$name is a character device" test -c "/dev/vms-clone/$name"

"$qemu" -accel kvm -cpu host -m 256M -smp 1 -nographic -no-reboot \
	-object memory-backend-file,id=ram,mem-path="/dev/vms-clone/$name",share=on,size=256M \
	-machine pc,memory-backend=ram -kernel "$kernel" -initrd "$initrd" \
	-append "console=ttyS0 panic=-1" </dev/null >"$VMS_RUN_DIR/qemu.out" 2>&1 &
qp=$!
t=0
while [ $t -lt 300 ] && kill -0 $qp 2>/dev/null && ! grep -q "vms-guest: ready" "$VMS_RUN_DIR/qemu.out"; do
	sleep 1
	t=$((t + 1))
done
if grep -q "vms-guest: ready" "$VMS_RUN_DIR/qemu.out"; then
	ok "QEMU's guest on the named clone is ready ($t s)"
else
	tail -n 15 "$VMS_RUN_DIR/qemu.out" | sed 's/^/#   /'
	fail "QEMU's guest on the named clone is ready (waited $t s)"
fi
json=$("$vmsctl" clone list --json)
msg "clone list: $json"
private=$(field private_pages <<<"$json") mfaults=$(field mmap_faults <<<"$json") s2=$(field faults <<<"$json")
check "the guest's pages came through the clone's mapping ($mfaults mmap faults, $private private pages)" \
	test "$mfaults" -gt 1000 -a "$private" -gt 1000
check "no provider faults: QEMU does not set KVM_MEM_PAGE_PROVIDER ($s2)" test "$s2" = 0
kill $qp
wait $qp 2>/dev/null
qp=
json=$("$vmsctl" clone list --json)
# (at least as many: the guest ran on between the two reads)
after=$(field private_pages <<<"$json")
check "the name keeps the clone and its pages after QEMU exits ($after private pages)" test "$after" -ge "$private"
check "vmsctl clone delete removes the name" "$vmsctl" clone delete "$name"
check "the device is gone" test ! -e "/dev/vms-clone/$name"
check "the image deletes: the clone went with its name" "$vmsctl" image delete "$img"
echo "1..$n"
[ $failed = 0 ]
