#!/usr/bin/env bash
# Install a Debian package a test needs, unless its binaries are already there.
# Usage: bash scripts/debian_package.sh PACKAGE BINARY...   (each BINARY an absolute path)
# Idempotent. Installing needs root (apt-get); without it, says what to run and fails, so
# that the test command does not go on to skip the tests that need it silently. A package
# that enables a system service gets it disabled: the tests start their own instances.
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: debian_package.sh PACKAGE BINARY..." >&2; exit 2; }
pkg="$1"
shift
missing=()
for bin in "$@"; do
    [[ -x "$bin" ]] || missing+=("$bin")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "debian_package.sh: ${missing[*]} missing and no apt-get here; install $pkg" >&2
    exit 1
fi
if [[ "$(id -u)" -ne 0 ]]; then
    echo "debian_package.sh: ${missing[*]} missing; run as root: apt-get install -y $pkg" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
# the package lists may be missing or stale on a fresh machine: update once, then retry
if ! apt-get install -y --no-install-recommends "$pkg" >"$log" 2>&1; then
    if ! { apt-get update && apt-get install -y --no-install-recommends "$pkg"; } >>"$log" 2>&1
    then
        cat "$log" >&2
        echo "debian_package.sh: installing $pkg failed (log above)" >&2
        exit 1
    fi
fi
rm -f "$log"
for bin in "$@"; do
    [[ -x "$bin" ]] || { echo "debian_package.sh: $pkg installed, but $bin is not there" >&2; exit 1; }
done
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    systemctl disable --now "$pkg" >/dev/null 2>&1 || true
fi
"$1" --version 2>&1 | head -1
