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
pauses=() singles=() batch=()
for r in $(seq 1 "$runs"); do
	out_c=$("$V" live-image create parent "img$r")
	pauses+=("$(sed -n 's/.*VM paused \([0-9.]*\) ms.*/\1/p' <<<"$out_c")")
	s=$("$V" live-image start "img$r" --count 1 --name-prefix "one$r")
	singles+=("$(sed -n 's/.*first instruction \([0-9.]*\) ms.*/\1/p' <<<"$s")")
	"$V" stop "one$r-1" >/dev/null
done
# 8 at once from the last image: each clone's own start time, and the
# whole batch's wall time.
s=$("$V" live-image start "img$runs" --count 8 --name-prefix many)
while read -r t; do batch+=("$t"); done <<<"$(sed -n 's/.*first instruction \([0-9.]*\) ms.*/\1/p' <<<"$s")"
wall=$(sed -n 's/.*clones of .* in \([0-9]*\) ms/\1/p' <<<"$s")
image_pages=$(stats | python3 -c "import json,sys; print(sum(i['cached_pages'] for i in json.load(sys.stdin)['images'] if i['name'].startswith('img')))")
private=$(stats | python3 -c "import json,sys; print(sum(v['clone']['private_pages'] for v in json.load(sys.stdin)['vms'] if v['name'].startswith('many')))")

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
	echo
	echo "Memory: the live images hold $image_pages pages the parent wrote ($((image_pages * 4 / 1024)) MiB);"
	echo "the 8 clones own $private private pages ($((private * 4 / 1024)) MiB) between them, i.e."
	awk -v p="$private" -v i="$image_pages" 'BEGIN { printf "%.2fx the parent'"'"'s memory for 8 clones.\n", p / i }'
} >"$out/live.md"
cat "$out/live.md"
cleanup
for r in $(seq "$runs" -1 1); do "$V" live-image delete "img$r" >/dev/null; done
