# SPDX-License-Identifier: GPL-2.0
# Helpers of the bench scripts run in the test VM (live.sh, http.sh), sourced.

# median_spread [FMT]: numbers on stdin -> "median (min-max)", each printed
# with printf format FMT (default %.1f), e.g. %.0f or %.1fx.
median_spread() {
	sort -n | awk -v f="${1:-%.1f}" '{ a[NR] = $1 } END {
		m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
		printf f " (" f "-" f ")", m, a[1], a[NR] }'
}
