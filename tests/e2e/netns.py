"""Network namespaces as the test's other hosts: each a veth pair from the root namespace,
with 10.x addresses that exist only for the test's lifetime. Root only (CI is root); a test
that needs one skips with the reason where they cannot be made."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess

import pytest

_count = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class Host:
    """A namespace `name` whose address is `ip`; the root namespace's end is `peer_ip` on
    interface `peer_if`."""

    def __init__(self, name: str, ip: str, peer_ip: str, peer_if: str):
        self.name, self.ip, self.peer_ip, self.peer_if = name, ip, peer_ip, peer_if

    def cmd(self, *argv: str) -> list[str]:
        """`argv` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self):
        """Pull the cable: nothing passes either way any more (no FIN, no RST)."""
        _ip("link", "set", self.peer_if, "down")


@contextlib.contextmanager
def host():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    n = next(_count)
    tag = f"{os.getpid() % 10000}-{n}"
    name, here, there = f"shns{tag}", f"shh{tag}", f"shn{tag}"
    subnet = f"10.{(os.getpid() >> 8) % 200 + 20}.{(os.getpid() + n) % 250}"
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        _ip("link", "add", here, "type", "veth", "peer", "name", there)
        _ip("link", "set", there, "netns", name)
        _ip("addr", "add", f"{subnet}.1/24", "dev", here)
        _ip("link", "set", here, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{subnet}.2/24", "dev", there)
        _ip("netns", "exec", name, "ip", "link", "set", there, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield Host(name, f"{subnet}.2", f"{subnet}.1", here)
    finally:
        _ip("link", "del", here, check=False)
        _ip("netns", "del", name, check=False)


@contextlib.contextmanager
def lan(n: int):
    """`n` hosts on one Ethernet segment: a bridge in the root namespace (address `.1`, which
    the root namespace's own daemons use) and a namespace per host (`.2` …), each on a veth
    whose other end is in the bridge. Multicast (mDNS) reaches every host, the root
    namespace included. Yields (bridge name, root address, hosts)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    k = next(_count)
    tag = f"{os.getpid() % 10000}-{k}"
    bridge = f"shbr{tag}"
    subnet = f"10.{(os.getpid() >> 8) % 200 + 20}.{(os.getpid() + k) % 250}"
    made = _ip("link", "add", bridge, "type", "bridge", check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a bridge: {made.stderr.strip()}")
    names: list[str] = []
    try:
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        hosts = []
        for i in range(n):
            name, here, there = f"shns{tag}-{i}", f"shh{tag}-{i}", f"shn{tag}-{i}"
            _ip("netns", "add", name)
            names.append(name)
            _ip("link", "add", here, "type", "veth", "peer", "name", there)
            _ip("link", "set", here, "master", bridge)
            _ip("link", "set", here, "up")
            _ip("link", "set", there, "netns", name)
            ip = f"{subnet}.{i + 2}"
            _ip("netns", "exec", name, "ip", "addr", "add", f"{ip}/24", "dev", there)
            _ip("netns", "exec", name, "ip", "link", "set", there, "up")
            _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
            # Multicast leaves by the default route's interface unless told otherwise.
            _ip("netns", "exec", name, "ip", "route", "add", "224.0.0.0/4", "dev", there)
            hosts.append(Host(name, ip, f"{subnet}.1", here))
        yield bridge, f"{subnet}.1", hosts
    finally:
        for i, name in enumerate(names):
            _ip("link", "del", f"shh{tag}-{i}", check=False)
            _ip("netns", "del", name, check=False)
        _ip("link", "del", bridge, check=False)
