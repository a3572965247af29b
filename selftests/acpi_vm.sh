#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# acpi_vm: vmsctl run --acpi, end to end, with a Linux guest.
#
#   acpi_vm.sh VMSCTL KERNEL INITRD
#
# - a guest booted with --acpi (no acpi=off, no virtio_mmio.device= on its
#   command line) becomes ready: it found its serial ports (PNP0501) and
#   its virtio-rng and virtio-blk devices (LNRO0005) in the DSDT;
# - its kernel bound the VM generation ID device (vmgenid);
# - 2 clones of a live image of it: each kernel reseeded its CRNG
#   because the generation ID changed ("crng reseeded due to virtual
#   machine fork", after the GED interrupt), which the parent's did not;
# - a clone reset to the image (vmsctl reset) reseeds again, on the
#   reset's new generation ID.
#
# TAP output (kselftest style); exit 0 pass, 1 fail, 4 skip.
set -u

vmsctl=$1 kernel=$2 initrd=$3
export VMS_RUN_DIR=/tmp/vms-acpi-$$
. "$(dirname "$0")/tap.sh"
finish() {
	echo "1..$n"
	[ $failed = 0 ] && exit 0 || exit 1
}
vx() { timeout 90 "$vmsctl" exec "$1" --timeout 60 -- "$2"; }
cleanup() {
	for v in a-1 a-2 parent; do "$vmsctl" stop "$v" >/dev/null 2>&1; done
	"$vmsctl" live-image delete aimg >/dev/null 2>&1
	vm_cleanup
}
trap cleanup EXIT
fork_msg='crng reseeded due to virtual machine fork'

[ -c /dev/vms ] || skip_all "no /dev/vms (vms.ko not loaded)"
[ -c /dev/kvm ] || skip_all "no /dev/kvm"
[ -f "$kernel" ] && [ -f "$initrd" ] || skip_all "no guest kernel/initramfs ($kernel, $initrd)"
echo "TAP version 13"
mkdir -p "$VMS_RUN_DIR"
disk=$VMS_RUN_DIR/disk.img
head -c $((1 << 20)) /dev/urandom >"$disk"

boot() {
	"$vmsctl" run --name parent --kernel "$kernel" --initrd "$initrd" --mem 128M \
		--acpi --disk "$disk" --disk-ro --detach && return
	grep -q "triple fault (KVM_EXIT_SHUTDOWN).*before" "$VMS_RUN_DIR/vm/parent.log" 2>/dev/null || return 1
	msg "parent triple faulted while starting; starting it again"
	"$vmsctl" run --name parent --kernel "$kernel" --initrd "$initrd" --mem 128M \
		--acpi --disk "$disk" --disk-ro --detach
}
if boot; then
	ok "boot a guest with --acpi to its ready marker (console and agent on the DSDT's UARTs)"
else
	fail "boot a guest with --acpi"
	finish
fi
out=$(vx parent 'cat /proc/cmdline; cat /sys/class/misc/hw_random/rng_current; od -An -tx1 -N16 /dev/vda | tr -d " \n"; echo; ls /sys/bus/platform/drivers/vmgenid 2>&1 | grep -c VMGENCTR')
msg "parent: $(echo $out)"
cmdline=$(sed -n 1p <<<"$out")
check "no acpi=off and no virtio_mmio.device= on the command line" \
	eval '! grep -Eq "acpi=off|virtio_mmio.device" <<<"$cmdline"'
check "virtio-rng found through ACPI (rng_current virtio_rng.0)" [ "$(sed -n 2p <<<"$out")" = virtio_rng.0 ]
want=$(od -An -tx1 -N16 "$disk" | tr -d ' \n')
check "virtio-blk found through ACPI (/dev/vda reads the disk's first bytes)" [ "$(sed -n 3p <<<"$out")" = "$want" ]
check "the kernel bound the VM generation ID device (vmgenid)" [ "$(sed -n 4p <<<"$out")" = 1 ]
# no_fork VM: VM answered, and its kernel logged no VM fork
no_fork() { local log; log=$(vx "$1" dmesg) && [ -n "$log" ] && ! grep -q "$fork_msg" <<<"$log"; }
check "the parent's kernel did not log a VM fork" no_fork parent

if out=$("$vmsctl" live-image create parent aimg); then
	msg "$out"
	ok "live-image create"
else
	fail "live-image create"
	finish
fi
if out=$("$vmsctl" live-image start aimg --count 2 --name-prefix a 2>&1); then
	sed 's/^/# /' <<<"$out"
	ok "live-image start --count 2"
else
	sed 's/^/# /' <<<"$out"
	fail "live-image start --count 2"
	finish
fi
for c in a-1 a-2; do
	# The GED's interrupt is named ACPI:Ged in /proc/interrupts.
	d=$(vx $c 'dmesg | grep -c "crng reseeded due to virtual machine fork"; grep -c ACPI:Ged /proc/interrupts; awk "/ACPI:Ged/ { for (i = 2; i <= NF && \$i ~ /^[0-9]+\$/; i++) s += \$i } END { print s + 0 }" /proc/interrupts')
	msg "$c: fork messages, GED lines, GED count: $(echo $d)"
	check "$c: its kernel reseeded the CRNG on the new VM generation ID" [ "$(sed -n 1p <<<"$d")" -ge 1 ] 2>/dev/null
	check "$c: the GED interrupt arrived" [ "$(sed -n 3p <<<"$d")" -ge 1 ] 2>/dev/null
done
# A reset takes a-1 back to the image, whose kernel logged no fork; the
# reset's new generation ID makes it reseed (and log it) again.
if out=$("$vmsctl" reset a-1 2>&1); then
	msg "$out"
	d=$(vx a-1 'dmesg | grep -c "crng reseeded due to virtual machine fork"; cat /run/vms-id 2>/dev/null')
	msg "a-1 after its reset: fork messages, id: $(echo $d)"
	check "a-1, reset: its kernel reseeded on the reset's new generation ID" [ "$(sed -n 1p <<<"$d")" -ge 1 ] 2>/dev/null
else
	fail "vmsctl reset a-1: $out"
fi
check "the parent's kernel still logged no VM fork" no_fork parent
finish
