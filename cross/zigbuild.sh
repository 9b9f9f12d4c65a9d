#!/usr/bin/env bash
# cargo-zigbuild with pinned versions, installed if missing: links Rust binaries against an
# older glibc's symbol versions (a `.2.27` suffix on the target), so that what we build on a
# Debian 12 host also runs on Debian 10/11, Ubuntu 18.04/20.04 and Raspberry Pi OS bullseye.
#
#   bash cross/zigbuild.sh SUBCOMMAND ARGS...     e.g.
#   bash cross/zigbuild.sh zigbuild --profile dist --target aarch64-unknown-linux-gnu.2.27
#   bash cross/zigbuild.sh test --release --target aarch64-unknown-linux-gnu.2.27 --no-run
#   bash cross/zigbuild.sh --install-only
#
# SUBCOMMAND is one of cargo-zigbuild's (zigbuild = build, test, check, clippy, run, rustc).
# The output lands where cargo's would for the target without the suffix
# (target/aarch64-unknown-linux-gnu/PROFILE/). Only the linker changes: Zig's clang links
# against Zig's glibc stubs of the requested version instead of Debian's cross glibc; the Rust
# code and the rustc flags are cargo's. `cargo build --target aarch64-unknown-linux-gnu` with
# Debian's cross gcc (.cargo/config.toml) keeps working beside it.
#
# Both tools come from PyPI (cargo-zigbuild's wheel is the prebuilt binary; ziglang is the Zig
# toolchain), installed with `python3 -m pip` when the versions here are not the ones on PATH.
# Env: CARGO_ZIGBUILD_VERSION, ZIGLANG_VERSION to try other versions.
set -euo pipefail

zigbuild_version="${CARGO_ZIGBUILD_VERSION:-0.24.1}"
ziglang_version="${ZIGLANG_VERSION:-0.15.2}"

if [ "$(cargo-zigbuild --version 2>/dev/null)" != "cargo-zigbuild $zigbuild_version" ] ||
    [ "$(python3 -m ziglang version 2>/dev/null)" != "$ziglang_version" ]; then
    echo "zigbuild: installing cargo-zigbuild $zigbuild_version and ziglang $ziglang_version (pip)" >&2
    python3 -m pip install --quiet --disable-pip-version-check \
        "cargo-zigbuild==$zigbuild_version" "ziglang==$ziglang_version" >&2
    hash -r
fi
if [ "${1:-}" = --install-only ]; then
    echo "$(cargo-zigbuild --version), zig $(python3 -m ziglang version)"
    exit 0
fi
[ $# -gt 0 ] || { echo "usage: $0 SUBCOMMAND ARGS... (see the header)" >&2; exit 2; }
exec cargo-zigbuild "$@"
