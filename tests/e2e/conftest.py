"""Fixtures for the end-to-end tests: the real `serialhub` binary, PTY pairs as devices.

Every wait here is a condition with a deadline (`wait_for`); nothing sleeps to synchronise.
Tests wait on what the daemon says to machines, never on its log's wording: the ready line
(`serve --ready-fd N`: the portal's address and every device's port, once all listen) and the
portal's API (`/api/devices`, `/metrics`). Every daemon the `serialhub` fixture starts in this
namespace gets a portal on an OS-picked 127.0.0.1 port unless the test passes its own `--http`;
the log is read only where it is the thing under test, after an API condition was met.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def _default_bin() -> str:
    return str(REPO / "target" / "debug" / "serialhub")


SERIALHUB_BIN = os.environ.get("SERIALHUB_BIN") or _default_bin()



def wait_for(cond, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll `cond()` until it returns a truthy value (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# The daemon


class Daemon:
    """One running `serialhub serve`; stderr is collected line by line in a thread, and the
    ready line (`--ready-fd`, on a pipe) is read in another."""

    # States in which a device's port listens (the API's `running`).
    SERVED = ("starting", "idle", "connected")
    # States in which the device is open (the log's "opened ...").
    OPEN = ("idle", "connected")

    def __init__(self, args: list[str], env: dict | None = None, prefix: tuple[str, ...] = ()):
        # `prefix`: e.g. `ip netns exec NS`, to run the daemon on another (namespace) host.
        ready_r, ready_w = os.pipe()
        if args[:1] == ["serve"]:
            args = [*args, "--ready-fd", str(ready_w)]
        self.args = [*prefix, SERIALHUB_BIN, *args]
        full_env = dict(os.environ)
        full_env.setdefault("RUST_LOG", "info")
        full_env["RUST_BACKTRACE"] = "1"
        if env:
            full_env.update(env)
        try:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                pass_fds=(ready_w,),
            )
        finally:
            os.close(ready_w)
        # Where the test reaches the portal: the ready line's address, with an unspecified
        # one (0.0.0.0) as loopback; a test whose daemon runs in a namespace sets its own.
        self.api_host: str | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._ready_line: bytes | None = None
        self._ready_done = threading.Event()
        self._ready_reader = threading.Thread(target=self._read_ready, args=(ready_r,), daemon=True)
        self._ready_reader.start()
        self.returncode: int | None = None

    def _read(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self._lines.append(line)

    def _read_ready(self, fd: int):
        # The daemon writes one line and closes its end; its exit closes it too.
        data = bytearray()
        with os.fdopen(fd, "rb") as f:
            for chunk in iter(lambda: f.read(65536), b""):
                data += chunk
        self._ready_line = bytes(data)
        self._ready_done.set()

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match:
        """Wait for a stderr line (from line index `start` on) matching the regex `pattern`.
        Only for what the log itself is under test (a message a user must see, the daemon's
        own trace of what it applied where nothing else shows it): everything else waits on
        the API."""
        rx = re.compile(pattern)

        def found():
            for line in self.lines[start:]:
                m = rx.search(line)
                if m:
                    return m
            if not self.alive():
                raise AssertionError(
                    f"serialhub exited ({self.proc.returncode}) while waiting for "
                    f"/{pattern}/; log:\n{self.log}"
                )
            return None

        try:
            return wait_for(found, timeout, what=f"log line /{pattern}/")
        except TimeoutError:
            raise AssertionError(f"no log line /{pattern}/ within {timeout} s; log:\n{self.log}")

    # --- the ready line

    def ready(self, timeout: float = 20.0) -> dict:
        """The ready line: {"portal": "ADDR:PORT" or None, "devices": [{key, name, tty, port,
        state}, ...]}, written once every port of the devices served at start listens."""
        if not self._ready_done.wait(timeout):
            raise AssertionError(f"no ready line within {timeout} s; log:\n{self.log}")
        line = self._ready_line.split(b"\n", 1)[0]
        if not line:
            self.proc.poll()
            raise AssertionError(
                f"serialhub closed --ready-fd without a ready line (exit {self.proc.returncode}); log:\n{self.log}"
            )
        return json.loads(line)

    @property
    def portal(self) -> str | None:
        """The portal's address as the test reaches it ("127.0.0.1:PORT"), None without one."""
        addr = self.ready()["portal"]
        if addr is None:
            return None
        host, _, port = addr.rpartition(":")
        if self.api_host is not None:
            host = self.api_host
        elif host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{host}:{port}"

    @property
    def portal_port(self) -> int:
        return int(self.ready()["portal"].rpartition(":")[2])

    # --- the portal's API

    def api(self, path: str, timeout: float = 10.0):
        """GET `path` on the portal: parsed JSON (or text for /metrics); None on 404."""
        portal = self.portal
        assert portal is not None, "this daemon runs without a portal (--http off)"
        try:
            with urllib.request.urlopen(f"http://{portal}{path}", timeout=timeout) as r:
                raw, ctype = r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise AssertionError(f"GET {path}: {e.code} {e.read()!r}")
        return json.loads(raw) if ctype.startswith("application/json") else raw.decode()

    def devices(self) -> list[dict]:
        return self.api("/api/devices")["devices"]

    def device(self, what: str) -> dict | None:
        """One device by key, tty (as on the command line, or a hotplugged node's path) or
        name, as /api/devices/{what} shows it; None while the daemon does not know it."""
        return self.api("/api/devices/" + urllib.parse.quote(what, safe=""))

    def metrics(self) -> str:
        return self.api("/metrics")

    def metric(self, family: str, **labels: str) -> float | None:
        """The value of the first /metrics sample of `family` whose labels include `labels`."""
        for line in self.metrics().splitlines():
            m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
            if not m or m.group(1) != family:
                continue
            have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                return float(m.group(3))
        return None

    def output(self, what: str, since: int = 0) -> dict:
        """The device's kept output (/api/devices/{what}/log): {data, from, next, total}."""
        return self.api("/api/devices/" + urllib.parse.quote(what, safe="") + f"/log?since={since}")

    def wait_output(self, what: str, pattern: str, since: int = 0, timeout: float = 10.0) -> re.Match:
        """Wait until the device's output (from offset `since`) matches the regex `pattern`."""
        rx = re.compile(pattern)
        try:
            return wait_for(lambda: rx.search(self.output(what, since)["data"]), timeout,
                            interval=0.05, what=f"/{pattern}/ in {what}'s output")
        except TimeoutError:
            tail = self.output(what, since)["data"][-1500:]
            raise AssertionError(f"no /{pattern}/ in {what}'s output within {timeout} s; it ends "
                                 f"{tail!r}; log:\n{self.log}")

    def wait_device(self, what: str, pred, timeout: float = 10.0, why: str = "") -> dict:
        """Poll /api/devices/{what} until `pred(device)` holds; the device then."""
        last: list = [None]

        def check():
            if not self.alive():
                raise AssertionError(f"serialhub exited ({self.proc.returncode}); log:\n{self.log}")
            last[0] = self.device(what)
            return last[0] if last[0] is not None and pred(last[0]) else None

        try:
            return wait_for(check, timeout, interval=0.05, what=why or f"device {what}")
        except TimeoutError:
            raise AssertionError(
                f"device {what}: not {why or 'as expected'} within {timeout} s; last seen "
                f"{json.dumps(last[0], indent=1)}; log:\n{self.log}"
            )

    def wait_state(self, what: str, *states: str, timeout: float = 10.0) -> dict:
        return self.wait_device(what, lambda d: d["state"] in states, timeout, "/".join(states))

    def wait_opened(self, what: str, timeout: float = 10.0) -> dict:
        """The device is open (idle, or a client is connected)."""
        return self.wait_state(what, *self.OPEN, timeout=timeout)

    def wait_client(self, what: str, addr: str | None = None, role: str | None = None,
                    present: bool = True, timeout: float = 10.0) -> dict:
        """Wait until a client (`addr` "IP:PORT", any when None; with `role` when given) is
        connected to the device (or, `present=False`, no longer is); the client's entry, or
        the device when gone."""
        def match(c):
            return (addr is None or c["addr"] == addr) and (role is None or c["role"] == role)

        if present:
            d = self.wait_device(what, lambda d: any(match(c) for c in d["clients"]), timeout,
                                 f"client {addr or ''} {role or ''} connected")
            return next(c for c in d["clients"] if match(c))
        return self.wait_device(what, lambda d: not any(match(c) for c in d["clients"]), timeout,
                                f"client {addr or ''} gone")

    def port(self, path: str, timeout: float = 10.0) -> int:
        """The TCP port the device given as `path` (tty as on the command line, name or key)
        listens on: from the portal when there is one (a device plugged in later too, once
        served), else from the ready line."""
        if self.portal is not None:
            return self.wait_device(path, lambda d: d["state"] in self.SERVED, timeout, "served")["port"]
        return self.ready_port(path)

    def ready_port(self, path: str) -> int:
        """The port of a device served at start, from the ready line alone."""
        for dev in self.ready()["devices"]:
            if path in (dev["tty"], dev["name"], dev["key"]):
                return dev["port"]
        raise AssertionError(f"{path} is not in the ready line {self.ready()}")

    def stop(self, timeout: float = 10.0) -> int:
        if self.returncode is not None:
            return self.returncode
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._reader.join(5)
            raise AssertionError(f"serialhub did not stop within {timeout} s of SIGTERM; log:\n{self.log}")
        self._reader.join(5)
        return self.returncode


