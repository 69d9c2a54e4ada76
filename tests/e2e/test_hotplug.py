"""Hotplug, device identity and stable ports (issue 4).

A temp directory stands in for /dev (symlinks to PTY slaves appear and vanish in it) and a
fake sysfs tree gives the devices their USB identities: a CP2102 with a serial number, two
CH340s without one on different hub ports, two boards that both report "0001", and a native
USB-Serial/JTAG chip (303a:1001). Every wait has a deadline, and waits on the portal's API
(a device plugged in later is there once served, with its port and state), not on the log.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SERIALHUB_BIN, Pty, recv_until_eof, wait_for

# name, hub port (bus-port chain), vid, pid, serial
BOARDS = {
    "cp2102": ("ttyUSB0", "1-1.1", "10c4", "ea60", "0123ABCD"),
    "ch340a": ("ttyUSB1", "1-1.2", "1a86", "7523", None),
    "ch340b": ("ttyUSB2", "1-1.3", "1a86", "7523", None),
    "dup1": ("ttyUSB3", "1-1.4.1", "10c4", "ea60", "0001"),
    "dup2": ("ttyUSB4", "1-1.4.2", "10c4", "ea60", "0001"),
    "c3": ("ttyACM0", "1-1.5", "303a", "1001", "F4:12:FA:00:11:22"),
}


def free_base(n: int = 16) -> int:
    """A base port with `n` free ports above it (checked by binding them)."""
    for _ in range(50):
        base = random.randrange(20000, 60000)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


class Lab:
    """A fake /dev and /sys, and the daemon serving them."""

    def __init__(self, tmp: Path, serialhub):
        self.tmp = tmp
        self.dev = tmp / "dev"
        self.sys = tmp / "sys"
        self.dev.mkdir()
        self.state = tmp / "ports.json"
        self.base = free_base()
        self.serialhub = serialhub
        self.ptys: dict[str, Pty] = {}
        self.daemon = None

    def sysfs(self, board: str, tty: str | None = None):
        """Create the board's sysfs entries (once: like the kernel's, they exist before the
        device node appears and do not change while it is there)."""
        name, port, vid, pid, serial = BOARDS[board]
        tty = tty or name
        usb = self.sys / "devices/platform/3f980000.usb/usb1" / port
        intf = usb / f"{port}:1.0"
        link = self.sys / "class/tty" / tty / "device"
        if link.is_symlink() and link.resolve() == intf.resolve():
            return
        intf.mkdir(parents=True, exist_ok=True)
        (intf / "bInterfaceNumber").write_text("00\n")
        (usb / "idVendor").write_text(vid + "\n")
        (usb / "idProduct").write_text(pid + "\n")
        (usb / "product").write_text(f"{board} product\n")
        (usb / "manufacturer").write_text("Maker\n")
        if serial:
            (usb / "serial").write_text(serial + "\n")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(intf)

    def plug(self, board: str, tty: str | None = None) -> Pty:
        tty = tty or BOARDS[board][0]
        self.sysfs(board, tty)
        pty = self.ptys.get(board) or Pty()
        self.ptys[board] = pty
        (self.dev / tty).symlink_to(pty.path)
        return pty

    def unplug(self, board: str, tty: str | None = None):
        (self.dev / (tty or BOARDS[board][0])).unlink()

    def config(self, extra: str = "") -> Path:
        cfg = self.tmp / "serialhub.toml"
        cfg.write_text(
            f'bind = "127.0.0.1"\nbase_port = {self.base}\nstate_file = "{self.state}"\n'
            f'[hotplug]\ndir = "{self.dev}"\nsysfs = "{self.sys}"\n'
            f'legacy_devices_conf = "{self.tmp / "devices.conf"}"\n' + extra
        )
        return cfg

    def start(self, extra: str = ""):
        self.daemon = self.serialhub(
            extra=(
                "--config",
                str(self.config(extra)),
                "--dev-dir",
                str(self.dev),
                "--state",
                str(self.state),
            )
        )
        self.daemon.ready()  # watching, and what was plugged in at start is served
        return self.daemon

    def node(self, tty: str) -> str:
        return str(self.dev / tty)

    def port(self, tty: str, timeout: float = 10) -> int:
        """The port of the device on node `tty`, once served (listening)."""
        return self.daemon.port(self.node(tty), timeout)

    def opened(self, tty: str, timeout: float = 10) -> dict:
        return self.daemon.wait_opened(self.node(tty), timeout)

    def absent(self, tty: str, timeout: float = 10) -> dict:
        """Unplugged, and the daemon has stopped serving it (it keeps its port)."""
        return self.daemon.wait_state(self.node(tty), "absent", timeout=timeout)

    def close(self):
        for p in self.ptys.values():
            p.close()


@pytest.fixture
def lab(tmp_path, serialhub):
    lab = Lab(tmp_path, serialhub)
    yield lab
    lab.close()


def connect_rfc2217(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"\xff\xfd\x2c\xff\xfb\x2c")
    got = b""
    deadline = time.monotonic() + 5
    while b"\xff\xfd\x2c" not in got and time.monotonic() < deadline:
        got += s.recv(4096)
    assert b"\xff\xfd\x2c" in got, got
    return s


def test_keys_and_stable_ports_across_restart(lab):
    for b in BOARDS:
        lab.plug(b)
    d = lab.start()
    ports = {b: lab.port(BOARDS[b][0]) for b in BOARDS}
    assert len(set(ports.values())) == len(BOARDS), ports
    assert all(lab.base <= p < lab.base + len(BOARDS) for p in ports.values()), ports
    keys = json.loads(lab.state.read_text())["ports"]
    assert keys["serial:0123ABCD"] == ports["cp2102"]
    assert keys["serial:F4_12_FA_00_11_22"] == ports["c3"]
    # No serial number: keyed by the hub port they are plugged into.
    assert keys["path:platform-3f980000.usb-usb-0:1.2:1.0"] == ports["ch340a"]
    assert keys["path:platform-3f980000.usb-usb-0:1.3:1.0"] == ports["ch340b"]
    # Same serial on two boards: both served, keyed by path, with a warning.
    assert keys["path:platform-3f980000.usb-usb-0:1.4.1:1.0"] == ports["dup1"]
    assert keys["path:platform-3f980000.usb-usb-0:1.4.2:1.0"] == ports["dup2"]
    # A warning a user must see (said while the ports were assigned, before the ready line).
    assert re.search(r"2 devices report the USB serial number \"0001\"", d.log), d.log
    assert d.stop() == 0

    # Restart with the boards on other nodes in another order: every key keeps its port.
    for b in BOARDS:
        lab.unplug(b)
    renamed = {b: f"ttyUSB{9 - i}" if b != "c3" else "ttyACM7" for i, b in enumerate(BOARDS)}
    for b in reversed(list(BOARDS)):
        lab.plug(b, renamed[b])
    lab.start()
    again = {b: lab.port(renamed[b]) for b in BOARDS}
    assert again == ports


def test_add_remove_readd_with_a_client(lab):
    lab.start()
    pty = lab.plug("cp2102")
    port = lab.port("ttyUSB0")
    lab.opened("ttyUSB0")
    s = connect_rfc2217(port)
    os.write(pty.master, b"hello")
    got = b""
    deadline = time.monotonic() + 5
    while b"hello" not in got and time.monotonic() < deadline:
        got += s.recv(4096)
    assert b"hello" in got
    # Unplug: the client is closed within 1 s, with a log line.
    t0 = time.monotonic()
    lab.unplug("cp2102")
    _, closed = recv_until_eof(s, 1.5)
    assert closed and time.monotonic() - t0 < 1.0 + 0.5
    assert lab.absent("ttyUSB0")["clients"] == []
    # Nobody listens on the port while the device is away.
    wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) != 0, 5, what="port closed")
    # Re-add: same port again.
    lab.plug("cp2102")
    assert lab.port("ttyUSB0") == port
    s = connect_rfc2217(port)
    s.close()


def test_accepting_soon_after_the_node_appears(lab):
    lab.start()
    lab.plug("ch340a")
    port = lab.port("ttyUSB1")
    lab.opened("ttyUSB1")
    s = connect_rfc2217(port)
    s.close()


def test_acm_devices_settle_before_open(lab):
    lab.start('[hotplug.settle]\n"ttyACM*" = 0.8\n')
    t0 = time.monotonic()
    lab.plug("c3")
    lab.port("ttyACM0")
    lab.opened("ttyACM0")
    assert time.monotonic() - t0 >= 0.8


def test_reenumeration_within_grace_keeps_the_client(lab):
    d = lab.start('grace = 2.0\n[hotplug.settle]\n"ttyACM*" = 0.0\n')
    pty = lab.plug("c3")
    port = lab.port("ttyACM0")
    key = lab.opened("ttyACM0")["key"]
    s = connect_rfc2217(port)
    me = f"127.0.0.1:{s.getsockname()[1]}"
    d.wait_client(key, me)
    # The chip resets: its node vanishes and comes back under another name. Meanwhile the
    # device is not open, and its client is kept.
    lab.unplug("c3")
    gone = d.wait_device(key, lambda v: v["state"] not in d.OPEN, why="the device away")
    assert [c["addr"] for c in gone["clients"]] == [me], gone
    lab.plug("c3", "ttyACM1")
    back = d.wait_device(key, lambda v: v["state"] == "connected" and v["tty"] == lab.node("ttyACM1"),
                         why="open again on ttyACM1")
    assert [c["addr"] for c in back["clients"]] == [me], back
    os.write(pty.master, b"after reset")
    got = b""
    deadline = time.monotonic() + 5
    while b"after reset" not in got and time.monotonic() < deadline:
        got += s.recv(4096)
    assert b"after reset" in got
    s.close()


def test_reenumeration_past_grace_closes_the_client(lab):
    lab.start('grace = 0.5\n[hotplug.settle]\n"ttyACM*" = 0.0\n')
    lab.plug("c3")
    port = lab.port("ttyACM0")
    lab.opened("ttyACM0")
    s = connect_rfc2217(port)
    lab.unplug("c3")
    _, closed = recv_until_eof(s, 5)
    assert closed
    # Stopped once the grace ran out, its client with it.
    assert lab.absent("ttyACM0")["clients"] == []


def test_flapping_device_is_left_alone(lab):
    lab.start("flap_count = 3\nflap_window = 30.0\nflap_cooldown = 60.0\n")
    for i in range(5):
        lab.plug("ch340b")
        lab.daemon.wait_device(lab.node("ttyUSB2"), lambda v: True, why="known")
        lab.unplug("ch340b")
    lab.daemon.wait_state(lab.node("ttyUSB2"), "flapping")
    # What a user must see, with what to check.
    assert re.search(r"appeared 4 times .* leaving it alone .*check the cable", lab.daemon.log), lab.daemon.log


def test_old_portal_assignments_are_imported(lab):
    (lab.tmp / "devices.conf").write_text(
        f"# RFC2217 device-port assignments\n0123ABCD={lab.base + 9}\n/dev/ttyUSB1={lab.base + 8}\n"
    )
    lab.plug("cp2102")
    lab.start()
    assert lab.port("ttyUSB0") == lab.base + 9
    # Said at start, before the ready line: a user must see that the old file was read.
    assert "imported 2 port assignments" in lab.daemon.log, lab.daemon.log


def test_corrupt_state_file_is_moved_aside(lab):
    lab.state.write_text('{"version": 1, "ports": {"serial:0123ABCD": 40')
    lab.plug("cp2102")
    lab.start()
    lab.port("ttyUSB0")
    # Said at start, before the ready line: where the broken file went.
    assert re.search(r"moved it to .*corrupt", lab.daemon.log), lab.daemon.log
    assert (lab.tmp / "ports.json.corrupt").exists()
    json.loads(lab.state.read_text())


def test_state_file_survives_sigkill_mid_write(lab, tmp_path):
    """Kill the daemon while it is assigning ports and writing the state file, again and
    again: the file is always valid JSON (old or new, never torn)."""
    for b in BOARDS:
        lab.plug(b)
    cfg = lab.config()
    for i in range(15):
        p = subprocess.Popen(
            [SERIALHUB_BIN, "serve", "--config", str(cfg), "--dev-dir", str(lab.dev)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Kill at a different moment each round, from right at start to after the writes.
        deadline = time.monotonic() + 0.002 * i * i
        while time.monotonic() < deadline:
            pass
        p.send_signal(signal.SIGKILL)
        p.wait(5)
        if lab.state.exists():
            json.loads(lab.state.read_text())
        # Start over so the next round writes again.
        if i % 3 == 2 and lab.state.exists():
            lab.state.unlink()


def test_config_rules_match_hotplugged_devices(lab):
    """[[device]] rules match by serial or USB path: name, pinned port, enabled, raw protocol."""
    pinned = lab.base + 12
    rules = (
        f'[[device]]\nserial = "0123ABCD"\nname = "bench-cp2102"\nport = {pinned}\nprotocol = "raw"\n'
        '[[device]]\nusb_path = "platform-3f980000.usb-usb-0:1.2:1.0"\nenabled = false\n'
    )
    cp = lab.plug("cp2102")
    lab.plug("ch340a")
    cfg = lab.config()
    cfg.write_text(cfg.read_text() + rules)
    lab.daemon = lab.serialhub(
        extra=("--config", str(cfg), "--dev-dir", str(lab.dev), "--state", str(lab.state))
    )
    d = lab.daemon
    dev = lab.opened("ttyUSB0")
    assert (dev["name"], dev["port"], dev["protocol"]) == ("bench-cp2102", pinned, "raw"), dev
    assert d.wait_state(lab.node("ttyUSB1"), "disabled")["running"] is False
    # protocol = "raw": plain bytes both ways, 0xFF not doubled, no negotiation.
    s = socket.create_connection(("127.0.0.1", pinned), timeout=5)
    s.sendall(b"\xff\xfd\x2c raw")
    assert cp.read_exactly(8, 5) == b"\xff\xfd\x2c raw"
    cp.write_all(b"\xff\xff back", 5)
    got = b""
    deadline = time.monotonic() + 5
    while len(got) < 7 and time.monotonic() < deadline:
        got += s.recv(100)
    assert got == b"\xff\xff back"
    s.close()


def test_busy_kick(lab):
    cfg = lab.config()
    cfg.write_text(cfg.read_text() + '[[device]]\nserial = "0123ABCD"\nbusy = "kick"\n')
    lab.plug("cp2102")
    lab.daemon = lab.serialhub(
        extra=("--config", str(cfg), "--dev-dir", str(lab.dev), "--state", str(lab.state))
    )
    port = lab.port("ttyUSB0")
    lab.opened("ttyUSB0")
    first = connect_rfc2217(port)
    second = connect_rfc2217(port)
    data, closed = recv_until_eof(first, 5)
    assert closed and data.endswith(b"kicked off, new user is coming\r\n"), data
    second.close()


def test_sighup_applies_changes_and_keeps_unchanged_clients(lab):
    cfg = lab.config()
    base = cfg.read_text()
    p1, p2 = lab.base + 10, lab.base + 11
    rule = '[[device]]\nserial = "0123ABCD"\nname = "{}"\nport = {}\n'
    cfg.write_text(base + rule.format("first", p1))
    lab.plug("cp2102")
    other = lab.plug("ch340a")
    lab.daemon = d = lab.serialhub(
        extra=("--config", str(cfg), "--dev-dir", str(lab.dev), "--state", str(lab.state))
    )
    cp = lab.node("ttyUSB0")
    d.wait_device(cp, lambda v: (v["name"], v["port"], v["state"]) == ("first", p1, "idle"), why="first on p1")
    port = lab.port("ttyUSB1")
    lab.opened("ttyUSB1")
    s = connect_rfc2217(port)
    me = d.wait_client(lab.node("ttyUSB1"))["addr"]
    cfg.write_text(base + rule.format("second", p2))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_device(cp, lambda v: (v["name"], v["port"]) == ("second", p2) and v["state"] in d.SERVED,
                  why="renamed and moved to p2")
    # The unchanged device's client was not touched.
    os.write(other.master, b"still here")
    got = b""
    deadline = time.monotonic() + 5
    while b"still here" not in got and time.monotonic() < deadline:
        got += s.recv(4096)
    assert b"still here" in got
    assert [c["addr"] for c in d.device(lab.node("ttyUSB1"))["clients"]] == [me]
    # A broken file is refused and the running configuration kept.
    n = len(d.lines)
    cfg.write_text(base + "[[device]]\nserial = 5\n")
    d.proc.send_signal(signal.SIGHUP)
    # A refused reload changes nothing the API shows: the message is what a user gets.
    d.wait_log(r"SIGHUP: .*keeping the running configuration", start=n)
    assert d.alive()
    s.close()
