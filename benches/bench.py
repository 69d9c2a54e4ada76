#!/usr/bin/env python3
"""serialhub benchmark: latency, throughput, CPU and memory against ser2net, the memory of the
static (musl) build that ships to the Pi, hotplug latency (device node openable -> port accepting
RFC 2217 clients), plus esptool flash times through serialhub versus straight on the simulated
chip's PTY.

Run with `make bench` (SERIALHUB_BIN=target/release/serialhub). Prints a table and writes
docs/benchmarks.md. Not a test: it reports numbers against targets, it does not fail on them
(exit status is non-zero only if a measurement could not be taken or data came back wrong).

Everything runs on 127.0.0.1; every wait has a deadline; loops are bounded.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import math
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = os.environ.get("SERIALHUB_BIN") or str(REPO / "target" / "release" / "serialhub")
# The static (musl) build that ships to the Pi, for this machine: packaging/build-pi.sh x86_64-unknown-linux-musl
STATIC_BIN = os.environ.get("SERIALHUB_STATIC_BIN") or str(
    REPO / "target" / "x86_64-unknown-linux-musl" / "release" / "serialhub")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

IAC = 0xFF
TELNET_OPEN = b"\xff\xfd\x2c\xff\xfb\x2c"  # DO COM-PORT-OPTION, WILL COM-PORT-OPTION


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Telnet client side (minimal): escape on send, unescape and drop commands on receive


def escape(data: bytes) -> bytes:
    return data.replace(b"\xff", b"\xff\xff")


class Decoder:
    """Turns the server's Telnet stream back into data. Fast path in C (bytes.replace) when a
    chunk holds only escaped data; a byte-wise state machine when it holds commands."""

    def __init__(self):
        self.carry = b""
        self.state = "data"  # data | iac | opt | sb | sb_iac

    def feed(self, chunk: bytes) -> bytes:
        buf = self.carry + chunk if self.carry else chunk
        self.carry = b""
        if self.state == "data":
            # trailing odd run of IACs: hold the last one back until the next byte shows its role
            run = len(buf) - len(buf.rstrip(b"\xff"))
            body = buf
            if run % 2:
                body, self.carry = buf[:-1], buf[-1:]
            # escaped data has only even IAC runs; any IAC left after removing pairs is a command
            if b"\xff" not in body.replace(b"\xff\xff", b""):
                return body.replace(b"\xff\xff", b"\xff")
            buf, self.carry = buf, b""
        return self._slow(buf)

    def _slow(self, buf: bytes) -> bytes:
        out = bytearray()
        st = self.state
        for b in buf:
            if st == "data":
                if b == IAC:
                    st = "iac"
                else:
                    out.append(b)
            elif st == "iac":
                if b == IAC:
                    out.append(IAC)
                    st = "data"
                elif b == 0xFA:
                    st = "sb"
                elif b in (0xFB, 0xFC, 0xFD, 0xFE):
                    st = "opt"
                else:
                    st = "data"
            elif st == "opt":
                st = "data"
            elif st == "sb":
                if b == IAC:
                    st = "sb_iac"
            elif st == "sb_iac":
                st = "data" if b == 0xF0 else "sb"
        self.state = st
        return bytes(out)


class Client:
    """A raw RFC 2217 client: negotiate COM-PORT-OPTION, then just data."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.dec = Decoder()
        self.pending = bytearray()
        self.sock.sendall(TELNET_OPEN)

    def send(self, data: bytes):
        self.sock.sendall(escape(data))

    def recv_exactly(self, n: int, deadline: float) -> bytes:
        while len(self.pending) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out: {len(self.pending)} of {n} bytes received")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 18)
            except socket.timeout:
                continue
            if not chunk:
                raise BenchError(f"server closed the connection after {len(self.pending)} of {n} bytes")
            self.pending += self.dec.feed(chunk)
        out = bytes(self.pending[:n])
        del self.pending[:n]
        return out

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# The device: the master end of a PTY, driven by a forked child (no GIL shared with the client)


class PtyDevice:
    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.child: int | None = None
        self.result_r: int | None = None

    def _fork(self, body) -> None:
        self.stop()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                os.close(r)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.set_blocking(self.master, True)
                result = body()
                os.write(w, (result or "ok").encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        self.child, self.result_r = pid, r

    def echo(self):
        """Echo everything back until stopped."""
        m = self.master

        def body():
            while True:
                data = os.read(m, 65536)
                view = memoryview(data)
                while view:
                    view = view[os.write(m, view):]

        self._fork(body)

    def sink(self, n: int):
        """Read exactly n bytes, report their MD5."""
        m = self.master

        def body():
            h = hashlib.md5()
            got = 0
            while got < n:
                data = os.read(m, min(65536, n - got))
                h.update(data)
                got += len(data)
            return h.hexdigest()

        self._fork(body)

    def source(self, data: bytes):
        m = self.master

        def body():
            view = memoryview(data)
            while view:
                view = view[os.write(m, view[:65536]):]

        self._fork(body)

    def result(self, timeout: float) -> str:
        r, _, _ = select.select([self.result_r], [], [], timeout)
        if not r:
            self.stop()
            raise BenchError(f"device did not finish within {timeout} s")
        out = os.read(self.result_r, 100).decode()
        os.waitpid(self.child, 0)
        os.close(self.result_r)
        self.child = self.result_r = None
        return out

    def stop(self):
        if self.child is not None:
            try:
                os.kill(self.child, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.child, 0)
            os.close(self.result_r)
            self.child = self.result_r = None
        # drop anything left in the PTY
        os.set_blocking(self.master, False)
        try:
            while select.select([self.master], [], [], 0)[0]:
                if not os.read(self.master, 65536):
                    break
        except (BlockingIOError, OSError):
            pass

    def close(self):
        self.stop()
        os.close(self.master)
        os.close(self.slave)


# ---------------------------------------------------------------------------------------------
# Servers


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the comm field: state is fields[0]; utime, stime are stat fields 14, 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def proc_smaps_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Server:
    name = "?"
    proc: subprocess.Popen
    port: int
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def hermetic_flags(tmp: Path, tag: str, binary: str = BIN) -> list[str]:
    """Keep the daemon off the machine's /dev, /var/lib and port 8080, but with its parts running:
    the portal stays on (loopback, OS-picked port) so CPU and memory include it."""
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10).stdout
    flags = []
    if "--no-hotplug" in help_text:
        flags.append("--no-hotplug")
    if "--state" in help_text:
        flags += ["--state", str(tmp / f"{tag}-ports.json")]
    if "--http" in help_text:
        flags += ["--http", "127.0.0.1:0"]
    return flags


