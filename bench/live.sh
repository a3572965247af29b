#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The live-image figures of issue 4, measured in the test VM (scripts/bench
# --live runs it): how long `vmsctl live-image create` pauses a running
# Linux guest, and clone start time (request to the clone's first
# KVM_RUN, as vmsctl reports it) for clones started one at a time and 8
# at once, plus the memory the clones own next to the parent's.
#
#   bench/live.sh VMSCTL KERNEL INITRD OUT_DIR RUNS
set -eu
V=$1 kernel=$2 initrd=$3 out=$4 runs=$5
export VMS_RUN_DIR=/tmp/vms-bench-live
mkdir -p "$out"
cleanup() { for v in $("$V" list --names 2>/dev/null); do "$V" stop "$v" >/dev/null 2>&1; done; }
trap cleanup EXIT
stats() { "$V" stats --json; }
. "$(dirname "$0")/lib.sh"

"$V" run --name parent --kernel "$kernel" --initrd "$initrd" --mem 256M --cpus 1 --detach >/dev/null
sleep 2
pauses=() singles=() batch=() phases=()
for r in $(seq 1 "$runs"); do
	out_c=$("$V" live-image create parent "img$r")
	pauses+=("$(sed -n 's/.*VM paused \([0-9.]*\) ms.*/\1/p' <<<"$out_c")")
	s=$("$V" live-image start "img$r" --count 1 --name-prefix "one$r")
	singles+=("$(sed -n 's/.*first instruction \([0-9.]*\) ms.*/\1/p' <<<"$s")")
	phases+=("$(sed -n 's/.*start phases (ms): //p' <<<"$s")")
	"$V" stop "one$r-1" >/dev/null
done
# 8 at once from the last image: each clone's own start time, and the
# whole batch's wall time.
s=$("$V" live-image start "img$runs" --count 8 --name-prefix many)
while read -r t; do batch+=("$t"); done <<<"$(sed -n 's/.*first instruction \([0-9.]*\) ms.*/\1/p' <<<"$s")"
wall=$(sed -n 's/.*clones of .* in \([0-9]*\) ms/\1/p' <<<"$s")
image_pages=$(stats | python3 -c "import json,sys; print(sum(i['cached_pages'] for i in json.load(sys.stdin)['images'] if i['name'].startswith('img')))")
private=$(stats | python3 -c "import json,sys; print(sum(v['clone']['private_pages'] for v in json.load(sys.stdin)['vms'] if v['name'].startswith('many')))")
# The 8 go before anything else is timed: idle, they still took the one
# CPU's time from the rows below (until 2026-12-04 they ran on).
for i in $(seq 1 8); do "$V" stop "many-$i" >/dev/null; done

# The same with the devices attached: a parent with a virtio-blk disk (a
# raw file; each clone gets a qcow2 overlay of it) and a virtio-net
# device on a bridge (each clone its own tap, MAC and address), plus the
# virtio-rng every VM has.
ip link add vmsbench0 type bridge && ip addr add 10.79.0.1/24 dev vmsbench0 && ip link set vmsbench0 up
truncate -s 64M /tmp/vms-bench-live-disk.raw
"$V" run --name dparent --kernel "$kernel" --initrd "$initrd" --mem 256M --cpus 1 \
	--disk /tmp/vms-bench-live-disk.raw --bridge vmsbench0 --detach >/dev/null
sleep 2
dsingles=() dphases=() dwall=() rpaused=() rtotal=() rpages=()
for r in $(seq 1 "$runs"); do
	"$V" live-image create dparent "dimg$r" >/dev/null
	s=$("$V" live-image start "dimg$r" --count 1 --name-prefix "dev$r")
	dsingles+=("$(sed -n 's/.*first instruction \([0-9.]*\) ms.*/\1/p' <<<"$s")")
	dphases+=("$(sed -n 's/.*start phases (ms): //p' <<<"$s")")
	dwall+=("$(sed -n 's/.*clones of .* in \([0-9]*\) ms/\1/p' <<<"$s")")
	# The clone does some work (8 MiB written), then goes back to its
	# image in place (vmsctl reset), instead of a new clone.
	"$V" exec "dev$r-1" -- 'dd if=/dev/urandom of=/run/work bs=1M count=8 2>/dev/null' >/dev/null
	j=$("$V" reset "dev$r-1" --json)
	read -r p t n <<<"$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["paused_us"] / 1000, d["total_us"] / 1000, d["private_pages_dropped"])' <<<"$j")"
	rpaused+=("$p") rtotal+=("$t") rpages+=("$n")
	"$V" stop "dev$r-1" >/dev/null
done
"$V" stop dparent >/dev/null

