"""Issue 14: several clients per device, one in control (`busy = "share"`, the default).

Real clients against the real daemon: pyserial's rfc2217:// client, `python -m
serial.tools.miniterm` and `serialhub monitor` as monitors, esptool over socket:// and
rfc2217:// as the flasher, raw sockets as observers, and PTYs as devices where the test must
see exactly what reaches the device. What each test proves is in its docstring.

Conventions of the suite: every wait is a condition with a deadline (`wait_for`); the only
sleeps are the width of a reset pulse (what esptool itself sleeps) and the pacing of a data
stream, never synchronisation. The portal's JSON (`clients`, `role`, `dropped_in`,
`dropped_out`) and `/metrics` (`serialhub_device_clients{…,role=…}`) are read over HTTP.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import serial

from conftest import SERIALHUB_BIN, recv_until_eof, wait_for
from test_client import Reader
from test_esptool import assert_flash_holds, esptool, flash_region
from test_socket import APP_BOOT, DOWNLOAD_BOOT, boots, esptool_socket, recv_exactly, running_app_boot

CLIENT_FIELDS = {"addr", "since", "seconds", "role", "dropped_in", "dropped_out"}
ADDR_RE = re.compile(r"127\.0\.0\.1:\d+")


def boot_log(n: int) -> bytes:
    """The simulated ESP32's complete output for boot #n into its application, from the ROM's
    first line to the application's first tick, as any monitor prints it (\\r\\n, \\n in line
    mode, or \\r\\r\\n through a terminal's output processing). Only intact at the monitor's
    115200: at any other rate the simulated UART garbles it."""
    return (
        rb"ets Jun  8 2016 00:22:57\r*\n\r*\n"
        rb"rst:0x[0-9a-f]+ \(\w+\),boot:0x13 \(SPI_FAST_FLASH_BOOT\)\r*\n"
        rb"(?:[^\r\n]*\r*\n){3}"  # configsip, clk_drv, mode
        rb"entry 0x400806a8\r*\n"
        rb"sim: app start, boot #%d\r*\n"
        rb"sim: app tick 0, boot #%d\r*\n" % (n, n)
    )


# ---------------------------------------------------------------------------------------------
# The portal


class Portal:
    """The daemon's portal (started with `--http 127.0.0.1:0`)."""

    def __init__(self, daemon):
        self.base = f"http://{daemon.portal}"  # from the ready line

    def get(self, path: str):
        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            raw = r.read()
            ctype = r.headers.get("Content-Type", "")
        return json.loads(raw) if ctype.startswith("application/json") else raw.decode()

    def device(self, port: int) -> dict:
        """The device served on `port`, from `GET /api/devices`, its `clients` checked."""
        devs = [d for d in self.get("/api/devices")["devices"] if d["port"] == port]
        assert len(devs) == 1, f"port {port}: {devs}"
        check_clients(devs[0])
        return devs[0]

    def device_by_key(self, key: str) -> dict:
        dev = self.get("/api/devices/" + urllib.parse.quote(key, safe=""))
        check_clients(dev)
        return dev

    def clients(self, port: int) -> list[dict]:
        return self.device(port)["clients"]

    def roles(self, port: int) -> list[tuple[str, str]]:
        """[(addr, role)…], the controller first."""
        return [(c["addr"], c["role"]) for c in self.clients(port)]

    def client(self, port: int, addr: str) -> dict | None:
        return next((c for c in self.clients(port) if c["addr"] == addr), None)

    def metric(self, name: str, **labels: str) -> float | None:
        """The sum of the samples of `name` whose labels include `labels` (None: no sample).
        Every daemon in this file serves one device, so the sum is that device's value."""
        total, found = 0.0, False
        for line in self.get("/metrics").splitlines():
            m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)", line.strip())
            if line.startswith("#") or not m or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
                found = True
        return total if found else None

    def role_counts(self) -> tuple[float | None, float | None]:
        return (self.metric("serialhub_device_clients", role="control"),
                self.metric("serialhub_device_clients", role="observe"))


def check_clients(dev: dict):
    """`clients`: objects with the issue's fields, the controller (if any) first and alone in
    control; `client` (the old field) is the controller or null."""
    clients = dev["clients"]
    assert isinstance(clients, list), dev
    now = time.time()
    for c in clients:
        assert CLIENT_FIELDS <= set(c), (CLIENT_FIELDS - set(c), c)
        assert ADDR_RE.fullmatch(c["addr"]), c
        assert isinstance(c["since"], (int, float)) and now - 3600 < c["since"] <= now + 2, c
        assert isinstance(c["seconds"], int) and c["seconds"] >= 0, c
        assert c["role"] in ("control", "observe"), c
        for k in ("dropped_in", "dropped_out"):
            assert isinstance(c[k], int) and c[k] >= 0, c
    roles = [c["role"] for c in clients]
    assert "control" not in roles[1:], f"the controller is not listed first: {clients}"
    if roles[:1] == ["control"]:
        assert dev["client"] is not None and dev["client"]["addr"] == clients[0]["addr"], dev
    else:
        assert dev["client"] is None, dev


