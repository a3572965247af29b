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
#   pages came from: stage-2 faults served by the clone inside KVM (vms.ko
#   claims QEMU's ordinary memslots on the clone's mapping, patch 0010),
#   private pages the guest wrote, and fewer faults of QEMU's mapping than
#   of stage 2 (QEMU writes the kernel and initrd there itself);
# - `vmsctl qemu live-image create` (QMP stop, the device state through
#   QEMU's migration with x-ignore-shared, VMS_IMAGE_SNAPSHOT, cont) makes
#   a live image of the running guest, which runs on;
# - `vmsctl qemu start --count 4 --agent --mac` starts four QEMUs with
#   -incoming: each resumes with the memory as it was at the image (a file
#   written after it is not there), gets its own name, a reseeded CRNG and
#   its NIC's own MAC (which QEMU learns too) through the guest agent on a
#   unix socket, sees its own writes only, and owns few pages of its own;
# - the live image saved to a file and loaded from it (the shared-storage
#   case: the file's pages dropped from the page cache first): a QEMU
#   clone of the loaded image resumes with the image's memory, its pages
#   streamed from the file;
# - a reboot (QMP system_reset): the guest boots again on the clone, QEMU
#   having loaded the kernel again through its mapping (guest and VMM
#   views agree across the memslot changes of a reset);
# - bad input: a size larger than the clone, a MAP_PRIVATE mapping
#   (share=off), a clone name that names nothing (QEMU would create it,
#   but vmsctl made /dev/vms-clone a read-only mount): QEMU fails with a
#   clear error, and nothing splats;
# - after QEMU exits the name keeps the clone and its pages, not QEMU's
#   VM (the clone leaves it once its mapping is gone); `vmsctl clone
#   delete` removes the name and the clone, and the image deletes.
#
# TAP output (kselftest style); exit 0 pass, 1 fail, 4 skip.
set -u

vmsctl=$1 kernel=$2 initrd=$3
export VMS_RUN_DIR=/tmp/vms-qemu-$$
. "$(dirname "$0")/tap.sh"
qemu=$(command -v qemu-system-x86_64)
img=qemu-base-$$ name=q1-$$ qimg=qimg-$$
clones="$qimg-1 $qimg-2 $qimg-3 $qimg-4 $qimg-l-1"
cleanup() {
	[ -n "${qp:-}" ] && kill "$qp" 2>/dev/null
	stop_clones
	"$vmsctl" live-image delete "$qimg" >/dev/null 2>&1
	"$vmsctl" live-image delete "$qimg-l" >/dev/null 2>&1
	"$vmsctl" clone delete "$name" >/dev/null 2>&1
	"$vmsctl" image delete "$img" >/dev/null 2>&1
	rm -rf "$VMS_RUN_DIR"
}
# The QEMU clones are not our children: kill them, wait until they are
# gone (their memory with them), and remove their names.
stop_clones() {
	local p i
	for p in ${clone_pids:-}; do kill "$p" 2>/dev/null; done
	for p in ${clone_pids:-}; do
		for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
	done
	clone_pids=
	for c in $clones; do "$vmsctl" clone delete "$c" >/dev/null 2>&1; done
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

d=$VMS_RUN_DIR
# The arguments of the guest and of its clones ({clone}, {name}: vmsctl
# qemu start's): COM1 the console, in a file; COM2 the guest agent, on a
# unix socket; a virtio-net NIC on QEMU's user network, its MAC the
# parent's.
qargs() {
	echo -accel kvm -cpu host -m 256M -smp 1 -display none -monitor none -no-reboot \
		-object "memory-backend-file,id=ram,mem-path=$1,share=${3:-on},size=${4:-256M}" \
		-machine pc,memory-backend=ram -kernel "$kernel" -initrd "$initrd" \
		-netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:aa \
		-serial "file:$d/$2.out" -serial "unix:$d/$2.agent,server=on,wait=off"
}
# QMP command $2 (arguments $3, JSON) on QEMU's socket $1: prints the
# return value as JSON, or fails.
qmp() {
	python3 - "$1" "$2" "${3:-{\}}" <<-'PY'
	import json, socket, sys
	s = socket.socket(socket.AF_UNIX)
	s.settimeout(20)
	s.connect(sys.argv[1])
	f = s.makefile("rw")
	def call(cmd, args={}):
	    f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n"); f.flush()
	    while True:
	        r = json.loads(f.readline())
	        if "error" in r:
	            sys.exit(f"{cmd}: {r['error']}")
	        if "return" in r:
	            return r["return"]
	json.loads(f.readline())
	call("qmp_capabilities")
	print(json.dumps(call(sys.argv[2], json.loads(sys.argv[3]))))
	PY
}
# The MAC QEMU's NIC has now (QMP query-rx-filter on QEMU's socket $1).
qemu_mac() {
	qmp "$1" query-rx-filter | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["main-mac"])'
}
# QEMU with args $@ must fail within 60 s, saying something that matches
# $pattern; $what names the check.
qemu_refuses() {
	local out rc
	out=$(timeout 60 "$qemu" "$@" -append console=ttyS0 </dev/null 2>&1)
	rc=$?
	msg "QEMU (exit $rc): $(tail -n 2 <<<"$out")"
	check "$what: QEMU fails with a clear error" test $rc -ne 0 -a $rc -ne 124 -a -n "$(grep -iE "$pattern" <<<"$out")"
}
# (The kernel command line has a space: given apart.)
"$qemu" $(qargs "/dev/vms-clone/$name" qemu) -append "console=ttyS0 panic=-1" \
	-qmp "unix:$d/qemu.qmp,server=on,wait=off" </dev/null >"$d/qemu.err" 2>&1 &
