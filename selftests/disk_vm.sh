#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# disk_vm: the VMM's virtio-blk disk, end to end, with a Linux guest.
#
#   disk_vm.sh VMSCTL KERNEL INITRD
#
# - a guest booted with --disk reads the file's bytes at /dev/vda, and
#   what it writes (and flushes) is in the file, byte for byte;
# - with --disk-ro the guest sees a read-only disk;
# - a live image of a VM whose disk is writable freezes the disk file;
#   the VM goes on in a qcow2 overlay, each clone in one of its own: a
#   clone sees the disk as it was at the image, its writes are its own
#   (absent from the other clone, the parent and the image's file), its
#   overlay goes when it stops, and a VM that would write the frozen
#   file is refused;
# - a live image of a VM whose disk is read-only is made while the guest
#   reads the disk in a loop, and each clone's reads go on and see the
#   same bytes (the pause lost no request: a lost one would hang the
#   guest's loop).
#
# TAP output (kselftest style); exit 0 pass, 1 fail, 4 skip.
set -u

vmsctl=$1 kernel=$2 initrd=$3
export VMS_RUN_DIR=/tmp/vms-disk-$$
dir=$VMS_RUN_DIR/disks
. "$(dirname "$0")/tap.sh"
finish() {
	echo "1..$n"
	[ $failed = 0 ] && exit 0 || exit 1
}
vx() { timeout 90 "$vmsctl" exec "$1" --timeout 60 -- "$2"; }
cleanup() {
	for v in d-1 d-2 w-1 w-2 rw thief; do "$vmsctl" stop $v >/dev/null 2>&1; done
	"$vmsctl" live-image delete dimg >/dev/null 2>&1
	"$vmsctl" live-image delete wimg >/dev/null 2>&1
	vm_cleanup
}
trap cleanup EXIT
# boot NAME ARGS...: boot a guest in the background, once more if the
# emulated machine triple faulted it while starting (live_vm.sh says why).
boot() {
	local name=$1
	shift
	"$vmsctl" run --name "$name" --kernel "$kernel" --initrd "$initrd" --mem 128M --detach "$@" && return
	grep -q "triple fault (KVM_EXIT_SHUTDOWN).*before" "$VMS_RUN_DIR/vm/$name.log" 2>/dev/null || return 1
	msg "$name triple faulted while starting; starting it again"
	"$vmsctl" run --name "$name" --kernel "$kernel" --initrd "$initrd" --mem 128M --detach "$@"
}
# range_md5 FILE OFFSET_4K COUNT_4K
range_md5() { dd if="$1" bs=4096 skip="$2" count="$3" 2>/dev/null | md5sum | cut -d' ' -f1; }

[ -c /dev/vms ] || skip_all "no /dev/vms (vms.ko not loaded)"
[ -c /dev/kvm ] || skip_all "no /dev/kvm"
[ -f "$kernel" ] && [ -f "$initrd" ] || skip_all "no guest kernel/initramfs ($kernel, $initrd)"
echo "TAP version 13"
mkdir -p "$dir"
disk=$dir/disk.img
head -c $((8 << 20)) /dev/urandom >"$disk"
cp "$disk" "$dir/orig"

# 1. Reads and writes.
if boot rw --disk "$disk"; then
	ok "boot a guest with --disk"
else
	fail "boot a guest with --disk"
	finish
fi
out=$(vx rw 'cat /sys/block/vda/size /sys/block/vda/ro /sys/block/vda/serial')
msg "rw: /sys/block/vda size, ro, serial: $(echo $out)"
check "the guest sees an 8 MiB writable disk named after the file" \
	test "$(echo $out)" = "16384 0 disk.img"
