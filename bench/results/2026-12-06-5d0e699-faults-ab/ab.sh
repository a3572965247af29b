#!/bin/bash
# In the test VM: vms-bench faults with two modules, alternating.
# ab.sh OLD.ko NEW.ko ROUNDS ARGS...
set -u
old=$1 new=$2 rounds=$3; shift 3
[ -z "${VMS_DISK:-}" ] || export VMS_IMAGE_DIR=$VMS_DISK
cd /tmp || exit 1
for r in $(seq "$rounds"); do
	for arm in old new; do
		ko=$old; [ $arm = new ] && ko=$new
		insmod "$ko" || exit 1
		echo "== round $r arm $arm"
		/work/main/target/release/vms-bench faults "$@" | grep -E '^\|' 
		rmmod vms || exit 1
	done
done