qp=$!
t=0
while [ $t -lt 300 ] && kill -0 $qp 2>/dev/null && ! grep -q "vms-guest: ready" "$d/qemu.out" 2>/dev/null; do
	sleep 1
	t=$((t + 1))
done
if grep -q "vms-guest: ready" "$d/qemu.out" 2>/dev/null; then
	ok "QEMU's guest on the named clone is ready ($t s)"
else
	tail -n 15 "$d/qemu.out" "$d/qemu.err" 2>/dev/null | sed 's/^/#   /'
	fail "QEMU's guest on the named clone is ready (waited $t s)"
fi
json=$("$vmsctl" clone list --json)
msg "clone list: $json"
private=$(field private_pages <<<"$json") mfaults=$(field mmap_faults <<<"$json") s2=$(field faults <<<"$json")
check "the guest's pages came from the clone ($private private pages)" test "$private" -gt 1000
check "KVM asked the clone at stage-2 fault time ($s2 stage-2 faults, $mfaults of QEMU's mapping)" \
	test "$s2" -gt 1000 -a "$s2" -gt "$mfaults"

# A live image of the running guest, and two QEMU clones of it.
qx() { timeout 90 "$vmsctl" qemu exec --agent "$d/$1.agent" --timeout 60 -- "$2"; }
qx qemu 'echo image-time >/run/marker' >/dev/null
if out=$("$vmsctl" qemu live-image create --qmp "$d/qemu.qmp" "$name" "$qimg" 2>&1); then
	msg "$out"
	ok "vmsctl qemu live-image create of the running guest"
else
	msg "$out"
	fail "vmsctl qemu live-image create of the running guest"
fi
check "the guest runs on after it" test "$(qx qemu 'echo after >/run/marker; cat /run/marker')" = after
check "QEMU's NIC has the MAC it was given" test "$(qemu_mac "$d/qemu.qmp")" = 52:54:00:00:00:aa
if out=$("$vmsctl" qemu start "$qimg" --count 4 --agent "$d/{name}.agent" --mac 52:54:00:00:01:01 \
	-- $(qargs '{clone}' '{name}') -append "console=ttyS0 panic=-1" 2>&1); then
	sed 's/^/# /' <<<"$out"
	ok "vmsctl qemu start --count 4: four QEMUs resume the image"
else
	sed 's/^/# /' <<<"$out"
	fail "vmsctl qemu start --count 4: four QEMUs resume the image"
	# What the guests said: a clone whose agent did not answer may have
	# hung in its kernel (a soft lockup) or lost its command.
	for f in "$d"/"$qimg"-*.out "$VMS_RUN_DIR"/qemu/"$qimg"-*.log; do
		[ -e "$f" ] || continue
		echo "# --- last lines of $f"
		tail -n 40 "$f" | sed 's/^/#   /'
	done
