#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# QEMU clones (issue 17), measured in the test VM (scripts/bench --qemu
# runs it): 8 QEMU clones started from a vms live image (vmsctl qemu
# start) against 8 started the way Kata Containers' VM templating does
# (bench/kata.py: a template VM's RAM in a tmpfs file, each clone maps it
# MAP_PRIVATE and loads the device state with x-ignore-shared), side by
# side in each run: start time and the memory the 8 cost.
#
#   bench/qemu.sh VMSCTL KERNEL INITRD OUT_DIR RUNS
set -eu
V=$1 kernel=$2 initrd=$3 out=$4 runs=$5
export VMS_RUN_DIR=/tmp/vms-bench-qemu
d=$VMS_RUN_DIR
kata=$(dirname "$0")/kata.py
tmpl=/dev/shm/kata-template
qemu=$(command -v qemu-system-x86_64)
mkdir -p "$out" "$d"
pids=
stop_all() {
	local p i
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	for p in $pids; do
		for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
	done
	pids=
	for i in $(seq 1 8); do "$V" clone delete "qimg-$i" >/dev/null 2>&1 || true; done
}
cleanup() {
	local rc=$?
	if [ $rc != 0 ]; then
		for f in "$d"/*.log "$d"/qemu/*.log; do
			[ -s "$f" ] && { echo "== $f"; tail -n 5 "$f"; }
		done
	fi
	stop_all
	"$V" live-image delete qimg >/dev/null 2>&1 || true
	"$V" clone delete qparent >/dev/null 2>&1 || true
	"$V" image delete qbase >/dev/null 2>&1 || true
	rm -f "$tmpl"
}
trap cleanup EXIT
# QEMU's arguments: $1 the RAM's path, $2 share=on|off, $3 the name (COM1
# to a file, COM2 the guest agent's socket).
qargs() {
	echo -accel kvm -cpu host -m 256M -smp 1 -display none -monitor none -no-reboot \
		-object "memory-backend-file,id=ram,mem-path=$1,share=$2,size=256M" \
		-machine pc,memory-backend=ram -kernel "$kernel" -initrd "$initrd" \
		-serial "file:$d/$3.out" -serial "unix:$d/$3.agent,server=on,wait=off"
}
boot() { # $1 path, $2 name: a guest booted on it, until ready
	"$qemu" $(qargs "$1" on "$2") -append "console=ttyS0 panic=-1" \
		-qmp "unix:$d/$2.qmp,server=on,wait=off" </dev/null >"$d/$2.err" 2>&1 &
	boot_pid=$!
	local t=0
	until grep -q "vms-guest: ready" "$d/$2.out" 2>/dev/null; do
		[ $t -lt 600 ] || { echo "$2 did not become ready" >&2; exit 1; }
		sleep 0.5
		t=$((t + 1))
	done
	# Some work a server would have done before its image is taken: 64
	# MiB of data that clones read and write (the fault rates below).
	"$V" qemu exec --agent "$d/$2.agent" --timeout 120 -- 'dd if=/dev/urandom of=/run/warm bs=1M count=64 2>/dev/null; echo ready >/run/marker' >/dev/null
}
avail() { awk '/MemAvailable/ { print $2 }' /proc/meminfo; }
# The CPU time the running QEMUs ($pids) take over 3 s, in % of one CPU:
# what idle clones cost the clones started after them (one CPU here).
busy() {
	local p a=0 b=0
	for p in $pids; do a=$((a + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
	sleep 3
	for p in $pids; do b=$((b + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
	echo $(((b - a) * 100 / 3 / $(getconf CLK_TCK)))
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# The 8 clones of an arm do the same work (8 MiB written into their
# tmpfs), each through its agent, which also shows each one runs.
work() { # $1 prefix
	local i
	for i in $(seq 1 8); do
		timeout 120 "$V" qemu exec --agent "$d/$1-$i.agent" --timeout 100 -- \
			'test "$(cat /run/marker)" = ready && dd if=/dev/urandom of=/run/work bs=1M count=8 2>/dev/null' >/dev/null ||
			{ echo "clone $1-$i did not answer, or lost its memory" >&2; exit 1; }
	done
}

# The vms side: a guest on a named clone of an empty image, a live image
# of it, then the guest is stopped (as Kata stops its template VM).
truncate -s 256M "$d/base.mem"
"$V" image create qbase --file "$d/base.mem" >/dev/null
"$V" clone create qbase --name qparent >/dev/null
boot /dev/vms-clone/qparent vparent
pause=$("$V" qemu live-image create --qmp "$d/vparent.qmp" qparent qimg | sed -n 's/.*guest paused \([0-9.]*\) ms.*/\1/p')
kill $boot_pid; wait $boot_pid 2>/dev/null || true
"$V" clone delete qparent >/dev/null
image_pages=$("$V" image info qimg --json | python3 -c "import json,sys; print(json.load(sys.stdin)['cached_pages'])")
# The Kata side: the template VM's RAM in a tmpfs file.
truncate -s 256M "$tmpl"
boot "$tmpl" kparent
python3 "$kata" save "$d/kparent.qmp" "$d/kata.state"
wait $boot_pid 2>/dev/null || true
# (before the full state below, whose reading of the whole template
# through a MAP_PRIVATE mapping fills tmpfs's holes)
tmpl_kib=$(du -k "$tmpl" | cut -f1)
# The same guest with its RAM in the stream, for the anonymous-RAM row
# below: saved from a Kata clone of the template (QEMU refuses a second
# migration from the template, whose own state must match its file).
s=$(PREFIX=tf python3 "$kata" start 1 "$d/kata.state" "$d" -- "$qemu" $(qargs "$tmpl" off '{name}') -append "console=ttyS0 panic=-1")
python3 "$kata" save-full "$d/tf-1.qmp" "$d/full.state"
sync; echo 3 >/proc/sys/vm/drop_caches

vstart=() kstart=() vwall=() kwall=() vmem=() kmem=() vpriv=() kanon=() vbusy=() kbusy=() vlist=() klist=()
arm_vms() {
	# vms: vmsctl qemu start, 8 clones one after another.
	a0=$(avail)
	t0=$(date +%s%N)
	s=$("$V" qemu start qimg --count 8 -- $(qargs '{clone}' on '{name}') -append "console=ttyS0 panic=-1")
	vwall+=("$((($(date +%s%N) - t0) / 1000000))")
	one=$(sed -n 's/.*resumed from live image qimg in \([0-9.]*\) ms.*/\1/p' <<<"$s")
	vstart+=($one)
	vlist+=("$(echo $one)")
	pids=$(sed -n 's/.*QEMU pid \([0-9]*\).*/\1/p' <<<"$s")
	vbusy+=("$(busy)")
	work qimg
	sleep 2
	vmem+=("$(((a0 - $(avail)) / 1024))")
	vpriv+=("$("$V" clone list --json | python3 -c "import json,sys; print(sum(c['private_pages'] for c in json.load(sys.stdin) if c['name'].startswith('qimg-')) * 4 // 1024)")")
	stop_all
	sleep 2
}
arm_kata() {
	# Kata: the same 8 from the template file.
	a0=$(avail)
	t0=$(date +%s%N)
	s=$(python3 "$kata" start 8 "$d/kata.state" "$d" -- "$qemu" $(qargs "$tmpl" off '{name}') -append "console=ttyS0 panic=-1")
	kwall+=("$((($(date +%s%N) - t0) / 1000000))")
	one=$(sed -n 's/.*resumed in \([0-9.]*\) ms.*/\1/p' <<<"$s")
	kstart+=($one)
	klist+=("$(echo $one)")
	pids=$(sed -n 's/.*QEMU pid \([0-9]*\).*/\1/p' <<<"$s")
	kbusy+=("$(busy)")
	work kata
	sleep 2
	kmem+=("$(((a0 - $(avail)) / 1024))")
	# The pages each copied on write: the anonymous part of its mapping
	# of the template file.
	kanon+=("$(for p in $pids; do awk -v f="$tmpl" '$0 ~ f { m = 1; next } /^[0-9a-f]+-/ { m = 0 } m && /^Anonymous:/ { s += $2 } END { print s + 0 }' "/proc/$p/smaps"; done | awk '{ s += $1 } END { print int(s / 1024) }')")
	stop_all
	sleep 2
}
# The arms alternate which goes first, so that neither always follows
# the other.
for r in $(seq 1 "$runs"); do
	if [ $((r % 2)) = 1 ]; then arm_vms; arm_kata; else arm_kata; arm_vms; fi
done

# First-touch fault rates in QEMU guests: a fresh clone reads the 64 MiB
# its parent wrote (16,384 pages, each a first touch of its guest-physical
# page: a stage-2 read fault), or overwrites it (write faults: copies on
# write). Timed inside the guest by busybox time (10 ms resolution), one
# clone per walk:
# - vms: a clone of the live image, its memslots claimed by vms.ko;
# - vms-hva: the same with vms.ko's claim off (debug knob claim_slots=0):
#   KVM's ordinary host-address path through QEMU's mapping of the clone;
# - kata: MAP_PRIVATE of the template file;
# - anon: QEMU on anonymous RAM, loaded with the whole RAM in the stream
#   (every page present before the walk): the ceiling.
knob=/sys/kernel/debug/vms/claim_slots
walk() { # $1 agent socket, $2 read|write: pages per second
	local cmd t
	case $2 in
	read) cmd='time dd if=/run/warm of=/dev/null bs=1M' ;;
	write) cmd='time dd if=/dev/zero of=/run/warm bs=1M count=64 conv=notrunc' ;;
	esac
	t=$("$V" qemu exec --agent "$1" --timeout 120 -- "$cmd 2>&1" | sed -n 's/^real[^0-9]*\([0-9]*\)m *\([0-9.]*\)s.*/\1 \2/p')
	awk -v t="$t" 'BEGIN { split(t, a, " "); s = a[1] * 60 + a[2]; print (s > 0) ? int(16384 / s) : 0 }'
}
declare -A rate
variants="vms vms-hva kata anon"
[ -w "$knob" ] || variants="vms kata anon"
for r in $(seq 1 "$runs"); do
	for w in read write; do
		for v in $variants; do
			case $v in
			vms | vms-hva)
				[ $v = vms-hva ] && echo 0 >"$knob"
				s=$("$V" qemu start qimg --count 1 --name-prefix "f" -- $(qargs '{clone}' on '{name}') -append "console=ttyS0 panic=-1")
				echo 1 >"$knob"
				pids=$(sed -n 's/.*QEMU pid \([0-9]*\).*/\1/p' <<<"$s") sock="$d/f-1.agent"
				;;
			kata)
				s=$(PREFIX=fk python3 "$kata" start 1 "$d/kata.state" "$d" -- "$qemu" $(qargs "$tmpl" off '{name}') -append "console=ttyS0 panic=-1")
				pids=$(sed -n 's/.*QEMU pid \([0-9]*\).*/\1/p' <<<"$s") sock="$d/fk-1.agent"
				;;
			anon)
				s=$(PREFIX=fa python3 "$kata" start 1 "$d/full.state" "$d" -- "$qemu" $(qargs "$tmpl" off '{name}' | sed 's/memory-backend-file,id=ram,mem-path=[^ ]*,share=off,size=256M/memory-backend-ram,id=ram,size=256M/') -append "console=ttyS0 panic=-1")
				pids=$(sed -n 's/.*QEMU pid \([0-9]*\).*/\1/p' <<<"$s") sock="$d/fa-1.agent"
				;;
			esac
			rate[$v-$w]="${rate[$v-$w]:-} $(walk "$sock" $w)"
			stop_all
			"$V" clone delete f-1 >/dev/null 2>&1 || true
		done
	done
