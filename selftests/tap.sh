# SPDX-License-Identifier: GPL-2.0
# TAP helpers for the shell selftests (live_vm.sh, disk_vm.sh), sourced:
# each check prints "ok N - name" or "not ok N - name"; failed ones are
# kept in $failures to repeat at the end of the output.
n=0 failed=0 failures=

ok() { n=$((n + 1)); echo "ok $n - $*"; }
fail() {
	n=$((n + 1))
	failed=$((failed + 1))
	failures+="# not ok $n - $*"$'\n'
	echo "not ok $n - $*"
}
msg() { echo "# $*"; }
check() { # check NAME CMD...: ok if CMD succeeds
	local name=$1
	shift
	if "$@"; then ok "$name"; else fail "$name"; fi
}
skip_all() { echo "1..0 # SKIP $*"; exit 4; }
# vm_cleanup: for tests of vmsctl's VMs ($vmsctl, $VMS_RUN_DIR). After a
# failure, the last console lines of every VM, then the failed checks
# again (so the end of the output names them); then stops every VM and
# removes the run directory.
vm_cleanup() {
	if [ $failed != 0 ]; then
		for f in "$VMS_RUN_DIR"/vm/*.log; do
			[ -e "$f" ] || continue
			echo "# --- last lines of $f"
			tail -n 12 "$f" | sed 's/^/#   /'
		done
		printf '%s' "$failures"
	fi
	for v in $("$vmsctl" list --names 2>/dev/null); do "$vmsctl" stop "$v" >/dev/null 2>&1; done
	rm -rf "$VMS_RUN_DIR"
}
