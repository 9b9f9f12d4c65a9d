#!/usr/bin/env bash
# Booted-board test: electra-edge on a real systemd (PID 1) on an emulated arm64 board.
#
#   cross/board/board-test.sh [--binary PATH | --deb PATH] [--second-model DIR] [--cache DIR] [--keep]
#
# Stages (each prints its time):
#   tools   install what a Debian host lacks (qemu-system-arm, qemu-user-static, binfmt-support,
#           mmdebstrap, arch-test, e2fsprogs) and make sure arm64 binaries run through binfmt_misc
#   rootfs  an arm64 Debian 12 (bookworm) root file system from Debian packages with mmdebstrap
#           (systemd-sysv, udev, dbus, socat, linux-image-arm64, initramfs-tools); the initramfs
#           is generated once, with MODULES=list and only the virtio and ext4 modules
#   package the Debian package of the binary (cross/package.sh --binary, `cargo deb`), and the
#           same package with a higher version for the upgrade check (dpkg-deb, repacked)
#   image   the two packages, a second model folder and the guest's check scripts
#           (guest-checks.sh and guest-package.sh, started at boot by board-checks.service) are
#           added to a copy of the rootfs, which becomes an ext4 disk image (mkfs.ext4 -d:
#           nothing is mounted)
#   boot    qemu-system-aarch64 -M virt -cpu cortex-a72 -m 1024 with the rootfs's own kernel and
#           initramfs, systemd as PID 1, until the system is up (is-system-running)
#   checks  inside the guest: `apt-get install ./electra-edge_*_arm64.deb`, then one line per
#           check on the serial console (the install, socket activation, STATUS, SIGKILL,
#           watchdog, restart under a client loop, stop, systemd-analyze security, journal, two
#           template instances, an upgrade under load, remove, purge), then the guest powers off
# Exits non-zero, with a line naming each failed check, if any check fails or the guest does
# not finish.
#
# --binary PATH  the aarch64 electra-edge to package (default: target/aarch64-unknown-linux-gnu/
#                release/electra-edge, as .ci/aarch64.sh builds it: linked for glibc 2.27, which
#                cross/package.sh checks against the package's Depends:)
# --deb PATH     test this arm64 package instead (e.g. cross/package.sh's dist build)
# --second-model DIR  the model of the second template instance (default: models/demo/classifier;
#                it must answer differently from the packaged demo discriminator)
# --cache DIR    keep the built rootfs in DIR (a tarball) and reuse it on the next run; without it
#                (CI) the rootfs is built from scratch. The cache is keyed on this script's rootfs
#                recipe. Env: ELECTRA_EDGE_BOARD_CACHE.
# --keep         keep the work directory (rootfs, image, serial log) and print its path
# --rootfs-only  stop after the rootfs stage (with --cache: fill the cache)
#
# Env: ELECTRA_EDGE_BOARD_TIMEOUT (seconds for boot + checks, default 3000),
# ELECTRA_EDGE_BOARD_MIRROR (default http://deb.debian.org/debian), ELECTRA_EDGE_BOARD_SMP
# (guest CPUs, default 2). Needs root (binfmt_misc, mmdebstrap's root mode, file ownership in
# the image). Long steps run under `nice -n 15`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
binary="$repo/target/aarch64-unknown-linux-gnu/release/electra-edge"
deb=""
model="$repo/models/demo/classifier"
cache="${ELECTRA_EDGE_BOARD_CACHE:-}"
keep=0
rootfs_only=0
timeout_s="${ELECTRA_EDGE_BOARD_TIMEOUT:-3000}"
mirror="${ELECTRA_EDGE_BOARD_MIRROR:-http://deb.debian.org/debian}"
smp="${ELECTRA_EDGE_BOARD_SMP:-2}"

