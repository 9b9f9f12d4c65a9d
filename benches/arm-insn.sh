#!/usr/bin/env bash
# aarch64 instructions per request, electra-edge against onnxruntime, counted exactly under qemu
# (docs/performance.md, "aarch64: instructions per request"). Prints one markdown table:
#
#   | tokens | cortex-a72 release | cortex-a76 release | cortex-a72 dist | cortex-a76 dist |
#
# each cell "ours M / onnxruntime M = ratio", small discriminator, one thread. cortex-a72 is the
# Raspberry Pi 4's core (NEON, no dotprod), cortex-a76 the Pi 5's (dotprod).
#
#   benches/arm-insn.sh [--build] [--release BIN] [--dist BIN] [--model DIR]
#                       [--cpus "cortex-a72 cortex-a76"] [--lengths "8 32 128"] [--n N]
#
# --build       first build both binaries (cargo build --release / --profile dist, aarch64;
#               the dist build takes many minutes: fat LTO, one codegen unit)
# --release/--dist  the binaries (default target/aarch64-unknown-linux-gnu/{release,dist}/electra-edge);
#               --dist none leaves the dist columns out
# --n N         requests per count (per request = (count of 1 + N requests - count of 1) / N);
#               default 12 up to 32 tokens, 4 above: request i is the i-th text arm-insn cuts
#               from the fixture sentences, and the first 13 of them tokenize to exactly 8 and
#               32 tokens (later ones to fewer); a larger N makes the start-up's count, which
#               varies by up to ~1% from run to run, weigh less (docs/performance.md)
#
# Needs ../shared/tools/arm-insn/arm-insn beside the repository (it needs qemu-user with
# plugins, the cross sysroot /usr/aarch64-linux-gnu and `cc`; for onnxruntime it makes an
# aarch64 Python with the onnxruntime wheel on first use, see its README). Set ARM_INSN_CACHE
# and ARMPY to folders of your own when other counts may run at the same time; this script
# defaults them to /tmp/arm-insn-$USER and leaves ARMPY to arm-insn.
set -euo pipefail
cd "$(dirname "$0")/.."
ARM_INSN=${ARM_INSN:-../shared/tools/arm-insn/arm-insn}
target=aarch64-unknown-linux-gnu
release="target/$target/release/electra-edge"
dist="target/$target/dist/electra-edge"
model=../shared/fixtures/electra-small-zh/discriminator
cpus="cortex-a72 cortex-a76"
lengths="8 32 128"
n=""
build=0
while [ $# -gt 0 ]; do
    case "$1" in
        --build) build=1; shift ;;
        --release) release=$2; shift 2 ;;
        --dist) dist=$2; shift 2 ;;
        --model) model=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --lengths) lengths=$2; shift 2 ;;
        --n) n=$2; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "arm-insn.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
    esac
done
if [ ! -x "$ARM_INSN" ]; then
    echo "arm-insn.sh: $ARM_INSN is missing: this script needs the arm-insn tool (a qemu plugin" >&2
    echo "  and its driver) at ../shared/tools/arm-insn/ beside the repository, or ARM_INSN=PATH" >&2
    exit 2
fi
[ -d "$model" ] || { echo "arm-insn.sh: no model folder at $model (--model DIR)" >&2; exit 2; }
export ARM_INSN_CACHE=${ARM_INSN_CACHE:-/tmp/arm-insn-${USER:-$(id -un)}}
if [ "$build" = 1 ]; then
    cargo build --release --target "$target" --bin electra-edge
    [ "$dist" = none ] || cargo build --profile dist --target "$target" --bin electra-edge
fi
builds=(release)
[ "$dist" = none ] || builds+=(dist)
for b in "${builds[@]}"; do
    bin=$([ "$b" = release ] && echo "$release" || echo "$dist")
    if [ ! -f "$bin" ]; then
        echo "arm-insn.sh: no $b binary at $bin: build it (--build, or cargo build $([ "$b" = release ] && echo --release || echo "--profile dist") --target $target)" >&2
        exit 2
    fi
done

requests() { if [ -n "$n" ]; then echo "$n"; elif [ "$1" -le 32 ]; then echo 12; else echo 4; fi; }
declare -A ours ort
t0=$(date +%s)
for cpu in $cpus; do
    for len in $lengths; do
        k=$(requests "$len")
        # onnxruntime's count does not depend on our build: one `compare` (with the release
        # binary) gives both, then `count` for the dist binary.
        echo "# $cpu, $len tokens, $k requests: arm-insn compare (release and onnxruntime) ..." >&2
        while IFS='|' read -r _ l o r _; do
            l=$(echo "$l" | xargs); o=$(echo "$o" | xargs); r=$(echo "$r" | xargs)
            [ "$l" = "$len" ] || continue
            ours[$cpu,release,$len]=${o% M}
            ort[$cpu,$len]=${r% M}
        done < <("$ARM_INSN" compare "$release" "$model" "$cpu" "$len" "$k")
        if [ "$dist" != none ]; then
            echo "# $cpu, $len tokens, $k requests: arm-insn count (dist) ..." >&2
            while read -r l count _; do
                if [ "$l" = "$len" ]; then ours[$cpu,dist,$len]=$count; fi
            done < <("$ARM_INSN" count "$dist" "$model" "$cpu" "$len" "$k")
        fi
    done
done

cell() { # ours onnxruntime -> "o M / r M = x"
    python3 -c "import sys; o, r = map(float, sys.argv[1:]); print(f'{o:.1f} M / {r:.1f} M = {o / r:.2f}x')" "$1" "$2"
}
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD 2>/dev/null || echo '?'): small discriminator, one thread, $(for l in $lengths; do printf '%s ' "$l:$(requests "$l")"; done)(tokens:requests per count), instructions per request: electra-edge / onnxruntime ($(($(date +%s) - t0)) s)"
header="| tokens"
rule="| ---"
for b in "${builds[@]}"; do
    for cpu in $cpus; do header+=" | $cpu $b"; rule+=" | ---"; done
done
echo "$header |"
echo "$rule |"
for len in $lengths; do
    row="| $len"
    for b in "${builds[@]}"; do
        for cpu in $cpus; do
            o=${ours[$cpu,$b,$len]:-}
            r=${ort[$cpu,$len]:-}
            if [ -z "$o" ] || [ -z "$r" ]; then
                echo "arm-insn.sh: no count for $cpu $b $len tokens" >&2
                exit 1
            fi
            row+=" | $(cell "$o" "$r")"
        done
    done
    echo "$row |"
done
