"""Issue 16: every board found on the network. Two serialhubs ("Pis") and a lab machine on one
Ethernet segment made of network namespaces and a bridge (multicast stays inside the test):
python-zeroconf (PyPI) browses what they advertise; `serialhub discover`, `url`, `lease` and
`labgrid` find boards without being told a host; hotplug and shutdown say goodbye.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import netns
from conftest import SERIALHUB_BIN, wait_for
from test_hotplug import Lab

# python-zeroconf, as any DNS-SD browser: prints one JSON line per event, with the resolved
# address, port and TXT of each added service, and the time it saw it.
BROWSER = r"""
import json, sys, time
from zeroconf import Zeroconf, ServiceBrowser, ServiceListener
T0 = time.monotonic()
def say(**kw):
    kw["t"] = time.monotonic() - T0
    print(json.dumps(kw), flush=True)
class L(ServiceListener):
    def add_service(self, zc, kind, name):
        info = zc.get_service_info(kind, name, timeout=3000)
        props = {k.decode(): (v or b"").decode() for k, v in (info.properties if info else {}).items()}
        say(ev="add", kind=kind, name=name, addrs=info.parsed_addresses() if info else [],
            port=info.port if info else None, txt=props)
    def remove_service(self, zc, kind, name):
        say(ev="remove", kind=kind, name=name)
    def update_service(self, zc, kind, name):
        pass
zc = Zeroconf()
ServiceBrowser(zc, ["_iostream._tcp.local.", "_serialhub._tcp.local."], L())
say(ev="ready")
sys.stdin.read()  # until the test closes it
zc.close()
"""


# 20 mDNS answers claiming HOST.local for ADDR, sent to the group (as a hostile or confused
# peer would).
SPOOF = r"""
import socket, struct, sys, time
host, addr = sys.argv[1], sys.argv[2]
name = bytes([len(host)]) + host.encode() + bytes([5]) + b"local" + b"\0"
rec = name + struct.pack(">HHIH", 1, 0x8001, 120, 4) + socket.inet_aton(addr)
pkt = struct.pack(">HHHHHH", 0, 0x8400, 0, 1, 0, 0) + rec
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
for _ in range(20):
    s.sendto(pkt, ("224.0.0.251", 5353))
    time.sleep(0.02)
