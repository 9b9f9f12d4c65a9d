#!/usr/bin/env bash
# Build the Debian package of electra-edge: the binary for glibc 2.27 (so that it installs and
# runs on Debian 10+, Ubuntu 18.04+, Raspberry Pi OS bullseye+), then `cargo deb` on it.
#
#   bash cross/package.sh [--arch arm64|amd64] [--profile dist|release] [--no-build]
#                         [--binary PATH] [--deb-revision N] [--output DIR]
#
# Steps:
#   tools  installs what is missing, idempotently: cargo-deb (cargo install --locked),
#          cargo-zigbuild and the Zig toolchain (cross/zigbuild.sh: PyPI's cargo-zigbuild and
#          ziglang, pinned), the rustup target;
#          for arm64 also Debian's aarch64 binutils (objdump, strip)
#   build  cargo zigbuild --profile PROFILE --target TRIPLE.2.27 --bin electra-edge
#          (Zig links against glibc 2.27's symbol versions; the code is the same as cargo build's)
#   check  the highest GLIBC_x.y symbol version the binary needs is at most the libc6 version
#          in Depends: (Cargo.toml [package.metadata.deb]), and it needs no shared library but
#          glibc's; fails otherwise
#   deb    cargo deb --target TRIPLE --profile PROFILE --no-build  -> target/debian/*.deb
#          and prints `dpkg-deb --info` and the list of files
#
# --arch       arm64 (default: aarch64-unknown-linux-gnu) or amd64 (x86_64-unknown-linux-gnu)
# --profile    dist (default: the deployment build, fat LTO, stripped) or release (the build CI
#              already makes for the aarch64 tests)
# --no-build   package the binary already at target/TRIPLE/PROFILE/electra-edge (it must have
#              been linked for glibc 2.27 too: the check step says so if not)
# --binary PATH  package this electra-edge executable instead (implies --no-build; checked the
#                same way)
# --deb-revision N   the Debian revision (default 1: electra-edge_VERSION-1_ARCH.deb)
# --output DIR       where the .deb goes (default target/debian)
#
# Env: ELECTRA_EDGE_GLIBC (default 2.27), CARGO_DEB_VERSION (cargo-deb's version when it has to
# be installed; default below).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=arm64
profile=dist
build=1
revision=1
binary=""
output=target/debian
glibc="${ELECTRA_EDGE_GLIBC:-2.27}"
cargo_deb_version="${CARGO_DEB_VERSION:-3.8.0}"

usage() { sed -n '2,29s/^# \{0,1\}//p' "$0"; }
die() { echo "package: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) [ $# -ge 2 ] || die "--arch needs a value"; arch="$2"; shift 2 ;;
        --profile) [ $# -ge 2 ] || die "--profile needs a value"; profile="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary="$2"; build=0; shift 2 ;;
        --deb-revision) [ $# -ge 2 ] || die "--deb-revision needs a value"; revision="$2"; shift 2 ;;
        --output) [ $# -ge 2 ] || die "--output needs a directory"; output="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case "$arch" in
    arm64) triple=aarch64-unknown-linux-gnu; objdump=aarch64-linux-gnu-objdump ;;
    amd64) triple=x86_64-unknown-linux-gnu; objdump=objdump ;;
    *) die "--arch must be arm64 or amd64" ;;
esac
case "$profile" in dist|release) ;; *) die "--profile must be dist or release" ;; esac

