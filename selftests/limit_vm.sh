#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# limit_vm: vmsctl --mem-limit, end to end, with a Linux guest (issue 18).
#
#   limit_vm.sh VMSCTL KERNEL INITRD
#
# A VM booted with 128 MiB is made a live image; a clone of it starts with
# `live-image start --mem-limit 8M` (2,048 pages) and its swap file in the
# run directory:
# - the clone writes 32 MiB of random bytes into its tmpfs (4x its limit)
#   and reads them back: the checksum is the one it had when written, so
#   every page came back from the swap file with its bytes;
# - its private pages in memory stay near the limit and the rest are in
#   the swap file (`vmsctl list --json`, footprint): pages were evicted
#   and read back, none failed;
# - it runs on: a command through the agent;
# - a live image of the clone (the snapshot reads every swapped page back
#   first) holds the file: a clone of it without a limit reads the same
#   checksum;
# - a clone with `--swap-dir` and no limit keeps what it writes until
#   the host reclaims (`drop_caches` runs the vms-clones shrinker): its
#   pages then go to the swap file (footprint.shrunk) and come back with
#   the same checksum;
# - bad input: a swap directory that does not exist, a regular file, a
#   read-only file system, a file size limit (ulimit -f) below the
#   guest's memory: a clear error, and no VM left running.
#
# TAP output (kselftest style); exit 0 pass, 1 fail, 4 skip.
set -u

vmsctl=$1 kernel=$2 initrd=$3
export VMS_RUN_DIR=/tmp/vms-limit-$$
swap=$VMS_RUN_DIR/swap
. "$(dirname "$0")/tap.sh"
finish() {
	echo "1..$n"
	[ $failed = 0 ] && exit 0 || exit 1
}
vx() { timeout 120 "$vmsctl" exec "$1" --timeout 100 -- "$2"; }
cleanup() {
	for v in lp l-1 m-1 s-1 bad; do "$vmsctl" stop $v >/dev/null 2>&1; done
	"$vmsctl" live-image delete limg2 >/dev/null 2>&1
	"$vmsctl" live-image delete limg >/dev/null 2>&1
	vm_cleanup
}
trap cleanup EXIT
# field VM KEY: a value from the VM's entry of `vmsctl list --json` (KEY
# a path like footprint.swapped).
field() {
	"$vmsctl" list --json | python3 -c "
import json, sys
v = next(v for v in json.load(sys.stdin) if v['name'] == sys.argv[1])
for k in sys.argv[2].split('.'):
    v = (v or {}).get(k)
print(v)" "$1" "$2"
}

[ -c /dev/vms ] || skip_all "no /dev/vms (vms.ko not loaded)"
[ -c /dev/kvm ] || skip_all "no /dev/kvm"
[ -f "$kernel" ] && [ -f "$initrd" ] || skip_all "no guest kernel/initramfs ($kernel, $initrd)"
command -v python3 >/dev/null || skip_all "no python3"
echo "TAP version 13"
mkdir -p "$swap"

if "$vmsctl" run --name lp --kernel "$kernel" --initrd "$initrd" --mem 128M --detach; then
	ok "boot a guest"
else
	fail "boot a guest"
	finish
fi
if out=$("$vmsctl" live-image create lp limg 2>&1); then
	msg "$out"
	ok "live-image create"
else
	msg "$out"
	fail "live-image create"
	finish
fi
"$vmsctl" stop lp >/dev/null 2>&1
if out=$("$vmsctl" live-image start limg --name-prefix l --mem-limit 8M --swap-dir "$swap" 2>&1); then
	sed 's/^/# /' <<<"$out"
	ok "a clone starts with --mem-limit 8M"
else
	sed 's/^/# /' <<<"$out"
	fail "a clone starts with --mem-limit 8M"
	finish
fi

h0=$(vx l-1 'dd if=/dev/urandom of=/run/big bs=1M count=32 2>/dev/null && sha256sum /run/big')
h1=$(vx l-1 'sha256sum /run/big')
msg "written: $h0; read back: $h1"
check "32 MiB written at an 8 MiB limit read back the same" test -n "$h0" -a "$h0" = "$h1"
limit=$(field l-1 footprint.limit_pages) resident=$(field l-1 footprint.resident)
swapped=$(field l-1 footprint.swapped) evicted=$(field l-1 footprint.evicted)
read_back=$(field l-1 footprint.read_back) errors=$(field l-1 footprint.evict_errors)
msg "footprint: limit $limit pages, $resident in memory, $swapped swapped, $evicted evicted, $read_back read back, $errors errors"
# Faults of the VMM's mapping (its devices, the agent) never evict
# themselves (the worker does, moments later): a little room above the
# limit.
check "the clone's memory stays near its limit ($resident of $limit pages)" \
	test "$limit" = 2048 -a "$resident" -le $((2048 + 256))
