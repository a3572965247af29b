#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Working-set prefetch (issue 18), measured in the test VM (scripts/bench
# --prefetch runs it): a cold clone's start to ready (the guest agent
# answered and the clone has its identity) and to its first request done,
# for clones of a live image loaded from a file on the test VM's ext4 disk
# whose page cache was dropped before each start:
#   none     a vms clone without prefetch (pages stream on demand)
#   map      a vms clone that prefetches the recorded working set: readahead
#            of the set, then KVM_PRE_FAULT_MEMORY before the vCPUs run
#   cache    the same readahead, no pre-fault
#   private  MAP_PRIVATE of the image file (vmsctl run --baseline private):
#            what a VMM without vms does with a memory file
#   warm     a vms clone without prefetch whose image file is in the page
#            cache (read just before): the floor a prefetch can reach
#   uffd     a userfaultfd page server on anonymous memory that copies the
#            same working set in first, then serves the other pages on
#            demand from the file (vmsctl run --baseline uffd; REAP)
# The arms take turns within each run (rotating the order); every clone's
# request must print the same bytes (a checksum of the guest's data).
#
#   bench/prefetch.sh VMSCTL KERNEL INITRD OUT_DIR RUNS
set -eu
V=$1 kernel=$2 initrd=$3 out=$4 runs=$5
export VMS_RUN_DIR=/tmp/vms-bench-prefetch
[ -n "${VMS_DISK:-}" ] && mountpoint -q "$VMS_DISK" || { echo "no disk in the test VM (scripts/vm --disk)" >&2; exit 1; }
mkdir -p "$out"
cleanup() {
	for v in $("$V" list --names 2>/dev/null); do "$V" stop "$v" >/dev/null 2>&1; done
	for i in $("$V" live-image list --json 2>/dev/null | python3 -c "import json,sys; [print(i['name']) for i in json.load(sys.stdin)]"); do
		"$V" live-image delete "$i" >/dev/null 2>&1
	done
}
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# The guest's data: 32 MiB in its tmpfs, scattered over guest memory, read
# by each request (a function's code and data, say).
DATA_MB=32
WORK='md5sum /tmp/data | cut -c1-32; cat /tmp/who'

"$V" run --name parent --kernel "$kernel" --initrd "$initrd" --mem 256M --cpus 1 --detach >/dev/null
"$V" exec parent -- "echo parent >/tmp/who; dd if=/dev/urandom of=/tmp/data bs=1M count=$DATA_MB 2>/dev/null"
want=$("$V" exec parent -- "$WORK")
"$V" live-image create parent img >/dev/null
"$V" live-image save img "$VMS_DISK/img.vms" >/dev/null 2>&1
"$V" stop parent >/dev/null
"$V" live-image delete img >/dev/null

# Record: the first clone of the cold file, its identity and one request.
cold
"$V" live-image load "$VMS_DISK/img.vms" --name rec >/dev/null
"$V" live-image start rec --count 1 --name-prefix rec --no-prefetch >/dev/null
"$V" exec rec-1 -- "$WORK" >/dev/null
rec_out=$("$V" live-image record rec-1)
set_pages=$(sed -n 's/.*: \([0-9]*\) pages .*/\1/p' <<<"$rec_out")
"$V" stop rec-1 >/dev/null
"$V" live-image save rec "$VMS_DISK/img-ws.vms" >/dev/null 2>&1
"$V" live-image delete rec >/dev/null
rm -f "$VMS_DISK/img.vms"