def wait_roles(portal: Portal, port: int, want: list[tuple[str, str]], timeout: float = 10):
    """Wait until the device's clients are exactly `want` ([(addr, role)…], in order)."""
    try:
        return wait_for(lambda: portal.roles(port) == want, timeout, what=f"clients {want}")
    except TimeoutError:
        raise AssertionError(f"clients are {portal.roles(port)}, expected {want} within {timeout} s")


class RolePoller:
    """Samples the device's JSON and the role gauges in a thread (while a flash runs)."""

    def __init__(self, portal: Portal, port: int, interval: float = 0.05):
        self.portal, self.port, self.interval = portal, port, interval
        self.snapshots: list[tuple[list[tuple[str, str]], tuple]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.snapshots.append((self.portal.roles(self.port), self.portal.role_counts()))
            except BaseException as e:  # surfaced by the test
                self.errors.append(e)
                return
            self._stop.wait(self.interval)  # the sampling period, not synchronisation

    def stop(self):
        self._stop.set()
        self._t.join(10)
        assert not self.errors, self.errors

    def saw_observing(self, addr: str) -> bool:
        """Whether some sample had `addr` observing while another client was in control
        (listed first)."""
        return any(len(roles) >= 2 and roles[0][1] == "control" and roles[0][0] != addr
                   and (addr, "observe") in roles for roles, _ in self.snapshots)

    def saw_counts(self, control: int, observe: int) -> bool:
        """Whether the role gauges once read `control` in control and `observe` observing."""
        return any(counts == (control, observe) for _, counts in self.snapshots)


# ---------------------------------------------------------------------------------------------
# Monitors: pyserial in a thread, miniterm and `serialhub monitor` as processes


class PySerialMonitor:
    """pyserial's rfc2217:// client reading in a thread, as a monitor would (at 115200)."""

    kind = "pyserial"

    def __init__(self, port: int, baud: int = 115200, dtr: bool | None = None, rts: bool | None = None):
        self.ser = serial.serial_for_url(f"rfc2217://127.0.0.1:{port}", baudrate=baud, timeout=0.1,
                                         do_not_open=True)
        if dtr is not None:
            self.ser.dtr = dtr
        if rts is not None:
            self.ser.rts = rts
        self.ser.open()  # pyserial waits for the answer to each setting (or raises)
        self.addr = "127.0.0.1:%d" % self.ser._socket.getsockname()[1]
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                chunk = self.ser.read(self.ser.in_waiting or 1)
                if chunk:
                    with self.lock:
                        self.buf += chunk
        except BaseException as e:  # a dropped connection: pyserial raises SerialException
            self.error = e

    def data(self) -> bytes:
        with self.lock:
            return bytes(self.buf)

    def status(self) -> bytes:
        return b""

    def alive(self) -> bool:
        return self.error is None and self._t.is_alive() and self.ser.is_open

    def describe(self) -> str:
        return f"pyserial monitor {self.addr} (error: {self.error!r})"

    def close(self):
        self._stop.set()
        self._t.join(5)
        self.ser.close()


def _client_env() -> dict:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("ESP32_", "PI_HOST", "SERIALHUB_HOST"))}


class ProcessMonitor:
    """A monitor program as a subprocess: `serialhub monitor URL` (stdout and stderr as pipes),
    or `python -m serial.tools.miniterm URL 115200 --raw` (it wants a terminal for its
    keyboard: everything on a pseudo-terminal, whose output processing turns \\n into \\r\\n)."""

    def __init__(self, kind: str, port: int):
        self.kind = kind
        self.addr: str | None = None  # learnt from the portal
        url = f"rfc2217://127.0.0.1:{port}"
        self.master = None
        if kind == "miniterm":
            master, slave = os.openpty()
            self.p = subprocess.Popen(
                [sys.executable, "-m", "serial.tools.miniterm", url, "115200", "--raw"],
                stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                env=dict(_client_env(), TERM="dumb"),
            )
            os.close(slave)
            self.master = master
            self.out = Reader(master)
            self.err = None
        else:
            self.p = subprocess.Popen([SERIALHUB_BIN, "monitor", url], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_client_env())
            self.out = Reader(self.p.stdout.fileno())
            self.err = Reader(self.p.stderr.fileno())

    def data(self) -> bytes:
        return self.out.data()

    def status(self) -> bytes:
        return self.err.data() if self.err else b""

    def alive(self) -> bool:
        return self.p.poll() is None

    def describe(self) -> str:
        return (f"{self.kind} (exit {self.p.poll()}); stderr:\n"
                f"{self.status()[-2000:].decode('utf-8', 'replace')}")

    def close(self):
        if self.p.poll() is None:
            if self.master is not None:
                try:
                    os.write(self.master, b"\x1d")  # Ctrl-]: miniterm's quit key
                except OSError:
                    pass
            else:
                self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        if self.master is not None:
            os.close(self.master)
            self.master = None