# The bare-VM floor, in the same boot: vms-bench's empty VM (anonymous
# memory, one page of code, no image) from the request for its memory to
# its first instruction, in-process.
floor_md=$("$(dirname "$V")/vms-bench" start --sizes 256M --runs "$runs" --copy-max 1M)
floor=$(awk -F'|' '/^\| .*anon, empty/ { gsub(/ /, "", $4); print $4; exit }' <<<"$floor_md")
# Each phase's median over the single starts (vmsctl's "start phases").
phase_med() { python3 -c '
import sys, statistics
rows = {}
for line in sys.stdin:
    for part in line.strip().split(", "):
        if not part:
            continue
        k, v = part.rsplit(" ", 1)
        rows.setdefault(k, []).append(float(v))
for k, v in rows.items():
    print(f"| {k} | {statistics.median(v):.1f} | {min(v):.1f}-{max(v):.1f} |")
'; }
phase_table=$(printf '%s\n' "${phases[@]}" | phase_med)
dphase_table=$(printf '%s\n' "${dphases[@]}" | phase_med)

{
	echo "# Live images: pause and clone start (issue 4)"
	echo
	echo "Guest: Linux 6.12 (scripts/build-guest: tinyconfig, tickless), 256M, 1 vCPU, busybox initramfs; $runs runs."
	echo "Times in ms, median (min-max). Start = request (vmsctl live-image start) to the"
	echo "clone's first KVM_RUN, as the clone's process reports it; it includes process"
	echo "start, the clone of the image, KVM VM creation and the state restore."
	echo
	echo "| measure | runs | ms |"
	echo "|---|---:|---:|"
	echo "| parent paused by live-image create | $runs | $(printf '%s\n' "${pauses[@]}" | median_spread) |"
	echo "| clone start, one clone | $runs | $(printf '%s\n' "${singles[@]}" | median_spread) |"
	echo "| clone start, 8 started at once (each) | 8 | $(printf '%s\n' "${batch[@]}" | median_spread) |"
	echo "| 8 clones at once, until all started (wall) | 1 | $wall |"
	echo "| clone start, one clone, with a disk and a network | $runs | $(printf '%s\n' "${dsingles[@]}" | median_spread) |"
	echo "| bare-VM floor: vms-bench's empty VM, in-process | $runs | $floor |"
	echo "| with a disk and a network: clone start until its identity is given (live-image start's wall) | $runs | $(printf '%s\n' "${dwall[@]}" | median_spread) |"
	echo "| with a disk and a network: vmsctl reset of that clone after 8 MiB of work, VM paused | $runs | $(printf '%s\n' "${rpaused[@]}" | median_spread) |"
	echo "| with a disk and a network: vmsctl reset, until its identity is given again | $runs | $(printf '%s\n' "${rtotal[@]}" | median_spread) |"
	echo
	single_med=$(printf '%s\n' "${singles[@]}" | median_spread %.3f | cut -d' ' -f1)
	dsingle_med=$(printf '%s\n' "${dsingles[@]}" | median_spread %.3f | cut -d' ' -f1)
	awk -v c="$single_med" -v d="$dsingle_med" -v f="$floor" 'BEGIN { if (f > 0) printf "One clone'"'"'s start is %.1fx the floor, %.1fx with a disk and a network (medians, same boot).\n", c / f, d / f }'
	echo
	echo "A reset drops $(printf '%s\n' "${rpages[@]}" | median_spread %.0f | cut -d' ' -f1) private pages (median) and puts the VM's state and disk back; its"
	echo "identity (vms-identity through the agent) takes most of both the reset and the start's wall time."
	echo
	echo "Where one clone's start goes (vmsctl's start phases; ms, median and range over the $runs single starts):"
	echo
	echo "| phase | median | range | with a disk and a network: median | range |"
	echo "|---|---:|---:|---:|---:|"
	# (No process substitution: the test VM has no /dev/fd.)
	echo "$phase_table" | sed 's/|$//' >"$out/.phases"
	echo "$dphase_table" | cut -d'|' -f3- >"$out/.dphases"
	paste -d'|' "$out/.phases" "$out/.dphases"
	rm -f "$out/.phases" "$out/.dphases"
	echo
	echo "process: the request to the VM process's own code (the fork of \`vmsctl run --detach\`);"
	echo "state: the machine state read and parsed; net: the network; memory: the clone made and mapped;"
	echo "vm: KVM's VM, vCPUs and the devices, the sum of vm-kvm (/dev/kvm, the VM, memslot, irqchip, PIT),"
	echo "vm-devices (serial ports, virtio devices, their threads, ioeventfds, irqfds; a clone's disk overlay until 2026-12-04, now made at its first write) and"
	echo "vm-vcpus (KVM_CREATE_VCPU); attach: VMS_CLONE_ATTACH; restore: the saved state into KVM;"
	echo "connect: the devices' irqfds, ioeventfds and I/O threads; vcpus: the vCPU threads' start to the first KVM_RUN."
	echo
	echo "Memory: the live images hold $image_pages pages the parent wrote ($((image_pages * 4 / 1024)) MiB);"
	echo "the 8 clones own $private private pages ($((private * 4 / 1024)) MiB) between them, i.e."
	awk -v p="$private" -v i="$image_pages" 'BEGIN { printf "%.2fx the parent'"'"'s memory for 8 clones.\n", p / i }'
} >"$out/live.md"
cat "$out/live.md"
cleanup
for r in $(seq "$runs" -1 1); do "$V" live-image delete "img$r" >/dev/null; done
for r in $(seq "$runs" -1 1); do "$V" live-image delete "dimg$r" >/dev/null; done
ip link del vmsbench0 2>/dev/null
rm -f /tmp/vms-bench-live-disk.raw