check "the rest went to the swap file and came back ($swapped swapped, $read_back read back)" \
	test "$swapped" -gt 4096 -a "$read_back" -gt 4096 -a "$errors" = 0
check "the clone runs on" test "$(vx l-1 'echo alive')" = alive
sw=$("$vmsctl" stats | awk '$1 == "l-1" { print $8 }')
check "vmsctl stats shows its swapped pages ($sw)" test "${sw:-0}" -gt 0 2>/dev/null

if out=$("$vmsctl" live-image create l-1 limg2 2>&1); then
	msg "$out"
	ok "live-image create of the clone with swapped pages"
	if out=$("$vmsctl" live-image start limg2 --name-prefix m 2>&1); then
		h2=$(vx m-1 'sha256sum /run/big')
		msg "the clone of it: $h2"
		check "a clone of that live image reads the same 32 MiB" test "$h2" = "$h0"
		check "the first clone still reads them" test "$(vx l-1 'sha256sum /run/big')" = "$h0"
		"$vmsctl" stop m-1 >/dev/null 2>&1
	else
		msg "$out"
		fail "a clone of the clone's live image starts"
	fi
else
	msg "$out"
	fail "live-image create of the clone with swapped pages"
fi
"$vmsctl" stop l-1 >/dev/null 2>&1

# A swap file and no limit: only host memory pressure evicts.
if out=$("$vmsctl" live-image start limg --name-prefix s --swap-dir "$swap" 2>&1); then
	ok "a clone starts with --swap-dir and no limit"
	h3=$(vx s-1 'dd if=/dev/urandom of=/run/big bs=1M count=32 2>/dev/null && sha256sum /run/big')
	before=$(field s-1 footprint.evicted)
	shrunk=None
	for _ in $(seq 30); do
		echo 2 >/proc/sys/vm/drop_caches
		shrunk=$(field s-1 footprint.shrunk)
		[ "$shrunk" != None ] && [ "$shrunk" -gt 4096 ] && break
		sleep 1
	done
	msg "evicted before drop_caches: $before; shrunk after: $shrunk"
	check "no limit: nothing evicted before the host reclaims" test "$before" = None
	check "drop_caches took its pages ($shrunk shrunk)" test "$shrunk" != None -a "${shrunk/None/0}" -gt 4096
	check "they come back with the same checksum" test -n "$h3" -a "$(vx s-1 'sha256sum /run/big')" = "$h3"
	"$vmsctl" stop s-1 >/dev/null 2>&1
else
	msg "$out"
	fail "a clone starts with --swap-dir and no limit"
fi

# Bad swap directories: a clear error, no VM.
refused() {
	local what=$1 dir=$2 want=$3 out
	if out=$("$vmsctl" run --image limg --name bad --mem-limit 8M --swap-dir "$dir" 2>&1); then
		fail "$what: the clone started"
		"$vmsctl" stop bad >/dev/null 2>&1
		return
	fi
	msg "$what: $(tail -n 1 <<<"$out")"
	if grep -qi -- "$want" <<<"$out" && ! "$vmsctl" list 2>/dev/null | grep -qw bad; then
		ok "$what: a clear error, no VM"
	else
		fail "$what: a clear error (\"$want\"), no VM"
	fi
}
refused "a swap directory that does not exist" "$swap/nonexistent" "no such file"
refused "a regular file as swap directory" "$kernel" "not a directory"
refused "a read-only file system" / "read-only file system"
# A file size limit below the guest's memory: the module's writes would
# send SIGXFSZ to the VM's threads.
if out=$(ulimit -f 1024; "$vmsctl" run --image limg --name bad --mem-limit 8M --swap-dir "$swap" 2>&1); then
	fail "a file size limit below the guest's memory: the clone started"
	"$vmsctl" stop bad >/dev/null 2>&1
else
	msg "ulimit -f 1024: $(tail -n 1 <<<"$out")"
	check "a file size limit below the guest's memory: a clear error" grep -q "file size limit" <<<"$out"
fi
finish
