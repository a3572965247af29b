#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# prefetch_vm: working sets, end to end (issue 18): record one from a
# clone, prefetch it in later clones, carry it through save and load.
#
#   prefetch_vm.sh VMSCTL SAVE_FILE
#
# SAVE_FILE is a live image file of our small guest (live_vm saves one);
# it is loaded, so clones stream their pages from it, as on a host that
# shares the storage.
# - a clone started with --no-prefetch does some work (a file read in
#   its tmpfs, a few programs); `live-image record` stores the pages it
#   used with the live image (`live-image list` shows how many);
# - the next clone prefetches them by default (mode map): all of them are
#   mapped before it runs, it resumes the saved guest (its tmpfs holds the
#   parent's bytes), and doing the same work it misses few pages (pages it
#   used outside the set: `vmsctl list --json`'s prefetch.misses); it
#   cannot be recorded from (every page of the set counts as used in it);
# - --prefetch=cache reads the set into the image's cache only: the clone
#   faults on the pages but finds them, and the set's hits are counted;
# - a set that does not fit the image (recorded for another image of the
#   same name, damaged, or naming pages past the image's end) is ignored
#   with a warning: the clone starts, resumes the saved guest, and
#   prefetches nothing; --no-prefetch prefetches nothing either;
# - `live-image save` writes the set into the file and `load` stores it
#   again (under the new name), and clones of the loaded copy prefetch it;
# - recording a VM that does not run fails with a clear error.
#
# TAP output (kselftest style); exit 0 pass, 1 fail, 4 skip.
set -u

