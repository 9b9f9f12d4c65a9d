#!/usr/bin/env bash
# Binary size and the memory the binary's code costs (docs/binary-size.md).
#
#   benches/size.sh build [--target TRIPLE] [PROFILE...]   # default: host target, "release"
#   benches/size.sh rss BIN [MODEL_DIR]                    # default model: models/demo/discriminator
#
# `build` builds `electra-edge` with each profile (`cargo build --profile P --bin electra-edge`)
# and prints, per profile, the build's wall time (of that command: it is a clean-build time only
# if target/ held nothing for that profile and target), the size as built and the size stripped
# (a stripped copy; `aarch64-linux-gnu-strip` for aarch64). Run it under `nice` on a shared host.
#
# `rss` starts `BIN run --model MODEL_DIR`, sends one request, and once the answer is out (and
# before stdin closes) prints VmRSS, RssAnon and RssFile from /proc/PID/status (the steady
# memory of the CLI after its first answer) and the resident kB of the executable's own mappings
# (/proc/PID/smaps), which is most of RssFile.
set -euo pipefail
cd "$(dirname "$0")/.."

kib() { python3 -c "import sys; print(f'{int(sys.argv[1])/2**20:.2f} MiB')" "$1"; }

build() {
    local target="" profiles=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --target) target=$2; shift 2 ;;
            *) profiles+=("$1"); shift ;;
        esac
    done
    [ ${#profiles[@]} -gt 0 ] || profiles=(release)
    local strip=strip dir=target
    if [ -n "$target" ]; then
        dir="target/$target"
        case "$target" in
            aarch64-*) strip=aarch64-linux-gnu-strip ;;
        esac
    fi
    local p t0 secs bin tmp
    for p in "${profiles[@]}"; do
        t0=$(date +%s)
        cargo build --profile "$p" ${target:+--target "$target"} --bin electra-edge
        secs=$(($(date +%s) - t0))
        # cargo puts the `dev` profile in debug/, every other profile in a folder of its name
        bin="$dir/$([ "$p" = dev ] && echo debug || echo "$p")/electra-edge"
        tmp=$(mktemp)
        "$strip" -o "$tmp" "$bin"
        echo "electra-edge ${target:-host} $p: build ${secs}s, $(kib "$(stat -c %s "$bin")") as built, $(kib "$(stat -c %s "$tmp")") stripped ($(stat -c %s "$tmp") bytes)"
        rm -f "$tmp"
    done
}

rss() {
    local bin=$1 model=${2:-models/demo/discriminator} fifo dir pid out
    dir=$(mktemp -d)
    fifo="$dir/in"
    out="$dir/out"
    mkfifo "$fifo"
    "$bin" run --model "$model" < "$fifo" > "$out" &
    pid=$!
    exec 3> "$fifo"
    echo '{"text":"我们今天去学校"}' >&3
    for _ in $(seq 1 600); do
        [ -s "$out" ] && break
        sleep 0.1
    done
    [ -s "$out" ] || { echo "no answer from $bin" >&2; kill "$pid"; exit 1; }
    sleep 0.2
    local status binary
    status=$(grep -E '^(VmRSS|RssAnon|RssFile)' "/proc/$pid/status" | tr -s ' \t' ' ' | paste -sd ' ')
    # resident pages of mappings of the executable itself (its code, constants, unwind tables)
    binary=$(python3 - "$pid" <<'PY'
import os, sys
pid = sys.argv[1]
exe = os.readlink(f"/proc/{pid}/exe")
total, ours = 0, False
for line in open(f"/proc/{pid}/smaps"):
    head = line.split()
    if not head[0].endswith(":"):
        ours = len(head) >= 6 and head[5] == exe
    elif ours and head[0] == "Rss:":
        total += int(head[1])
print(total)
PY
)
    echo "$bin: $status binary's own pages: $binary kB"
    exec 3>&-
    wait "$pid"
    rm -rf "$dir"
}

case "${1:-}" in
    build) shift; build "$@" ;;
    rss) shift; [ $# -ge 1 ] || { echo "usage: $0 rss BIN [MODEL_DIR]" >&2; exit 2; }; rss "$@" ;;
    *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
