#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# net_vm: vmsctl run --bridge, end to end, with a Linux guest.
#
#   net_vm.sh VMSCTL KERNEL INITRD
#
# On a bridge made for the test (10.77.0.1/24):
# - bad network configuration gets a clear error from vmsctl and no VM: a
#   bridge that does not exist, an interface that is not a bridge, a
#   multicast or malformed MAC, an address without a prefix, and a tap
#   made without CAP_NET_ADMIN;
# - a booted guest gets its address (host 2) and MAC, answers HTTP from
#   the host (busybox httpd, /cgi-bin/id: its hostname and a token read at
#   the request), and reaches the host;
# - a live image made while the host sends it requests (I/O in flight);
#   the parent still answers afterwards;
# - 8 clones (NET_VM_CLONES): each answers on its own address (hosts 17
#   and up) with its own hostname and MAC, and the tokens of all 8 and of
#   the parent are distinct: each clone's CRNG was reseeded at the resume;
#   the parent is unchanged;
# - a clone reset to the live image (vmsctl reset) answers as itself
#   again, with a token of a CRNG reseeded at the reset;
# - a second VM or clone with an address or MAC in use is refused;
# - a clone's tap leaves the bridge when the clone stops, and its id is
#   free again.
#
# TAP output (kselftest style); exit 0 pass, 1 fail, 4 skip.
set -u

vmsctl=$1 kernel=$2 initrd=$3
N=${NET_VM_CLONES:-8}
[ "$N" -ge 1 ] && [ "$N" -le 9 ] 2>/dev/null || { echo "NET_VM_CLONES=$N: 1 to 9" >&2; exit 2; }
export VMS_RUN_DIR=/tmp/vms-net-$$
. "$(dirname "$0")/tap.sh"
br=vmsbr$$
finish() {
	echo "1..$n"
	[ $failed = 0 ] && exit 0 || exit 1
}
vx() { timeout 90 "$vmsctl" exec "$1" --timeout 60 -- "$2"; }
http() { curl -sS --max-time 20 "http://$1/cgi-bin/id"; }
cleanup() {
	for v in $("$vmsctl" list --names 2>/dev/null); do "$vmsctl" stop "$v" >/dev/null 2>&1; done
	"$vmsctl" live-image delete nimg >/dev/null 2>&1
	vm_cleanup
	ip link del "$br" 2>/dev/null
}
trap cleanup EXIT

[ -c /dev/vms ] || skip_all "no /dev/vms (vms.ko not loaded)"
[ -c /dev/kvm ] || skip_all "no /dev/kvm"
[ -c /dev/net/tun ] || skip_all "no /dev/net/tun (kernel without CONFIG_TUN)"
command -v ip >/dev/null && command -v curl >/dev/null || skip_all "no ip or curl (scripts/setup installs them)"
[ -f "$kernel" ] && [ -f "$initrd" ] || skip_all "no guest kernel/initramfs ($kernel, $initrd)"
ip link add "$br" type bridge 2>/dev/null || skip_all "cannot make a bridge (kernel without CONFIG_BRIDGE?)"
ip addr add 10.77.0.1/24 dev "$br" && ip link set "$br" up || skip_all "cannot set up bridge $br"
echo "TAP version 13"
mkdir -p "$VMS_RUN_DIR"

run() { "$vmsctl" run --name parent --kernel "$kernel" --initrd "$initrd" --mem 128M --detach "$@"; }
# refused NAME WANT ARGS...: vmsctl run fails, says WANT, and no VM runs.
refused() {
	local name=$1 want=$2 out vms
	shift 2
	vms=$("$vmsctl" list --names 2>/dev/null)
	out=$("$@" 2>&1) && { fail "$name: vmsctl accepted it"; return; }
	msg "$name: $(grep -m 1 -i -- "$want" <<<"$out" || tail -n 1 <<<"$out")"
	if grep -qi -- "$want" <<<"$out" && [ "$("$vmsctl" list --names 2>/dev/null)" = "$vms" ]; then
		ok "$name: a clear error, no VM left"
	else
		fail "$name: wanted \"$want\" and no new VM; got: $out"
	fi
}
refused "a bridge that does not exist" "no bridge named vmsnobr0" run --bridge vmsnobr0
refused "an interface that is not a bridge" "not a bridge" run --bridge lo
refused "a multicast MAC" "multicast" run --bridge "$br" --mac 01:00:5e:00:00:01
refused "a malformed MAC" "six hex bytes" run --bridge "$br" --mac 06:00:00:00:01
refused "an address without a prefix" "ADDR/PREFIX" run --bridge "$br" --ip 10.77.0.9
refused "a tap without CAP_NET_ADMIN" "CAP_NET_ADMIN" \
	setpriv --bounding-set -net_admin "$vmsctl" run --name parent --kernel "$kernel" \
	--initrd "$initrd" --mem 128M --detach --bridge "$br"

