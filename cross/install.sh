#!/usr/bin/env bash
# Install electra-edge (binary, systemd units, model folder) under PREFIX.
#
#   cross/install.sh [--binary PATH] [--model DIR] [--enable] [PREFIX]
#
# PREFIX (default /) is where the files live at run time:
#   PREFIX/usr/local/bin/electra-edge
#   PREFIX/usr/local/share/electra-edge/model/      (read-only model folder)
#   PREFIX/etc/systemd/system/electra-edge.service
#   PREFIX/etc/systemd/system/electra-edge.socket
# When PREFIX is not /, the /usr/local/... paths inside the units are rewritten to
# PREFIX/usr/local/... (link such units with `systemctl link`). DESTDIR, if set, is prepended to
# every file written but not to the paths inside the units (staging, e.g. an SD card image:
# `DESTDIR=/mnt/rootfs cross/install.sh /`).
#
# --binary PATH  the electra-edge executable (default: the aarch64 release build,
#                target/aarch64-unknown-linux-gnu/release/electra-edge)
# --model DIR    a model folder to copy (config.json, tokenizer, model .onnx, golden outputs);
#                without it the model directory is only created
# --enable       after installing to / on a running systemd: daemon-reload and
#                `enable --now` the socket and the service
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
binary="$repo/target/aarch64-unknown-linux-gnu/release/electra-edge"
model=""
enable=0
prefix=""

usage() { sed -n '2,22s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary="$2"; shift 2 ;;
        --binary=*) binary="${1#*=}"; shift ;;
        --model) [ $# -ge 2 ] || die "--model needs a directory"; model="$2"; shift 2 ;;
        --model=*) model="${1#*=}"; shift ;;
        --enable) enable=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$prefix" ] || die "only one PREFIX"; prefix="$1"; shift ;;
    esac
done
prefix="${prefix:-/}"
prefix="$(realpath -m "$prefix")"
case "$prefix" in
    *[!A-Za-z0-9._/+-]*) die "PREFIX '$prefix' has characters that would need quoting in a unit file" ;;
esac
destdir="${DESTDIR:-}"
if [ -n "$destdir" ]; then destdir="$(realpath -m "$destdir")"; fi

[ -f "$binary" ] || die "no binary at $binary (build it: cargo build --release --target aarch64-unknown-linux-gnu, or pass --binary)"
[ -x "$binary" ] || die "$binary is not executable"
if [ -n "$model" ] && [ ! -d "$model" ]; then die "--model $model is not a directory"; fi

# Paths as seen at run time (root = PREFIX), and where we write them (DESTDIR + that).
if [ "$prefix" = / ]; then run=""; else run="$prefix"; fi
bin_dir="$run/usr/local/bin"
model_dir="$run/usr/local/share/electra-edge/model"
unit_dir="$run/etc/systemd/system"

# Warn when installing for this very machine a binary of another architecture.
elf_machine() { od -An -j18 -N2 -tu2 "$1" 2>/dev/null | tr -d ' '; }
if [ -z "$destdir" ] && [ -z "$run" ]; then
    case "$(uname -m):$(elf_machine "$binary")" in
        aarch64:183|x86_64:62) ;;
        *) echo "install.sh: warning: $binary does not look like a $(uname -m) executable" >&2 ;;
    esac
fi

install -d -m 0755 "$destdir$bin_dir" "$destdir$unit_dir" "$destdir$model_dir"
install -m 0755 "$binary" "$destdir$bin_dir/electra-edge"

render() { # unit file -> stdout, /usr/local paths rewritten to PREFIX
    if [ -z "$run" ]; then cat "$1"; else sed "s#/usr/local/#$run/usr/local/#g" "$1"; fi
}
for unit in electra-edge.service electra-edge.socket; do
    render "$here/$unit" > "$destdir$unit_dir/$unit.tmp"
    chmod 0644 "$destdir$unit_dir/$unit.tmp"
    mv -f "$destdir$unit_dir/$unit.tmp" "$destdir$unit_dir/$unit"
done

if [ -n "$model" ]; then
    # -L: copy what symlinks point to (the service cannot follow links into home directories).
    cp -RL --no-preserve=ownership "$model/." "$destdir$model_dir/"
    # Read-only for the service's dynamic user: world-readable, writable by root only.
    chmod -R u+rwX,go+rX,go-w "$destdir$model_dir"
    [ -f "$destdir$model_dir/config.json" ] || echo "install.sh: warning: no config.json in $model" >&2
else
    echo "install.sh: no --model given: put a model folder's files in $destdir$model_dir" >&2
fi

echo "installed:"
echo "  $destdir$bin_dir/electra-edge"
echo "  $destdir$unit_dir/electra-edge.service"
echo "  $destdir$unit_dir/electra-edge.socket"
echo "  $destdir$model_dir/"

if [ "$enable" = 1 ]; then
    if [ -n "$destdir" ] || [ -n "$run" ]; then
        die "--enable only works when installing to / without DESTDIR"
    fi
    [ -d /run/systemd/system ] || die "--enable: systemd is not running here"
    systemctl daemon-reload
    systemctl enable --now electra-edge.socket electra-edge.service
elif [ -z "$destdir" ]; then
    if [ -z "$run" ]; then
        echo "next: systemctl daemon-reload && systemctl enable --now electra-edge.socket electra-edge.service"
    else
        echo "next: systemctl link $unit_dir/electra-edge.socket $unit_dir/electra-edge.service && systemctl enable --now electra-edge.socket electra-edge.service"
    fi
fi