def open_monitor(kind: str, port: int, portal: Portal):
    """Start a monitor as the device's only client; wait until the portal shows it in
    control (and learn its address)."""
    mon = PySerialMonitor(port) if kind == "pyserial" else ProcessMonitor(kind, port)
    try:
        clients = wait_for(lambda: (c := portal.clients(port)) and len(c) == 1 and c, 15,
                           what=f"the {kind} monitor in the portal")
    except TimeoutError:
        mon.close()
        raise AssertionError(f"{mon.describe()}\nnever shown as a client: {portal.roles(port)}")
    if mon.addr is None:
        mon.addr = clients[0]["addr"]
    return mon


def wait_boot_seen(mon, d, timeout: float = 30, after: int = 0) -> int:
    """Wait until the monitor has printed the complete boot log (ROM banner, app start, tick
    0) of the chip's latest boot into its application, numbered above `after`; returns that
    boot number. The number comes from the daemon's log (`sim: boot #N into the application`)."""

    def seen():
        app = boots(d, APP_BOOT)
        n = max(app) if app else 0
        return n > after and re.search(boot_log(n), mon.data()) and n

    try:
        return wait_for(seen, timeout, what="the boot log on the monitor")
    except TimeoutError:
        raise AssertionError(
            f"the monitor did not print the whole boot log of the latest app boot "
            f"{boots(d, APP_BOOT)} (after #{after}) within {timeout} s; {mon.describe()}\n"
            f"it printed (tail): {mon.data()[-1500:]!r}\ndaemon log:\n{d.log}")


def assert_no_loader_traffic(mon):
    """Nothing of a loader session reached the monitor: no SLIP byte, no download banner."""
    data = mon.data()
    i = data.find(b"\xc0")
    assert i < 0, f"the monitor received a SLIP byte (0xC0) at +{i}: {data[max(0, i - 200):i + 50]!r}"
    assert b"waiting for download" not in data, "the monitor received the ROM's download-mode banner"


def wait_ticks(mon, n: int, count: int = 3, timeout: float = 10):
    """Wait for `count` tick lines of boot #n on the monitor; their numbers only go up."""
    rx = re.compile(rb"sim: app tick (\d+), boot #%d\r*\n" % n)
    try:
        wait_for(lambda: len(rx.findall(mon.data())) >= count, timeout, what=f"{count} ticks of boot #{n}")
    except TimeoutError:
        raise AssertionError(f"fewer than {count} ticks of boot #{n}: {mon.data()[-500:]!r}; {mon.describe()}")
    ticks = [int(t) for t in rx.findall(mon.data())]
    assert all(a < b for a, b in zip(ticks, ticks[1:])), f"boot #{n}'s ticks out of order: {ticks}"


# ---------------------------------------------------------------------------------------------
# Fixtures and small helpers


@pytest.fixture
def shared_sim(serialhub, tmp_path):
    """The simulated ESP32 (flash in a file) with the portal: (daemon, port, flash, portal).
    No config file: `busy = "share"` is the default."""
    flash = tmp_path / "flash.bin"
    d = serialhub(f"sim:{flash}=0", extra=("--http", "127.0.0.1:0"))
    port = d.port("sim")
    d.wait_output("sim", r"app start, boot #1\b")  # the application runs
    return d, port, flash, Portal(d)


def serve_pty(serialhub, tmp_path: Path, pty, extra: str = ""):
    """A PTY device from a config file, with the portal: (daemon, port, portal)."""
    cfg = tmp_path / "serialhub.toml"
    cfg.write_text(f'[[device]]\npath = "{pty.path}"\nport = 0\n{extra}')
    d = serialhub(extra=("--config", str(cfg), "--http", "127.0.0.1:0"))
    port = d.port(pty.path)
    d.wait_opened(pty.path)
    return d, port, Portal(d)