done

{
	echo "# QEMU clones: vms against Kata-style templating (issue 17)"
	echo
	echo "Guest: Linux 6.12 (scripts/build-guest), 256M, 1 vCPU, under Debian's QEMU ($("$qemu" --version | head -1 | sed 's/QEMU emulator version //')) with KVM;"
	echo "$runs runs, each starting 8 clones with vms and 8 with Kata's scheme (which first alternates), one after another, each"
	echo "clone then writing 8 MiB into its tmpfs through the guest agent. Start: QEMU spawned until the"
	echo "device state is loaded and the guest continues (no identity step in either). Memory: the"
	echo "host's MemAvailable before the 8 started against after their work (QEMU processes included)."
	echo
	echo "| measure | vms (vmsctl qemu start) | Kata-style (MAP_PRIVATE template) |"
	echo "|---|---:|---:|"
	echo "| one clone's start, ms (median of $((8 * runs))) | $(echo "${vstart[*]}" | median) | $(echo "${kstart[*]}" | median) |"
	echo "| 8 clones, wall ms (median of $runs) | $(echo "${vwall[*]}" | median) | $(echo "${kwall[*]}" | median) |"
	echo "| memory of the 8 after their work, MiB (median) | $(echo "${vmem[*]}" | median) | $(echo "${kmem[*]}" | median) |"
	echo "| of it, guest pages the 8 copied on write, MiB (median) | $(echo "${vpriv[*]}" | median) | $(echo "${kanon[*]}" | median) |"
	echo "| the image / template they share, MiB | $((image_pages * 4 / 1024)) (live image's pages) | $((tmpl_kib / 1024)) (tmpfs file) |"
	echo "| CPU the 8 take once started, before their work, % of the one CPU (median) | $(echo "${vbusy[*]}" | median) | $(echo "${kbusy[*]}" | median) |"
	echo
	echo "First-touch fault rates in a QEMU clone (pages/s, median of $runs; ratio to anon, QEMU on anonymous RAM"
	echo "with every page present):"
	echo
	echo "| walk | vms (claimed) | vms, hva path | Kata-style MAP_PRIVATE | anon (ceiling) | vms ÷ hva |"
	echo "|---|---:|---:|---:|---:|---:|"
	for w in read write; do
		a=$(echo "${rate[anon-$w]}" | median)
		row="| $w |"
		for v in vms vms-hva kata anon; do
			m=$(echo "${rate[$v-$w]}" | median)
			row="$row $m ($(awk -v m="$m" -v a="$a" 'BEGIN { printf "%.2fx", (a > 0) ? m / a : 0 }')) |"
		done
		row="$row $(awk -v m="$(echo "${rate[vms-$w]}" | median)" -v h="$(echo "${rate[vms-hva-$w]}" | median)" 'BEGIN { printf "%.2fx", (h > 0) ? m / h : 0 }') |"
		echo "$row"
	done
	echo
	echo "Per walk: $(for k in "${!rate[@]}"; do echo -n "$k:${rate[$k]}; "; done)"
	echo
	echo "Per run: vms wall ${vwall[*]} ms, memory ${vmem[*]} MiB, CPU ${vbusy[*]} %; Kata wall ${kwall[*]} ms, memory ${kmem[*]} MiB, CPU ${kbusy[*]} %."
	echo "Each clone's start in order, ms (the test VM has one CPU: clones already running slow the next):"
	for r in $(seq 1 "$runs"); do
		echo "- run $r: vms ${vlist[$((r - 1))]}; Kata ${klist[$((r - 1))]}"
	done
	echo "The vms live image was made of a running guest (it paused $pause ms) without a copy; Kata's"
	echo "template VM was stopped and saved. Both templates were out of the page cache before the first run"
	echo "(drop_caches), but a tmpfs file cannot leave memory: Kata's template is always warm."
} >"$out/qemu.md"
cat "$out/qemu.md"
