# SPDX-License-Identifier: GPL-2.0
# Helpers of the bench scripts run in the test VM (live.sh, http.sh), sourced.

# median_spread [FMT]: numbers on stdin -> "median (min-max)", each printed
# with printf format FMT (default %.1f), e.g. %.0f or %.1fx.
median_spread() {
	sort -n | awk -v f="${1:-%.1f}" '{ a[NR] = $1 } END {
		m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
		printf f " (" f "-" f ")", m, a[1], a[NR] }'
}

# stamp VAR: VAR = ms since 1970, taken by bash itself ($EPOCHREALTIME). A
# `date` process (the earlier `$(date +%s%N)`) costs tens of ms in the
# release test VM and 100-200 ms in the debug one, and was charged to
# whatever the stamp ended.
stamp() {
	local t=${EPOCHREALTIME/[.,]/}
	printf -v "$1" '%d' $((t / 1000))
}

# http_id ADDR: GET /cgi-bin/id from ADDR's port 80, by bash itself
# (/dev/tcp: no process); REPLY = the body (empty on any failure), status
# 0 when a connection was made. The clients the bench times are started
# for no other purpose than the request, so a process per try (curl took
# 1.0-2.6 s to start in the debug test VM, measured 2026-12-06) would
# count the client's start as the VM's time.
http_id() {
	local line body=0
	REPLY=
	{ exec 3<>"/dev/tcp/$1/80"; } 2>/dev/null || return 1
	printf 'GET /cgi-bin/id HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" >&3
	while IFS= read -r -t 30 line <&3 || [ -n "$line" ]; do
		line=${line%$'\r'}
		if [ $body = 1 ]; then
			REPLY+=$line
		elif [ -z "$line" ]; then
			body=1
		fi
	done
	exec 3<&-
	return 0
}
