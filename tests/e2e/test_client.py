"""The client side (issue 6): `serialhub discover`, `url`, `monitor` and `pty` against the
daemon with the simulated ESP32 (and a stub of the old Python portal's JSON).

Every wait is a condition with a deadline; nothing sleeps to synchronise. Loopback only.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import SERIALHUB_BIN, run_cli, wait_for

TICK_RE = re.compile(rb"sim: app tick (\d+), boot #(\d+)")


def portal_of(daemon) -> str:
    return daemon.portal  # from the ready line


def served(host: str) -> dict[str, int]:
    """key -> port of the devices the portal at `host` serves, in the portal's order."""
    with urllib.request.urlopen(f"http://{host}/api/discover", timeout=5) as r:
        return {x["key"]: x["port"] for x in json.load(r)["devices"]}


def states(host: str) -> list[str]:
    """Each served device's state, in the portal's order."""
    with urllib.request.urlopen(f"http://{host}/api/discover", timeout=5) as r:
        return [x.get("state") for x in json.load(r)["devices"]]


@pytest.fixture
def hub(serialhub):
    """A daemon serving two simulated ESP32s (both named `sim`; keys `name:sim`, `name:sim-2`)
    with a portal: (host, {key: port})."""
    d = serialhub("sim=0", "sim=0", extra=("--http", "127.0.0.1:0"))
    host = portal_of(d)
    ports = wait_for(lambda: len(served(host)) == 2 and served(host), 10, what="two sims")
    # Both sims open (idle), so the tables below see a settled state, not `starting`.
    wait_for(lambda: states(host) == ["idle", "idle"], 10, what="both sims idle")
    return host, ports


def cli(*args: str, env: dict | None = None, timeout: float = 20.0) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items()
            if k not in ("SERIALHUB_HOST", "PI_HOST", "ESP32_SERIAL", "ESP32_INDEX", "ESP32_PORT")}
    full.update(env or {})
    return subprocess.run([SERIALHUB_BIN, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, env=full)


# ---------------------------------------------------------------------------------------------
# The old portal: only the seed-era fields, HTTP/1.0, no Content-Length


OLD_DEVICES = [
    {"url": "rfc2217://127.0.0.1:4001", "port": 4001, "product": "CP2102 USB to UART",
     "serial": "0001", "tty": "/dev/ttyUSB0"},
    {"url": "rfc2217://127.0.0.1:4002", "port": 4002, "product": "USB JTAG/serial debug unit",
     "serial": "F4:12:FA:00:11:22", "tty": "/dev/ttyACM0"},
]


@pytest.fixture
def old_portal():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/api/discover":
                self.send_response(404)
                self.end_headers()
                self.wfile.write(b'{"error": "Not found"}')
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"devices": OLD_DEVICES}).encode())

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------------------------
# discover


def test_discover_table_and_json(hub):
    host, ports = hub
    r = cli("discover", host)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["#", "NAME", "PRODUCT", "SERIAL", "PORT", "STATE", "URL"]
    assert len(lines) == 3
    for i, port in enumerate(ports.values()):
        cells = lines[1 + i].split()
        assert cells == [str(i), "sim", "sim", "-", str(port), "idle",
                         f"rfc2217://127.0.0.1:{port}"], lines

    r = cli("discover", "--json", env={"SERIALHUB_HOST": host})
    assert r.returncode == 0, r.stderr
    devices = json.loads(r.stdout)["devices"]
    assert [x["key"] for x in devices] == list(ports)
    assert all(x["url"].startswith("rfc2217://127.0.0.1:") for x in devices)


def test_discover_reads_the_old_portal_and_pi_host(old_portal):
    r = cli("discover", env={"PI_HOST": old_portal})
    assert r.returncode == 0, r.stderr
    assert "ttyUSB0" in r.stdout and "F4:12:FA:00:11:22" in r.stdout and "running" in r.stdout


def test_unreachable_host_is_exit_2_naming_host_and_reason():
    port = closed_port()
    for cmd in ("discover", "url"):
        r = cli(cmd, f"127.0.0.1:{port}")
        assert r.returncode == 2, (cmd, r)
        assert f"127.0.0.1:{port}" in r.stderr and "refused" in r.stderr.lower(), r.stderr
        assert r.stdout == ""
    r = cli("url")  # no host at all: the network is browsed; nothing answers here
    assert r.returncode == 1 and "mDNS" in r.stderr and "SERIALHUB_HOST" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# url


