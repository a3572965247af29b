#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The fault figure's userfaultfd rows with 2 vCPUs (scripts/bench
# --uffd-smp runs it). In the test VM such a walk sometimes never ends
# or makes a wrong guest access (the emulated machine's, see the fault
# figure's notes), and the machine is not trusted after one. So each
# sample gets a fresh boot of the release test VM: `vms-bench faults
# --vcpus 2 --uffd-smp --runs 1` measures the ceiling, the vms rows of the
# same access and then one userfaultfd walk. A boot whose userfaultfd
# walk fails is counted and its failure kept, never a sample; the vms
# rows before it are kept (they ran before anything went wrong), and the
# walk that failed is named.
#
#   bench/uffd-smp.sh MODULE.ko VMS-BENCH OUT.md SAMPLES MAX-BOOTS
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
ko=$1 bench=$2 out=$3 samples=$4 max=$5
keep="$VMS_CACHE/runs/bench-uffd-smp"
raw="$keep.samples"
: >"$raw"
failures=()

# boot ROW ACCESS: one test VM boot; appends "row|access|pages/s" lines.
boot() {
	local log
	log=$("$VMS_ROOT/scripts/vm" --release --mem 8G --disk 4G --timeout 900 --keep "$keep" run bash -c '
		export VMS_IMAGE_DIR=$VMS_DISK
		insmod "$1" || exit 1
		"$2" faults --vcpus 2 --uffd-smp --only "anon,vms-warm,vms-cold,$3" --access "$4" \
			--runs 1 --out /tmp/results
		rc=$?
		rmmod vms
		exit $rc' uffd-smp "$ko" "$bench" "$1" "$2" 2>&1) && rc=0 || rc=$?
	sed -n 's/.*faults run 1\/1: \(.*\) \(read\|write\), 2 vCPU(s): \([0-9,]*\) pages\/s.*/\1|\2|\3/p' \
		<<<"$log" | awk -F'|' -v OFS='|' '{ gsub(/,/, "", $3); print }' >>"$raw"
	if [ "$rc" != 0 ]; then
		# The walks run in this order; the first without a result failed.
		local walk
		for walk in "anon, prefilled (ceiling)" "vms, image cached (warm)" "vms, image cold" ""; do
			grep -qF "faults run 1/1: $walk $2, " <<<"$log" || break
		done
		[ -n "$walk" ] || walk="the userfaultfd walk"
		failures+=("$1 $2, in $walk: $(grep -E 'did not complete|vCPU [0-9]+:|stalls|timed out|died' <<<"$log" |
			sed 's/^[# ]*//' | tr '\n' ' ' | cut -c1-200)")
		return 1
	fi
}

rows=(uffd-missing uffd-missing-cold uffd-minor)
for row in "${rows[@]}"; do
	for access in read write; do
		got=0 boots=0
		while [ $got -lt "$samples" ] && [ $boots -lt "$max" ]; do
			boots=$((boots + 1))
			step "uffd-smp: $row $access, boot $boots (samples $got of $samples)"
			boot "$row" "$access" && got=$((got + 1))
		done
		echo "$row|$access|boots|$boots" >>"$raw"
	done
done

# median_spread: numbers on stdin -> "median|min–max|n"
median_spread() {
	sort -n | awk '{ a[NR] = $1 } END {
		if (!NR) { print "n/a|n/a|0"; exit }
		m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
		printf "%d|%d–%d|%d\n", m, a[1], a[NR], NR }'
}
values() { awk -F'|' -v r="$1" -v a="$2" '$1 == r && $2 == a && $3 != "boots" { print $3 }' "$raw"; }
name_of() {
	case $1 in
	uffd-missing) echo "uffd MISSING + UFFDIO_COPY" ;;
	uffd-missing-cold) echo "uffd MISSING + UFFDIO_COPY, file cold" ;;
	uffd-minor) echo "uffd MINOR + UFFDIO_CONTINUE (shmem)" ;;
	esac
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b == 0) print "n/a"; else printf "%.2fx", a / b }'; }

{
	echo "# Fault service rate, userfaultfd with 2 vCPUs"
	echo
	echo "The fault figure's walk (every page of 256 MiB touched once, split between 2 vCPUs) for the userfaultfd rows, one walk per fresh boot of the release test VM, because in the test VM such walks sometimes fail and the machine is not trusted after one. Each boot first measures the ceiling (\`anon, prefilled\`) and the vms rows of the same access, then the userfaultfd walk. Samples are completed walks; a failed walk is counted, listed below and never a sample. The ceiling and vms rows pool every boot of their access, those that failed later too (they ran before the failure). \`÷ ceiling\` divides medians."
	echo
	echo "| backend | access | 2 vCPUs: pages/s | min–max | samples | boots | ÷ ceiling |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
	for access in read write; do
		IFS='|' read -r cm cs cn < <(values "anon, prefilled (ceiling)" "$access" | median_spread)
		echo "| anon, prefilled (ceiling) | $access | $cm | $cs | $cn | | 1.00x |"
		for vms in "vms, image cached (warm)" "vms, image cold"; do
			IFS='|' read -r m s n < <(values "$vms" "$access" | median_spread)
			echo "| $vms | $access | $m | $s | $n | | $(ratio "$m" "$cm") |"
		done
		for row in "${rows[@]}"; do
			name=$(name_of "$row")
			IFS='|' read -r m s n < <(values "$name" "$access" | median_spread)
			b=$(awk -F'|' -v r="$row" -v a="$access" '$1 == r && $2 == a && $3 == "boots" { print $4 }' "$raw")
			echo "| $name | $access | $m | $s | $n | $b | $(ratio "$m" "$cm") |"
		done
	done
	echo
	echo "## Targets with 2 vCPUs"
	echo
	IFS='|' read -r wm _ _ < <(values "vms, image cached (warm)" read | median_spread)
	IFS='|' read -r vc _ _ < <(values "vms, image cold" read | median_spread)
	IFS='|' read -r um _ _ < <(values "$(name_of uffd-missing)" read | median_spread)
	IFS='|' read -r uc _ _ < <(values "$(name_of uffd-missing-cold)" read | median_spread)
	echo "| target (vms) | measured |"
	echo "| --- | ---: |"
	echo "| vms, image cached (warm): read ≥ 2x uffd MISSING + UFFDIO_COPY | $(ratio "$wm" "$um") |"
	echo "| vms, image cold: read ≥ 2x uffd MISSING + UFFDIO_COPY, file cold | $(ratio "$vc" "$uc") |"
	echo
	echo "## Failed walks (${#failures[@]})"
	echo
	if [ ${#failures[@]} = 0 ]; then
		echo "None."
	else
		printf -- '- %s\n' "${failures[@]}"
	fi
} >"$out"
ok "results: $out"
