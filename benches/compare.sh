#!/usr/bin/env bash
# One command for the x86-64 benchmark (docs/performance.md): this project (int8 fused with
# mapped or heap weights, whole requests through `electra-edge run`, 2 threads, fp32 graph =
# tract f32, tract's own int8) and onnxruntime (int8, fp32), one thread each unless said, on
# the small fixture at 8, 32, 128 and 512 tokens; medians, ratios to onnxruntime int8,
# time-to-ready and memory. Prints a markdown table.
#
#   benches/compare.sh [--model DIR] [--seqs 8,32,128,512] [--runs 30] [--slow-runs 3] [--rounds 1]
#       [--configs ours-int8,ours-cli,ours-int8-heap,ours-int8-t2,ours-fp32,tract-int8]   (ours; onnxruntime: always both)
#
# --rounds N runs everything N times, ours and onnxruntime in turn, and keeps each path's best
# round per length (minimum CPU time, fastest median, quickest ready): on a host whose speed
# drifts over minutes (shared VMs), a slow spell then does not land on one side of a ratio only.
#
# Environment: FIXTURES (default ../shared/fixtures next to the repo), PYTHON (python3),
# OUT (keep the raw JSON lines there).
set -euo pipefail
cd "$(dirname "$0")/.."
FIXTURES=${FIXTURES:-../shared/fixtures}
MODEL="$FIXTURES/electra-small-zh/discriminator"
SEQS=8,32,128,512
RUNS=30
SLOW_RUNS=3
ROUNDS=1
CONFIGS=ours-int8,ours-cli,ours-int8-heap,ours-int8-t2,ours-fp32,tract-int8
while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODEL=$2; shift 2 ;;
        --seqs) SEQS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --slow-runs) SLOW_RUNS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --configs) CONFIGS=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import onnxruntime, numpy" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet onnxruntime numpy
fi
OUT=${OUT:-$(mktemp -t ee-compare.XXXXXX.jsonl)}
: > "$OUT"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC') $(uname -m) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# benches/compare.sh --model $MODEL --seqs $SEQS --runs $RUNS --slow-runs $SLOW_RUNS --rounds $ROUNDS --configs $CONFIGS"
for _ in $(seq "$ROUNDS"); do
    cargo bench --quiet --bench compare -- --model "$MODEL" --seqs "$SEQS" --runs "$RUNS" --slow-runs "$SLOW_RUNS" --configs "$CONFIGS" >> "$OUT"
    "$PYTHON" benches/compare.py ort --model "$MODEL" --seqs "$SEQS" --runs "$RUNS" >> "$OUT"
done
"$PYTHON" -c 'import onnxruntime; print("# onnxruntime", onnxruntime.__version__)'
"$PYTHON" benches/compare.py table "$OUT"
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
