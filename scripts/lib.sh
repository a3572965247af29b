# Shared helpers for scripts/*. Source it; it does not run anything.
# shellcheck shell=bash

VMS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VMS_CACHE=${VMS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vms}
BINDGEN_VERSION=0.73.2
# Debian's linux-source-6.12 tarball: the kernel every host runs, patched.
KSRC_TARBALL=/usr/src/linux-source-6.12.tar.xz

export PATH="$HOME/.cargo/bin:$PATH"

_ts() { date +%H:%M:%S; }
step() { printf '\033[1m[%s] %s\033[0m\n' "$(_ts)" "$*" >&2; }
ok() { printf '[%s] %s\n' "$(_ts)" "$*" >&2; }
warn() { printf '[%s] warning: %s\n' "$(_ts)" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$(_ts)" "$*" >&2; exit 1; }

# kernel_key FLAVOUR: a hash of everything a kernel build depends on
# (source version, patches, config, toolchain).
kernel_key() {
	local flavour=$1
	{
		stat -c '%n %s %Y' "$KSRC_TARBALL" 2>/dev/null || echo none
		dpkg-query -W -f='${Version}\n' linux-source-6.12 2>/dev/null || true
		case $flavour in
		*-unpatched) echo unpatched ;;
		*) cat "$VMS_ROOT"/patches/*.patch 2>/dev/null || true ;;
		esac
		cat "$VMS_ROOT/scripts/kernel.config"
		case $flavour in debug*) cat "$VMS_ROOT/scripts/kernel-debug.config" ;; esac
		rustc --version
		bindgen --version 2>/dev/null || true
		clang --version | head -n1
	} | sha256sum | cut -c1-16
}

# The build tree of a flavour (release or debug).
kernel_tree() { echo "$VMS_CACHE/kernel-${1:-release}"; }

# Run a long command with its output in a log; show the tail if it fails.
run_logged() {
	local log=$1; shift
	if ! "$@" >"$log" 2>&1; then
		tail -n 40 "$log" >&2
		die "failed: $* (full log: $log)"
	fi
}
