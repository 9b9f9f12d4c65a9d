#!/usr/bin/env bash
# Check every unit we ship with `systemd-analyze verify`:
#   - install.sh's cross/electra-edge.service and cross/electra-edge.socket;
#   - the Debian package's units: cross/deb/electra-edge.service with cross/electra-edge.socket
#     (the default model), and the templates cross/deb/electra-edge@.service and
#     cross/deb/electra-edge@.socket, as the instance electra-edge@demo.
# verify also checks that ExecStart's binary exists, so install.sh's units are installed with
# cross/install.sh into a temporary prefix with a dummy executable (paths in the rendered copy
# point into that prefix; everything else is the shipped text), and the package's units are
# copied with /usr/bin/electra-edge pointed at that dummy; those copies are verified.
# Any diagnostic fails the check (systemd-analyze exits 0 on unknown keys and only warns).
# Then the package's services must equal install.sh's in every setting but those that name
# paths, the model, the instance or the environment (the hardening, limits and timeouts are
# written three times; this keeps them from drifting apart), and likewise the sockets.
# Prints the offline `systemd-analyze security` exposure scores for information.
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
# The package's units, as the package installs them (/lib/systemd/system) but with the binary
# path pointed at the dummy; the templates also under an instance's name (electra-edge@demo:
# verify instantiates it, resolving %i and finding electra-edge@demo.socket beside it).
pkg="$tmp/package"
mkdir -p "$pkg"
for unit in "$here/deb/electra-edge.service" "$here/electra-edge.socket" \
    "$here/deb/electra-edge@.service" "$here/deb/electra-edge@.socket"; do
    sed "s#/usr/bin/electra-edge #$tmp/electra-edge #" "$unit" > "$pkg/$(basename "$unit")"
done
ln -s electra-edge@.service "$pkg/electra-edge@demo.service"
ln -s electra-edge@.socket "$pkg/electra-edge@demo.socket"
grep -q "^ExecStart=$tmp/electra-edge " "$pkg/electra-edge.service" "$pkg/electra-edge@.service" ||
    { echo "verify-units: FAILED: the package's ExecStart= is not /usr/bin/electra-edge ..." >&2; exit 1; }

failed=0
verify() { # LABEL UNIT-FILE...
    local label="$1" rc=0 out
    shift
    out="$(systemd-analyze verify "$@" 2>&1)" || rc=$?
    if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
        printf '%s\n' "$out" | sed -e "s#$tmp/sysroot##g" -e "s#$tmp/package#/lib/systemd/system#g" >&2
        echo "verify-units: FAILED: $label (systemd-analyze verify rc=$rc)" >&2
        failed=1
    else
        echo "verify-units: systemd-analyze verify passed: $label"
    fi
}
verify "install.sh's electra-edge.service, electra-edge.socket" "${units[@]}"
verify "the package's electra-edge.service, electra-edge.socket" "$pkg/electra-edge.service" "$pkg/electra-edge.socket"
verify "the package's templates as electra-edge@demo.service, electra-edge@demo.socket" \
    "$pkg/electra-edge@demo.service" "$pkg/electra-edge@demo.socket"
verify "the package's templates electra-edge@.service, electra-edge@.socket" \
    "$pkg/electra-edge@.service" "$pkg/electra-edge@.socket"

# Settings that may differ between install.sh's units and the package's; every other
# key=value line must be the same, in the same order.
settings() { # UNIT-FILE -> its settings, comments and the keys above left out
    grep -v -E '^[[:space:]]*([#;]|$)' "$1" |
        grep -v -E '^(Description|Documentation|Requires|After|ExecStart|Environment|EnvironmentFile|ReadOnlyPaths|CacheDirectory|Also|ListenStream)='
}
same() { # LABEL A B
    local d
    if ! d="$(diff <(settings "$2") <(settings "$3"))"; then
        printf '%s\n' "$d" | sed 's/^/    /' >&2
        echo "verify-units: FAILED: $1 differ in settings other than paths, model and environment (< $(basename "$2"), > $(basename "$3"))" >&2
        failed=1
    fi
}
same "install.sh's and the package's electra-edge.service" "$here/electra-edge.service" "$here/deb/electra-edge.service"
same "install.sh's electra-edge.service and the package's electra-edge@.service" "$here/electra-edge.service" "$here/deb/electra-edge@.service"
same "electra-edge.socket and electra-edge@.socket" "$here/electra-edge.socket" "$here/deb/electra-edge@.socket"
[ "$failed" = 0 ] || exit 1
echo "verify-units: the package's services and sockets have install.sh's settings ($(systemd-analyze --version | head -n1))"
for unit in "${units[0]}" "$pkg/electra-edge.service" "$pkg/electra-edge@demo.service"; do
    if score="$(systemd-analyze security --offline=yes "$unit" 2>/dev/null | grep -i 'overall exposure')"; then
        case "$unit" in "$pkg"/*) from="the package's" ;; *) from="install.sh's" ;; esac
        echo "verify-units: $from ${score#→ }"
    fi
done

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
