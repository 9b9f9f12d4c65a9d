#!/usr/bin/env bash
# The Debian package on an older arm64 userland: Debian 11 (bullseye, glibc 2.31, as Raspberry
# Pi OS bullseye and Ubuntu 20.04 have), under qemu-user.
#
#   bash cross/old-glibc.sh [--deb PATH] [--suite bullseye] [--cache DIR]
#
# Steps (each prints its time):
#   rootfs   an arm64 Debian 11 root file system: mmdebstrap --variant=essential plus
#            init-system-helpers (what the package depends on); with --cache, kept as a tarball
#   install  dpkg -i the package inside it (chroot; arm64 programs run through qemu-user
#            binfmt_misc): Depends: must be met by bullseye's own packages, the maintainer
#            scripts run (no systemd is running there: they enable, and do not start)
#   run      /usr/bin/electra-edge check on the packaged demo model (its golden outputs), and
#            one request through `electra-edge run`, compared with the same binary's answer on
#            the host's Debian 12 arm64 glibc (qemu-aarch64 -L /usr/aarch64-linux-gnu)
#   control  a program linked by Debian 12's cross gcc (needs GLIBC_2.34) must fail to start
#            in the same root: the check can tell a binary that needs a newer glibc
# Exits non-zero if any step fails.
#
# --deb PATH   the arm64 package (default: the newest target/debian/electra-edge_*_arm64.deb,
#              as cross/package.sh makes it)
# --suite S    the Debian suite (default bullseye; the mirror must still serve it)
# --cache DIR  keep the root file system in DIR and reuse it
# Env: ELECTRA_EDGE_BOARD_MIRROR (default http://deb.debian.org/debian). Needs root (chroot,
# mmdebstrap's root mode). Long steps run under `nice -n 15`.
set -euo pipefail
cd "$(dirname "$0")/.."

deb=""
suite=bullseye
cache=""
mirror="${ELECTRA_EDGE_BOARD_MIRROR:-http://deb.debian.org/debian}"
die() { echo "old-glibc: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --deb) [ $# -ge 2 ] || die "--deb needs a path"; deb="$2"; shift 2 ;;
        --suite) [ $# -ge 2 ] || die "--suite needs a name"; suite="$2"; shift 2 ;;
        --cache) [ $# -ge 2 ] || die "--cache needs a directory"; cache="$2"; shift 2 ;;
        -h|--help) sed -n '2,26s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "needs root (chroot, mmdebstrap --mode=root)"
if [ -z "$deb" ]; then
    deb="$(ls -t target/debian/electra-edge_*_arm64.deb 2>/dev/null | head -n1 || true)"
    [ -n "$deb" ] || die "no target/debian/electra-edge_*_arm64.deb: build it with cross/package.sh, or pass --deb"
fi
[ -f "$deb" ] || die "no package at $deb"

t0=$(date +%s)
step_name=""
step_start=$t0
step() {
    local now; now=$(date +%s)
    [ -z "$step_name" ] || echo "== old-glibc: $step_name: $((now - step_start)) s"
    step_name="$1"
    step_start=$now
    [ "$1" = "done" ] || echo "== old-glibc: $1"
}
work="$(mktemp -d "${TMPDIR:-/tmp}/electra-edge-old-glibc.XXXXXX")"
cleanup() {
    # /proc is mounted only while a chroot command runs (see in_root); be sure it is gone.
    mountpoint -q "$work/root/proc" 2>/dev/null && umount "$work/root/proc"
    rm -rf "$work"
}
trap cleanup EXIT