boot() {
	run --bridge "$br" && return
	grep -q "triple fault (KVM_EXIT_SHUTDOWN).*before" "$VMS_RUN_DIR/vm/parent.log" 2>/dev/null || return 1
	msg "parent triple faulted while starting; starting it again"
	run --bridge "$br"
}
if boot; then
	ok "boot a guest with --bridge to its ready marker"
else
	fail "boot a guest with --bridge"
	finish
fi
out=$(vx parent 'ip -4 -o addr show eth0; cat /sys/class/net/eth0/address; ping -c 1 -W 10 10.77.0.1 >/dev/null && echo reached')
msg "parent: $(echo $out)"
check "the guest has its address, 10.77.0.2/24" grep -q "inet 10.77.0.2/24" <<<"$out"
check "the guest reaches the host (ping 10.77.0.1)" grep -qx reached <<<"$out"
p0=$(http 10.77.0.2)
msg "parent answers: $p0"
check "the guest answers HTTP from the host with its name" grep -q "^vms-guest [0-9a-f]\{32\}$" <<<"$p0"

# Requests in flight while the live image is made.
( for i in $(seq 40); do http 10.77.0.2 >/dev/null 2>&1; done ) &
load=$!
sleep 1
if out=$("$vmsctl" live-image create parent nimg); then
	msg "$out"
	ok "live-image create while the host sends the guest requests"
else
	fail "live-image create"
	kill $load 2>/dev/null
	finish
fi
wait $load
p1=$(http 10.77.0.2)
check "the parent answers after the live image" grep -q "^vms-guest [0-9a-f]\{32\}$" <<<"$p1"

if out=$("$vmsctl" live-image start nimg --count "$N" --name-prefix n 2>&1); then
	sed 's/^/# /' <<<"$out"
	ok "live-image start --count $N"
else
	sed 's/^/# /' <<<"$out"
	fail "live-image start --count $N"
	finish
fi
tokens="${p0#* } ${p1#* }"
for i in $(seq "$N"); do
	a=10.77.0.$((16 + i))
	r=$(http $a)
	msg "n-$i at $a answers: $r"
	check "n-$i answers on its own address $a with its own name" grep -q "^n-$i [0-9a-f]\{32\}$" <<<"$r"
	tokens+=" ${r#* }"
	mac=$(vx n-$i 'cat /sys/class/net/eth0/address')
	check "n-$i has its own MAC (06:76:6d:00:00:0$i)" [ "$mac" = "06:76:6d:00:00:0$i" ]
done
# A reset clone is back on its link as itself, with a new token.
if [ "$N" -ge 2 ] && out=$("$vmsctl" reset n-2 2>&1); then
	msg "$out"
	r=$(http 10.77.0.18)
	msg "n-2 after its reset answers: $r"
	check "n-2, reset, answers on its own address as itself" grep -q "^n-2 [0-9a-f]\{32\}$" <<<"$r"
	tokens+=" ${r#* }"
	want_extra=1
elif [ "$N" -ge 2 ]; then
	fail "vmsctl reset n-2: $out"
fi
p2=$(http 10.77.0.2)
check "the parent still answers as itself" grep -q "^vms-guest [0-9a-f]\{32\}$" <<<"$p2"
tokens+=" ${p2#* }"
msg "tokens: $tokens"
want=$((N + 3 + ${want_extra:-0}))
distinct() { [ "$(tr ' ' '\n' <<<"$tokens" | grep -c .)" = $want ] && [ "$(tr ' ' '\n' <<<"$tokens" | grep . | sort -u | wc -l)" = $want ]; }
check "every answer's token differs ($want: the parent's 3, one from each clone, read after its resume, and one after n-2's reset)" distinct
# Addresses and MACs are one VM's at a time.
refused "a second VM with the default address" "10.77.0.2 on bridge $br is in use" \
	"$vmsctl" run --name dup --kernel "$kernel" --initrd "$initrd" --mem 128M --detach --bridge "$br"
refused "a second clone of id 1" "06:76:6d:00:00:01 is in use" \
	"$vmsctl" run --name dup --image nimg --id 1 --detach
taps() { ip -o link show master "$br" | grep -c ' vms[0-9]*:'; }
before=$(taps)
"$vmsctl" stop n-1 >/dev/null 2>&1
after=$(taps)
msg "taps on the bridge: $before before n-1 stopped, $after after"
tap_left() { [ "$before" = $((N + 1)) ] && [ "$after" = "$N" ]; }
check "n-1's tap left the bridge with it ($((N + 1)) -> $N)" tap_left
if out=$("$vmsctl" run --name n-1b --image nimg --id 1 --detach 2>&1); then
	msg "$out"
	r=$(http 10.77.0.17)
	check "id 1 is free again once n-1 stopped: n-1b answers at 10.77.0.17" grep -q "^n-1b [0-9a-f]\{32\}$" <<<"$r"
	"$vmsctl" stop n-1b >/dev/null 2>&1
else
	sed 's/^/# /' <<<"$out"
	fail "id 1 is free again once n-1 stopped"
fi
finish