fi
clone_pids=$(sed -n 's/.*QEMU pid \([0-9]*\).*/\1/p' <<<"$out")
uuids=
for i in 1 2 3 4; do
	c=$qimg-$i
	r=$(qx $c 'hostname; cat /run/marker; cat /proc/sys/kernel/random/uuid; cat /sys/class/net/eth0/address')
	msg "$c: $(echo $r)"
	check "$c resumed with the memory of the image, and its own name" \
		test "$(sed -n 1p <<<"$r")" = "$c" -a "$(sed -n 2p <<<"$r")" = image-time
	uuids="$uuids $(sed -n 3p <<<"$r")"
	qmac=$(qemu_mac "$VMS_RUN_DIR/qemu/$c.qmp" 2>&1)
	check "$c's NIC has its own MAC, in the guest and in QEMU (guest $(sed -n 4p <<<"$r"), QEMU $qmac)" \
		test "$(sed -n 4p <<<"$r")" = "52:54:00:00:01:0$i" -a "$qmac" = "52:54:00:00:01:0$i"
done
check "the four clones' CRNGs differ (reseeded through the agent)" \
	test "$(tr ' ' '\n' <<<"$uuids" | grep -c .)" = 4 -a "$(tr ' ' '\n' <<<"$uuids" | grep . | sort -u | wc -l)" = 4
qx "$qimg-1" 'echo only-1 >/run/marker' >/dev/null
check "a clone's write is its own" test "$(qx "$qimg-2" 'cat /run/marker')" = image-time \
	-a "$(qx "$qimg-4" 'cat /run/marker')" = image-time -a "$(qx "$qimg-1" 'cat /run/marker')" = only-1
json=$("$vmsctl" clone list --json)
msg "clone list: $json"
c1=$(python3 -c "import json,sys; r=[c for c in json.load(sys.stdin) if c['name']=='$qimg-1']; print(r[0]['private_pages'] if r else -1)" <<<"$json")
check "a clone owns few pages of its own ($c1 private, of 65536)" test "$c1" -ge 0 -a "$c1" -lt 16384
stop_clones

# The shared-storage case: the live image saved to a file, loaded from it
# with its pages out of the page cache, and a QEMU clone of it.
if out=$("$vmsctl" live-image save "$qimg" "$d/qimg.vms" 2>&1) && msg "$out" &&
	out=$("$vmsctl" live-image load "$d/qimg.vms" --name "$qimg-l" 2>&1); then
	msg "$out"
	ok "vmsctl live-image save and load carry a QEMU live image"
else
	msg "$out"
	fail "vmsctl live-image save and load carry a QEMU live image"
fi
sync
echo 3 >/proc/sys/vm/drop_caches
if out=$("$vmsctl" qemu start "$qimg-l" --agent "$d/{name}.agent" -- $(qargs '{clone}' '{name}') \
	-append "console=ttyS0 panic=-1" 2>&1); then
	msg "$out"
	clone_pids=$(sed -n 's/.*QEMU pid \([0-9]*\).*/\1/p' <<<"$out")
	r=$(qx "$qimg-l-1" 'hostname; cat /run/marker')
	check "a QEMU clone of the loaded image resumes with the image's memory ($(echo $r))" \
		test "$(sed -n 1p <<<"$r")" = "$qimg-l-1" -a "$(sed -n 2p <<<"$r")" = image-time
else
	msg "$out"
	fail "a QEMU clone of the loaded image resumes with the image's memory"
fi
info=$("$vmsctl" image info "$qimg-l" --json 2>&1)
msg "image $qimg-l: $info"
streamed=$(python3 -c "import json,sys; print(json.load(sys.stdin)['streamed'])" <<<"$info" 2>/dev/null)
check "its pages streamed from the file (${streamed:-?} pages)" test "${streamed:-0}" -gt 100
stop_clones
check "the loaded image deletes" "$vmsctl" live-image delete "$qimg-l"

