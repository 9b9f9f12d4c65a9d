#!/usr/bin/env bash
# The aarch64 instruction budget: counts the instructions one request executes (arm-insn count,
# exact under qemu-aarch64, small discriminator, one thread) at the lengths and on the CPUs the
# budget file names, and fails when a count is more than 2% above its budget. Counts do not
# depend on the host's speed: this guards against regressions, it times nothing.
#
#   bash .ci/insn-budget.sh [BINARY] [BUILD]
#
# BINARY  an aarch64 electra-edge (default target/aarch64-unknown-linux-gnu/release/electra-edge)
# BUILD   which rows of the budget file apply: release or dist (default: the binary's folder name)
#
# The budget file (benches/arm-insn-budget.txt, or INSN_BUDGET_FILE) has one line per count:
# "CPU TOKENS BUILD REQUESTS BUDGET": per request = (count of 1 + REQUESTS requests - count of 1
# request) / REQUESTS (arm-insn's N), BUDGET in instructions per request. REQUESTS is part of
# what is counted (request i is a different text) and large enough that the start-up's count
# (which varies: see docs/performance.md) weighs little. When a count is well below its budget
# (INSN_BUDGET_SLACK, default 3%) the script says so and prints the line to put in the file:
# lower the budget when a change makes requests cheaper, so that the next regression shows.
#
# Needs ../shared/tools/arm-insn/arm-insn beside the repository (or ARM_INSN=PATH), qemu-user,
# the cross sysroot (/usr/aarch64-linux-gnu) and `cc` (arm-insn builds its qemu plugin): what
# .ci/aarch64.sh installs. Installs nothing itself. The CPUs are counted in parallel (one qemu
# at a time each); ARM_INSN_CACHE (default a fresh temporary folder) holds the plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
ARM_INSN=${ARM_INSN:-../shared/tools/arm-insn/arm-insn}
budget_file=${INSN_BUDGET_FILE:-benches/arm-insn-budget.txt}
model=${INSN_BUDGET_MODEL:-../shared/fixtures/electra-small-zh/discriminator}
bin=${1:-target/aarch64-unknown-linux-gnu/release/electra-edge}
build=${2:-$(basename "$(dirname "$bin")")}
tolerance=${INSN_BUDGET_TOLERANCE:-2}
slack=${INSN_BUDGET_SLACK:-3}

die() { echo "insn-budget: $*" >&2; exit 2; }
[ -x "$ARM_INSN" ] || die "$ARM_INSN is missing: the budget is counted with the arm-insn tool (a qemu plugin and its driver) at ../shared/tools/arm-insn/ beside the repository (or set ARM_INSN=PATH)"
command -v qemu-aarch64 >/dev/null || die "qemu-aarch64 is missing (qemu-user; bash .ci/aarch64.sh installs it)"
command -v cc >/dev/null || die "cc is missing (arm-insn builds its qemu plugin with it)"
[ -d /usr/aarch64-linux-gnu ] || die "the cross sysroot /usr/aarch64-linux-gnu is missing (libc6-dev-arm64-cross; bash .ci/aarch64.sh installs it)"
[ -f "$bin" ] || die "no binary at $bin (cargo build --release --target aarch64-unknown-linux-gnu)"
[ -f "$budget_file" ] || die "no budget file at $budget_file"
[ -d "$model" ] || die "no model folder at $model"

# the budget rows for this build: "cpu tokens requests budget"
mapfile -t rows < <(awk -v b="$build" '!/^[[:space:]]*(#|$)/ && $3 == b { print $1, $2, $4, $5 }' "$budget_file")
[ ${#rows[@]} -gt 0 ] || die "$budget_file has no rows for the build \"$build\""
cpus=$(printf '%s\n' "${rows[@]}" | awk '{ print $1 }' | sort -u)

work=$(mktemp -d)
cache=${ARM_INSN_CACHE:-$work/cache}
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
echo "insn-budget: $bin ($build), $(printf '%s\n' "${rows[@]}" | wc -l) counts, CPUs in parallel: $(echo $cpus)"
for cpu in $cpus; do
    # one cache folder per CPU: the parallel counts must not build the plugin over each other
    printf '%s\n' "${rows[@]}" | awk -v c="$cpu" '$1 == c { print $2, $3 }' > "$work/$cpu.rows"
    (
        while read -r len n; do
            ARM_INSN_CACHE="$cache/$cpu" "$ARM_INSN" count "$bin" "$model" "$cpu" "$len" "$n"
        done < "$work/$cpu.rows"
    ) > "$work/$cpu.out" 2> "$work/$cpu.err" &
    pids+=($!)
done
failed_runs=0
for p in "${pids[@]}"; do wait "$p" || failed_runs=$((failed_runs + 1)); done
pids=()
if [ "$failed_runs" -gt 0 ]; then
    for cpu in $cpus; do
        echo "-- arm-insn count on $cpu:" >&2
        cat "$work/$cpu.out" "$work/$cpu.err" >&2
    done
    die "arm-insn count failed ($failed_runs of the CPUs)"
fi

judge() { # COUNT_M BUDGET -> "count pct verdict"
    python3 - "$1" "$2" "$tolerance" "$slack" <<'PY'
import sys
m, budget, tol, slack = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
count = round(m * 1e6)
pct = (count / budget - 1) * 100
verdict = "OVER" if pct > tol else ("below" if pct < -slack else "ok")
print(count, f"{pct:+.1f}%", verdict)
PY
}
status=0
printf '%-11s %6s %8s %10s %10s %8s  %s\n' cpu tokens requests count budget vs ""
for row in "${rows[@]}"; do
    read -r cpu len n budget <<< "$row"
    # arm-insn prints "LENGTH COUNT M" (millions, one decimal)
    m=$(awk -v l="$len" '$1 == l { print $2 }' "$work/$cpu.out")
    if [ -z "$m" ]; then
        echo "insn-budget: no count for $cpu at $len tokens; arm-insn said:" >&2
        cat "$work/$cpu.out" "$work/$cpu.err" >&2
        status=1
        continue
    fi
    read -r count pct verdict < <(judge "$m" "$budget")
    note=""
    if [ "$verdict" = OVER ]; then
        # arm-insn's total can come out low for a run whose threads (at start-up) ran at once;
        # that makes one per-request figure too high by up to ~1% at these request counts.
        # Count once more: a real regression is over both times.
        again=$(ARM_INSN_CACHE="$cache/$cpu" "$ARM_INSN" count "$bin" "$model" "$cpu" "$len" "$n" | awk -v l="$len" '$1 == l { print $2 }')
        note="counted again: ${again:-?} M; "
        if [ -n "$again" ] && python3 -c "import sys; sys.exit(not $again < $m)"; then
            m=$again
            read -r count pct verdict < <(judge "$m" "$budget")
        fi
    fi
    case "$verdict" in
        OVER) note+="more than ${tolerance}% over its budget"; status=1 ;;
        below) note+="well below its budget: lower it in $budget_file to \"$cpu $len $build $n $count\"" ;;
    esac
    printf '%-11s %6s %8s %9.1fM %9.1fM %8s  %s\n' "$cpu" "$len" "$n" "$m" \
        "$(python3 -c "print($budget / 1e6)")" "$pct" "$note"
done
echo "insn-budget: $(($(date +%s) - t0)) s"
if [ "$status" != 0 ]; then
    echo "insn-budget: FAILED: a request executes more instructions than $budget_file allows (see above)" >&2
    echo "  where they go: $ARM_INSN profile BINARY MODEL CPU TOKENS (unstripped binary)" >&2
fi
exit "$status"
