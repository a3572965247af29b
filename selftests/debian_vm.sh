#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# debian_vm: a stock Debian 12 guest (scripts/build-debian-guest: Debian's
# own 6.1 kernel and initrd, systemd) on vms, end to end: the issue-16
# checks with the distro guest instead of our tiny one.
#
#   debian_vm.sh VMSCTL DEBIAN_DIR
#
# - the guest boots with --acpi (its kernel finds the virtio-mmio devices
#   and the VM generation ID in the DSDT), its root a qcow2 overlay of the
#   built root filesystem, on a bridge made for the test (10.78.0.1/24),
#   and answers HTTP from the host (busybox httpd, /cgi-bin/id);
# - the test writes a file on its root and syncs; a live image of it is
#   made (memory and disk in one pause);
# - 3 clones (DEBIAN_VM_CLONES): each resumed where the parent was (the
#   file is there), answers HTTP on its own address with its own hostname,
#   has its own MAC, a wall clock within 2 s of the host's, and 16 bytes
#   of /dev/urandom unlike every other clone's and the parent's; its
#   kernel reseeded its CRNG because the generation ID changed ("crng
#   reseeded due to virtual machine fork"); the tokens of every HTTP
#   answer are distinct;
# - a file one clone writes and syncs to its disk is absent from another
#   clone and from the parent;
# - the parent still answers, as itself.
#
# Slow: the boot takes 1.5 to 5 minutes in the one-CPU test VM. TAP
# output (kselftest style); exit 0 pass, 1 fail, 4 skip.
set -u

vmsctl=$1 dir=$2
N=${DEBIAN_VM_CLONES:-3}
export VMS_RUN_DIR=/tmp/vms-debian-$$
. "$(dirname "$0")/tap.sh"
br=vmsdb$$
finish() {
	echo "1..$n"
	[ $failed = 0 ] && exit 0 || exit 1
}
vx() { timeout 200 "$vmsctl" exec "$1" --timeout 180 -- "$2"; }
http() { curl -sS --max-time 30 "http://$1/cgi-bin/id"; }
cleanup() {
	for v in $("$vmsctl" list --names 2>/dev/null); do "$vmsctl" stop "$v" >/dev/null 2>&1; done
	"$vmsctl" live-image delete dimg >/dev/null 2>&1
	vm_cleanup
	ip link del "$br" 2>/dev/null
}
trap cleanup EXIT
fork_msg='crng reseeded due to virtual machine fork'

[ -c /dev/vms ] || skip_all "no /dev/vms (vms.ko not loaded)"
[ -c /dev/kvm ] || skip_all "no /dev/kvm"
[ -c /dev/net/tun ] || skip_all "no /dev/net/tun (kernel without CONFIG_TUN)"
for f in vmlinuz initrd.img rootfs.img cmdline; do
	[ -f "$dir/$f" ] || skip_all "no Debian guest in $dir (scripts/build-debian-guest could not build it)"
done
command -v qemu-img >/dev/null && command -v curl >/dev/null || skip_all "no qemu-img or curl (scripts/setup installs them)"
ip link add "$br" type bridge 2>/dev/null || skip_all "cannot make a bridge (kernel without CONFIG_BRIDGE?)"
ip addr add 10.78.0.1/24 dev "$br" && ip link set "$br" up || skip_all "cannot set up bridge $br"
echo "TAP version 13"
mkdir -p "$VMS_RUN_DIR"

root=$VMS_RUN_DIR/root.qcow2
qemu-img create -q -f qcow2 -b "$dir/rootfs.img" -F raw "$root"
t0=$(date +%s)
if "$vmsctl" run --name parent --acpi --mem 512M --kernel "$dir/vmlinuz" --initrd "$dir/initrd.img" \
	--disk "$root" --disk-format qcow2 --cmdline "$(cat "$dir/cmdline")" \
	--bridge "$br" --detach --ready-timeout 900; then
	ok "boot Debian 12 with --acpi to its agent ($(($(date +%s) - t0)) s)"
