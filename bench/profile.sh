#!/bin/bash
# Inside the test VM (scripts/bench --profile): profile one vms-bench
# faults invocation with perf and print where the time went.
#
#   bench/profile.sh MODULE.ko VMS-BENCH OUT-DIR FAULTS-ARGS...
#
# perf records every CPU (cpu-clock, 1999 Hz, call graphs); the reports
# keep only the vms-bench process: self time per symbol, then each
# symbol with its callees ("children"), which is where the share of the
# stage-2 fault path (kvm_mmu_page_fault), the provider
# (provider_get_page) and the image read (Image::page) can be read.
set -u
ko=$1 bench=$2 out=$3
shift 3
# scripts/vm --disk: image files on the disk, as in scripts/bench.
[ -z "${VMS_DISK:-}" ] || export VMS_IMAGE_DIR=$VMS_DISK
command -v perf >/dev/null || { echo "perf is not installed (scripts/setup installs linux-perf)"; exit 4; }
insmod "$ko" || exit 1
mkdir -p "$out"
cd /tmp || exit 1
perf record -q -a -g -F 1999 -e cpu-clock -o /tmp/perf.data -- "$bench" faults "$@" >/tmp/faults.md
rc=$?
# The reports before rmmod: perf resolves vms.ko's symbols through
# /proc/kallsyms, which drops them when the module goes.
{
	echo "# vms-bench faults $*"
	echo
	grep -E '^\|' /tmp/faults.md
	echo
	echo "## self time (vms-bench process)"
	perf report -i /tmp/perf.data --stdio --no-children --comms vms-bench --sort sym \
		--percent-limit 0.25 -g none 2>/dev/null | grep '%'
	echo
	echo "## with callees (children)"
	perf report -i /tmp/perf.data --stdio --children --comms vms-bench --sort sym \
		--percent-limit 1.5 -g none 2>/dev/null | grep '%'
} >"$out/profile.txt"
rmmod vms || rc=1
cat "$out/profile.txt"
exit $rc