vmsctl=$1 save=$2
export VMS_RUN_DIR=/tmp/vms-prefetch-$$
. "$(dirname "$0")/tap.sh"
finish() {
	echo "1..$n"
	[ $failed = 0 ] && exit 0 || exit 1
}
vx() { timeout 90 "$vmsctl" exec "$1" --timeout 60 -- "$2"; }
cleanup() {
	for v in $("$vmsctl" list --names 2>/dev/null); do "$vmsctl" stop "$v" >/dev/null 2>&1; done
	for i in pimg pcopy; do "$vmsctl" live-image delete $i >/dev/null 2>&1; done
	rm -f /tmp/prefetch-$$.img
	vm_cleanup
}
trap cleanup EXIT
# field VM KEY: from the VM's entry of `vmsctl list --json` (KEY a path
# like prefetch.mapped; "None" if null or missing).
field() {
	"$vmsctl" list --json | python3 -c "
import json, sys
v = next(v for v in json.load(sys.stdin) if v['name'] == sys.argv[1])
for k in sys.argv[2].split('.'):
    v = (v or {}).get(k)
print(v)" "$1" "$2"
}
wset_pages() {
	"$vmsctl" live-image list --json | python3 -c "
import json, sys
print(next(i['working_set_pages'] for i in json.load(sys.stdin) if i['name'] == sys.argv[1]))" "$1"
}
# The work each clone does: what the parent's guest left in its tmpfs,
# and a few programs.
WORK='cat /tmp/who; ls -lR /bin /sbin /etc >/dev/null; cat /proc/meminfo >/dev/null; uname -r >/dev/null'
# start NAME ARGS...: one clone of IMAGE (first ARG) in $out (its output).
start() {
	local prefix=${1%-*} id=${1##*-} image=$2
	shift 2
	out=$("$vmsctl" live-image start "$image" --count 1 --name-prefix "$prefix" --first-id "$id" "$@" 2>&1)
}

[ -c /dev/vms ] || skip_all "no /dev/vms (vms.ko not loaded)"
[ -c /dev/kvm ] || skip_all "no /dev/kvm"
[ -f "$save" ] || skip_all "no saved image at $save"
command -v python3 >/dev/null || skip_all "no python3"
echo "TAP version 13"

if ! out=$("$vmsctl" live-image load "$save" --name pimg 2>&1); then
	msg "$out"
	fail "live-image load"
	finish
fi
msg "$out"
check "a loaded image has no working set" test "$(wset_pages pimg)" = None

# Record.
start p-1 pimg --no-prefetch
msg "$out"
check "a clone with --no-prefetch starts, prefetching nothing" \
	test "$(field p-1 prefetch)" = None -a -n "$(field p-1 pid)"
w1=$(vx p-1 "$WORK")
check "it resumed the saved guest (its tmpfs: $w1)" test "$w1" = parent
if out=$("$vmsctl" live-image record p-1 2>&1); then
	msg "$out"
	pages=$(sed -n 's/.*: \([0-9]*\) pages .*/\1/p' <<<"$out")
	size=$(( $("$vmsctl" live-image list --json | python3 -c "import json,sys; print(next(i['size'] for i in json.load(sys.stdin) if i['name']=='pimg'))") / 4096 ))
	check "live-image record stores the clone's used pages ($pages of $size)" \
		test -n "$pages" -a "${pages:-0}" -gt 100 -a "${pages:-0}" -lt "$size" -a "$(wset_pages pimg)" = "$pages"
else
	msg "$out"
	fail "live-image record"
	finish
fi
"$vmsctl" stop p-1 >/dev/null

# Prefetch, mode map (the default).
start p-2 pimg
msg "$out"
check "the next clone prefetches by default: all $pages pages mapped before it runs" \
	test "$(field p-2 prefetch.mode)" = map -a "$(field p-2 prefetch.mapped)" = "$pages" \
	-a "$(field p-2 prefetch.map_error)" = None
check "it resumed the saved guest" test "$(vx p-2 "$WORK")" = parent
m2=$(field p-2 prefetch.misses)
msg "p-2: $m2 pages used outside the set of $pages"
check "doing the same work, it used few pages outside the set ($m2 < $((pages / 4)))" \
	test -n "$m2" -a "$m2" != None -a "${m2:-99999}" -lt $((pages / 4))
if out=$("$vmsctl" live-image record p-2 2>&1); then
	fail "record refuses a clone that started with the set mapped in"
else
	msg "$out"
	check "record refuses a clone that started with the set mapped in, and keeps the set" \
		test "$(wset_pages pimg)" = "$pages" -a -n "$(grep -- '--no-prefetch' <<<"$out")"
fi
"$vmsctl" stop p-2 >/dev/null

# Mode cache.
start p-3 pimg --prefetch=cache
msg "$out"
check "--prefetch=cache maps nothing" test "$(field p-3 prefetch.mode)" = cache -a "$(field p-3 prefetch.mapped)" = 0
check "it resumed the saved guest" test "$(vx p-3 "$WORK")" = parent
h3=$(field p-3 prefetch.hits) m3=$(field p-3 prefetch.misses)
msg "p-3: hits $h3, misses $m3, set $pages"
check "its faults found the set: $h3 hits, more than half the set" \
	test "$h3" != None -a "${h3:-0}" -gt $((pages / 2))
"$vmsctl" stop p-3 >/dev/null

# Sets that do not fit: ignored with a warning.
wset=$VMS_RUN_DIR/images/pimg.wset
cp "$wset" "$VMS_RUN_DIR/good.wset"
bad_set() {
	local what=$1 id=$2 want=$3
	start "p-$id" pimg
	msg "$out"
	if grep -q "not prefetching.*$want" <<<"$out" && [ "$(field "p-$id" prefetch)" = None ] &&
		[ "$(vx "p-$id" 'cat /tmp/who')" = parent ]; then
		ok "$what: a warning, no prefetch, and the clone resumes the saved guest"
	else
		fail "$what: a warning (\"$want\"), no prefetch, and the clone resumes the saved guest"
	fi
	"$vmsctl" stop "p-$id" >/dev/null
	cp "$VMS_RUN_DIR/good.wset" "$wset"
}
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d['state_hash']='0123456789abcdef'; json.dump(d, open(sys.argv[1],'w'))" "$wset"
bad_set "a set recorded for another image" 4 "another live image"
echo '{"image": "pimg", "ranges": [' >"$wset"
bad_set "a damaged set" 5 "not a working set"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d['ranges'].append([1<<30, 8]); d['pages'] += 8; json.dump(d, open(sys.argv[1],'w'))" "$wset"
bad_set "a set with pages past the image's end" 6 "past the image"
start p-7 pimg --no-prefetch
check "--no-prefetch prefetches nothing although a set is stored" test "$(field p-7 prefetch)" = None
"$vmsctl" stop p-7 >/dev/null

# Save and load carry the set.
if out=$("$vmsctl" live-image save pimg /tmp/prefetch-$$.img 2>&1) && grep -q "its working set" <<<"$out"; then
	msg "$out"
	ok "live-image save writes the working set into the file"
else
	msg "$out"
	fail "live-image save writes the working set into the file"
fi
if out=$("$vmsctl" live-image load /tmp/prefetch-$$.img --name pcopy 2>&1); then
	msg "$out"
	check "load stores it again: \"clones prefetch its working set of $pages pages\"" \
		test "$(wset_pages pcopy)" = "$pages"
else
	msg "$out"
	fail "live-image load of the saved copy"
fi
start q-1 pcopy
msg "$out"
check "a clone of the loaded copy prefetches the set and resumes the saved guest" \
	test "$(field q-1 prefetch.mapped)" = "$pages" -a "$(vx q-1 'cat /tmp/who')" = parent
"$vmsctl" stop q-1 >/dev/null

if out=$("$vmsctl" live-image record nosuchvm 2>&1); then
	fail "record of a VM that does not run fails"
else
	msg "$out"
	ok "record of a VM that does not run fails"
fi
check "delete removes the set" "$vmsctl" live-image delete pcopy
check "  (and its file)" test ! -e "$VMS_RUN_DIR/images/pcopy.wset" -a ! -e "$VMS_RUN_DIR/images/pcopy.source"
finish