@pytest.fixture
def serialhub():
    """Factory: `serialhub("/dev/pts/3=0", "sim=0")` starts a daemon serving those devices on
    127.0.0.1. At teardown every daemon gets SIGTERM; the test fails if one does not exit 0,
    exited early, or panicked."""
    started: list[Daemon] = []

    def start(*devices: str, extra: tuple[str, ...] = (), env: dict | None = None,
              prefix: tuple[str, ...] = ()) -> Daemon:
        # Hermetic by default: no watching of the machine's /dev, no state in /var/lib.
        # Hotplug tests pass their own --dev-dir/--sysfs/--state in `extra`.
        args = ["serve", "--bind", "127.0.0.1"]
        if not any(a.startswith("--dev-dir") for a in extra):
            args.append("--no-hotplug")
        if "--http" not in extra:
            # A portal to wait on; not for a daemon in another namespace, whose loopback the
            # test cannot reach (it waits on the ready line, or passes its own --http).
            args += ["--http", "off" if prefix else "127.0.0.1:0"]
        if "--state" not in extra:
            args += ["--state", os.path.join(tempfile.mkdtemp(prefix="serialhub-state-"), "ports.json")]
        for d in devices:
            args += ["--device", d]
        args += list(extra)
        d = Daemon(args, env=env, prefix=prefix)
        started.append(d)
        return d

    yield start

    problems = []
    for d in started:
        was_alive = d.alive() or d.returncode is not None  # still running, or stopped by the test
        rc = d.stop()
        log = d.log
        if not was_alive:
            problems.append(f"serialhub exited by itself with {rc} before teardown")
        elif rc != 0:
            problems.append(f"serialhub exited with {rc} after SIGTERM")
        if "panicked" in log:
            problems.append("serialhub panicked")
        if problems:
            pytest.fail("; ".join(problems) + "\nlog:\n" + log, pytrace=False)