def test_url_selects_by_name_key_index(hub):
    host, ports = hub
    (k1, p1), (k2, p2) = ports.items()
    assert cli("url", host, "--key", k1).stdout == f"rfc2217://127.0.0.1:{p1}\n"
    assert cli("url", host, "--key", k2).stdout == f"rfc2217://127.0.0.1:{p2}\n"
    r = cli("url", host, "--index", "1", "--ign-set-control")
    assert r.stdout == f"rfc2217://127.0.0.1:{p2}?ign_set_control\n", r
    assert cli("url", env={"SERIALHUB_HOST": host, "ESP32_INDEX": "0"}).stdout == \
        f"rfc2217://127.0.0.1:{p1}\n"
    # Both are named `sim`: a name that matches two is ambiguous, both listed, exit 1.
    r = cli("url", host, "--name", "sim")
    assert r.returncode == 1 and r.stdout == "", r
    assert "2 devices match" in r.stderr and f":{p1}" in r.stderr and f":{p2}" in r.stderr

    # Two devices and no selector: ambiguous, both named, exit 1, nothing on stdout.
    r = cli("url", host)
    assert r.returncode == 1 and r.stdout == ""
    assert f":{p1}" in r.stderr and f":{p2}" in r.stderr and "--serial" in r.stderr, r.stderr
    # No match: the candidates are listed.
    r = cli("url", host, "--name", "nope")
    assert r.returncode == 1 and "nope" in r.stderr and f":{p2}" in r.stderr, r.stderr
    # At most one selector.
    assert cli("url", host, "--name", "sim", "--index", "0").returncode == 2


def test_url_selects_by_serial_and_env_on_the_old_portal(old_portal):
    r = cli("url", old_portal, "--serial", "F4:12:FA:00:11:22")
    assert (r.returncode, r.stdout) == (0, "rfc2217://127.0.0.1:4002\n"), r
    r = cli("url", env={"PI_HOST": old_portal, "ESP32_SERIAL": "0001"})
    assert (r.returncode, r.stdout) == (0, "rfc2217://127.0.0.1:4001\n"), r
    r = cli("url", "--ign-set-control", env={"PI_HOST": old_portal, "ESP32_INDEX": "1"})
    assert r.stdout == "rfc2217://127.0.0.1:4002?ign_set_control\n", r
    # An explicit selector beats the environment.
    r = cli("url", "-i", "0", env={"PI_HOST": old_portal, "ESP32_SERIAL": "F4:12:FA:00:11:22"})
    assert r.stdout == "rfc2217://127.0.0.1:4001\n", r
    r = cli("url", old_portal, "--serial", "0003")
    assert r.returncode == 1 and "0001" in r.stderr and "F4:12:FA:00:11:22" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# monitor