want=$(range_md5 "$disk" 100 64)
got=$(vx rw 'dd if=/dev/vda bs=4096 skip=100 count=64 2>/dev/null | md5sum | cut -d" " -f1')
check "the guest reads the file's bytes (256 KiB at 400 KiB: $got)" test "$got" = "$want"
# The guest writes text at 1 MiB and flushes (conv=fsync: a FLUSH request).
vx rw 'seq 1 30000 | dd of=/dev/vda bs=4096 seek=256 conv=fsync 2>/dev/null' >/dev/null
# (Files, not <(...): the test VM has no /dev/fd.)
seq 1 30000 >"$dir/text"
len=$(wc -c <"$dir/text")
tail -c +$((1048576 + 1)) "$disk" | head -c "$len" >"$dir/found"
check "what the guest wrote is in the file ($len bytes at 1 MiB)" cmp -s "$dir/text" "$dir/found"
# Everything else is as it was: before 1 MiB, and after the text (the
# guest's page cache read the rest of the last 4 KiB block and wrote it
# back as it was).
end=$((1048576 + len))
check "the bytes around it are untouched" \
	test "$(head -c 1048576 "$disk" | md5sum)" = "$(head -c 1048576 "$dir/orig" | md5sum)" -a \
	"$(tail -c +$((end + 1)) "$disk" | md5sum)" = "$(tail -c +$((end + 1)) "$dir/orig" | md5sum)"
# Read back through the disk, not the guest's page cache.
got=$(vx rw 'echo 3 >/proc/sys/vm/drop_caches; dd if=/dev/vda bs=4096 skip=256 count=64 2>/dev/null | head -c '"$len"' | md5sum | cut -d" " -f1')
check "the guest reads back what it wrote" test "$got" = "$(seq 1 30000 | md5sum | cut -d' ' -f1)"
# 2. A live image of the VM with its writable disk: the file is frozen
# in the pause (the image's disk layer), the VM goes on in a qcow2
# overlay next to it, and each clone gets an overlay of its own.
# put VM TEXT / get VM: a text at block 300, written with a flush / read
# from the disk (the guest's caches dropped).
put() { vx "$1" "printf '$2' | dd of=/dev/vda bs=4096 seek=300 conv=sync,fsync 2>/dev/null"; }
get() { vx "$1" 'echo 3 >/proc/sys/vm/drop_caches; dd if=/dev/vda bs=4096 skip=300 count=1 2>/dev/null | tr -d "\0"'; }
host_get() { dd if="$disk" bs=4096 skip=300 count=1 2>/dev/null | tr -d '\0'; }
put rw image-time
if out=$("$vmsctl" live-image create rw wimg 2>&1); then
	msg "$out"
	ok "live-image create of a VM with a writable disk"
else
	msg "$out"
	fail "live-image create of a VM with a writable disk"
	finish
fi
frozen=$(md5sum <"$disk")
put rw after-image
check "the VM goes on writing, in a new overlay ($(basename "$disk").wimg.qcow2)" \
	test "$(get rw)" = after-image -a -f "$disk.wimg.qcow2"
check "the frozen disk file keeps the image's bytes" test "$(host_get)" = image-time
if out=$("$vmsctl" live-image start wimg --count 2 --name-prefix w 2>&1); then
	sed 's/^/# /' <<<"$out"
	ok "two clones of the image with a writable disk start"
else
	sed 's/^/# /' <<<"$out"
	fail "two clones of the image with a writable disk start"
	finish
fi
check "each clone reads the disk as it was when the image was made" \
	test "$(get w-1)" = image-time -a "$(get w-2)" = image-time
# A clone's overlay is made by its first write (vmsctl's disk thread).
overlays=$(ls "$VMS_RUN_DIR"/disks/w-*.qcow2 2>/dev/null | wc -l)
check "clones that only read have no overlay yet ($overlays)" test "$overlays" = 0
put w-1 only-w-1
check "a write in w-1 is its own: w-1 reads it; w-2, the parent and the image's file do not" \
	test "$(get w-1)" = only-w-1 -a "$(get w-2)" = image-time -a "$(get rw)" = after-image -a "$(host_get)" = image-time
