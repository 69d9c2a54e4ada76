#!/bin/sh
# Build a static (musl) binary of serialhub, by default for ARMv6 (Raspberry Pi Zero/1,
# arm1176jzf-s): target/arm-unknown-linux-musleabihf/release/serialhub.
# `build-pi.sh x86_64-unknown-linux-musl` builds the same static binary for this machine
# (what `make bench` measures memory on: no shared libc, like the Pi's binary).
#
# Both routes build std from source (-Z build-std, RUSTC_BOOTSTRAP on a stable compiler) without
# its `backtrace` feature: a stripped binary has no symbols to print, and the DWARF symbolizer
# (gimli, addr2line, demangling) is ~250 KB of code the Pi would map. A panic still prints its
# message and location. Zig (from PyPI, through cargo-zigbuild) is the linker.
#  1. rustup with the rust-src component (machines whose rustup reaches its servers).
#  2. Debian's rustc-web 1.96 + rust-web-src. Missing pieces are installed (apt, pip into .venv-pi).
# Recipe and measurements: docs/pi.md.
set -eu
TARGET=${1:-arm-unknown-linux-musleabihf}
T=$(echo "$TARGET" | tr 'a-z-' 'A-Z_')
cd "$(dirname "$0")/.."

# std from source, without the backtrace symbolizer (see above); the empty feature list drops it.
BUILD_STD="-Z build-std=std,panic_abort -Z build-std-features="
export RUSTC_BOOTSTRAP=1
# zig supplies crt1.o and libc.a for musl (no rustup target needed); tune for the Pi Zero's core.
flags="-C link-self-contained=no"
case "$TARGET" in arm-*) flags="$flags -C target-cpu=arm1176jzf-s";; esac
export "CARGO_TARGET_${T}_RUSTFLAGS=$flags"

VENV=.venv-pi
need_zig() {
    if [ ! -x "$VENV/bin/cargo-zigbuild" ] || [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check ziglang==0.17.0 cargo-zigbuild==0.24.0
    fi
    export PATH="$PWD/$VENV/bin:$PATH"      # zig (python -m ziglang) and cargo-zigbuild
}

if command -v rustup >/dev/null 2>&1 && rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
    need_zig
    # shellcheck disable=SC2086 # BUILD_STD is two flags
    exec cargo zigbuild $BUILD_STD --release --target "$TARGET"
fi

APT="apt-get -o DPkg::Lock::Timeout=300"
need_apt=""
[ -x /usr/bin/rustc ] && /usr/bin/rustc --version | grep -q "1\.9[6-9]\|1\.[1-9][0-9][0-9]" || need_apt="$need_apt rustc-web cargo-web"
[ -d /usr/lib/rustlib/src/rust/library ] || need_apt="$need_apt rust-web-src"
command -v qemu-arm >/dev/null 2>&1 || need_apt="$need_apt qemu-user"
if [ -n "$need_apt" ]; then
    $APT update -qq
    DEBIAN_FRONTEND=noninteractive $APT install -y -qq --no-install-recommends $need_apt
fi

need_zig
export CARGO=/usr/bin/cargo             # cargo-zigbuild calls back into this cargo
export RUSTC=/usr/bin/rustc             # Debian's 1.96, not the rustup proxy on PATH
# shellcheck disable=SC2086 # BUILD_STD is two flags
exec /usr/bin/cargo zigbuild $BUILD_STD --target "$TARGET" --release