step "tools"
missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
[ -e /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
command -v arch-test >/dev/null || missing+=(arch-test)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || missing+=(libc6-arm64-cross)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
fi
binfmt=/proc/sys/fs/binfmt_misc
[ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || true
update-binfmts --enable qemu-aarch64 2>/dev/null || true
arch-test arm64 >/dev/null || die "arm64 executables do not run here (binfmt_misc + qemu-user-static)"

step "rootfs ($suite arm64)"
packages=init-system-helpers
recipe="$suite arm64 variant=essential packages=$packages mirror=$mirror v1"
key="$(printf '%s' "$recipe" | sha256sum | cut -c1-16)"
root="$work/root"
if [ -n "$cache" ] && [ -f "$cache/old-glibc-$key.tar" ]; then
    echo "from the cache: $cache/old-glibc-$key.tar"
    mkdir -p "$root"
    tar -C "$root" --numeric-owner -xpf "$cache/old-glibc-$key.tar"
else
    echo "mmdebstrap: $recipe"
    nice -n 15 mmdebstrap --mode=root --arch=arm64 --variant=essential --include="$packages" \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$suite" "$root" "$mirror" 2>&1 | grep -v '^I: ' || true
    [ -x "$root/usr/bin/dpkg" ] || die "mmdebstrap did not produce a root file system (see above)"
    if [ -n "$cache" ]; then
        mkdir -p "$cache"
        tar -C "$root" --numeric-owner -cpf "$cache/old-glibc-$key.tar.tmp" .
        mv -f "$cache/old-glibc-$key.tar.tmp" "$cache/old-glibc-$key.tar"
    fi
fi
libc="$(ls "$root"/lib/aarch64-linux-gnu/libc-*.so "$root"/usr/lib/aarch64-linux-gnu/libc.so.6 2>/dev/null | head -n1 || true)"
glibc_version="$(chroot "$root" /usr/bin/ldd --version 2>/dev/null | head -n1 | grep -o '[0-9][0-9.]*$' || true)"
echo "$(. "$root/etc/os-release"; echo "$PRETTY_NAME"), glibc $glibc_version ($(basename "${libc:-?}"))"
[ -n "$glibc_version" ] || die "could not tell the root's glibc version"

in_root() { # run a command in the root with /proc mounted (dpkg and the binary read it)
    mount -t proc proc "$root/proc"
    local rc=0
    chroot "$root" "$@" || rc=$?
    umount "$root/proc"
    return $rc
}

step "install (dpkg -i $(basename "$deb"))"
cp "$deb" "$root/tmp/electra-edge.deb"
failed=()
if in_root env DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/electra-edge.deb; then
    echo "installed: $(in_root dpkg-query -W -f='${Package} ${Version} ${Status}' electra-edge)"
    echo "Depends: $(in_root dpkg-query -W -f='${Depends}' electra-edge) -- met by $(in_root dpkg-query -W -f='libc6 ${Version}, init-system-helpers ' libc6)$(in_root dpkg-query -W -f='${Version}' init-system-helpers)"
    needs="$(aarch64-linux-gnu-objdump -T "$root/usr/bin/electra-edge" 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -u -V | tail -n1 || true)"
    echo "/usr/bin/electra-edge needs glibc >= ${needs:-?}; this root has $glibc_version"
else
    failed+=("dpkg -i on $suite")
fi

step "run (electra-edge check and run on $suite's glibc $glibc_version)"
if [ ${#failed[@]} -eq 0 ]; then
    model=/usr/share/electra-edge/models/demo
    if out="$(in_root /usr/bin/electra-edge check --model "$model" 2>&1)"; then
        printf '%s\n' "$out" | tail -n 3 | sed 's/^/  /'
    else
        printf '%s\n' "$out" | tail -n 5 | sed 's/^/  /' >&2
        failed+=("electra-edge check on $suite")
    fi
    request='{"id":1,"text":"我爱北京天安门"}'
    old_answer="$(printf '%s\n' "$request" | in_root /usr/bin/electra-edge run --model "$model" 2>&1 || true)"
    new_answer="$(printf '%s\n' "$request" | qemu-aarch64 -L /usr/aarch64-linux-gnu \
        "$root/usr/bin/electra-edge" run --model "$root$model" 2>&1 || true)"
    echo "  $suite:  $(printf '%s' "$old_answer" | cut -c1-150)"
    echo "  Debian 12 glibc: $(printf '%s' "$new_answer" | cut -c1-150)"
    case "$old_answer" in
        '{"id":1,'*) [ "$old_answer" = "$new_answer" ] || failed+=("the answer on $suite differs from Debian 12's") ;;
        *) failed+=("no answer from electra-edge run on $suite") ;;
    esac
fi

step "control (a program that needs GLIBC_2.34 must not start there)"
printf 'int main(void) { return 0; }\n' > "$work/hello.c"
aarch64-linux-gnu-gcc -O2 -o "$root/tmp/hello-new-glibc" "$work/hello.c"
needs_new="$(aarch64-linux-gnu-objdump -T "$root/tmp/hello-new-glibc" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -u -V | tail -n1)"
if out="$(in_root /tmp/hello-new-glibc 2>&1)"; then
    if [ "$(printf '%s\n%s\n' "$needs_new" "$glibc_version" | sort -V | tail -n1)" = "$glibc_version" ]; then
        echo "  (the control needs only glibc $needs_new, which $suite has: it proves nothing here)"
    else
        failed+=("a program that needs glibc $needs_new started on $suite's $glibc_version: the check cannot tell")
    fi
else
    echo "  as expected, it does not start (needs glibc $needs_new): $(printf '%s' "$out" | head -n1 | cut -c1-140)"
fi

step "done"
echo "== old-glibc: total $(( $(date +%s) - t0 )) s"
if [ ${#failed[@]} -gt 0 ]; then
    for f in "${failed[@]}"; do echo "old-glibc: FAILED: $f" >&2; done
    exit 1
fi
echo "old-glibc: $(basename "$deb") installs and runs on $suite (glibc $glibc_version, arm64 under qemu-user)"