# Bad input: each a clear error from QEMU, and no splat (the suite checks).
# A clone name that names nothing: QEMU would create a file of that name
# and run on it, ordinary memory without vms, but vmsctl made the
# directory a read-only mount when it named a clone there, so the create
# fails and QEMU stops with a clear error. (vmsctl clone list would warn
# of such a file, made where the mount could not be.)
stray=/dev/vms-clone/nonexistent-$$
what="a clone path that does not exist" pattern="backing store|No such file|Read-only" qemu_refuses $(qargs "$stray" bad)
check "... and left no file there" test ! -e "$stray"
check "the clones' directory is read-only to creates (touch fails)" sh -c "! touch $stray 2>/dev/null"
rm -f "$stray"
what="a size larger than the clone" pattern="size|map" qemu_refuses $(qargs "/dev/vms-clone/$name" bad on 512M)
what="a MAP_PRIVATE mapping of the clone (share=off)" pattern="map|Invalid argument" \
	qemu_refuses $(qargs "/dev/vms-clone/$name" bad off)

# A reboot of the guest (QMP system_reset, rebooting instead of the
# -no-reboot exit): QEMU resets the machine, deletes and re-creates the
# memslots of the ROM and PAM ranges below 1 MiB, and its firmware loads
# the kernel and initramfs into the clone through QEMU's mapping, which
# the guest then runs through stage 2: it only boots again if the two
# views agree.
readies=$(grep -c "vms-guest: ready" "$d/qemu.out")
if qmp "$d/qemu.qmp" set-action '{"reboot": "reset"}' >/dev/null && qmp "$d/qemu.qmp" system_reset >/dev/null; then
	t=0
	while [ $t -lt 300 ] && [ "$(grep -c "vms-guest: ready" "$d/qemu.out")" -le "$readies" ]; do
		sleep 1
		t=$((t + 1))
	done
	check "after a reset (system_reset) the guest boots again on the clone ($t s)" \
		test "$(grep -c "vms-guest: ready" "$d/qemu.out")" -gt "$readies"
	check "and its agent answers" test "$(qx qemu 'echo rebooted')" = rebooted
else
	fail "QMP system_reset of the guest on the clone"
fi

# (the live image took the pages the guest had written: count again)
private=$("$vmsctl" clone list --json | field private_pages)
first_qemu=$qp
kill $qp
# Bounded: a QEMU that does not exit is a failure to look at (where it
# waits), not a hung suite.
t=0
while [ $t -lt 300 ] && kill -0 $qp 2>/dev/null; do
	sleep 0.1
	t=$((t + 1))
done
if kill -0 $qp 2>/dev/null; then
	fail "QEMU exits on SIGTERM within 30 s (state $(awk '{ print $3 }' /proc/$qp/stat 2>/dev/null), wchan $(cat /proc/$qp/wchan 2>/dev/null))"
	for task in /proc/$qp/task/*; do
		echo "# $task: $(cat "$task/comm" 2>/dev/null) state $(awk '{ print $3 }' "$task/stat" 2>/dev/null) wchan $(cat "$task/wchan" 2>/dev/null)"
		sed 's/^/#   /' "$task/stack" 2>/dev/null
	done
	tail -n 20 "$d/qemu.out" "$d/qemu.err" 2>/dev/null | sed 's/^/#   /'
	kill -9 $qp 2>/dev/null
fi
wait $qp 2>/dev/null
qp=
json=$("$vmsctl" clone list --json)
# (at least as many: the guest ran on between the two reads)
after=$(field private_pages <<<"$json")
check "the name keeps the clone and its pages after QEMU exits ($after private pages)" test "$after" -ge "$private"
# ... but not QEMU's VM: the clone left it when its mapping went (KVM's
# debugfs directory PID-FD goes when the VM is destroyed).
if [ -d /sys/kernel/debug/kvm ]; then
	t=0
	while [ $t -lt 50 ] && ls -d /sys/kernel/debug/kvm/"$first_qemu"-* >/dev/null 2>&1; do
		sleep 0.2
		t=$((t + 1))
	done
	check "QEMU's VM is destroyed although the name keeps the clone" \
		test -z "$(ls -d /sys/kernel/debug/kvm/"$first_qemu"-* 2>/dev/null)"
fi
check "vmsctl clone delete removes the name" "$vmsctl" clone delete "$name"
check "the device is gone" test ! -e "/dev/vms-clone/$name"
check "vmsctl live-image delete removes the QEMU live image" "$vmsctl" live-image delete "$qimg"
check "the image deletes: the clones went with their names" "$vmsctl" image delete "$img"
echo "1..$n"
[ $failed = 0 ]