class SimPty:
    """`serialhub sim --pty LINK --bootloader --flash FLASH`: the simulated ESP32 in its ROM
    loader on a pseudo-terminal (no DTR/RTS: nothing can reset it), until `stop`."""

    def __init__(self, link: Path, flash: Path, log: Path, board: str = "sim"):
        self.link, self.flash, self.log_path = link, flash, log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(
            [SERIALHUB_BIN, "sim", "--pty", str(link), "--bootloader", "--flash", str(flash),
             "--board", board],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        wait_for(lambda: link.exists() or self.proc.poll() is not None, 10, what="the sim's PTY link")
        assert self.proc.poll() is None, log.read_text(errors="replace")

    def kill(self):
        """Die at once, as a device that fails (the PTY's reads give EIO)."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def run_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SERIALHUB_BIN, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------
# PTY devices

# struct termios2 { tcflag_t c_iflag, c_oflag, c_cflag, c_lflag; cc_t c_line; cc_t c_cc[19];
#                   speed_t c_ispeed, c_ospeed; }  -> 44 bytes; TCGETS2 = _IOR('T', 0x2A, 44)
_TERMIOS2_SIZE = 44
TCGETS2 = 0x80000000 | (_TERMIOS2_SIZE << 16) | (ord("T") << 8) | 0x2A


class Pty:
    """A PTY pair standing in for a serial device. The master end is the "device": `read`
    returns what the server wrote to the port, `write` is what the device sends."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        os.set_blocking(self.master, False)

    # --- line settings the server set on the port
    def attrs(self):
        return termios.tcgetattr(self.slave)

    def ospeed(self) -> int:
        """The output baud rate as a number (TCGETS2), also for non-standard rates."""
        buf = array.array("B", bytes(_TERMIOS2_SIZE))
        fcntl.ioctl(self.slave, TCGETS2, buf, True)
        return int.from_bytes(bytes(buf[40:44]), sys.byteorder)

    def ispeed(self) -> int:
        buf = array.array("B", bytes(_TERMIOS2_SIZE))
        fcntl.ioctl(self.slave, TCGETS2, buf, True)
        return int.from_bytes(bytes(buf[36:40]), sys.byteorder)

    def cflag(self) -> int:
        return self.attrs()[2]

    def line_format(self) -> tuple[int, str, float]:
        """(data bits, parity letter N/E/O/M/S, stop bits) from the port's c_cflag."""
        c = self.cflag()
        bits = {termios.CS5: 5, termios.CS6: 6, termios.CS7: 7, termios.CS8: 8}[c & termios.CSIZE]
        cmspar = getattr(termios, "CMSPAR", 0o10000000000)
        if not c & termios.PARENB:
            parity = "N"
        elif c & cmspar:
            parity = "M" if c & termios.PARODD else "S"
        else:
            parity = "O" if c & termios.PARODD else "E"
        stop = 2 if c & termios.CSTOPB else 1
        return bits, parity, stop

    # --- data
    def read_exactly(self, n: int, timeout: float) -> bytes:
        """Read `n` bytes from the master within `timeout` seconds (returns what came)."""
        out = bytearray()
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if r:
                try:
                    chunk = os.read(self.master, min(65536, n - len(out)))
                except BlockingIOError:
                    continue
                out += chunk
        return bytes(out)

    def read_available(self, settle: float = 0.0) -> bytes:
        out = bytearray()
        while True:
            r, _, _ = select.select([self.master], [], [], settle)
            if not r:
                return bytes(out)
            try:
                out += os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                return bytes(out)

    def write_all(self, data: bytes, timeout: float):
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"device write: {len(view)} bytes left after {timeout} s")
            _, w, _ = select.select([], [self.master], [], min(left, 0.5))
            if w:
                try:
                    n = os.write(self.master, view[:4096])
                except BlockingIOError:
                    continue
                view = view[n:]

    def close(self):
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def pty_device():
    """Factory for PTY devices; all are closed at teardown."""
    ptys: list[Pty] = []

    def make() -> Pty:
        p = Pty()
        ptys.append(p)
        return p

    yield make
    for p in ptys:
        p.close()


@pytest.fixture
def pty_server(serialhub, pty_device):
    """One PTY device served by one daemon: returns (daemon, pty, port)."""
    pty = pty_device()
    d = serialhub(f"{pty.path}=0")
    port = d.port(pty.path)
    d.wait_opened(pty.path)  # opened with the configured settings (test_pyserial checks them)
    return d, pty, port


# ---------------------------------------------------------------------------------------------
# Raw sockets


def recv_until_eof(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes (True) or `timeout` passes (False)."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(out), False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return bytes(out), False
        except ConnectionResetError:
            return bytes(out), True
        if not chunk:
            return bytes(out), True
        out += chunk


def pytest_configure(config):
    # pyserial 3.5's rfc2217 module uses Thread.setDaemon/setName; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:serial.rfc2217")
