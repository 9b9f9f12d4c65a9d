#!/usr/bin/env bash
# Build the test suite once for aarch64 (release) and run it under qemu-user twice:
#   -cpu cortex-a72   Raspberry Pi 4: ARMv8.0, NEON, no dotprod
#   -cpu max          every feature qemu emulates (dotprod, i8mm, SVE...)
# then print the stripped size of the aarch64 release binary (and of other profiles if asked).
#
#   bash .ci/aarch64.sh [TEST-ARGS...]
#
# TEST-ARGS go to every test binary (libtest filters/options), e.g. `int8`, `--skip slow`,
# `systemd`. Tests run with the repository root as working directory (they read
# ../shared/fixtures). Installs what a fresh Debian machine lacks, idempotently: the cross gcc
# and libc, qemu-user, and the rustup target.
#
# The build links with cargo-zigbuild against glibc 2.27's symbol versions (cross/zigbuild.sh,
# pinned, installed from PyPI if missing), so the release binary it leaves in
# target/aarch64-unknown-linux-gnu/release/ is the one the Debian package may hold: it runs on
# Debian 10+, Ubuntu 18.04+ and Raspberry Pi OS bullseye as well as on newer systems. The tests
# run it against Debian's cross glibc (2.36) under qemu; cross/old-glibc.sh runs it on an
# older one. AARCH64_GLIBC= (empty) builds with plain cargo and Debian's cross gcc instead
# (.cargo/config.toml), as users without Zig do.
#
# Env: AARCH64_GLIBC (default 2.27), AARCH64_CPUS (default "cortex-a72 max"),
# ELECTRA_EDGE_SIZE_GOAL_MB (default 16: the goal of the deployment build, `dist`, stripped;
# docs/binary-size.md. Sizes are reported, and only fail the run when AARCH64_ENFORCE_SIZE=1),
# AARCH64_SIZE_PROFILES (default "release"; "release dist" also builds and reports the
# deployment profile).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu
cpus="${AARCH64_CPUS:-cortex-a72 max}"
glibc="${AARCH64_GLIBC-2.27}"
t0=$(date +%s)
phase_start=$t0
current=""
phase() { # end the current phase (with its duration), start the next
    local now; now=$(date +%s)
    [ -z "$current" ] || echo "== aarch64: $current: $((now - phase_start))s"
    current="$1"
    phase_start=$now
    [ "$1" = done ] && echo "== aarch64: total $((now - t0))s" || echo "== aarch64: $1"
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

phase "tools"
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
[ -e "$sysroot/lib/libc.so" ] || [ -e "$sysroot/lib/libc.so.6" ] || missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
if [ -n "$glibc" ]; then
    bash cross/zigbuild.sh --install-only
fi
# Tests that start a program (the electra-edge binary, or a copy of themselves) exec an aarch64
# ELF: the kernel runs it through qemu only with a binfmt_misc handler. Register one for this
# run if there is none (root only), and remove it on exit; QEMU_LD_PREFIX/QEMU_CPU (set per run
# below) tell that qemu where the aarch64 libraries are and which CPU to emulate.
binfmt=/proc/sys/fs/binfmt_misc
binfmt_ours=""
json=""
cleanup() {
    [ -z "$json" ] || rm -f "$json"
    if [ -n "$binfmt_ours" ] && [ -e "$binfmt_ours" ]; then echo -1 > "$binfmt_ours" || true; fi
}
trap cleanup EXIT
aarch64_magic='7f454c460201010000000000000000000200b700'
have_binfmt() {
    local f
    for f in "$binfmt"/*; do
        [ -f "$f" ] && grep -qx enabled "$f" 2>/dev/null && grep -q "magic $aarch64_magic" "$f" 2>/dev/null && return 0
    done
    return 1
}
if ! have_binfmt && [ "$(id -u)" = 0 ]; then
    [ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || true
    if [ -w "$binfmt/register" ]; then
        echo ':electra-edge-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$(command -v qemu-aarch64)"':' \
            > "$binfmt/register" 2>/dev/null && binfmt_ours="$binfmt/electra-edge-aarch64"
    fi
fi
if have_binfmt; then
    echo "binfmt_misc: aarch64 executables run through qemu${binfmt_ours:+ (registered for this run)}"
else
    echo "binfmt_misc: no aarch64 handler (not root, or not allowed): tests that exec the aarch64 binary will fail" >&2
fi
aarch64-linux-gnu-gcc --version | head -n1
qemu-aarch64 --version | head -n1
cargo --version

if [ -n "$glibc" ]; then
    build=(bash cross/zigbuild.sh test --release --target "$target.$glibc")
else
    build=(cargo test --release --target "$target")
fi
phase "build (${build[*]} --no-run)"
json="$(mktemp)"
# One release build: the test executables, and (because integration tests need it) the
# electra-edge binary itself, with the release profile.
"${build[@]}" --no-run --message-format=json-render-diagnostics > "$json"
mapfile -t tests < <(python3 - "$json" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])
PY
)
[ ${#tests[@]} -gt 0 ] || { echo "aarch64: no test executables were built" >&2; exit 1; }
printf '  %s\n' "${tests[@]#"$repo"/}"

failed=()
for cpu in $cpus; do
    phase "tests under qemu-aarch64 -cpu $cpu"
    runner="qemu-aarch64 -L $sysroot -cpu $cpu"
    # the int8 kernels each emulated CPU must run (a missing one fails the int8 tests)
    case "$cpu" in
        max) require=all ;;
        cortex-a72) require=neon ;;
        *) require="" ;;
    esac
    for exe in "${tests[@]}"; do
        echo "-- ${exe#"$repo"/} (-cpu $cpu)"
        # Programs the tests start go through qemu too: via binfmt_misc (QEMU_*), or where a
        # test supports it, an explicit ELECTRA_EDGE_TEST_RUNNER prefix.
        if ! QEMU_LD_PREFIX="$sysroot" QEMU_CPU="$cpu" ELECTRA_EDGE_TEST_RUNNER="$runner" \
            ELECTRA_EDGE_REQUIRE_KERNELS="$require" $runner "$exe" "$@"; then
            failed+=("$(basename "$exe") -cpu $cpu")
        fi
    done
done

phase "binary size"
# The release binary comes from the test build above. Other profiles (e.g. `dist`, the smaller
# deployment build: fat LTO, minutes longer) are built here only when asked for.
goal_mb="${ELECTRA_EDGE_SIZE_GOAL_MB:-16}"
for profile in ${AARCH64_SIZE_PROFILES:-release}; do
    if [ "$profile" != release ]; then
        if [ -n "$glibc" ]; then
            phase "build (cargo zigbuild --profile $profile --target $target.$glibc --bin electra-edge)"
            bash cross/zigbuild.sh zigbuild --profile "$profile" --target "$target.$glibc" --bin electra-edge
        else
            phase "build (cargo build --profile $profile --target $target --bin electra-edge)"
            cargo build --profile "$profile" --target "$target" --bin electra-edge
        fi
    fi
    bin="target/$target/$profile/electra-edge"
    if [ -f "$bin" ]; then
        stripped="$(mktemp)"
        aarch64-linux-gnu-strip -o "$stripped" "$bin"
        size=$(stat -c %s "$bin")
        ssize=$(stat -c %s "$stripped")
        rm -f "$stripped"
        verdict=$(python3 -c "print('within' if $ssize <= $goal_mb*1024*1024 else 'OVER')")
        # The goal is the deployment build's; release (no LTO) is reported for comparison.
        goal_text="goal <= $goal_mb MiB: $verdict"
        [ "$profile" = dist ] || goal_text="the goal (<= $goal_mb MiB) is for dist"
        python3 -c "print(f'aarch64 electra-edge ($profile): {$size/2**20:.2f} MiB as built, {$ssize/2**20:.2f} MiB stripped ($ssize bytes); $goal_text')"
        # The newest glibc symbol version it needs: the oldest glibc it starts on.
        needs="$(aarch64-linux-gnu-objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -u -V | tail -n1)"
        echo "aarch64 electra-edge ($profile): needs glibc >= $needs${glibc:+ (linked for $glibc)}"
        if [ -n "$glibc" ] && [ "$(printf '%s\n%s\n' "$needs" "$glibc" | sort -V | tail -n1)" != "$glibc" ]; then
            failed+=("glibc $needs > $glibc ($profile)")
        fi
        if [ "$profile" = dist ] && [ "$verdict" = OVER ] && [ "${AARCH64_ENFORCE_SIZE:-0}" = 1 ]; then
            failed+=("binary size ($profile)")
        fi
    else
        echo "aarch64: $bin was not built" >&2
        failed+=("binary missing ($profile)")
    fi
done

phase "done"
if [ ${#failed[@]} -gt 0 ]; then
    echo "aarch64: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "aarch64: all test binaries passed under: $cpus"