class Serialhub(Server):
    name = "serialhub"

    def __init__(self, devices: list[str], tmp: Path, tag: str = "serialhub", binary: str = BIN):
        self.log_path = tmp / f"{tag}.log"
        args = [binary, "serve", "--bind", "127.0.0.1", *hermetic_flags(tmp, tag, binary)]
        for d in devices:
            args += ["--device", d]
        env = dict(os.environ, RUST_LOG="info")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)

    def wait_port(self, path: str) -> int:
        rx = re.compile(r"\(" + re.escape(path) + r"\) listening on ([0-9.]+):(\d+)")

        def find():
            if self.proc.poll() is not None:
                raise BenchError(f"serialhub exited {self.proc.returncode}:\n{self.log()}")
            m = rx.search(self.log())
            return m and int(m.group(2))

        self.port = wait_for(find, 10, "serialhub's listening line")
        return self.port

    def wait_log(self, pattern: str, timeout: float = 10) -> None:
        rx = re.compile(pattern)
        wait_for(lambda: rx.search(self.log()) or self._dead(), timeout, f"/{pattern}/ in serialhub's log")

    def _dead(self):
        if self.proc.poll() is not None:
            raise BenchError(f"serialhub exited {self.proc.returncode}:\n{self.log()}")
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ser2net(Server):
    name = "ser2net"

    def __init__(self, device: str, tmp: Path):
        self.port = free_port()
        cfg = tmp / "ser2net.yaml"
        cfg.write_text(
            "%YAML 1.1\n---\n"
            "connection: &bench\n"
            f"  accepter: telnet(rfc2217),tcp,127.0.0.1,{self.port}\n"
            f"  connector: serialdev,{device},115200n81,local\n"
            "  enable: on\n"
            "  options:\n"
            "    chardelay: false\n"
            "    max-connections: 1\n"
            "    kickolduser: false\n"
        )
        self.log_path = tmp / "ser2net.log"
        exe = shutil.which("ser2net") or "/usr/sbin/ser2net"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [exe, "-n", "-u", "-c", str(cfg), "-P", str(tmp / "ser2net.pid")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

        def listening():
            if self.proc.poll() is not None:
                raise BenchError(f"ser2net exited {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, 10, "ser2net to listen")


def ensure_ser2net() -> str | None:
    if shutil.which("ser2net") or os.path.exists("/usr/sbin/ser2net"):
        return None
    if os.geteuid() != 0:
        return "ser2net is not installed (apt-get install ser2net)"
    r = subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "ser2net"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        return f"cannot install ser2net: {r.stderr.strip()[-300:]}"
    return None


# ---------------------------------------------------------------------------------------------
# Measurements


def ff_heavy(n: int, seed: int, ff_share: float = 0.3) -> bytes:
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(n))
    threshold = int(ff_share * 256)
    for i, r in enumerate(rng.randbytes(n)):
        if r < threshold:
            data[i] = 0xFF
    return bytes(data)


def warm_up(client: Client):
    """The path works and the negotiation bytes are out of the way."""
    deadline = time.monotonic() + 10
    for i in range(30):
        msg = bytes([i]) * 8
        client.send(msg)
        if client.recv_exactly(len(msg), deadline) != msg:
            raise BenchError("echo warm-up came back wrong")


def round_trips(client: Client, size: int, n: int, rng: random.Random) -> list[float]:
    out = []
    for _ in range(n):
        msg = rng.randbytes(size)
        t0 = time.perf_counter()
        client.send(msg)
        back = client.recv_exactly(size, time.monotonic() + 5)
        out.append(time.perf_counter() - t0)
        if back != msg:
            raise BenchError(f"{size}-byte echo came back wrong")
    return out


def measure_latency(targets: list[tuple[str, Server, PtyDevice]], samples: int, rounds: int = 10) -> dict:
    """Round trips through every server, interleaved in `rounds` blocks so that background load
    on a shared machine hits all of them alike."""
    clients = {}
    try:
        for name, server, dev in targets:
            dev.echo()
            clients[name] = Client(server.port)
            warm_up(clients[name])
        rtts: dict = {(name, size): [] for name, _, _ in targets for size in (1, 64)}
        rng = random.Random(7)
        per_block = max(1, samples // rounds)
        for _ in range(rounds):
            for size in (1, 64):
                for name, _, _ in targets:
                    rtts[(name, size)] += round_trips(clients[name], size, per_block, rng)
        res: dict = {name: {} for name, _, _ in targets}
        for (name, size), v in rtts.items():
            v.sort()
            res[name][f"rtt{size}_median_us"] = statistics.median(v) * 1e6
            res[name][f"rtt{size}_p99_us"] = v[min(len(v) - 1, int(len(v) * 0.99))] * 1e6
            res[name][f"rtt{size}_n"] = len(v)
        return res
    finally:
        for c in clients.values():
            c.close()
        for _, _, dev in targets:
            dev.stop()


def measure_bulk(server: Server, dev: PtyDevice, bulk: bytes) -> dict:
    """Bulk each way (byte-exact), with the server's CPU time per MB and its memory."""
    pid = server.proc.pid
    res: dict = {}
    client = Client(server.port)
    try:
        dev.echo()
        warm_up(client)
        dev.stop()
        wire = escape(bulk)
        want_md5 = hashlib.md5(bulk).hexdigest()
        mb = len(bulk) / 1e6

        # client -> device
        dev.sink(len(bulk))
        cpu0 = proc_cpu_seconds(pid)
        t0 = time.perf_counter()
        client.sock.settimeout(120)
        client.sock.sendall(wire)
        got_md5 = dev.result(120)
        dt = time.perf_counter() - t0
        cpu_up = proc_cpu_seconds(pid) - cpu0
        if got_md5 != want_md5:
            raise BenchError("client->device bulk data arrived corrupted")
        res["up_MBps"] = mb / dt
        res["up_cpu_ms_per_MB"] = cpu_up * 1e3 / mb

        # device -> client
        cpu0 = proc_cpu_seconds(pid)
        t0 = time.perf_counter()
        dev.source(bulk)
        back = client.recv_exactly(len(bulk), time.monotonic() + 120)
        dt = time.perf_counter() - t0
        cpu_down = proc_cpu_seconds(pid) - cpu0
        dev.result(30)
        if back != bulk:
            raise BenchError("device->client bulk data arrived corrupted")
        res["down_MBps"] = mb / dt
        res["down_cpu_ms_per_MB"] = cpu_down * 1e3 / mb
        res["cpu_ms_per_MB"] = (cpu_up + cpu_down) * 1e3 / (2 * mb)
        res["hwm_kib"] = proc_status_kib(pid, "VmHWM")
        res["rss_kib"] = proc_status_kib(pid, "VmRSS")
        res["rss_anon_kib"] = proc_status_kib(pid, "RssAnon")
        res["pss_kib"] = proc_smaps_kib(pid, "Pss")
    finally:
        client.close()
        dev.stop()
    return res


# ---------------------------------------------------------------------------------------------
# Hotplug: from a device node becoming openable to the device accepting RFC 2217 clients

DO_COM_PORT = b"\xff\xfd\x2c"
POLL_EVERY = 0.002  # connect attempts (and log reads) every 2 ms
HOTPLUG_DEADLINE = 10.0


def free_base(n: int) -> int:
    """A base port with `n` free ports above it (checked by binding them)."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 60000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise BenchError(f"no range of {n} free ports found")


class LogTail:
    """Incremental reader of a daemon's log file (bytes; regexes are searched from an offset)."""

    def __init__(self, path: Path):
        self.path = path
        self.f = None
        self.buf = b""

    def poll(self) -> bytes:
        if self.f is None:
            try:
                self.f = open(self.path, "rb")
            except OSError:
                return self.buf
        chunk = self.f.read()
        if chunk:
            self.buf += chunk
        return self.buf

    def close(self):
        if self.f is not None:
            self.f.close()


def rfc2217_accepts(port: int, deadline: float) -> bool:
    """One attempt: connect, offer COM-PORT-OPTION, true once the server's IAC DO COM-PORT
    arrives. False if nothing listens, or the server turns us away (device not open: message
    and close) or resets the connection."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1.0)
    except OSError:
        return False
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(TELNET_OPEN)
        got = b""
        while DO_COM_PORT not in got:
            left = min(1.0, deadline - time.perf_counter())
            if left <= 0:
                return False
            s.settimeout(left)
            chunk = s.recv(4096)
            if not chunk:
                return False
            got += chunk
        return True
    except OSError:
        return False
    finally:
        s.close()


class HotplugLab:
    """A fake /dev and /sys (like tests/e2e/test_hotplug.py) and the release daemon watching
    them: `serve --dev-dir DIR --sysfs DIR --state FILE --http off` with a config whose
    base_port starts a free range and whose [hotplug.settle] has "ttyUSB*" = 0.0."""

    def __init__(self, tmp: Path, ports: int):
        self.root = tmp / "hotplug"
        self.dev = self.root / "dev"
        self.sys = self.root / "sys"
        self.late = self.root / "late"  # targets of dangling links, outside the watched dir
        for d in (self.dev, self.sys, self.late):
            d.mkdir(parents=True)
        self.base = free_base(ports)
        cfg = self.root / "serialhub.toml"
        cfg.write_text(
            f'bind = "127.0.0.1"\nbase_port = {self.base}\n'
            f'state_file = "{self.root / "ports.json"}"\n'
            f'[hotplug]\nlegacy_devices_conf = "{self.root / "devices.conf"}"\n'
            '[hotplug.settle]\n"ttyUSB*" = 0.0\n'
        )
        self.log_path = self.root / "serialhub.log"
        args = [BIN, "serve", "--config", str(cfg), "--bind", "127.0.0.1",
                "--dev-dir", str(self.dev), "--sysfs", str(self.sys),
                "--state", str(self.root / "ports.json"), "--http", "off"]
        env = dict(os.environ, RUST_LOG="info")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        self.log = LogTail(self.log_path)
        self.wait_log(rb"watching ", 0, 10)

    def dead(self):
        if self.proc.poll() is not None:
            raise BenchError(f"hotplug daemon exited {self.proc.returncode}:\n"
                             f"{self.log.poll()[-2000:].decode(errors='replace')}")

    def wait_log(self, pattern: bytes, start: int, timeout: float) -> re.Match:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log.poll(), start)
            if m:
                return m
            self.dead()
            if time.monotonic() >= deadline:
                raise BenchError(f"hotplug: timed out after {timeout} s waiting for /{pattern.decode()}/ in the log")
            time.sleep(0.005)

    def sysfs(self, name: str, n: int):
        """The USB identity of board n (a CP2102 with its own serial number), created before
        its node, as the kernel does."""
        port = f"1-1.{n // 8 + 1}.{n % 8 + 1}"
        usb = self.sys / "devices/platform/3f980000.usb/usb1" / port
        intf = usb / f"{port}:1.0"
        intf.mkdir(parents=True)
        (intf / "bInterfaceNumber").write_text("00\n")
        (usb / "idVendor").write_text("10c4\n")
        (usb / "idProduct").write_text("ea60\n")
        (usb / "product").write_text("CP2102 USB to UART Bridge Controller\n")
        (usb / "manufacturer").write_text("Silicon Labs\n")
        (usb / "serial").write_text(f"BENCH{n:04d}\n")
        link = self.sys / "class/tty" / name / "device"
        link.parent.mkdir(parents=True)
        link.symlink_to(intf)

    def plug_once(self, n: int, mode: str, delay: float) -> float:
        """Plug board n and return seconds from its node becoming openable to an RFC 2217
        client getting IAC DO COM-PORT on the port the daemon logs for it.

        mode "direct": the node appears as a symlink to a PTY slave (openable at once).
        mode "dangling": the node appears as a symlink to a name that does not exist yet; after
        the daemon's first open failed and `delay` s passed since the node appeared, that name is
        created as a symlink to the PTY slave (no inotify event: only the re-open back-off sees it).
        mode "attrib": as "dangling", then the node's timestamps are touched right after, so the
        watched directory reports IN_ATTRIB (what udev's chmod/chown of a new node produces).
        """
        name = f"ttyUSB{n}"
        node = self.dev / name
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            pty_path = os.ttyname(slave)
            self.sysfs(name, n)
            start = len(self.log.poll())
            if mode == "direct":
                os.symlink(pty_path, node)
                t0 = time.perf_counter()
            else:
                target = self.late / name
                os.symlink(target, node)
                appeared = time.perf_counter()
                self.wait_log(rb"cannot open " + re.escape(str(node).encode()), start, 5)
                left = appeared + delay - time.perf_counter()
                if left > 0:
                    time.sleep(left)
                os.symlink(pty_path, target)
                t0 = time.perf_counter()
                if mode == "attrib":
                    os.utime(node, follow_symlinks=False)
            deadline = t0 + HOTPLUG_DEADLINE
            listening = re.compile(rb"\(" + re.escape(str(node).encode()) + rb"\) listening on [0-9.]+:(\d+)")
            port = None
            while True:
                if port is None:
                    m = listening.search(self.log.poll(), start)
                    if m:
                        port = int(m.group(1))
                if port is not None and rfc2217_accepts(port, deadline):
                    dt = time.perf_counter() - t0
                    break
                if time.perf_counter() >= deadline:
                    self.dead()
                    raise BenchError(f"hotplug ({mode}): {name} not accepting clients within "
                                     f"{HOTPLUG_DEADLINE} s (port {port})")
                time.sleep(POLL_EVERY)
            self.wait_log(rb"opened " + re.escape(str(node).encode()), start, 5)
            # Unplug, and let the daemon see it before the next board comes.
            node.unlink()
            if mode != "direct":
                (self.late / name).unlink()
            self.wait_log(re.escape(name.encode()) + rb": unplugged", start, 5)
            return dt
        finally:
            os.close(master)
            os.close(slave)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def dangling_delays(reps: int) -> list[float]:
    """How long a node stays unopenable: evenly 50 ms .. 1 s (the first two re-open back-off
    steps), shuffled with a fixed seed so the order does not follow the schedule."""
    delays = [0.05 + 0.95 * i / max(1, reps - 1) for i in range(reps)]
    random.Random(300).shuffle(delays)
    return delays


def percentile(sorted_v: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return sorted_v[max(0, min(len(sorted_v) - 1, math.ceil(q * len(sorted_v)) - 1))]


def static_binary() -> tuple[str | None, str]:
    """The static build if it is there and runs, with a note on what it is (or why it is not
    measured)."""
    path = Path(STATIC_BIN)
    rel = os.path.relpath(path, REPO)
    if not path.exists():
        return None, (f"static build not measured: {rel} does not exist "
                      "(build it with `packaging/build-pi.sh x86_64-unknown-linux-musl`)")
    try:
        v = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"static build not measured: {rel} does not run: {e}"
    if v.returncode != 0:
        return None, f"static build not measured: `{rel} --version` exited {v.returncode}"
    try:
        info = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True, timeout=10).stdout.strip()
        info = "; " + ", ".join(f for f in info.split(", ") if "linked" in f or f.startswith("ELF"))
    except (OSError, subprocess.SubprocessError):
        info = ""
    built = path.stat().st_mtime
    newest_src = max((f.stat().st_mtime for f in (REPO / "src").rglob("*") if f.is_file()), default=0)
    stale = "; OLDER than the newest file in src/ (may not match this revision)" if built < newest_src else ""
    when = datetime.datetime.fromtimestamp(built).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return str(path), (f"static build: {v.stdout.strip()}, binary {rel} ({path.stat().st_size // 1024} KiB{info}), "
                       f"built {when}{stale}")


def measure_static(tmp: Path, binary: str, samples: int, bulk: bytes) -> dict:
    """The static build through the same run as the glibc build (one PTY device, portal on,
    round trips, bulk both ways), for its memory."""
    dev = PtyDevice()
    hub = None
    try:
        hub = Serialhub([f"{dev.path}=0"], tmp, tag="serialhub-static", binary=binary)
        hub.wait_port(dev.path)
        hub.wait_log(r"opened " + re.escape(dev.path))
        res = {"idle_rss_kib": proc_status_kib(hub.proc.pid, "VmRSS")}
        print(f"static build on 127.0.0.1:{hub.port} serving {dev.path}: round trips, bulk {len(bulk) // MIB} MiB each way ...",
              flush=True)
        res.update(measure_latency([("static", hub, dev)], samples)["static"])
        res.update(measure_bulk(hub, dev, bulk))
        return res
    finally:
        if hub is not None:
            hub.stop()
        dev.close()


def measure_hotplug(tmp: Path, reps: int) -> dict:
    lab = HotplugLab(tmp, ports=3 * reps + 16)
    out: dict = {"reps": reps}
    try:
        n = 0
        for mode in ("direct", "dangling", "attrib"):
            delays = dangling_delays(reps) if mode != "direct" else [0.0] * reps
            samples = []
            for d in delays:
                samples.append(lab.plug_once(n, mode, d))
                n += 1
            samples.sort()
            out[mode] = {
                "median_ms": statistics.median(samples) * 1e3,
                "p90_ms": percentile(samples, 0.9) * 1e3,
                "max_ms": samples[-1] * 1e3,
                "n": len(samples),
            }
            print(f"  {mode}: median {out[mode]['median_ms']:.1f} ms, p90 {out[mode]['p90_ms']:.1f} ms, "
                  f"max {out[mode]['max_ms']:.1f} ms", flush=True)
    finally:
        lab.stop()
        if lab.proc.returncode not in (0, None):
            out["exit"] = lab.proc.returncode
    return out


def esptool(args: list[str], timeout: float = 180) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "esptool", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return time.perf_counter() - t0, r


def flash_holds(path: Path, offset: int, image: bytes, timeout: float = 10) -> bool:
    def check():
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(len(image)) == image
        except OSError:
            return False

    try:
        return wait_for(check, timeout, "flash file content")
    except BenchError:
        return False


def measure_esptool(tmp: Path, image: bytes) -> dict:
    img = tmp / "img.bin"
    img.write_bytes(image)
    out: dict = {}

    # 1. through serialhub's RFC 2217 port (built-in simulated chip, auto-reset via DTR/RTS)
    flash1 = tmp / "flash-serialhub.bin"
    hub = Serialhub([f"sim:{flash1}=0"], tmp, tag="serialhub-sim")
    try:
        port = hub.wait_port("sim")
        hub.wait_log(r"opened sim", 10)
        dt, r = esptool([
            "--port", f"rfc2217://127.0.0.1:{port}", "-b", "921600",
            "write-flash", "0x10000", str(img),
        ])
    finally:
        hub.stop()
    record(out, "via_serialhub", dt, r, flash1, image)

    # 2. straight on the simulated chip's PTY
    with SimPty(tmp, "direct") as sim:
        dt, r = esptool([
            "--port", str(sim.link), "--before", "no-reset", "--after", "no-reset", "-b", "921600",
            "write-flash", "0x10000", str(img),
        ])
        record(out, "direct", dt, r, sim.flash, image)

    return out


def record(out: dict, key: str, dt: float, r: subprocess.CompletedProcess, flash: Path, image: bytes):
    ok = r.returncode == 0
    out[f"{key}_err"] = None if ok else (r.stdout + r.stderr)[-800:]
    if ok and not flash_holds(flash, 0x10000, image):
        out[f"{key}_err"] = "flash file does not hold the image"
        ok = False
    out[f"{key}_s"] = dt if ok else None


class SimPty:
    """`serialhub sim --pty LINK --bootloader --flash FILE` for the duration of a `with`."""

    def __init__(self, tmp: Path, tag: str):
        self.link = tmp / f"ttySIM-{tag}"
        self.flash = tmp / f"flash-{tag}.bin"
        self.log_path = tmp / f"sim-{tag}.log"

    def __enter__(self):
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [BIN, "sim", "--pty", str(self.link), "--bootloader", "--flash", str(self.flash)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )

        def ready():
            if self.proc.poll() is not None:
                raise BenchError(f"serialhub sim exited {self.proc.returncode}: "
                                 f"{self.log_path.read_text(errors='replace')[-500:]}")
            return self.link.exists()

        try:
            wait_for(ready, 10, "the sim's PTY link")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Report


@functools.lru_cache(maxsize=None)
def git_revision() -> str:
    """HEAD's short hash, flagged when the sources the binaries are built from differ from it.
    Read once, at the start (others may commit while the bench runs)."""
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return rev + (" + uncommitted changes in src/ or Cargo files" if dirty else "")


def machine_notes() -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    notes = [
        f"CPU: {cpu}, {os.cpu_count()} logical CPUs; load average at start {os.getloadavg()[0]:.2f}",
        f"kernel: {platform.system()} {platform.release()} ({platform.machine()})",
        f"python: {platform.python_version()}",
    ]
    try:
        v = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        notes.append(f"serialhub: {v} (git {git_revision()}), binary {os.path.relpath(BIN, REPO)}")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        r = subprocess.run(["ser2net", "-v"], capture_output=True, text=True, timeout=10)
        notes.append(f"reference: {(r.stdout + r.stderr).strip()} (Debian package)")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        r = subprocess.run([sys.executable, "-m", "esptool", "version"], capture_output=True, text=True, timeout=30)
        notes.append(f"esptool: {r.stdout.strip().splitlines()[-1]}")
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return notes


def fmt(v, spec=".0f"):
    return "n/a" if v is None else format(v, spec)


def build_table(hub: dict, ref: dict | None, esp: dict | None, static: dict | None = None,
                hot: dict | None = None) -> list[tuple[str, str, str, str]]:
    ref = ref or {}
    rows: list[tuple[str, str, str, str]] = []

    def verdict(ok):
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    def row(label, key, spec, target="", ok=None):
        rows.append((label, fmt(hub.get(key), spec), fmt(ref.get(key), spec), target + (f" ({verdict(ok)})" if target else "")))

    def both(key):
        return hub.get(key) is not None and ref.get(key) is not None

    row("round trip 1 B, median (µs)", "rtt1_median_us", ".0f", "≤ ser2net",
        both("rtt1_median_us") and hub["rtt1_median_us"] <= ref["rtt1_median_us"] if both("rtt1_median_us") else None)
    row("round trip 1 B, p99 (µs)", "rtt1_p99_us", ".0f")
    row("round trip 64 B, median (µs)", "rtt64_median_us", ".0f", "≤ ser2net",
        hub["rtt64_median_us"] <= ref["rtt64_median_us"] if both("rtt64_median_us") else None)
    row("round trip 64 B, p99 (µs)", "rtt64_p99_us", ".0f")
    row("throughput client→device (MB/s)", "up_MBps", ".1f")
    row("throughput device→client (MB/s)", "down_MBps", ".1f")
    row("CPU client→device (ms per MB)", "up_cpu_ms_per_MB", ".1f")
    row("CPU device→client (ms per MB)", "down_cpu_ms_per_MB", ".1f")
    row("CPU both ways (ms per MB)", "cpu_ms_per_MB", ".1f", "≤ 1/3 of ser2net",
        hub["cpu_ms_per_MB"] <= ref["cpu_ms_per_MB"] / 3 if both("cpu_ms_per_MB") else None)
    hwm = hub.get("hwm_kib")
    rows.append(("peak RSS, VmHWM (KiB)", fmt(hwm, "d"), fmt(ref.get("hwm_kib"), "d"),
                 "< 2048 KiB, judged on the static build below (this build: "
                 + ("n/a" if hwm is None else ("under" if hwm < 2048 else "over")) + ")"))
    rows.append(("  of which anonymous (heap, stacks) (KiB)", fmt(hub.get("rss_anon_kib"), "d"),
                 fmt(ref.get("rss_anon_kib"), "d"), ""))
    rows.append(("  PSS, shared libraries split (KiB)", fmt(hub.get("pss_kib"), "d"),
                 fmt(ref.get("pss_kib"), "d"), ""))
    rows.append(("RSS idle before the first client (KiB)", fmt(hub.get("idle_rss_kib"), "d"),
                 fmt(ref.get("idle_rss_kib"), "d"), ""))
    if static is not None:
        if static.get("hwm_kib") is None:
            rows.append(("static musl build: peak RSS, VmHWM (KiB)", "skipped", "—",
                         "< 2048 KiB (n/a: " + static.get("why", "not measured") + ")"))
        else:
            shwm = static["hwm_kib"]
            rows.append(("static musl build: peak RSS, VmHWM (KiB)", fmt(shwm, "d"), "—",
                         "< 2048 KiB with one device (" + verdict(shwm < 2048) + ")"))
            rows.append(("  static: of which anonymous (heap, stacks) (KiB)", fmt(static.get("rss_anon_kib"), "d"), "—", ""))
            rows.append(("  static: PSS (KiB)", fmt(static.get("pss_kib"), "d"), "—", ""))
            rows.append(("  static: RSS idle before the first client (KiB)", fmt(static.get("idle_rss_kib"), "d"), "—", ""))
            rows.append(("  static: CPU both ways (ms per MB)", fmt(static.get("cpu_ms_per_MB"), ".1f"), "—", ""))
    if hot is not None:
        labels = {
            "direct": "hotplug → accepting, node openable at once (ms): median / p90 / max",
            "dangling": "hotplug → accepting, node openable later, no event (ms): median / p90 / max",
            "attrib": "hotplug → accepting, node openable later + IN_ATTRIB (ms): median / p90 / max",
        }
        for mode, label in labels.items():
            r = hot.get(mode)
            if r is None:
                rows.append((label, "n/a", "—", "≤ 300 ms (n/a)"))
                continue
            cell = f"{r['median_ms']:.0f} / {r['p90_ms']:.0f} / {r['max_ms']:.0f}"
            rows.append((label, cell, "—", f"≤ 300 ms, every plug (max: {verdict(r['max_ms'] <= 300)})"))
    if esp is not None:
        rows.append(("esptool write-flash 1 MiB @921600 (s)", fmt(esp.get("via_serialhub_s"), ".1f"),
                     "—",
                     f"direct on the sim's PTY: {fmt(esp.get('direct_s'), '.1f')} s"))
    return rows


def render_text(rows) -> str:
    head = ("measure", "serialhub", "ser2net", "target")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return "\n".join(lines)


def render_md(rows, notes, args, hub, ref, esp, errors, runtime) -> str:
    out = [
        "# serialhub benchmarks",
        "",
        f"Measured {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} at git {git_revision()} "
        f"by `benches/bench.py` in {runtime:.0f} s. Reproduce with:",
        "",
        "```",
        "packaging/build-pi.sh x86_64-unknown-linux-musl   # the static build (optional: its rows are skipped without it)",
        "make bench    # = cargo build --release && SERIALHUB_BIN=$PWD/target/release/serialhub .venv/bin/python benches/bench.py",
        "```",
        "",
        "## Setup",
        "",
        "- One device: a PTY pair whose master end is driven by a forked child of the bench process "
        "(echo for round trips, sink/source for bulk). Each server has its own PTY of the same kind.",
        "- Client: a minimal raw RFC 2217 socket client (`DO`/`WILL COM-PORT-OPTION`, then data with 0xFF "
        "doubled), TCP_NODELAY, on 127.0.0.1.",
        f"- Round trips: {args.samples} samples each of 1-byte and 64-byte random messages after 30 warm-up echoes; "
        "both servers run at the same time, each with its own PTY, and the samples alternate between them in "
        "10 blocks, so background load on the machine hits both alike.",
        "- Throughput is bounded by the Python client and the PTY (numbers are for comparison, not the "
        "servers' limits); CPU per MB is the server's own cost.",
        f"- Bulk: {args.mib} MiB of random data of which ~30 % is 0xFF, each way, checked byte-exact (MD5).",
        "- CPU: utime+stime of the server process (all threads) from /proc/PID/stat around each bulk transfer, "
        "per MB (10^6 bytes) of payload. Peak RSS: VmHWM from /proc/PID/status after the run; RssAnon "
        "(status) and PSS (smaps_rollup) at the same moment show how much of it is file-backed, "
        "shared pages of libc and the binary itself.",
        "- serialhub: `serialhub serve --bind 127.0.0.1 --no-hotplug --state TMP --http 127.0.0.1:0 "
        "--device /dev/pts/N=0` (the portal thread runs, on loopback).",
        "- ser2net: Debian's package, foreground (`ser2net -n -u -c FILE`), YAML config "
        "`accepter: telnet(rfc2217),tcp,127.0.0.1,PORT`, `connector: serialdev,/dev/pts/N,115200n81,local`, "
        "options `chardelay: false`, `max-connections: 1`.",
        "- esptool: `write-flash 0x10000` of 1 MiB of random bytes at `-b 921600` (default stub flasher), "
        "(a) `--port rfc2217://127.0.0.1:PORT` against `serialhub serve --device sim:FILE=0` (reset by DTR/RTS "
        "through the server), (b) straight on `serialhub sim --pty LINK --bootloader --flash FILE` with "
        "`--before no-reset --after no-reset`. Both check the flash file afterwards. The simulated chip "
        "throttles to the UART byte time, so (b) is the floor for (a).",
        "- Static build: the memory target (peak RSS < 2 MiB with one device) is judged on the static musl "
        "binary, which is what ships to the Pi (no shared libc: everything it maps is its own). "
        "`packaging/build-pi.sh x86_64-unknown-linux-musl` builds the same static binary for this machine "
        "(`target/x86_64-unknown-linux-musl/release/serialhub`); it goes through the same run as the glibc "
        "build (same flags, one PTY device, portal on, the same round trips and bulk transfers) and its "
        "VmHWM/RssAnon/PSS are read at the same point. The glibc build's numbers include the pages of the "
        "shared libc it maps. Without the static binary its rows say `skipped` and the bench does not fail.",
        f"- Hotplug: the release binary as `serialhub serve --config FILE --dev-dir TMP/dev --sysfs TMP/sys "
        "--state TMP/ports.json --http off`, config `base_port` = a free range, `[hotplug.settle] \"ttyUSB*\" = 0.0`, "
        "defaults otherwise. Each plug is a new CP2102-like board (own serial number, own port): its fake sysfs "
        "entry is created first, then its node `TMP/dev/ttyUSBn`, a symlink. The clock starts when the node "
        "becomes openable; the bench then reads the daemon's log for `(TMP/dev/ttyUSBn) listening on "
        "127.0.0.1:PORT` and tries a raw RFC 2217 client on PORT every 2 ms (a turned-away attempt — "
        "nothing listening, or `Port's device is not available` and close — is retried) until one gets the "
        "server's `IAC DO COM-PORT` (FF FD 2C); the clock stops there. After each plug the node is removed "
        f"and the bench waits for the daemon's `unplugged` line. {args.hotplug_reps} plugs per case:",
        "  - *openable at once*: the node is created as a symlink to a fresh PTY slave; the clock starts "
        "right after `symlink()`.",
        "  - *unopenable first, no event*: the node is created as a symlink to a name outside the watched "
        "directory that does not exist yet; once the daemon has logged that it cannot open it, and a delay "
        "D after the node appeared (D evenly spread over 50 ms … 1 s, shuffled), that name is created as a "
        "symlink to a fresh PTY slave and the clock starts. inotify on the device directory sees nothing "
        "at that moment, so only the daemon's re-open back-off (first retry after 0.5 s, then doubling) "
        "finds it: the numbers measure that schedule against D.",
        "  - *unopenable first, then IN_ATTRIB*: as before, and right after the target appears the node's "
        "timestamps are touched (`utimensat` on the link), so the watched directory reports IN_ATTRIB for "
        "it — what udev's chmod/chgrp of a freshly created node produces on a real system, where the node "
        "is unopenable for a non-root daemon until udev has set its group.",
        "",
        "## Machine",
        "",
        *[f"- {n}" for n in notes],
        "- Shared machine: other builds may have been running; latency percentiles are the noisiest numbers.",
        "",
        "## Results",
        "",
        "| measure | serialhub | ser2net | target |",
        "|---|---|---|---|",
        *[f"| {' | '.join(str(c) for c in r)} |" for r in rows],
        "",
    ]
    if errors:
        out += ["## Problems during this run", "", *[f"- {e}" for e in errors], ""]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=500, help="round trips per message size")
    ap.add_argument("--mib", type=int, default=16, help="MiB per bulk direction")
    ap.add_argument("--no-esptool", action="store_true", help="skip the esptool flash timings")
    ap.add_argument("--no-ser2net", action="store_true", help="skip the ser2net reference")
    ap.add_argument("--no-static", action="store_true", help="skip the static (musl) build's memory")
    ap.add_argument("--hotplug-reps", type=int, default=20, help="plugs per hotplug case (0 = skip)")
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="markdown report ('-' = none)")
    args = ap.parse_args()
    if not os.access(BIN, os.X_OK):
        print(f"bench: {BIN} is not an executable (build it: cargo build --release)", file=sys.stderr)
        return 2

    started = time.monotonic()
    git_revision()  # the revision as the run starts
    notes = machine_notes()
    errors: list[str] = []
    bulk = ff_heavy(args.mib * MIB, seed=2217)
    hub_res: dict = {}
    ref_res: dict | None = None
    esp_res: dict | None = None
    static_res: dict | None = None
    hot_res: dict | None = None

    with tempfile.TemporaryDirectory(prefix="serialhub-bench-") as tmpdir:
        tmp = Path(tmpdir)

        targets: list[tuple[str, Server, PtyDevice]] = []
        try:
            dev = PtyDevice()
            hub = Serialhub([f"{dev.path}=0"], tmp)
            targets.append(("serialhub", hub, dev))
            hub.wait_port(dev.path)
            hub.wait_log(r"opened " + re.escape(dev.path))
            hub_res["idle_rss_kib"] = proc_status_kib(hub.proc.pid, "VmRSS")
            print(f"serialhub on 127.0.0.1:{hub.port} serving {dev.path}", flush=True)
            if not args.no_ser2net:
                problem = ensure_ser2net()
                if problem:
                    errors.append(problem)
                else:
                    dev2 = PtyDevice()
                    try:
                        s2n = Ser2net(dev2.path, tmp)
                    except BaseException:
                        dev2.close()
                        raise
                    targets.append(("ser2net", s2n, dev2))
                    ref_res = {"idle_rss_kib": proc_status_kib(s2n.proc.pid, "VmRSS")}
                    print(f"ser2net on 127.0.0.1:{s2n.port} serving {dev2.path}", flush=True)
            print(f"round trips: {args.samples} x 1 B and 64 B each, interleaved ...", flush=True)
            lat = measure_latency(targets, args.samples)
            hub_res.update(lat["serialhub"])
            if ref_res is not None:
                ref_res.update(lat["ser2net"])
            for name, server, dev in targets:
                print(f"bulk {args.mib} MiB each way through {name} ...", flush=True)
                try:
                    (hub_res if name == "serialhub" else ref_res).update(measure_bulk(server, dev, bulk))
                except BenchError as e:
                    errors.append(f"{name} bulk: {e}")
        except BenchError as e:
            errors.append(str(e))
        finally:
            for name, server, dev in targets:
                server.stop()
                dev.close()
                if name == "serialhub" and server.proc.returncode not in (0, None):
                    errors.append(f"serialhub exited {server.proc.returncode} after SIGTERM")

        if not args.no_static:
            static_bin, note = static_binary()
            notes.append(note)
            static_res = {"why": "see Machine"}
            if static_bin is not None:
                try:
                    static_res = measure_static(tmp, static_bin, args.samples, bulk)
                except BenchError as e:
                    errors.append(f"static build: {e}")
                    static_res = {"why": "measurement failed"}
            else:
                print(note, flush=True)
                static_res = {"why": "binary missing" if "does not exist" in note else "binary unusable"}

        if args.hotplug_reps > 0:
            print(f"hotplug: {args.hotplug_reps} plugs each: openable at once, unopenable first "
                  "(no event), unopenable first then IN_ATTRIB ...", flush=True)
            try:
                hot_res = measure_hotplug(tmp, args.hotplug_reps)
                if hot_res.get("exit"):
                    errors.append(f"hotplug daemon exited {hot_res['exit']} after SIGTERM")
            except (BenchError, OSError) as e:
                errors.append(f"hotplug: {e}")
                hot_res = {}

        if not args.no_esptool:
            print("esptool write-flash 1 MiB at 921600 (through serialhub, then straight on the sim PTY) ...", flush=True)
            try:
                esp_res = measure_esptool(tmp, random.Random(32).randbytes(MIB))
                for k in ("via_serialhub_err", "direct_err"):
                    if esp_res.get(k):
                        errors.append(f"esptool {k[:-4]}: {esp_res[k].strip()}")
            except (BenchError, subprocess.TimeoutExpired) as e:
                errors.append(f"esptool: {e}")
                esp_res = {}

    runtime = time.monotonic() - started
    rows = build_table(hub_res, ref_res, esp_res, static_res, hot_res)
    print()
    print(render_text(rows))
    for e in errors:
        print(f"problem: {e}", file=sys.stderr)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(render_md(rows, notes, args, hub_res, ref_res, esp_res, errors, runtime))
        print(f"\nwrote {os.path.relpath(args.out)} ({runtime:.0f} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