"""


class Browser:
    """python-zeroconf browsing in namespace `h`; events collected in a thread."""

    def __init__(self, h: netns.Host):
        self.p = subprocess.Popen(h.cmd(sys.executable, "-c", BROWSER), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(lambda: self.seen(ev="ready"), 20, what="python-zeroconf started")

    def _read(self):
        for line in self.p.stdout:
            with self.lock:
                self.events.append(json.loads(line))

    def seen(self, **match) -> list[dict]:
        with self.lock:
            return [e for e in self.events if all(e.get(k) == v for k, v in match.items())]

    def added(self, name_re: str) -> dict:
        """Wait for a service whose name matches `name_re`; its event."""
        wait_for(lambda: [e for e in self.seen(ev="add") if re.search(name_re, e["name"])], 15,
                 what=f"a service {name_re}")
        return [e for e in self.seen(ev="add") if re.search(name_re, e["name"])][0]

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(10)
        except Exception:
            self.p.kill()


def hostname() -> str:
    return open("/proc/sys/kernel/hostname").read().strip()


def client_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("SERIALHUB_HOST", "PI_HOST", "ESP32_PORT")}


def serialhub_in(h: netns.Host, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(h.cmd(SERIALHUB_BIN, *args), capture_output=True, text=True, timeout=timeout,
                          env=client_env())


def test_boards_found_on_the_network_by_zeroconf_and_by_serialhub(serialhub, tmp_path):
    with netns.lan(3) as (bridge, root_ip, (pi1, pi2, lab)):
        # Pi 1 (a namespace): a simulated ESP32 and the portal. Pi 2: a board, no portal.
        # Both namespaces share this machine's hostname and machine-id, like two Pis cloned
        # from one image: the second finds the name taken when it probes, and takes another.
        d1 = serialhub(f"sim:{tmp_path / 'a.bin'}=4001", prefix=tuple(pi1.cmd()),
                       extra=("--bind", "0.0.0.0", "--http", "0.0.0.0:8080"))
        d1.api_host = pi1.ip  # its portal, as this (root) namespace reaches it
        # The mDNS name a host took, and a clash, are told in the log only (the name is what a
        # user types): those waits stay on the log.
        first = d1.wait_log(r"mDNS: this host is (\S+)\.local").group(1)
        d2 = serialhub(f"sim:{tmp_path / 'b.bin'}=4001", prefix=tuple(pi2.cmd()), extra=("--bind", "0.0.0.0"))
        d2.wait_log(rf"another host is called {re.escape(first)}\.local")
        second = d2.wait_log(r"mDNS: this host is (\S+)\.local").group(1)
        assert second != first
        d1.wait_opened("sim")
        # Pi 2 has no portal: its ready line says its port listens (and so is advertised).
        assert [(x["name"], x["port"]) for x in d2.ready()["devices"]] == [("sim", 4001)]
        # A peer that claims every name it hears cannot make the second rename again and again
        # (the name and the log stay bounded): 20 spoofed answers for its new name.
        r = subprocess.run(lab.cmd(sys.executable, "-c", SPOOF, second, lab.ip), capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 0, r.stderr
        zc = Browser(lab)
        try:
            host = hostname()
            portal = zc.added(r"^serialhub@")
            assert portal["kind"] == "_serialhub._tcp.local." and portal["port"] == 8080, portal
            assert portal["addrs"] == [pi1.ip] and portal["txt"]["path"] == "/api", portal
            boards = [zc.added(rf"^sim@{re.escape(host)}( \(.*\))?\._iostream")]
            wait_for(lambda: len([e for e in zc.seen(ev="add") if e["kind"] == "_iostream._tcp.local."]) == 2,
                     15, what="both Pis' boards")
            boards = [e for e in zc.seen(ev="add") if e["kind"] == "_iostream._tcp.local."]
            # The same device name on two Pis with one hostname: the second name is made unique.
            assert len({b["name"] for b in boards}) == 2, boards
            assert sorted(b["addrs"][0] for b in boards) == sorted([pi1.ip, pi2.ip]), boards
            for b in boards:
                assert b["port"] == 4001
                t = b["txt"]
                assert t["provider"] == "serialhub" and t["gensiostack"] == "telnet(rfc2217),tcp", t
                assert t["devicetype"] == "serial" and t["key"] == "name:sim" and t["name"] == "sim", t
            assert not zc.seen(ev="add", kind="_serialhub._tcp.local.", name=f"serialhub@{host}._serialhub._tcp.local.")[1:], \
                "only Pi 1 runs a portal"

            # `serialhub discover` with no host: every board of both Pis, with a HOST column.
            t0 = time.monotonic()
            r = serialhub_in(lab, "discover")
            took = time.monotonic() - t0
            assert r.returncode == 0, r.stderr
            lines = r.stdout.splitlines()
            assert lines[0].split()[:2] == ["#", "HOST"], r.stdout
            assert any(f"{pi1.ip}:8080" in ln and f"rfc2217://{pi1.ip}:4001" in ln for ln in lines), r.stdout
            assert any(f"rfc2217://{pi2.ip}:4001" in ln for ln in lines), r.stdout
            assert took < 5, f"discover took {took:.1f} s"
            # Answered after the spoofed claims: Pi 2 kept its one new name.
            assert len(re.findall(r"another host is called", d2.log)) == 1, d2.log
            j = json.loads(serialhub_in(lab, "discover", "--json").stdout)
            assert {d["url"] for d in j["devices"]} == {f"rfc2217://{pi1.ip}:4001", f"rfc2217://{pi2.ip}:4001"}, j
            # `url` finds a board on whichever host serves it (here by index, both are "sim").
            urls = {serialhub_in(lab, "url", "--index", str(i)).stdout.strip() for i in (0, 1)}
            assert urls == {f"rfc2217://{pi1.ip}:4001", f"rfc2217://{pi2.ip}:4001"}, urls
            r = serialhub_in(lab, "url", "--name", "nope")
            assert r.returncode == 1 and "the network" in r.stderr, r.stderr
            # `lease` without a host: Pi 1's board (it has the portal to lease from).
            r = serialhub_in(lab, "lease", "--index", "0", "--for", "1m")
            assert r.returncode == 0 and r.stdout.startswith(f"rfc2217://{pi1.ip}:4001"), (r.stdout, r.stderr)
            # `labgrid` without hosts: the portals found on the network.
            r = serialhub_in(lab, "labgrid")
            assert r.returncode == 0 and f'host: "{pi1.ip}"' in r.stdout and "NetworkSerialPort" in r.stdout, r.stdout + r.stderr

            # Stopping a device withdraws it at once; stopping a daemon says goodbye to all.
            r = subprocess.run(lab.cmd("curl", "-s", "-X", "POST", "-H", "Content-Type: application/json",
                                       f"http://{pi1.ip}:8080/api/stop", "-d", '{"tty": "name:sim"}'),
                               capture_output=True, text=True)
            assert '"success":true' in r.stdout.replace(" ", ""), r.stdout
            pi1_board = [b["name"] for b in boards if b["addrs"][0] == pi1.ip][0]
            t0 = time.monotonic()
            wait_for(lambda: zc.seen(ev="remove", name=pi1_board), 5, what="the stopped board's goodbye")
            assert time.monotonic() - t0 < 1.5
            pi2_board = [b["name"] for b in boards if b["addrs"][0] == pi2.ip][0]
            d2.stop()
            wait_for(lambda: zc.seen(ev="remove", name=pi2_board), 5, what="Pi 2's goodbye at shutdown")
        finally:
            zc.close()


def test_a_hotplugged_board_is_advertised_and_its_unplug_removes_it_within_a_second(serialhub, tmp_path):
    with netns.lan(1) as (bridge, root_ip, (lab_host,)):
        # This daemon runs in the root namespace, advertising on the test's bridge only.
        lab = Lab(tmp_path, serialhub)
        cfg = tmp_path / "serialhub.toml"
        cfg.write_text(f'bind = "{root_ip}"\nbase_port = {lab.base}\nstate_file = "{lab.state}"\n'
                       f'[hotplug]\ndir = "{lab.dev}"\nsysfs = "{lab.sys}"\n'
                       f'legacy_devices_conf = "{tmp_path / "devices.conf"}"\n'
                       f'[mdns]\ninterfaces = ["{bridge}"]\n')
        lab.daemon = serialhub(extra=("--config", str(cfg), "--dev-dir", str(lab.dev), "--bind", root_ip,
                                      "--http", "off"))
        lab.daemon.ready()
        # Which interfaces the responder joined is in the log only.
        lab.daemon.wait_log(rf"mDNS: advertising on {bridge}")
        zc = Browser(lab_host)
        try:
            lab.plug("cp2102")
            b = zc.added(r"^ttyUSB0@")
            assert b["addrs"] == [root_ip] and b["port"] == lab.base, b
            t = b["txt"]
            assert (t["devicetype"], t["idVendor"], t["idProduct"], t["serial"]) == \
                ("serialusb", "10c4", "ea60", "0123ABCD"), t
            assert (t["manufacturer"], t["product"], t["bInterfaceNumber"]) == ("Maker", "cp2102 product", "00"), t
            t0 = time.monotonic()
            lab.unplug("cp2102")
            wait_for(lambda: zc.seen(ev="remove", name=b["name"]), 5, what="the unplugged board's goodbye")
            took = time.monotonic() - t0
            assert took < 1.0, f"removed after {took:.2f} s"
        finally:
            zc.close()
            lab.close()
