#!/bin/bash
# `make check-package`: proves the .deb, not just that it builds.
#  1. its file list, control data and conffile (dpkg-deb -c / -f, conffiles);
#  2. an install into a scratch Debian root (debootstrap minbase, cached under target/), where
#     the maintainer scripts run for real: the serialhub user in dialout and gpio, the unit
#     enabled; `systemd-analyze verify` on the installed unit; then a purge removes the state.
set -euo pipefail
deb=${1:?usage: check_package.sh PACKAGE.deb}
root=${PKGROOT:-target/pkgroot}
fail() { echo "check-package: FAIL: $*" >&2; exit 1; }
ok() { echo "check-package: $*"; }

files=$(dpkg-deb -c "$deb" | awk '{print $NF}')
for f in ./usr/bin/serialhub ./etc/serialhub/serialhub.toml ./usr/lib/systemd/system/serialhub.service \
         ./usr/share/doc/serialhub/copyright ./usr/share/doc/serialhub/README.md; do
    grep -qx "$f" <<<"$files" || fail "$f is not in the package"
done
ok "file list has the binary, the config, the unit, README and copyright"
[ "$(dpkg-deb -f "$deb" Package)" = serialhub ] || fail "Package field"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
dpkg-deb -e "$deb" "$tmp/control"
grep -qx /etc/serialhub/serialhub.toml "$tmp/control/conffiles" || fail "the config is not a conffile"
grep -q useradd "$tmp/control/postinst" || fail "postinst creates no user"
grep -q 'purge' "$tmp/control/postrm" || fail "postrm does nothing on purge"
ok "control: $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version) $(dpkg-deb -f "$deb" Architecture); conffile and maintainer scripts present"

arch=$(dpkg-deb -f "$deb" Architecture)
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
    ok "not installing a $arch package on $(dpkg --print-architecture)"; exit 0
fi
if [ ! -x "$root/usr/bin/dpkg" ]; then
    command -v debootstrap >/dev/null || {
        apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
        apt-get -o DPkg::Lock::Timeout=300 install -y -q debootstrap >/dev/null
    }
    rm -rf "$root"
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
fi
cp "$deb" "$root/tmp/serialhub.deb"
chroot "$root" dpkg -i /tmp/serialhub.deb >/dev/null
chroot "$root" getent passwd serialhub >/dev/null || fail "no serialhub user after install"
groups=$(chroot "$root" id -nG serialhub)
grep -qw dialout <<<"$groups" && grep -qw gpio <<<"$groups" || fail "serialhub is in: $groups"
[ -L "$root/etc/systemd/system/multi-user.target.wants/serialhub.service" ] || fail "the unit is not enabled"
ok "installed: user serialhub in ($groups), unit enabled"
# The scratch root has no systemd units of its own, so verify the installed unit on this host,
# with ExecStart pointing at the installed binary.
sed "s|/usr/bin/serialhub|$(realpath "$root")/usr/bin/serialhub|" \
    "$root/usr/lib/systemd/system/serialhub.service" > "$tmp/serialhub.service"
out=$(systemd-analyze verify --man=no "$tmp/serialhub.service" 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify: $out"
ok "systemd-analyze verify: clean"
mkdir -p "$root/var/lib/serialhub" && echo '{}' > "$root/var/lib/serialhub/ports.json"
chroot "$root" dpkg --purge serialhub >/dev/null
[ ! -e "$root/var/lib/serialhub" ] || fail "purge left /var/lib/serialhub"
[ ! -e "$root/etc/serialhub/serialhub.toml" ] || fail "purge left the conffile"
ok "purged: state and config removed"