arms=(none map cache private uffd warm)
declare -A ready work faults
n=0
for r in $(seq 1 "$runs"); do
	for k in 0 1 2 3 4 5; do
		arm=${arms[$(((k + r) % 6))]}
		n=$((n + 1))
		name="a$n"
		cold
		[ $arm = warm ] && cat "$VMS_DISK/img-ws.vms" >/dev/null
		"$V" live-image load "$VMS_DISK/img-ws.vms" --name "$name" >/dev/null
		stamp t0
		# Every arm the same command (vmsctl run --detach; before
		# 2026-12-06 the vms arms went through live-image start, one more
		# vmsctl process than the baselines).
		case $arm in
		none | warm) how=(--no-prefetch) ;;
		map | cache) how=(--prefetch=$arm) ;;
		private | uffd) how=(--baseline $arm) ;;
		esac
		"$V" run --detach --image "$name" --name "$name-1" --id 1 "${how[@]}" >/dev/null
		stamp t1
		got=$("$V" exec "$name-1" -- "$WORK")
		stamp t2
		if [ "$got" != "$want" ]; then
			echo "run $r, $arm: the request printed \"$got\", not \"$want\"" >&2
			exit 1
		fi
		f=$("$V" list --json | python3 -c "
import json, sys
v = next(v for v in json.load(sys.stdin) if v['name'] == sys.argv[1])
c = v.get('clone') or {}
p = v.get('prefetch') or {}
print(c.get('faults', '-'), c.get('streamed', '-'), p.get('misses', '-'), round(p['map_ms']) if 'map_ms' in p else '-')" "$name-1")
		ready[$arm]+="$((t1 - t0)) "
		work[$arm]+="$((t2 - t0)) "
		faults[$arm]+="$f;"
		echo "run $r $arm: ready $((t1 - t0)) ms, request done $((t2 - t0)) ms; faults, streamed, misses, map ms: $f" >&2
		"$V" stop "$name-1" >/dev/null
		"$V" live-image delete "$name" >/dev/null
	done
done

med() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%d (%d-%d)", m, a[1], a[NR] }'; }
medv() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
{
	echo "## Working-set prefetch: cold clone start"
	echo
	echo "Our small guest, 256 MiB, with ${DATA_MB} MiB of data in its tmpfs that each request reads;"
	echo "a live image of it saved to the test VM's ext4 disk (virtio-blk, cache=none) and loaded"
	echo "again before each start, after \`echo 3 > /proc/sys/vm/drop_caches\`. Working set recorded"
	echo "from the first clone (its identity and one request): $set_pages pages. $runs runs, the arms"
	echo "in turn (rotating). ms, median (min-max):"
	echo
	echo "| arm | start to ready | start to first request done |"
	echo "| --- | ---: | ---: |"
	for a in "${arms[@]}"; do
		echo "| $a | $(med <<<"${ready[$a]}") | $(med <<<"${work[$a]}") |"
	done
	echo
	rn=$(medv <<<"${ready[none]}") rm=$(medv <<<"${ready[map]}") rc=$(medv <<<"${ready[cache]}")
	rp=$(medv <<<"${ready[private]}") ru=$(medv <<<"${ready[uffd]}")
	wn=$(medv <<<"${work[none]}") wm=$(medv <<<"${work[map]}") wc=$(medv <<<"${work[cache]}")
	wp=$(medv <<<"${work[private]}") wu=$(medv <<<"${work[uffd]}")
	rw=$(medv <<<"${ready[warm]}") ww=$(medv <<<"${work[warm]}")
	awk -v rn="$rn" -v rm="$rm" -v rc="$rc" -v rp="$rp" -v ru="$ru" -v wn="$wn" -v wm="$wm" -v wc="$wc" -v wp="$wp" -v wu="$wu" -v rw="$rw" -v ww="$ww" 'BEGIN {
		printf "Ready: none / map **%.2fx**, none / cache %.2fx, private / map %.2fx, uffd / map %.2fx.\n", rn / rm, rn / rc, rp / rm, ru / rm
		printf "First request done: none / map **%.2fx**, none / cache %.2fx, private / map %.2fx, uffd / map %.2fx.\n", wn / wm, wn / wc, wp / wm, wu / wm
		if (rn > rw && wn > ww)
			printf "Of what a cold start costs over a warm one (none - warm: %d ms to ready, %d ms to the request done), the prefetch (map) leaves %d%% and %d%%.\n", rn - rw, wn - ww, 100 * (rm - rw) / (rn - rw), 100 * (wm - ww) / (wn - ww)
	}'
	echo
	echo "Per start, the clone's stage-2 faults (the pre-fault's included), pages streamed from the file, prefetch misses, and the pre-fault's ms:"
	echo
	for a in "${arms[@]}"; do echo "- $a: ${faults[$a]}"; done
} >"$out/prefetch.md"
cat "$out/prefetch.md"
