#!/usr/bin/env bash
# Check cross/electra-edge.service and cross/electra-edge.socket with `systemd-analyze verify`.
#
# verify also checks that ExecStart's binary exists, so the units are installed with
# cross/install.sh into a temporary prefix with a dummy executable (paths in the rendered copy
# point into that prefix; everything else is the shipped text), and that copy is verified.
# Any diagnostic fails the check (systemd-analyze exits 0 on unknown keys and only warns).
# Prints the offline `systemd-analyze security` exposure score for information.
#
#   cross/verify-units.sh [--budget BINARY MODEL_DIR]
#
# --budget: also check that MemoryMax= in the service is at least the memory budget the server
# computes for the ExecStart options (`BINARY serve --print-budget ...` with --model MODEL_DIR;
# BINARY must run here, so an x86-64 build on an x86-64 machine).
set -euo pipefail

budget_bin=""
budget_model=""
if [ "${1:-}" = --budget ]; then
    [ $# -eq 3 ] || { echo "usage: $0 [--budget BINARY MODEL_DIR]" >&2; exit 2; }
    budget_bin="$2"
    budget_model="$3"
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v systemd-analyze >/dev/null || { echo "verify-units: systemd-analyze not found (apt-get install systemd)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
printf '#!/bin/sh\nexit 0\n' > "$tmp/electra-edge"
chmod 0755 "$tmp/electra-edge"
bash "$here/install.sh" --binary "$tmp/electra-edge" "$tmp/sysroot" > /dev/null 2>&1

units=("$tmp/sysroot/etc/systemd/system/electra-edge.service" "$tmp/sysroot/etc/systemd/system/electra-edge.socket")
rc=0
out="$(systemd-analyze verify "${units[@]}" 2>&1)" || rc=$?
if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out" | sed "s#$tmp/sysroot##g" >&2
    echo "verify-units: FAILED (systemd-analyze verify rc=$rc)" >&2
    exit 1
fi
echo "verify-units: systemd-analyze verify passed ($(systemd-analyze --version | head -n1))"
if score="$(systemd-analyze security --offline=yes "${units[0]}" 2>/dev/null | grep -i 'overall exposure')"; then
    echo "verify-units: ${score#→ }"
fi

if [ -n "$budget_bin" ]; then
    service="$here/electra-edge.service"
    exec_start="$(sed -n 's/^ExecStart=//p' "$service")"
    memory_max="$(sed -n 's/^MemoryMax=//p' "$service")"
    # ExecStart's options after `serve`, with --model replaced by MODEL_DIR.
    read -r -a words <<< "$exec_start"
    opts=()
    i=2
    while [ $i -lt ${#words[@]} ]; do
        if [ "${words[$i]}" = --model ]; then i=$((i + 2)); continue; fi
        opts+=("${words[$i]}")
        i=$((i + 1))
    done
    # Without --workers the service starts as many workers as the cores, fewer if MemoryMax
    # cannot hold their budget (at least one): what must fit is one worker.
    case " ${opts[*]} " in
        *" --workers "*) ;;
        *) opts+=(--workers 1) ;;
    esac
    json="$("$budget_bin" serve --print-budget --model "$budget_model" "${opts[@]}" | grep '^{')" ||
        { echo "verify-units: FAILED: $budget_bin serve --print-budget gave no budget" >&2; exit 1; }
    total="$(printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')"
    max_bytes="$(python3 -c '
import sys
v = sys.argv[1].strip()
mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
print(int(float(v[:-1]) * mult[v[-1].upper()]) if v[-1].upper() in mult else int(v))
' "$memory_max")"
    mib() { python3 -c "print(f'{$1 / 2**20:.1f} MiB')"; }
    if [ "$total" -le "$max_bytes" ]; then
        echo "verify-units: memory budget $(mib "$total") <= MemoryMax=$memory_max (options: ${opts[*]:-defaults})"
    else
        echo "verify-units: FAILED: memory budget $(mib "$total") > MemoryMax=$memory_max for ExecStart options '${opts[*]:-defaults}': raise MemoryMax or pass smaller limits in ExecStart" >&2
        exit 1
    fi
fi
