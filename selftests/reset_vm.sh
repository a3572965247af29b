#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# reset_vm: vmsctl reset, end to end, with a Linux guest and a disk.
#
#   reset_vm.sh VMSCTL KERNEL INITRD
#
# A VM booted with a writable disk is made a live image; a clone of it
# writes its memory (a file in its tmpfs, 8 MiB of it) and its disk, then
# is reset in place (`vmsctl reset`):
# - its memory is the image's again: the file it wrote is gone, its
#   clock counter (/run/counter, one a second) is back near the image's,
#   its private pages were dropped (the reset's count, and the clone's
#   `resets` counter);
# - its disk reads the image's bytes again, and a new write makes a new
#   overlay;
# - it has its identity again: its hostname, and a CRNG reseeded at the
#   reset (a UUID read after it differs from the one read before, and
#   from one read after a second reset);
# - a command in flight through the agent fails, saying the VM was reset;
# - the VM runs on: commands, disk writes, another reset;
# - the parent, booted, resets to the live image made of it, and keeps
#   its name; a VM with no live image, and one on plain memory
#   (--no-vms), are refused with a clear error and keep running;
# - no splat (the suite's log check), no overlay left once they stop.
#
# TAP output (kselftest style); exit 0 pass, 1 fail, 4 skip.
set -u

vmsctl=$1 kernel=$2 initrd=$3
export VMS_RUN_DIR=/tmp/vms-reset-$$
dir=$VMS_RUN_DIR/disks
. "$(dirname "$0")/tap.sh"
finish() {
	echo "1..$n"
	[ $failed = 0 ] && exit 0 || exit 1
}
vx() { timeout 90 "$vmsctl" exec "$1" --timeout 60 -- "$2"; }
cleanup() {
	for v in rp r-1 plain anon; do "$vmsctl" stop $v >/dev/null 2>&1; done
	"$vmsctl" live-image delete rimg >/dev/null 2>&1
	vm_cleanup
}
trap cleanup EXIT
boot() {
	local name=$1
	shift
	"$vmsctl" run --name "$name" --kernel "$kernel" --initrd "$initrd" --mem 128M --detach "$@" && return
	grep -q "triple fault (KVM_EXIT_SHUTDOWN).*before" "$VMS_RUN_DIR/vm/$name.log" 2>/dev/null || return 1
	msg "$name triple faulted while starting; starting it again"
	"$vmsctl" run --name "$name" --kernel "$kernel" --initrd "$initrd" --mem 128M --detach "$@"
}
# field VM KEY: a number from the VM's entry of `vmsctl list --json`
# (KEY a path like clone.private_pages).
field() {
	"$vmsctl" list --json | python3 -c "
import json, sys
v = next(v for v in json.load(sys.stdin) if v['name'] == sys.argv[1])
for k in sys.argv[2].split('.'):
    v = v[k]
print(v)" "$1" "$2"
}
put() { vx "$1" "printf '$2' | dd of=/dev/vda bs=4096 seek=300 conv=sync,fsync 2>/dev/null"; }
get() { vx "$1" 'echo 3 >/proc/sys/vm/drop_caches; dd if=/dev/vda bs=4096 skip=300 count=1 2>/dev/null | tr -d "\0"'; }
uuid() { vx "$1" 'cat /proc/sys/kernel/random/uuid'; }

[ -c /dev/vms ] || skip_all "no /dev/vms (vms.ko not loaded)"
[ -c /dev/kvm ] || skip_all "no /dev/kvm"
[ -f "$kernel" ] && [ -f "$initrd" ] || skip_all "no guest kernel/initramfs ($kernel, $initrd)"
command -v python3 >/dev/null || skip_all "no python3"
echo "TAP version 13"
mkdir -p "$dir"
disk=$dir/disk.img
head -c $((8 << 20)) /dev/urandom >"$disk"

if boot rp --disk "$disk"; then
	ok "boot a guest with a writable disk"
else
	fail "boot a guest with a writable disk"
	finish
fi
put rp image-time
vx rp 'echo image-time >/run/marker' >/dev/null
if out=$("$vmsctl" live-image create rp rimg 2>&1); then
	msg "$out"
	ok "live-image create"
else
	msg "$out"
	fail "live-image create"
	finish
fi
if out=$("$vmsctl" live-image start rimg --count 1 --name-prefix r 2>&1); then
	sed 's/^/# /' <<<"$out"
	ok "a clone starts"
else
	sed 's/^/# /' <<<"$out"
	fail "a clone starts"
	finish
fi