class Reader:
    """Collects a pipe's or pty master's bytes in a thread."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.buf += chunk

    def data(self) -> bytes:
        with self.lock:
            return bytes(self.buf)

    def wait(self, pattern: bytes, timeout: float = 10.0, start: int = 0) -> re.Match:
        rx = re.compile(pattern)

        def found():
            return rx.search(self.data(), start)

        try:
            return wait_for(found, timeout, what=pattern.decode())
        except TimeoutError:
            raise AssertionError(f"no /{pattern.decode()}/ within {timeout} s in:\n"
                                 f"{self.data()[-2000:].decode('utf-8', 'replace')}")


def spawn(*args: str, pty_stdin: bool = False):
    """The client with stdout (and stderr) as pipes, or everything on a pty."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESP32_", "PI_HOST", "SERIALHUB_HOST"))}
    if pty_stdin:
        master, slave = os.openpty()
        p = subprocess.Popen([SERIALHUB_BIN, *args], stdin=slave, stdout=slave, stderr=slave,
                             env=env, start_new_session=True)
        os.close(slave)
        return p, master, Reader(master), None
    p = subprocess.Popen([SERIALHUB_BIN, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    return p, None, Reader(p.stdout.fileno()), Reader(p.stderr.fileno())


def finish(p: subprocess.Popen, timeout: float = 10.0) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError("the client did not exit within 10 s of SIGTERM")


def test_monitor_through_a_pipe_prints_complete_tick_lines(serialhub):
    d = serialhub("sim=0")
    port = d.port("sim")
    p, _, out, err = spawn("monitor", f"rfc2217://127.0.0.1:{port}")
    try:
        out.wait(rb"(sim: app tick \d+, boot #1\n){3}")
        err.wait(rb"connected to rfc2217://127\.0\.0\.1:%d at 115200 baud" % port)
        # Line mode: whole lines, \r\n turned into \n, nothing partial.
        text = out.data()
        assert b"\r" not in text
        lines = text.split(b"\n")
        first = next(i for i, l in enumerate(lines) if TICK_RE.fullmatch(l))
        assert all(TICK_RE.fullmatch(l) for l in lines[first:-1]), text
        assert text.endswith(b"\n"), text
    finally:
        assert finish(p) == 0
    # Opening the monitor reset nothing: still the first boot.
    assert d.device("sim")["resets"] == 0
    assert "app start, boot #2" not in d.output("sim")["data"]


@pytest.mark.parametrize("via", ["portal", "url"])
def test_monitor_keys_reset_into_app_and_bootloader(serialhub, via):
    d = serialhub("sim=0", extra=("--http", "127.0.0.1:0"))
    host = portal_of(d)
    port = d.port("sim")
    target = host if via == "portal" else f"rfc2217://127.0.0.1:{port}"
    p, master, out, _ = spawn("monitor", target, "--timestamps", pty_stdin=True)
    try:
        out.wait(rb"\d\d:\d\d:\d\d\.\d{3} sim: app tick \d+, boot #1")
        mark = len(out.data())
        os.write(master, b"\x14\x12")  # Ctrl-T Ctrl-R
        out.wait(rb"sim: app tick \d+, boot #2", start=mark)
        out.wait(rb"reset into the application \((portal|DTR/RTS)\)")
        # (A reset by DTR/RTS passes through as line changes: the chip's output tells it.)
        d.wait_output("sim", r"app start, boot #2\b")
        mark = len(out.data())
        os.write(master, b"\x14\x10")  # Ctrl-T Ctrl-P
        # The ROM in download mode, as the monitor shows it (the API's device log leaves out
        # what the chip says while a client has it in its loader).
        out.wait(rb"waiting for download", start=mark)
        os.write(master, b"\x1d")  # Ctrl-]
        assert p.wait(10) == 0
    finally:
        finish(p)
        os.close(master)


def test_monitor_reconnects_after_a_daemon_restart(serialhub):
    port = closed_port()
    d = serialhub(f"sim={port}")
    assert d.port("sim") == port
    p, _, out, err = spawn("monitor", f"rfc2217://127.0.0.1:{port}")
    try:
        out.wait(rb"sim: app tick \d+, boot #1\n")
        d.stop()
        err.wait(rb"reconnecting in 0\.5 s")
        mark_err = len(err.data())
        d2 = serialhub(f"sim={port}")
        assert d2.port("sim") == port
        err.wait(rb"connected to rfc2217://127\.0\.0\.1:%d" % port, timeout=15, start=mark_err)
        mark = len(out.data())
        out.wait(rb"sim: app tick \d+, boot #1\n", start=mark)
    finally:
        assert finish(p) == 0


# ---------------------------------------------------------------------------------------------
# pty


def test_pty_forwards_baud_stop_bits_and_data_both_ways(pty_server, tmp_path):
    import serial

    _, dev, port = pty_server
    link = tmp_path / "ttyESP32"
    p, _, out, err = spawn("pty", f"rfc2217://127.0.0.1:{port}", "--link", str(link))
    try:
        err.wait(rb"bridged to rfc2217://127\.0\.0\.1:%d at 115200 baud" % port)
        assert os.readlink(link).startswith("/dev/pts/")
        ser = serial.Serial(str(link), 460800, timeout=5)
        try:
            wait_for(lambda: dev.ospeed() == 460800, 10, what="the remote port at 460800")
            ser.write(b"hello \xff\x00 device")
            assert dev.read_exactly(15, 10) == b"hello \xff\x00 device"
            dev.write_all(b"hello \xff program", 5)
            assert ser.read(15) == b"hello \xff program"
            ser.stopbits = serial.STOPBITS_TWO
            wait_for(lambda: dev.line_format() == (8, "N", 2), 10, what="8N2 on the remote port")
            ser.baudrate = 74880
            wait_for(lambda: dev.ospeed() == 74880, 10, what="the remote port at 74880")
        finally:
            ser.close()
    finally:
        assert finish(p) == 0
    assert not link.exists() and not link.is_symlink()


def test_esptool_writes_and_verifies_1mib_through_the_pty_link(serialhub, tmp_path):
    """A tool that insists on a device path: esptool on the local pty link (no reset lines,
    so `--before no-reset` after the portal put the chip into its bootloader) writes and
    verifies 1 MiB at 921600 — the baud change reaches the remote port through the pty."""
    import urllib.request

    flash = tmp_path / "flash.bin"
    d = serialhub(f"sim:{flash}=0", extra=("--http", "127.0.0.1:0"))
    host = portal_of(d)
    port = d.port("sim")
    req = urllib.request.Request(
        f"http://{host}/api/devices/name:sim/reset",
        data=b'{"to": "bootloader"}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.load(r)["success"]
    d.wait_output("sim", r"waiting for download")  # the ROM, in download mode
    link = tmp_path / "ttyESP32"
    p, _, out, err = spawn("pty", f"rfc2217://127.0.0.1:{port}", "--link", str(link))
    image = tmp_path / "img.bin"
    data = os.urandom(1024 * 1024)
    image.write_bytes(data)
    try:
        err.wait(rb"bridged to")
        esptool = [sys.executable, "-m", "esptool", "--port", str(link), "--before", "no-reset",
                   "--after", "no-reset", "-b", "921600"]
        for args in (["write-flash", "0x10000", str(image)], ["verify-flash", "0x10000", str(image)]):
            r = subprocess.run(esptool + args, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr
    finally:
        assert finish(p) == 0
    assert flash.read_bytes()[0x10000 : 0x10000 + len(data)] == data


def test_esptool_then_a_monitor_through_the_pty_link_from_a_running_app(serialhub, tmp_path):
    """Issue 13: a flasher that cannot reset (a pty has no DTR/RTS) on the local link, with
    the chip running its application: the server enters the bootloader on the SYNC and
    follows the baud; when esptool closes the link the pty client ends its session, the
    server resets the chip into its application, and a monitor opened next on the same link
    sees that boot from its first line."""
    import serial

    flash = tmp_path / "flash.bin"
    d = serialhub(f"sim:{flash}=0")
    port = d.port("sim")
    d.wait_opened("sim")
    link = tmp_path / "ttyESP32"
    p, _, _, err = spawn("pty", f"rfc2217://127.0.0.1:{port}", "--link", str(link))
    image = tmp_path / "img.bin"
    data = os.urandom(256 * 1024)
    image.write_bytes(data)
    cursor = d.output("sim")["next"]
    try:
        err.wait(rb"bridged to")
        esptool = [sys.executable, "-m", "esptool", "--port", str(link), "--before", "no-reset",
                   "--after", "no-reset", "-b", "921600"]
        r = subprocess.run(esptool + ["write-flash", "0x10000", str(image)], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert flash.read_bytes()[0x10000 : 0x10000 + len(data)] == data
        err.wait(rb"closed it; new session")
        # The server's two resets (the entry on the SYNC, the application at the session's
        # end): the second is under way, the application not yet up.
        d.wait_device("sim", lambda v: v["resets"] == 2, why="2 resets")
        # A monitor on the link now: the application's boot, from its first line.
        ser = serial.Serial(str(link), 115200, timeout=5)
        try:
            got = b""
            deadline = time.monotonic() + 10
            while not re.search(rb"app start, boot #\d+", got) and time.monotonic() < deadline:
                got += ser.read(4096)
            m = re.search(rb"app start, boot #(\d+)", got)
            assert m, got[-300:]
            # The latest boot, as the chip's output in the API shows it.
            latest = max(int(b) for b in re.findall(r"app start, boot #(\d+)", d.output("sim", cursor)["data"]))
            assert int(m.group(1)) == latest > 1, (got[-300:], latest)
        finally:
            ser.close()
    finally:
        assert finish(p) == 0