usage() { sed -n '2,40s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "board: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary="$2"; shift 2 ;;
        --deb) [ $# -ge 2 ] || die "--deb needs a path"; deb="$2"; shift 2 ;;
        --second-model) [ $# -ge 2 ] || die "--second-model needs a directory"; model="$2"; shift 2 ;;
        --cache) [ $# -ge 2 ] || die "--cache needs a directory"; cache="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        --rootfs-only) rootfs_only=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "needs root (binfmt_misc, mmdebstrap, root-owned files in the image)"
if [ "$rootfs_only" = 0 ]; then
if [ -n "$deb" ]; then
    [ -f "$deb" ] || die "no package at $deb"
else
    [ -f "$binary" ] || die "no aarch64 binary at $binary (build: bash .ci/aarch64.sh, or cross/package.sh and pass --deb)"
    [ "$(od -An -j18 -N2 -tu2 "$binary" | tr -d ' ')" = 183 ] || die "$binary is not an aarch64 executable"
fi
[ -f "$model/config.json" ] || die "no model folder at $model (no config.json)"
fi

t0=$(date +%s)
stage_name=""
stage_start=$t0
timings=()
stage() { # end the current stage (print its duration), start the next
    local now; now=$(date +%s)
    if [ -n "$stage_name" ]; then
        echo "== board: $stage_name: $((now - stage_start)) s"
        timings+=("$stage_name $((now - stage_start)) s")
    fi
    stage_name="$1"
    stage_start=$now
    [ "$1" = done ] || echo "== board: $1"
}

work="$(mktemp -d "${TMPDIR:-/tmp}/electra-edge-board.XXXXXX")"
qemu_pid=""
cleanup() {
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then kill "$qemu_pid" 2>/dev/null || true; fi
    if [ "$keep" = 1 ]; then echo "board: work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# --------------------------------------------------------------------------------------------
stage "tools"
missing=()
command -v qemu-system-aarch64 >/dev/null || missing+=(qemu-system-arm)
[ -e /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v arch-test >/dev/null || missing+=(arch-test)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
fi
binfmt=/proc/sys/fs/binfmt_misc
[ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || true
update-binfmts --enable qemu-aarch64 2>/dev/null || true
arch-test arm64 >/dev/null || die "arm64 executables do not run here (binfmt_misc + qemu-user-static: $(arch-test arm64 2>&1 | tail -n1))"
qemu-system-aarch64 --version | head -n1
mmdebstrap --version

# --------------------------------------------------------------------------------------------
stage "rootfs"
# The recipe; its hash keys the cache.
packages=systemd-sysv,udev,dbus,socat,linux-image-arm64,initramfs-tools
# Only what the guest needs to find its disk (virtio-blk over PCI or MMIO), mount it (ext4),
# and an entropy source; MODULES=list keeps the initramfs small. It is generated once, at the
# end: while packages are installed, update-initramfs is diverted to `true` (the kernel's
# postinst and the initramfs-tools trigger would each build one, minutes each under emulation).
initramfs_modules="virtio_mmio virtio_pci virtio_blk virtio_rng ext4 crc32c_generic"
recipe="bookworm arm64 variant=apt packages=$packages modules=$initramfs_modules mirror=$mirror v2"
key="$(printf '%s' "$recipe" | sha256sum | cut -c1-16)"
rootfs="$work/rootfs"
cached=""
if [ -n "$cache" ] && [ -f "$cache/rootfs-$key.tar" ]; then cached="$cache/rootfs-$key.tar"; fi
if [ -n "$cached" ]; then
    echo "rootfs from the cache: $cached"
    mkdir -p "$rootfs"
    tar -C "$rootfs" --numeric-owner -xpf "$cached"
else
    echo "mmdebstrap: $recipe"
    nice -n 15 mmdebstrap --mode=root --arch=arm64 --variant=apt --include="$packages" \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"' \
        --setup-hook='printf "MODULES=list\n" > "$1/etc/initramfs-tools/conf.d/electra-board.conf"' \
        --setup-hook="printf '%s\n' $initramfs_modules > \"\$1/usr/share/initramfs-tools/modules.d/electra-board.conf\"" \
        --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs' \
        --essential-hook='ln -s /bin/true "$1/usr/sbin/update-initramfs"' \
        --customize-hook='rm "$1/usr/sbin/update-initramfs"' \
        --customize-hook='chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs' \
        --customize-hook='chroot "$1" update-initramfs -c -k all' \
        --customize-hook='echo board > "$1/etc/hostname"' \
        --customize-hook='printf "/dev/vda / ext4 rw,errors=remount-ro 0 1\n" > "$1/etc/fstab"' \
        bookworm "$rootfs" "$mirror" 2>&1 | grep -v '^I: ' || true
    [ -x "$rootfs/lib/systemd/systemd" ] || die "mmdebstrap did not produce a rootfs (see above)"
    if [ -n "$cache" ]; then
        mkdir -p "$cache"
        tar -C "$rootfs" --numeric-owner -cpf "$cache/rootfs-$key.tar.tmp" .
        mv -f "$cache/rootfs-$key.tar.tmp" "$cache/rootfs-$key.tar"
        echo "rootfs cached: $cache/rootfs-$key.tar"
    fi
fi
kernel="$(find "$rootfs/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n1)"
initrd="$(find "$rootfs/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n1)"
[ -n "$kernel" ] && [ -n "$initrd" ] || die "no kernel/initramfs in the rootfs's /boot"
echo "kernel $(basename "$kernel"), initramfs $(du -h "$initrd" | cut -f1), rootfs $(du -sh "$rootfs" | cut -f1)"
if [ "$rootfs_only" = 1 ]; then stage done; exit 0; fi

# --------------------------------------------------------------------------------------------
stage "package"
# The checks the guest must report (reload-under-load is added below when the binary has it).
checks=(package-install socket-activation status sigkill-restart watchdog restart-under-load
    stop-then-connect security journal instances upgrade-under-load remove purge)
debs="$work/deb"
mkdir -p "$debs/upgrade"
if [ -n "$deb" ]; then
    cp "$deb" "$debs/"
else
    bash "$repo/cross/package.sh" --binary "$binary" --profile release --output "$debs" |
        grep -E '^(== package|package:|.*needs glibc| Version:| Depends:)' || true
fi
deb="$(ls "$debs"/electra-edge_*_arm64.deb 2>/dev/null | head -n1)"
[ -n "$deb" ] || die "no package was made (see above)"
# The upgrade: the same package with a higher version (Debian revision +board1).
version="$(dpkg-deb -f "$deb" Version)"
repack="$work/repack"
dpkg-deb -R "$deb" "$repack"
sed -i "s/^Version: .*/Version: ${version}+board1/" "$repack/DEBIAN/control"
dpkg-deb -Zgzip -z1 --root-owner-group -b "$repack" "$debs/upgrade/electra-edge_${version}+board1_arm64.deb" >/dev/null
rm -rf "$repack"
echo "packages: $(basename "$deb") ($(du -h "$deb" | cut -f1)); the upgrade to ${version}+board1"
# The reload check is required when the packaged binary implements reload (it sends systemd
# RELOADING=1); an older binary ends on SIGHUP, and the check is left out, said here.
expect_reload=0
dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ./usr/bin/electra-edge > "$work/packaged-binary"
if grep -q -a 'RELOADING=1' "$work/packaged-binary"; then
    expect_reload=1
    checks+=(reload-under-load)
else
    echo "reload-under-load: not run: this binary has no reload (no RELOADING=1 in it)"
fi
rm -f "$work/packaged-binary"

# --------------------------------------------------------------------------------------------
stage "image"
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"
payload="$rootfs/opt/electra-edge-board"
rm -rf "$payload"
install -d -m 0755 "$payload" "$payload/deb" "$payload/deb/upgrade" "$payload/second"
install -m 0644 "$deb" "$payload/deb/"
install -m 0644 "$debs"/upgrade/*.deb "$payload/deb/upgrade/"
cp -RL --no-preserve=ownership "$model/." "$payload/second/"
chmod -R u+rwX,go+rX,go-w "$payload/second"
install -m 0755 "$here/guest-checks.sh" "$payload/guest-checks.sh"
install -m 0644 "$here/guest-package.sh" "$payload/guest-package.sh"
if [ "$expect_reload" = 1 ]; then touch "$payload/expect-reload"; fi
install -m 0644 "$here/board-checks.service" "$rootfs/etc/systemd/system/board-checks.service"
mkdir -p "$rootfs/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/board-checks.service "$rootfs/etc/systemd/system/multi-user.target.wants/board-checks.service"
# No login prompt on the console the checks print to.
ln -sf /dev/null "$rootfs/etc/systemd/system/serial-getty@ttyAMA0.service"
size_mb=$(( $(du -sm "$rootfs" | cut -f1) * 5 / 4 + 512 ))
truncate -s "${size_mb}M" "$work/disk.img"
mkfs.ext4 -q -F -L board -d "$rootfs" "$work/disk.img"
echo "disk image ${size_mb} MiB"

# --------------------------------------------------------------------------------------------
stage "boot"
log="$work/serial.log"
: > "$log"
nice -n 15 qemu-system-aarch64 -M virt -cpu cortex-a72 -m 1024 -smp "$smp" \
    -display none -monitor none -serial "file:$log" -nic none -no-reboot \
    -kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
    -append "root=/dev/vda rw console=ttyAMA0 loglevel=3 systemd.show_status=0" \
    -drive "file=$work/disk.img,format=raw,if=none,id=hd0" -device virtio-blk-pci,drive=hd0 \
    -device virtio-rng-pci &
qemu_pid=$!
( sleep "$timeout_s"; kill "$qemu_pid" 2>/dev/null && echo "board: timed out after $timeout_s s" >> "$log" ) &
watchdog_pid=$!

# Guest lines start with "BOARD: "; checks are "BOARD: CHECK <name>: PASS|FAIL <details>".
declare -A result=()
guest_result=""
while IFS= read -r line; do
    line="${line//$'\r'/}"
    case "$line" in
        *"board: timed out"*) echo "$line" ;;
        *"BOARD: "*)
            msg="${line#*BOARD: }"
            echo "  $msg"
            case "$msg" in
                booted*) stage "checks" ;;
                "CHECK "*)
                    name="${msg#CHECK }"; name="${name%%:*}"
                    verdict="${msg#CHECK "$name": }"; verdict="${verdict%% *}"
                    result[$name]="$verdict" ;;
                "RESULT "*) guest_result="${msg#RESULT }" ;;
            esac ;;
    esac
done < <(tail -n +1 -f --pid="$qemu_pid" "$log")
wait "$qemu_pid" || true
qemu_pid=""
kill "$watchdog_pid" 2>/dev/null || true
stage "done"
echo "== board: stages: ${timings[*]/%/;} total $(( $(date +%s) - t0 )) s"

failed=()
for c in "${checks[@]}"; do
    case "${result[$c]:-}" in
        PASS) ;;
        FAIL) failed+=("$c") ;;
        *) failed+=("$c (not run)") ;;
    esac
done
if [ -z "$guest_result" ]; then
    echo "board: the guest did not finish; last lines of the serial console:" >&2
    tail -n 40 "$log" | tr -d '\r' >&2
    failed+=("guest did not finish")
fi
if [ ${#failed[@]} -gt 0 ]; then
    for f in "${failed[@]}"; do echo "board: FAILED: $f" >&2; done
    exit 1
fi
echo "board: all ${#checks[@]} checks passed on systemd $(grep -o 'systemd [0-9]*' "$log" | head -n1 | cut -d' ' -f2) (arm64 Debian 12 under qemu-system-aarch64 -cpu cortex-a72)"