check "w-1's first write made its overlay" test "$(ls "$VMS_RUN_DIR"/disks/w-1-*.qcow2 2>/dev/null | wc -l)" = 1
put w-2 only-w-2
check "w-2's write is its own too" test "$(get w-2)" = only-w-2 -a "$(get w-1)" = only-w-1 -a "$(host_get)" = image-time
overlays=$(ls "$VMS_RUN_DIR"/disks/w-*.qcow2 2>/dev/null | wc -l)
msg "clones' overlays: $(du -k "$VMS_RUN_DIR"/disks/w-*.qcow2 2>/dev/null | awk '{ printf "%s %s KiB; ", $2, $1 }')"
check "each clone that wrote has its own overlay in the run directory ($overlays)" test "$overlays" = 2
if out=$("$vmsctl" run --name thief --kernel "$kernel" --initrd "$initrd" --mem 128M --disk "$disk" --detach 2>&1); then
	fail "a VM that would write the frozen layer is refused"
	"$vmsctl" stop thief >/dev/null 2>&1
else
	msg "$(tail -n 1 <<<"$out")"
	check "a VM that would write the frozen layer is refused (in use)" grep -q "in use" <<<"$out"
fi
"$vmsctl" stop w-1 >/dev/null
check "w-1's overlay goes with it" test "$(ls "$VMS_RUN_DIR"/disks/w-*.qcow2 2>/dev/null | wc -l)" = 1
check "the frozen layer is unchanged after all of this" test "$(md5sum <"$disk")" = "$frozen"
"$vmsctl" stop w-2 >/dev/null
"$vmsctl" stop rw >/dev/null
check "the image deletes once its clones and parent are stopped" "$vmsctl" live-image delete wimg
# The parent's overlay holds what it wrote after the image; it stays
# (a user's data), as qemu-img would read it.
rm -f "$disk.wimg.qcow2"

# 3. Read-only, and a live image with the disk.
sum=$(range_md5 "$disk" 0 2048)
if boot ro --disk "$disk" --disk-ro; then
	ok "boot a guest with --disk-ro"
else
	fail "boot a guest with --disk-ro"
	finish
fi
check "the guest sees a read-only disk" test "$(vx ro 'cat /sys/block/vda/ro')" = 1
# A reader in the guest: every round reads one 4 KiB block from the disk
# itself (caches dropped) and counts (renamed into place, so a reader of
# /run/reads never finds it empty).
vx ro 'i=0; while :; do dd if=/dev/vda of=/dev/null bs=4096 skip=$((i % 2048)) count=1 2>/dev/null || echo "read $i failed" >/dev/console; i=$((i + 1)); echo $i >/run/reads.new; mv /run/reads.new /run/reads; echo 1 >/proc/sys/vm/drop_caches; done </dev/null >/dev/null 2>&1 &' >/dev/null
sleep 2
r0=$(vx ro 'cat /run/reads')
if out=$("$vmsctl" live-image create ro dimg 2>&1); then
	msg "$out"
	ok "live-image create of a VM reading its read-only disk (reads so far: $r0)"
else
	msg "$out"
	fail "live-image create of a VM reading its read-only disk"
	finish
fi
"$vmsctl" stop ro >/dev/null
if out=$("$vmsctl" live-image start dimg --count 2 --name-prefix d 2>&1); then
	sed 's/^/# /' <<<"$out"
	ok "two clones of the image start"
else
	sed 's/^/# /' <<<"$out"
	fail "two clones of the image start"
	finish
fi
for c in d-1 d-2; do
	a=$(vx $c 'cat /run/reads')
	sleep 3
	b=$(vx $c 'cat /run/reads')
	msg "$c: the guest's disk reads went from $a to $b in 3 s"
	check "$c's disk reads go on after the resume" test "${b:-0}" -gt "${a:-0}" -a "${a:-0}" -ge "${r0:-1}"
	got=$(vx $c 'dd if=/dev/vda bs=4096 count=2048 2>/dev/null | md5sum | cut -d" " -f1')
	check "$c reads the disk's bytes" test "$got" = "$sum"
done
check "the clones' consoles report no failed read" \
	bash -c "! grep -h 'read .* failed' '$VMS_RUN_DIR'/vm/d-*.log"
check "nobody wrote the read-only disk" test "$(range_md5 "$disk" 0 2048)" = "$sum"
"$vmsctl" stop d-1 >/dev/null
"$vmsctl" stop d-2 >/dev/null
check "the image deletes once its clones are stopped" "$vmsctl" live-image delete dimg
finish