def image_file(tmp_path: Path, name: str, seed: int, size: int) -> tuple[Path, bytes]:
    data = random.Random(seed).randbytes(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def local_addr(s: socket.socket) -> str:
    return "127.0.0.1:%d" % s.getsockname()[1]


def raw_client(port: int, hello: bytes = b"", rcvbuf: int | None = None) -> socket.socket:
    """A raw TCP client (netcat); `hello` (not starting with IAC) makes it raw at once."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    if hello:
        s.sendall(hello)
    return s


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# ---------------------------------------------------------------------------------------------
# 1. A monitor stays open through a flash


@pytest.mark.parametrize(
    "monitor,via",
    [("pyserial", "socket"), ("pyserial", "rfc2217"), ("miniterm", "socket"),
     ("serialhub-monitor", "socket")],
)
def test_monitor_stays_open_through_write_and_verify(shared_sim, tmp_path, monitor, via):
    """A monitor (pyserial's rfc2217:// client, miniterm, or `serialhub monitor`) stays
    connected while esptool write-flash and verify-flash run over `via` (socket://, where the
    server enters the bootloader on the SYNC; rfc2217://, with esptool's own DTR/RTS resets).

    Proves: the monitor alone is shown in control (JSON `clients`, `client`, the role
    gauges); esptool takes control from the idle monitor, which is shown observing meanwhile;
    the flash writes and verifies; the monitor's connection never drops; it never receives a
    SLIP byte (0xC0) or the ROM's "waiting for download"; after each esptool run it is in
    control again and prints the chip's next boot complete from the ROM's first line, at its
    own 115200 (any other rate garbles the simulated UART), then ticks. Over socket:// that
    boot is the one right after the download-mode boot (one reset, the server's). `serialhub
    monitor` says `observing`, then `in control`."""
    d, port, flash, portal = shared_sim
    img, image = image_file(tmp_path, "img.bin", 14, 128 * 1024)
    mon = open_monitor(monitor, port, portal)
    try:
        wait_ticks(mon, 1)
        # The monitor-only phase: one client, in control.
        dev = portal.device(port)
        assert [(c["addr"], c["role"]) for c in dev["clients"]] == [(mon.addr, "control")], dev
        c = dev["clients"][0]
        assert (c["dropped_in"], c["dropped_out"]) == (0, 0), c
        assert dev["client"]["addr"] == mon.addr
        one = portal.device_by_key(dev["key"])
        assert [(c["addr"], c["role"]) for c in one["clients"]] == [(mon.addr, "control")], one
        assert portal.role_counts() == (1, 0), portal.get("/metrics")

        last = 1
        for args in (["write-flash", "0x10000", str(img)], ["verify-flash", "0x10000", str(img)]):
            poller = RolePoller(portal, port)
            try:
                if via == "socket":
                    out = esptool_socket(port, "-b", "921600", *args, timeout=180)
                else:
                    out = esptool(port, "", "-b", "921600", *args, timeout=240)
            finally:
                poller.stop()
            if args[0] == "write-flash":
                assert "hash of data verified" in out.lower(), out
                assert_flash_holds(flash, 0x10000, image)
            else:
                assert "verification successful" in out.lower(), out
            assert poller.saw_observing(mon.addr), \
                f"the monitor was never shown observing during {args[0]}: {poller.snapshots[:50]}"
            assert poller.saw_counts(1, 1), \
                f"serialhub_device_clients never showed 1 control + 1 observe: {poller.snapshots[:50]}"
            assert mon.alive(), f"the monitor's connection dropped during {args[0]}: {mon.describe()}"
            n = wait_boot_seen(mon, d, after=last)
            downloads = boots(d, DOWNLOAD_BOOT)
            assert downloads and max(downloads) < n, (downloads, n)
            if via == "socket":
                assert n == max(downloads) + 1, \
                    f"boot #{n} after download boot #{max(downloads)}: more than one reset; log:\n{d.log}"
            wait_ticks(mon, n)
            wait_roles(portal, port, [(mon.addr, "control")])
            assert_no_loader_traffic(mon)
            last = n
        assert portal.role_counts() == (1, 0), portal.get("/metrics")
        assert mon.alive(), mon.describe()

        if monitor == "serialhub-monitor":
            # Its status lines (stderr, `--- … ---`; stdout accepted too): observing while
            # esptool ran, in control after it.
            # (The observing line may name who is in control: "… observing; X is in control";
            # the later one says `in control` without `observing`.)
            for stream in (mon.status(), mon.data()):
                lines = stream.splitlines()
                i = next((k for k, line in enumerate(lines) if b"observing" in line), None)
                if i is not None and any(b"in control" in line and b"observing" not in line
                                         for line in lines[i + 1:]):
                    break
            else:
                raise AssertionError(f"no `observing` then `in control` status line; {mon.describe()}")
            assert b"reconnecting" not in mon.status(), mon.describe()
        assert_no_loader_traffic(mon)
    finally:
        mon.close()


# ---------------------------------------------------------------------------------------------
# 2. The monitor controls the chip again after the flash


def test_monitor_resets_the_chip_after_the_flash(shared_sim, tmp_path):
    """A pyserial monitor opened like esptool's (DTR and RTS released), a socket:// flash
    while it observes, then a hard reset from the monitor (RTS asserted for 100 ms, as
    esptool's HardReset): proves the monitor's lines drive the board again once the flasher
    is gone — the chip boots once more into its application (the next boot number, no
    download boot), and the monitor prints that boot from its first line."""
    d, port, flash, portal = shared_sim
    img, image = image_file(tmp_path, "img.bin", 21, 32 * 1024)
    mon = PySerialMonitor(port, dtr=False, rts=False)
    try:
        wait_roles(portal, port, [(mon.addr, "control")])
        wait_ticks(mon, 1)
        out = esptool_socket(port, "-b", "921600", "write-flash", "0x10000", str(img))
        assert "hash of data verified" in out.lower(), out
        assert_flash_holds(flash, 0x10000, image)
        n = wait_boot_seen(mon, d, after=1)
        wait_roles(portal, port, [(mon.addr, "control")])
        downloads = boots(d, DOWNLOAD_BOOT)
        mon.ser.rts = True  # EN low
        time.sleep(0.1)  # the reset pulse's width (esptool's HardReset), not synchronisation
        mon.ser.rts = False
        m = wait_boot_seen(mon, d, after=n)
        assert m == n + 1, f"the monitor's reset gave boot #{m}, expected #{n + 1}; log:\n{d.log}"
        assert boots(d, DOWNLOAD_BOOT) == downloads, d.log
        wait_ticks(mon, m)
        assert mon.alive(), mon.describe()
        assert_no_loader_traffic(mon)
    finally:
        mon.close()


# ---------------------------------------------------------------------------------------------
# 3. A monitor joins during a flash


def test_monitor_joining_during_a_flash_waits_and_sees_no_slip(shared_sim, tmp_path):
    """esptool write-flash (512 KiB over socket://) starts first; a pyserial monitor opens
    while it runs. Proves: the monitor's open (settings, DTR/RTS) is answered without
    timeout while the flasher keeps control (a controller in a loader session is never
    interrupted: the newcomer is listed observing, second); the flash completes and verifies;
    the monitor gets no SLIP and no download banner; when esptool leaves, the monitor is in
    control and prints the next boot (the one right after the download boot) from its first
    line."""
    d, port, flash, portal = shared_sim
    img, image = image_file(tmp_path, "img.bin", 31, 512 * 1024)
    cmd = [sys.executable, "-m", "esptool", "--port", f"socket://127.0.0.1:{port}", "-b", "921600",
           "write-flash", "0x10000", str(img)]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    mon = None
    try:
        # The server's bootloader entry on esptool's SYNC: the flash is under way. (The ROM's
        # banner is loader-session output, which the device's log in the API does not keep.)
        d.wait_device("sim", lambda v: v["resets"] >= 1, timeout=30, why="the bootloader entry")
        mon = PySerialMonitor(port)  # pyserial raises if a setting or DTR/RTS goes unanswered 3 s
        roles = wait_for(lambda: (r := portal.roles(port)) and len(r) == 2 and r, 10,
                         what="two clients")
        assert p.poll() is None, "esptool ended before the monitor joined: make the image bigger"
        assert roles[0][1] == "control" and roles[0][0] != mon.addr and roles[1] == (mon.addr, "observe"), roles
        out, _ = p.communicate(timeout=180)
        out = out.decode(errors="replace")
        assert p.returncode == 0, f"esptool exited {p.returncode}:\n{out}"
        assert "hash of data verified" in out.lower(), out
        assert_flash_holds(flash, 0x10000, image)
        n = wait_boot_seen(mon, d, after=1)
        assert n == max(boots(d, DOWNLOAD_BOOT)) + 1, d.log
        wait_ticks(mon, n)
        wait_roles(portal, port, [(mon.addr, "control")])
        assert mon.alive(), mon.describe()
        assert_no_loader_traffic(mon)
        out = esptool_socket(port, "-b", "921600", "verify-flash", "0x10000", str(img))
        assert "verification successful" in out.lower(), out
        assert mon.alive(), mon.describe()
        assert_no_loader_traffic(mon)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        if mon is not None:
            mon.close()


# ---------------------------------------------------------------------------------------------
# 4. Two flashers at once


def test_two_flashers_at_once_never_mix(shared_sim, tmp_path):
    """Two esptool write-flash runs (different 128 KiB random images, same offset) started at
    once over socket://. Proves: the second never interleaves with the first (it waits,
    observing, and gets none of the first's loader answers); at least one succeeds; afterwards
    the region holds exactly the image of one that exited 0 — never a mixture; the chip runs
    its application again."""
    d, port, flash, portal = shared_sim
    size = 128 * 1024
    runs = []
    for i, seed in enumerate((41, 42)):
        img, image = image_file(tmp_path, f"img{i}.bin", seed, size)
        cmd = [sys.executable, "-m", "esptool", "--port", f"socket://127.0.0.1:{port}",
               "--before", "no-reset", "-b", "921600", "write-flash", "0x10000", str(img)]
        runs.append((cmd, image))
    procs = [subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for cmd, _ in runs]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            results.append((p.returncode, out.decode(errors="replace"), err.decode(errors="replace")))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    report = "\n".join(f"--- esptool {i}: exit {rc}\nstdout:\n{out}\nstderr:\n{err}"
                       for i, (rc, out, err) in enumerate(results))
    ok = [runs[i][1] for i, (rc, _, _) in enumerate(results) if rc == 0]
    assert ok, f"neither flash succeeded:\n{report}\ndaemon log:\n{d.log}"
    for i, (rc, out, _) in enumerate(results):
        if rc == 0:
            assert "hash of data verified" in out.lower(), report
    try:
        wait_for(lambda: flash.exists() and flash_region(flash, 0x10000, size) in ok, 10,
                 what="one successful image in the flash")
    except TimeoutError:
        got = flash_region(flash, 0x10000, size) if flash.exists() else b""
        same = [sum(a == b for a, b in zip(got, image)) for _, image in runs]
        raise AssertionError(f"the flash at 0x10000 holds neither successful image exactly "
                             f"(bytes equal to each image: {same} of {size}):\n{report}")
    wait_for(lambda: max(boots(d, APP_BOOT)) > max(boots(d, DOWNLOAD_BOOT), default=0),
             15, what="the application after the flashes")
    assert running_app_boot(port) == max(boots(d, APP_BOOT))


# ---------------------------------------------------------------------------------------------
# 5. A stalled observer never slows the controller


STREAM_RATE = 2 * 1024 * 1024  # bytes/s the "device" sends (the PTY itself does not pace)


def _stream_block() -> bytes:
    """64 KiB of numbered text lines (no 0xC0, no IAC: nothing any parser could take)."""
    lines = b"".join(b"%07d the device streams to every client of the port ....\r\n" % i for i in range(1200))
    return lines[:64 * 1024]


def stream_to_controller(pty, ctl: socket.socket, seconds: float, pid: int) -> tuple[float, list[int]]:
    """The device writes `seconds` × STREAM_RATE bytes, paced; the controller reads them.
    Returns (the controller's throughput in bytes/s, the daemon's VmRSS samples in KiB).
    Asserts the controller received every byte, exactly."""
    block = _stream_block()
    chunk = 16 * 1024
    total = int(seconds * STREAM_RATE) // chunk * chunk
    tx = hashlib.sha256()
    rx = hashlib.sha256()
    got = [0, 0.0]  # bytes, monotonic time of the last byte
    errors: list[BaseException] = []

    def read():
        try:
            ctl.settimeout(1.0)
            deadline = time.monotonic() + seconds * 4 + 20
            while got[0] < total and time.monotonic() < deadline:
                try:
                    data = ctl.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                rx.update(data)
                got[0] += len(data)
                got[1] = time.monotonic()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=read, daemon=True)
    rss = []
    t0 = time.monotonic()
    t.start()
    next_sample = t0
    for i in range(total // chunk):
        due = t0 + i * chunk / STREAM_RATE
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)  # pacing the stream, not synchronisation
        off = (i * chunk) % len(block)  # 64 KiB is a multiple of the chunk: no wrap
        piece = block[off:off + chunk]
        pty.write_all(piece, timeout=30)
        tx.update(piece)
        if time.monotonic() >= next_sample:
            rss.append(vm_rss_kib(pid))
            next_sample += 1.0
    t.join(seconds * 4 + 30)
    rss.append(vm_rss_kib(pid))
    assert not errors, errors
    assert got[0] == total, f"the controller received {got[0]} of {total} bytes"
    assert rx.digest() == tx.digest(), "the controller's bytes differ from the device's"
    return total / (got[1] - t0), rss


def test_a_stalled_observer_never_slows_the_controller(serialhub, pty_device, tmp_path):
    """A PTY device at 921600 streams (paced at 2 MiB/s, far above what the kernel's socket
    buffers can hide for 20 s) to a raw controller, first alone for 5 s, then for 20 s with an
    observer that never reads (receive buffer 4 KiB). Proves: the controller gets every byte,
    exactly, at a throughput within 20 % of the one without the observer; the daemon's RSS
    stays within 4 MiB of where it was; the portal shows the observer's `dropped_out` > 0
    (and nothing dropped for the controller)."""
    pty = pty_device()
    d, port, portal = serve_pty(serialhub, tmp_path, pty, "baud = 921600\n")
    wait_for(lambda: pty.ospeed() == 921600, 5, what="the port opened at 921600")
    pid = d.proc.pid

    # Alone.
    with raw_client(port, b"A") as ctl:
        assert pty.read_exactly(1, 5) == b"A"
        wait_roles(portal, port, [(local_addr(ctl), "control")])
        alone, _ = stream_to_controller(pty, ctl, 5, pid)
    wait_for(lambda: portal.clients(port) == [], 10, what="no clients")

    # With a stalled observer: it connects first (its byte reaches the device: it is alone),
    # then the controller, which takes control from it (idle).
    stalled = raw_client(port, b"S", rcvbuf=4096)
    try:
        assert pty.read_exactly(1, 5) == b"S"
        with raw_client(port) as ctl:
            wait_roles(portal, port, [(local_addr(ctl), "control"), (local_addr(stalled), "observe")])
            ctl.sendall(b"C")
            assert pty.read_exactly(1, 5) == b"C"
            base = vm_rss_kib(pid)
            shared, rss = stream_to_controller(pty, ctl, 20, pid)
            print(f"\nstalled observer: controller {alone / 1e6:.2f} MB/s alone, {shared / 1e6:.2f} MB/s "
                  f"with it; daemon RSS {base} -> max {max(rss)} KiB")
            assert shared >= 0.8 * alone, f"controller {shared:.0f} B/s with the stalled observer, {alone:.0f} alone"
            assert max(rss) <= base + 4096, f"RSS {base} -> {rss} KiB"
            obs = portal.client(port, local_addr(stalled))
            me = portal.client(port, local_addr(ctl))
            assert obs is not None and obs["role"] == "observe" and obs["dropped_out"] > 0, obs
            assert me is not None and me["role"] == "control" and me["dropped_out"] == 0, me
            # What the observer did get is the start of the stream, as sent.
            stalled.settimeout(1.0)
            head = stalled.recv(4096)
            assert head and _stream_block().startswith(head), head[:100]
    finally:
        stalled.close()


# ---------------------------------------------------------------------------------------------
# 6. max_clients


def test_max_clients_refuses_the_next_one(serialhub, pty_device, tmp_path):
    """`busy = "share"`, `max_clients = 2`: with two clients connected a third is told
    `Port already in use` and closed at once; the two keep working (device output reaches
    both, the controller's bytes reach the device); once one leaves, a new client is
    admitted."""
    pty = pty_device()
    d, port, portal = serve_pty(serialhub, tmp_path, pty, 'busy = "share"\nmax_clients = 2\n')
    a = raw_client(port)
    b = raw_client(port)
    try:
        wait_for(lambda: len(portal.clients(port)) == 2, 10, what="two clients")
        pty.write_all(b"hello both\r\n", 5)  # also ends protocol detection: both raw
        for s in (a, b):
            assert recv_exactly(s, 12) == b"hello both\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            data, closed = recv_until_eof(c, timeout=5)
        assert closed, f"the third client was not closed (got {data!r})"
        assert data.startswith(b"Port already in use"), data
        assert len(portal.clients(port)) == 2
        # Still working: output to both, the controller's bytes to the device.
        pty.write_all(bytes(range(256)), 5)
        for s in (a, b):
            assert recv_exactly(s, 256) == bytes(range(256))
        ctl_addr = portal.roles(port)[0]
        assert ctl_addr[1] == "control", portal.roles(port)
        ctl = a if local_addr(a) == ctl_addr[0] else b
        ctl.sendall(b"still in control")
        assert pty.read_exactly(16, 5) == b"still in control"
        # One leaves: room for another.
        other = b if ctl is a else a
        other.close()
        wait_for(lambda: len(portal.clients(port)) == 1, 10, what="one client left")
        with raw_client(port) as c:
            wait_for(lambda: len(portal.clients(port)) == 2, 10, what="the newcomer admitted")
            pty.write_all(b"welcome\r\n", 5)
            assert recv_exactly(c, 9) == b"welcome\r\n"
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------------------------
# 7. Observers' writes are dropped; their output is exact


def test_observer_writes_are_dropped_and_output_reaches_everyone_exactly(serialhub, pty_device, tmp_path):
    """Three raw clients on a PTY device, one in control. Proves: what the two observers
    write never reaches the device (the portal counts it in their `dropped_in`), while the
    controller's bytes do, exactly and alone; all three receive the device's output — every
    byte value, in order — exactly; the gauges say one in control, two observing."""
    pty = pty_device()
    d, port, portal = serve_pty(serialhub, tmp_path, pty)
    socks = [raw_client(port) for _ in range(3)]
    try:
        wait_for(lambda: len(portal.clients(port)) == 3, 10, what="three clients")
        pty.write_all(b"boot banner\r\n", 5)  # ends protocol detection for the silent three
        for s in socks:
            assert recv_exactly(s, 13) == b"boot banner\r\n"
        roles = portal.roles(port)
        assert [r for _, r in roles] == ["control", "observe", "observe"], roles
        by_addr = {local_addr(s): s for s in socks}
        assert set(by_addr) == {a for a, _ in roles}, (by_addr, roles)
        ctl = by_addr[roles[0][0]]
        observers = [by_addr[a] for a, _ in roles[1:]]
        assert portal.role_counts() == (1, 2), portal.get("/metrics")

        sent = {}
        for i, s in enumerate(observers):
            junk = b"observer %d: " % i + bytes(range(256))  # first byte not IAC: raw anyway
            s.sendall(junk)
            sent[local_addr(s)] = len(junk)
        wait_for(lambda: all((portal.client(port, a) or {}).get("dropped_in") == n for a, n in sent.items()),
                 10, what=f"dropped_in {sent}")
        mine = b"from the controller \x00\xff\xc0 only"
        ctl.sendall(mine)
        assert pty.read_exactly(len(mine), 5) == mine
        assert pty.read_available(settle=0.3) == b"", "more than the controller's bytes reached the device"

        every = bytes(range(256)) * 16
        pty.write_all(every, 5)
        for s in socks:
            assert recv_exactly(s, len(every)) == every
        for c in portal.clients(port):
            assert c["dropped_out"] == 0, c
            if c["addr"] == local_addr(ctl):
                assert c["dropped_in"] == 0, c
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------------------------------------
# 8. An observer's settings wait for control


def test_observer_settings_are_answered_then_applied_on_control(serialhub, pty_device, tmp_path):
    """pyserial rfc2217:// clients on a PTY device: B connects first, A (230400) takes control
    from it. Proves: B's `baudrate = 9600` while observing is answered at once (pyserial
    would raise after its 3 s wait) and not applied — the device stays at A's 230400 and A
    still drives it; B's writes are dropped (`dropped_in`); when A leaves, B is in control,
    the device takes B's 9600, and B's bytes reach it."""
    pty = pty_device()
    d, port, portal = serve_pty(serialhub, tmp_path, pty)
    url = f"rfc2217://127.0.0.1:{port}"
    b = serial.serial_for_url(url, baudrate=115200, timeout=1)
    try:
        b_addr = "127.0.0.1:%d" % b._socket.getsockname()[1]
        wait_roles(portal, port, [(b_addr, "control")])
        a = serial.serial_for_url(url, baudrate=230400, timeout=1)
        try:
            a_addr = "127.0.0.1:%d" % a._socket.getsockname()[1]
            wait_roles(portal, port, [(a_addr, "control"), (b_addr, "observe")])
            wait_for(lambda: pty.ospeed() == 230400, 5, what="A's 230400 on the device")
            t0 = time.monotonic()
            b.baudrate = 9600  # pyserial waits for the server's answer, or raises
            took = time.monotonic() - t0
            assert took < 1.5, f"the observer's baud change was answered after {took:.2f} s"
            # Not applied: the device stays at the controller's rate (watched for 0.5 s).
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                assert pty.ospeed() == 230400, f"the device went to {pty.ospeed()} while B observed"
                time.sleep(0.02)  # the sampling period of a bounded watch
            b.write(b"observer bytes")
            wait_for(lambda: (portal.client(port, b_addr) or {}).get("dropped_in") == 14, 10,
                     what="B's 14 bytes dropped")
            a.write(b"from A")
            assert pty.read_exactly(6, 5) == b"from A"
            assert pty.read_available(settle=0.2) == b"", "B's bytes reached the device"
        finally:
            a.close()
        wait_roles(portal, port, [(b_addr, "control")])
        wait_for(lambda: pty.ospeed() == 9600, 5, what="B's 9600 on the device once it has control")
        b.write(b"B in control")
        assert pty.read_exactly(12, 5) == b"B in control"
        pty.write_all(b"to B\r\n", 5)
        assert b.read(6) == b"to B\r\n"
    finally:
        b.close()
    # The last client gone: the configured 115200 is back.
    wait_for(lambda: pty.ospeed() == 115200, 5, what="115200 restored")
