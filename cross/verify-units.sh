#!/usr/bin/env bash
# Check cross/electra-edge.service and cross/electra-edge.socket with `systemd-analyze verify`.
#
# verify also checks that ExecStart's binary exists, so the units are installed with
# cross/install.sh into a temporary prefix with a dummy executable (paths in the rendered copy
# point into that prefix; everything else is the shipped text), and that copy is verified.
# Any diagnostic fails the check (systemd-analyze exits 0 on unknown keys and only warns).
# Prints the offline `systemd-analyze security` exposure score for information.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v systemd-analyze >/dev/null || { echo "verify-units: systemd-analyze not found (apt-get install systemd)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
printf '#!/bin/sh\nexit 0\n' > "$tmp/electra-edge"
chmod 0755 "$tmp/electra-edge"
bash "$here/install.sh" --binary "$tmp/electra-edge" "$tmp/root" > /dev/null 2>&1

units=("$tmp/root/etc/systemd/system/electra-edge.service" "$tmp/root/etc/systemd/system/electra-edge.socket")
rc=0
out="$(systemd-analyze verify "${units[@]}" 2>&1)" || rc=$?
if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out" | sed "s#$tmp/root##g" >&2
    echo "verify-units: FAILED (systemd-analyze verify rc=$rc)" >&2
    exit 1
fi
echo "verify-units: systemd-analyze verify passed ($(systemd-analyze --version | head -n1))"
if score="$(systemd-analyze security --offline=yes "${units[0]}" 2>/dev/null | grep -i 'overall exposure')"; then
    echo "verify-units: ${score#→ }"
fi