else
	fail "boot Debian 12 with --acpi"
	finish
fi
parent=$(http 10.78.0.2)
msg "parent: $parent"
check "the parent answers HTTP at 10.78.0.2 with its hostname" grep -q '^vms-debian ' <<<"$parent"
out=$(vx parent "systemctl is-system-running --wait >/dev/null; uname -r; echo before-the-image >/root/state; sync; cat /root/state")
msg "parent: $(echo $out)"
check "the parent runs Debian's kernel and wrote its file" grep -q 'before-the-image' <<<"$out"

if "$vmsctl" live-image create parent dimg; then
	ok "live image of the parent (memory and disk)"
else
	fail "live image of the parent"
	finish
fi
if "$vmsctl" live-image start dimg --count "$N" --name-prefix clone; then
	ok "start $N clones"
else
	fail "start $N clones"
fi

tokens=$(cut -d' ' -f2- <<<"$parent")$'\n'
randoms=$(vx parent "od -An -tx1 -N16 /dev/urandom | tr -d ' \n'")$'\n'
macs=
for i in $(seq "$N"); do
	c=clone-$i
	a=10.78.0.$((16 + i))
	r=$(http "$a")
	msg "$c at $a: $r"
	if [ "${r%% *}" = "$c" ]; then
		ok "$c answers HTTP on its own address with its own hostname"
	else
		fail "$c answers HTTP on $a as $c (got: $r)"
	fi
	tokens+=$(cut -d' ' -f2- <<<"$r")$'\n'
	before=$(date +%s)
	out=$(vx "$c" "cat /root/state; date +%s; od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; echo; cat /sys/class/net/eth0/address; dmesg | grep -c '$fork_msg'")
	after=$(date +%s)
	msg "$c: $(echo $out)"
	mapfile -t f <<<"$out"
	check "$c resumed where the parent was (its file)" [ "${f[0]:-}" = before-the-image ]
	if [ -n "${f[1]:-}" ] && [ "${f[1]}" -ge $((before - 2)) ] && [ "${f[1]}" -le $((after + 2)) ]; then
		ok "$c's wall clock is within 2 s of the host's"
	else
		fail "$c's wall clock ${f[1]:-?} is not within 2 s of the host's ($before-$after)"
	fi
	randoms+=${f[2]:-}$'\n'
	macs+=${f[3]:-}$'\n'
	check "$c's kernel reseeded its CRNG on the new generation ID" [ "${f[4]:-0}" -ge 1 ]
done
check "$N clones and the parent read distinct /dev/urandom bytes" \
	[ "$(grep -c . <<<"$randoms")" = $((N + 1)) -a "$(grep . <<<"$randoms" | sort -u | wc -l)" = $((N + 1)) ]
check "$N clones have distinct MACs" [ "$(grep . <<<"$macs" | sort -u | wc -l)" = "$N" ]
check "the HTTP tokens of $N clones and the parent are distinct" \
	[ "$(grep -c . <<<"$tokens")" = $((N + 1)) -a "$(grep . <<<"$tokens" | sort -u | wc -l)" = $((N + 1)) ]

vx clone-1 "echo only-in-clone-1 >/root/mine; sync" >/dev/null
one=$(vx clone-1 "cat /root/mine")
two=$(vx clone-2 "cat /root/mine 2>/dev/null || echo absent")
par=$(vx parent "cat /root/mine 2>/dev/null || echo absent")
msg "/root/mine: clone-1 $one, clone-2 $two, parent $par"
check "a file clone-1 writes is on its disk only" [ "$one" = only-in-clone-1 -a "$two" = absent -a "$par" = absent ]
r=$(http 10.78.0.2)
check "the parent still answers as itself" grep -q '^vms-debian ' <<<"$r"
finish