t0=$(date +%s)
step_start=$t0
current=""
step() { # end the current step (with its duration), start the next
    local now; now=$(date +%s)
    [ -z "$current" ] || echo "== package: $current: $((now - step_start)) s"
    current="$1"
    step_start=$now
    [ "$1" = "done" ] || echo "== package: $1"
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "tools"
missing=()
command -v "$objdump" >/dev/null || missing+=("binutils-${triple%%-*}-linux-gnu")
command -v dpkg-deb >/dev/null || missing+=(dpkg)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$arch" = amd64 ] && missing=("${missing[@]/binutils-x86_64-linux-gnu/binutils}")
    echo "installing: ${missing[*]}"
    as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
fi
if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb $cargo_deb_version (cargo install --locked)"
    cargo install --locked --version "$cargo_deb_version" cargo-deb
fi
cargo deb --version
if [ "$build" = 1 ]; then
    bash cross/zigbuild.sh --install-only
    rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
fi

bin="target/$triple/$profile/electra-edge"
deb_env=()
if [ -n "$binary" ]; then
    # cargo deb takes the binary from its target directory: give it one with just this file.
    [ -f "$binary" ] || die "no binary at $binary"
    tmp_target="$(mktemp -d)"
    trap 'rm -rf "$tmp_target"' EXIT
    mkdir -p "$tmp_target/$triple/$profile"
    cp "$binary" "$tmp_target/$triple/$profile/electra-edge"
    bin="$tmp_target/$triple/$profile/electra-edge"
    deb_env=(env "CARGO_TARGET_DIR=$tmp_target")
fi
if [ "$build" = 1 ]; then
    step "build (cargo zigbuild --profile $profile --target $triple.$glibc --bin electra-edge)"
    bash cross/zigbuild.sh zigbuild --profile "$profile" --target "$triple.$glibc" --bin electra-edge
fi
[ -f "$bin" ] || die "no binary at $bin (build it, or leave out --no-build)"

step "check (glibc symbol versions against Depends:)"
# The libc6 version Depends: states, e.g. "libc6 (>= 2.27)".
depends_glibc="$(python3 -c '
import tomllib
deb = tomllib.load(open("Cargo.toml", "rb"))["package"]["metadata"]["deb"]
for dep in deb["depends"].split(","):
    dep = dep.strip()
    if dep.startswith("libc6 (>="):
        print(dep.split(">=")[1].strip(" )"))
')"
[ -n "$depends_glibc" ] || die "no 'libc6 (>= X)' in Depends: of Cargo.toml [package.metadata.deb]"
needs="$("$objdump" -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -u -V | tail -n1)"
[ -n "$needs" ] || die "no GLIBC_ symbol versions in ${binary:-$bin} (not a dynamically linked glibc binary?)"
shown="${binary:-$bin}"
echo "$shown needs glibc $needs (GLIBC_$needs is its highest symbol version); Depends: libc6 (>= $depends_glibc)"
if [ "$(printf '%s\n%s\n' "$needs" "$depends_glibc" | sort -V | tail -n1)" != "$depends_glibc" ]; then
    die "$shown needs glibc $needs, more than Depends: states ($depends_glibc): build it with cargo zigbuild --target $triple.$depends_glibc (this script without --no-build)"
fi
# Depends: names no other library package: every shared library must be glibc's (libc6).
needed="$("$objdump" -p "$bin" | awk '/NEEDED/ {print $2}' | tr '\n' ' ')"
echo "shared libraries: $needed"
for lib in $needed; do
    case "$lib" in
        libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux-*.so.*) ;;
        *) die "$shown needs $lib, which is not glibc's: add its package to Depends: in Cargo.toml" ;;
    esac
done

step "deb (cargo deb --target $triple --profile $profile --no-build)"
mkdir -p "$output"
deb="$("${deb_env[@]}" cargo deb --target "$triple" --profile "$profile" --no-build --deb-revision "$revision" \
    --output "$output" | tail -n1)"
[ -f "$deb" ] || die "cargo deb did not report a package file (got '$deb')"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
echo "files:"
dpkg-deb --contents "$deb" | awk '{printf "  %s %8s %s%s%s\n", $1, $3, $6, ($7 ? " " $7 : ""), ($8 ? " " $8 : "")}'
echo "package: $deb ($(du -h "$deb" | cut -f1)), binary ${binary:-$bin} ($(du -h "$bin" | cut -f1) before cargo deb strips it)"
step "done"
echo "== package: total $(( $(date +%s) - t0 )) s"