# The clone drifts away from its image: memory, disk, time.
vx r-1 'echo clone-time >/run/marker; dd if=/dev/urandom of=/run/big bs=1M count=8 2>/dev/null' >/dev/null
put r-1 clone-time
sleep 3
c0=$(vx r-1 'cat /run/counter')
u0=$(uuid r-1)
p0=$(field r-1 clone.private_pages)
msg "before the reset: counter $c0, $p0 private pages, uuid $u0"
check "the clone wrote its memory and disk" \
	test "$(vx r-1 'cat /run/marker')" = clone-time -a "$(get r-1)" = clone-time -a "$p0" -gt 2048

# A command in flight when the reset comes.
( timeout 90 "$vmsctl" exec r-1 --timeout 60 -- 'sleep 40; echo finished' >"$dir/inflight" 2>&1; echo "rc=$?" >>"$dir/inflight" ) &
inflight=$!
sleep 2
if out=$("$vmsctl" reset r-1 2>&1); then
	msg "$out"
	ok "vmsctl reset of a clone"
else
	msg "$out"
	fail "vmsctl reset of a clone"
	finish
fi
wait $inflight
msg "the command in flight: $(tr '\n' ' ' <"$dir/inflight")"
check "a command in flight fails, saying the VM was reset" \
	grep -q "reset to its live image" "$dir/inflight"
dropped=$(sed -n 's/.*(\([0-9]*\) private pages dropped).*/\1/p' <<<"$out")
check "the reset dropped the clone's private pages ($dropped, of $p0 before)" \
	test -n "$dropped" -a "${dropped:-0}" -ge "$p0"
check "the clone's memory is the image's: its file is gone" \
	test "$(vx r-1 'cat /run/marker; test -e /run/big && echo big')" = image-time
c1=$(vx r-1 'cat /run/counter')
msg "counter after the reset: $c1 (before: $c0)"
check "its clock counter went back to the image's ($c1 < $c0)" test "$c1" -lt "$c0"
check "its disk reads the image's bytes again" test "$(get r-1)" = image-time
check "the clone's resets counter is 1" test "$(field r-1 clone.resets)" = 1
check "it keeps its name" test "$(vx r-1 hostname)" = r-1
u1=$(uuid r-1)
check "its CRNG was reseeded: a new UUID ($u1)" test -n "$u1" -a "$u1" != "$u0"
put r-1 after-reset
check "it writes its disk again, in a new overlay" \
	test "$(get r-1)" = after-reset -a "$(ls "$dir"/r-1-*.qcow2 2>/dev/null | wc -l)" = 1
if out=$("$vmsctl" reset r-1 2>&1); then
	msg "$out"
	u2=$(uuid r-1)
	check "a second reset: the image's disk, a new UUID again" \
		test "$(get r-1)" = image-time -a -n "$u2" -a "$u2" != "$u1" -a "$u2" != "$u0"
else
	fail "a second reset: $out"
fi

# The parent, booted, goes back to the live image made of it.
put rp parent-later
vx rp 'echo parent-later >/run/marker' >/dev/null
if out=$("$vmsctl" reset rp 2>&1); then
	msg "$out"
	check "the parent resets to the live image made of it, and keeps its name" \
		test "$(vx rp 'cat /run/marker')" = image-time -a "$(get rp)" = image-time -a "$(vx rp hostname)" = vms-guest
else
	fail "the parent resets: $out"
fi

# Nothing to go back to: refused, and the VM runs on.
refused() {
	local name=$1 vm=$2 want=$3 out
	if out=$("$vmsctl" reset "$vm" 2>&1); then
		fail "$name: vmsctl reset accepted it"
		return
	fi
	msg "$name: $out"
	if grep -q -- "$want" <<<"$out" && [ "$(vx "$vm" 'echo alive')" = alive ]; then
		ok "$name: a clear error, and it runs on"
	else
		fail "$name: a clear error (\"$want\"), and it runs on"
	fi
}
if boot plain; then
	refused "a booted VM with no live image" plain "no live image was made of it"
else
	fail "boot a VM with no live image"
fi
if boot anon --no-vms; then
	refused "a VM on plain memory" anon "plain memory"
else
	fail "boot a VM with --no-vms"
fi
if "$vmsctl" reset nosuchvm >/dev/null 2>&1; then fail "vmsctl reset of a VM that does not run fails"; else ok "vmsctl reset of a VM that does not run fails"; fi
for v in rp r-1 plain anon; do "$vmsctl" stop $v >/dev/null 2>&1; done
check "no clone overlay is left once the VMs stopped" test "$(ls "$dir"/r-1-*.qcow2 "$dir"/*.reset-* 2>/dev/null | wc -l)" = 0
finish
