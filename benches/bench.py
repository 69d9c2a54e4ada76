#!/usr/bin/env python3
"""serialhub benchmark: latency, throughput, CPU and memory against ser2net, the memory of the
static (musl) build that ships to the Pi, hotplug latency (device node openable -> port accepting
RFC 2217 clients), and the esptool matrix: write-flash of a random image at 115200, 460800 and
921600 plus chip-id and flash-id, straight on the simulated chip's PTY, through serialhub's
socket:// and rfc2217:// (with and without ?ign_set_control), and through esp_rfc2217_server and
ser2net (rfc2217://, with and without ?ign_set_control); table and chart (PNG).

Run with `make bench` (SERIALHUB_BIN=target/release/serialhub). Prints a table and writes
docs/benchmarks.md and docs/esptool-paths.png. Not a test: it reports numbers against targets, it
does not fail on them (exit status is non-zero only if a measurement could not be taken, an esptool
cell failed, or data came back wrong). A quick part while developing, e.g.:

    .venv/bin/python benches/bench.py --only matrix --matrix-kib 64 --bauds 921600 --out /tmp/b.md

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
RSS_GOAL_KIB = 1536  # peak RSS of the static build with one device (issue 21; 2 MiB before)
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

    def wait_listening(self, timeout: float):
        """Until the server listens on `port` (read from /proc/net/tcp: a test connection would
        count as a client); stopped and raised if it exits or does not get there."""
        def listening():
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited {self.proc.returncode}:\n{self.log()[-1500:]}")
            return tcp_listening(self.port)

        try:
            wait_for(listening, timeout, f"{self.name} to listen")
        except BaseException:
            self.stop()
            raise

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


def tcp_listening(port: int) -> bool:
    """Something listens on TCP `port` (any address), read from /proc/net/tcp{,6}: no connection
    is made, so a server that opens its device per client (ser2net) is not disturbed."""
    suffix = f":{port:04X}"
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[1].endswith(suffix) and fields[3] == "0A":  # LISTEN
                        return True
        return False
    except OSError:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False


class Ser2net(Server):
    name = "ser2net"

    def __init__(self, device: str, tmp: Path, tag: str = "ser2net", env: dict | None = None):
        self.port = free_port()
        cfg = tmp / f"{tag}.yaml"
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
        self.log_path = tmp / f"{tag}.log"
        exe = shutil.which("ser2net") or "/usr/sbin/ser2net"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [exe, "-n", "-u", "-c", str(cfg), "-P", str(tmp / f"{tag}.pid")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        self.wait_listening(10)


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


def esptool(args: list[str], timeout: float = 180, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "esptool", *args],
        env=env,
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
# The esptool matrix (issue 8, point 3): the same esptool commands through every path to the same
# simulated chip, side by side in one run. Every run gets a fresh chip (and a fresh server in
# front of it), so no run inherits a stub flasher, a baud rate or flash contents from another.

MATRIX_BAUDS = (115200, 460800, 921600)
MATRIX_IDS = ("chip-id", "flash-id")
FLASH_OFFSET = 0x10000
NO_RESET = ["--before", "no-reset", "--after", "no-reset"]


class MatrixPath:
    def __init__(self, key: str, server: str, url: str, short: str, label: str, expect_fail: str = ""):
        self.expect_fail = expect_fail  # why this path cannot work (its failures are not problems)
        self.key = key          # --paths name
        self.server = server    # local | serialhub | esp_rfc2217_server | ser2net
        self.url = url          # template: {link} (the sim's PTY) or {port}
        self.short = short      # chart tick label
        self.label = label      # table row

    @property
    def on_pty(self) -> bool:
        """Served from `serialhub sim --pty --bootloader`: no modem lines, no reset."""
        return self.server not in ("serialhub", "serialhub-pty")

    @property
    def esptool_defaults(self) -> bool:
        """esptool runs with its default resets: serialhub's chip has lines, and the local PTY gets
        the modem-line shim so esptool spends its reset time exactly as on a cable (the PTY chip is
        already in its loader, so the lines need not reach it)."""
        return self.server == "serialhub" or self.key == "local"


MATRIX_PATHS = [
    MatrixPath("local", "local", "{link}", "local PTY",
               "local: esptool straight on the sim's PTY, its default resets (as on a cable)"),
    MatrixPath("local-no-reset", "local", "{link}", "local PTY\nno reset",
               "local, `--before/--after no-reset` (no reset at all: the floor)"),
    MatrixPath("hub-socket", "serialhub", "socket://127.0.0.1:{port}", "serialhub\nsocket://", "serialhub `socket://`"),
    MatrixPath("hub-rfc2217", "serialhub", "rfc2217://127.0.0.1:{port}", "serialhub\nrfc2217://", "serialhub `rfc2217://`"),
    MatrixPath("hub-rfc2217-ign", "serialhub", "rfc2217://127.0.0.1:{port}?ign_set_control",
               "serialhub\nrfc2217 ?ign", "serialhub `rfc2217://…?ign_set_control`"),
    MatrixPath("hub-pty", "serialhub-pty", "{link}", "serialhub\npty link",
               "serialhub `pty` link (a local path; esptool `--before/--after no-reset`)"),
    MatrixPath("esp-rfc2217", "esp_rfc2217_server", "rfc2217://127.0.0.1:{port}",
               "esp_rfc2217\n_server", "esp_rfc2217_server `rfc2217://`",
               expect_fail="esp_rfc2217_server never acknowledges SET-CONTROL; its users need ?ign_set_control"),
    MatrixPath("esp-rfc2217-ign", "esp_rfc2217_server", "rfc2217://127.0.0.1:{port}?ign_set_control",
               "esp_rfc2217\n_server ?ign", "esp_rfc2217_server `rfc2217://…?ign_set_control`"),
    MatrixPath("ser2net-rfc2217", "ser2net", "rfc2217://127.0.0.1:{port}", "ser2net\nrfc2217://", "ser2net `rfc2217://`"),
    MatrixPath("ser2net-rfc2217-ign", "ser2net", "rfc2217://127.0.0.1:{port}?ign_set_control",
               "ser2net\nrfc2217 ?ign", "ser2net `rfc2217://…?ign_set_control`"),
]

# esp_rfc2217_server (pyserial) on a PTY: the modem-line ioctls that the PTY refuses (ENOTTY)
# succeed on lines kept in memory, as on a UART whose DTR/RTS are wired to nothing. Without this,
# its `ser.rts = True` on every connect raises and it drops the client at once.
ESP_SERVER_WRAPPER = '''\
import errno, fcntl, struct, sys, termios
_real_ioctl = fcntl.ioctl
_LINE_IOCTLS = (termios.TIOCMGET, termios.TIOCMSET, termios.TIOCMBIS, termios.TIOCMBIC)
_lines = {}
def _ioctl(fd, request, arg=0, *more):
    try:
        return _real_ioctl(fd, request, arg, *more)
    except OSError as e:
        if (request not in _LINE_IOCTLS or e.errno not in (errno.ENOTTY, errno.EINVAL)
                or not isinstance(arg, (bytes, bytearray)) or len(arg) < 4):
            raise
    key = fd if isinstance(fd, int) else fd.fileno()
    value = struct.unpack("I", bytes(arg[:4]))[0]
    state = _lines.get(key, 0)
    if request == termios.TIOCMGET:
        value = state
    elif request == termios.TIOCMSET:
        state = value
    elif request == termios.TIOCMBIS:
        state |= value
    else:
        state &= ~value
    _lines[key] = state
    out = struct.pack("I", value & 0xFFFFFFFF) + bytes(arg[4:])
    if isinstance(arg, bytearray):
        arg[:] = out
        return 0
    return out
fcntl.ioctl = _ioctl
sys.argv[0] = "esp_rfc2217_server"
from esp_rfc2217_server import main
main(sys.argv[1:])
'''

# The same for ser2net (C, gensio): an LD_PRELOAD shim. Without it ser2net never answers
# SET-CONTROL on a PTY, so a URL without ?ign_set_control times out waiting for 'control'.
PTY_LINES_SHIM_C = r'''
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/ioctl.h>
static int lines[4096];
int ioctl(int fd, unsigned long request, ...) {
    static int (*real)(int, unsigned long, ...);
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (!real) real = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
    int r = real(fd, request, arg);
    if (r == -1 && (errno == ENOTTY || errno == EINVAL) && fd >= 0 && fd < 4096 && arg) {
        int *v = arg;
        switch (request) {
        case TIOCMGET: *v = lines[fd]; return 0;
        case TIOCMSET: lines[fd] = *v; return 0;
        case TIOCMBIS: lines[fd] |= *v; return 0;
        case TIOCMBIC: lines[fd] &= ~*v; return 0;
        }
    }
    return r;
}
'''


def build_pty_lines_shim(tmp: Path) -> tuple[Path | None, str]:
    """Compile the LD_PRELOAD shim (a second's work for cc); None and why if that fails."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None, "no C compiler (cc) to build the PTY modem-line shim"
    src, lib = tmp / "ptylines.c", tmp / "ptylines.so"
    src.write_text(PTY_LINES_SHIM_C)
    r = None
    for extra in (["-ldl"], []):
        r = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), *extra],
                           capture_output=True, text=True, timeout=120)
        if r.returncode == 0:
            return lib, "ok"
    return None, f"cc failed to build the PTY modem-line shim: {(r.stderr or '').strip()[-300:]}"


class EspRfc2217Server(Server):
    """esptool's esp_rfc2217_server (from the venv) on the sim's PTY, through ESP_SERVER_WRAPPER."""
    name = "esp_rfc2217_server"

    def __init__(self, device: str, tmp: Path, tag: str, wrapper: Path):
        self.port = free_port()
        self.log_path = tmp / f"{tag}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(wrapper), "-p", str(self.port), device],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        self.wait_listening(30)


def wait_binary(timeout: float = 600) -> os.stat_result:
    """The release binary, once it exists and has not changed for 2 s (it may be being rebuilt)."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            st = os.stat(BIN)
            if os.access(BIN, os.X_OK) and time.time() - st.st_mtime > 2:
                return st
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise BenchError(f"{BIN} missing or changing for {timeout:.0f} s")
        if not said:
            print(f"  waiting for {BIN} (being rebuilt?) ...", flush=True)
            said = True
        time.sleep(1)


class PtyLink(Server):
    """`serialhub pty rfc2217://127.0.0.1:PORT --link LINK`: a local path for tools that want one."""
    name = "serialhub pty"

    def __init__(self, port: int, tmp: Path, tag: str):
        self.port = port
        self.link = tmp / f"ttyLINK-{tag}"
        self.log_path = tmp / f"{tag}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([BIN, "pty", f"rfc2217://127.0.0.1:{port}", "--link", str(self.link)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def bridged():
            if self.proc.poll() is not None:
                raise BenchError(f"serialhub pty exited {self.proc.returncode}:\n{self.log()}")
            return "bridged to" in self.log()

        wait_for(bridged, 10, "the pty link")


class Rig:
    """One matrix path set up for one esptool run: the chip, the server in front of it, the URL.
    `with Rig(...) as rig:` ... the flash file is checked after the exit (everything stopped)."""

    def __init__(self, path: MatrixPath, tmp: Path, tag: str, tools: dict):
        self.path, self.tmp, self.tag, self.tools = path, tmp, tag, tools
        self.sim: SimPty | None = None
        self.server: Server | None = None
        self.link: PtyLink | None = None
        self.flash = tmp / f"flash-{tag}.bin"
        self.url = ""

    def __enter__(self):
        try:
            wait_binary()
            if self.path.server in ("serialhub", "serialhub-pty"):
                hub = Serialhub([f"sim:{self.flash}=0"], self.tmp, tag=f"hub-{self.tag}")
                self.server = hub
                port = hub.wait_port("sim")
                hub.wait_log(r"opened sim", 10)
                if self.path.server == "serialhub-pty":
                    self.link = PtyLink(port, self.tmp, f"pty-{self.tag}")
                    self.url = self.path.url.format(link=self.link.link)
                else:
                    self.url = self.path.url.format(port=port)
                return self
            self.sim = SimPty(self.tmp, self.tag).__enter__()
            self.flash = self.sim.flash
            if self.path.server == "local":
                self.url = self.path.url.format(link=self.sim.link)
            elif self.path.server == "esp_rfc2217_server":
                self.server = EspRfc2217Server(str(self.sim.link), self.tmp, f"esp-{self.tag}",
                                               self.tools["esp_wrapper"])
                self.url = self.path.url.format(port=self.server.port)
            elif self.path.server == "ser2net":
                env = None
                if self.tools.get("shim"):
                    env = dict(os.environ, LD_PRELOAD=str(self.tools["shim"]))
                self.server = Ser2net(os.path.realpath(self.sim.link), self.tmp, tag=f"ser2net-{self.tag}", env=env)
                self.url = self.path.url.format(port=self.server.port)
            return self
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc):
        if self.link is not None:
            self.link.stop()
        if self.server is not None:
            self.server.stop()
        if self.sim is not None:
            self.sim.__exit__()


def esptool_timeout(op: str, kib: int, baud: int) -> float:
    """Generous bound: 3x the bare UART time, 2 s per 16 KiB block, 2 min for start and reset."""
    if op != "write-flash":
        return 120
    return 120 + 3 * kib * 1024 * 10 / baud + 2 * kib / 16


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def esptool_tail(out: str, lines: int = 4) -> str:
    """The last lines that say something (esptool's fatal error is there)."""
    keep = [ln.strip() for ln in ANSI.sub("", out).splitlines() if ln.strip()]
    return " / ".join(keep[-lines:])[-600:]


def run_matrix_cell(path: MatrixPath, op: str, baud: int | None, tmp: Path, tag: str, tools: dict,
                    img: Path, image: bytes) -> dict:
    """One esptool run on a fresh rig: {"s": seconds or None, "err": text or None, "load": 1-min load}."""
    cell: dict = {"s": None, "err": None, "load": os.getloadavg()[0]}
    kib = len(image) // 1024
    args = []
    if op == "write-flash":
        args = ["-b", str(baud), "write-flash", hex(FLASH_OFFSET), str(img)]
    else:
        args = [op]
    try:
        with Rig(path, tmp, tag, tools) as rig:
            if path.server in ("serialhub", "serialhub-pty"):
                cell["bin"] = (os.stat(BIN).st_mtime_ns, os.stat(BIN).st_size)
            limit = esptool_timeout(op, kib, baud or 115200)
            pre = ["--port", rig.url, *([] if path.esptool_defaults else NO_RESET)]
            env = None
            if path.on_pty and path.esptool_defaults:
                if not tools.get("shim"):
                    cell["err"] = "no modem-line shim for the PTY (cc missing?)"
                    return cell
                env = dict(os.environ, LD_PRELOAD=str(tools["shim"]))
            try:
                dt, r = esptool([*pre, *args], timeout=limit, env=env)
            except subprocess.TimeoutExpired as e:
                out = e.stdout or b""
                out = out.decode(errors="replace") if isinstance(out, bytes) else out
                cell["err"] = f"timed out after {limit:.0f} s: {esptool_tail(out)}"
                return cell
            if r.returncode != 0:
                cell["err"] = f"exit {r.returncode}: {esptool_tail(r.stdout + r.stderr)}"
                return cell
        if op == "write-flash" and not flash_holds(rig.flash, FLASH_OFFSET, image):
            cell["err"] = "esptool succeeded but the flash file does not hold the image"
            return cell
        cell["s"] = dt
        return cell
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        cell["err"] = f"setup failed: {str(e).strip()[-600:]}"
        return cell
    finally:
        for f in (tmp / f"flash-{tag}.bin",):
            try:
                f.unlink()
            except OSError:
                pass


def matrix_ops(bauds: list[int], ids: bool) -> list[tuple[str, int | None]]:
    return [("write-flash", b) for b in bauds] + ([(op, None) for op in MATRIX_IDS] if ids else [])


def op_key(op: str, baud: int | None) -> str:
    return f"write-flash@{baud}" if op == "write-flash" else op


def measure_matrix(tmp: Path, paths: list[MatrixPath], bauds: list[int], ids: bool, kib: int,
                   reps: int, tools: dict) -> dict:
    """Every (path, command) cell `reps` times; the cell's time is the median of its runs (a cell
    with a failed run is failed, with that run's error)."""
    image = random.Random(32).randbytes(kib * 1024)
    img = tmp / "matrix-img.bin"
    img.write_bytes(image)
    ops = matrix_ops(bauds, ids)
    res: dict = {"kib": kib, "bauds": bauds, "ids": ids, "reps": reps, "paths": [p.key for p in paths],
                 "cells": {}, "loads": [], "bins": set()}
    n = 0
    for rep in range(reps):
        for op, baud in ops:
            for path in paths:
                n += 1
                what = f"{op}" + (f" @{baud}" if baud else "")
                print(f"  [{rep + 1}/{reps}] {path.label.replace('`', '')}: {what} ...", end=" ", flush=True)
                cell = run_matrix_cell(path, op, baud, tmp, f"m{n}-{path.key}", tools, img, image)
                res["loads"].append(cell["load"])
                if "bin" in cell:
                    res["bins"].add(cell["bin"])
                print(f"{cell['s']:.2f} s" if cell["s"] is not None else f"FAILED: {cell['err']}", flush=True)
                runs = res["cells"].setdefault((path.key, op_key(op, baud)), [])
                runs.append(cell)
    for key, runs in list(res["cells"].items()):
        bad = [c for c in runs if c["s"] is None]
        res["cells"][key] = {
            "s": None if bad else statistics.median(c["s"] for c in runs),
            "err": bad[0]["err"] if bad else None,
            "runs": [c["s"] for c in runs],
        }
    return res


def matrix_goals(m: dict) -> dict:
    """Issue 8's goals for serialhub's socket://: write-flash within 5 % of local at every baud,
    chip-id and flash-id within 0.3 s of local. Per goal: ok = True (met), False (missed: over,
    or socket:// failed), None (not judged: a cell not measured, or local failed); and the worst
    difference seen."""
    cells = m["cells"]

    def judge(keys, diff, limit):
        verdicts, worst = [], None
        for key in keys:
            loc, sock = cells.get(("local", key)), cells.get(("hub-socket", key))
            if loc is None or sock is None or loc["s"] is None:
                verdicts.append(None)
            elif sock["s"] is None:
                verdicts.append(False)
            else:
                d = diff(sock["s"], loc["s"])
                worst = d if worst is None else max(worst, d)
                verdicts.append(d <= limit)
        if False in verdicts:
            return False, worst
        if not verdicts or None in verdicts:
            return None, worst
        return True, worst

    write_ok, write_worst = judge([op_key("write-flash", b) for b in m["bauds"]],
                                  lambda x, ref: (x - ref) / ref * 100, 5.0)
    ids_ok, ids_worst = judge(list(MATRIX_IDS) if m["ids"] else [], lambda x, ref: x - ref, 0.3)
    return {"write_ok": write_ok, "write_worst_pct": write_worst, "ids_ok": ids_ok, "ids_worst_s": ids_worst}


PATH_STYLE = {
    "local": ("#555555", ""),
    "local-no-reset": ("#aaaaaa", "//"),
    "hub-socket": ("#08519c", ""),
    "hub-rfc2217": ("#4292c6", ""),
    "hub-rfc2217-ign": ("#9ecae1", "//"),
    "hub-pty": ("#6a51a3", ""),
    "esp-rfc2217": ("#d94801", ""),
    "esp-rfc2217-ign": ("#fdae6b", "//"),
    "ser2net-rfc2217": ("#238b45", ""),
    "ser2net-rfc2217-ign": ("#a1d99b", "//"),
}


def draw_matrix_chart(m: dict, out: Path, title: str) -> None:
    """One panel per command (write-flash at each baud, chip-id, flash-id), one bar per path, its
    own y scale; the dashed line is the goal for socket:// (local +5 %, local +0.3 s)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [p for p in MATRIX_PATHS if p.key in m["paths"]]
    ops = matrix_ops(m["bauds"], m["ids"])
    fig, axes = plt.subplots(1, len(ops), figsize=(max(7.0, 2.9 * len(ops)), 4.8), squeeze=False)
    for ax, (op, baud) in zip(axes[0], ops):
        key = op_key(op, baud)
        xs = range(len(paths))
        vals = [m["cells"].get((p.key, key), {}).get("s") for p in paths]
        top = max([v for v in vals if v is not None], default=1.0)
        for x, p, v in zip(xs, paths, vals):
            color, hatch = PATH_STYLE.get(p.key, ("#999999", ""))
            if v is None:
                ax.text(x, top * 0.02, "failed", rotation=90, ha="center", va="bottom", fontsize=7, color="#b00000")
                continue
            ax.bar(x, v, 0.75, color=color, hatch=hatch, edgecolor="#333333", linewidth=0.4)
            ax.text(x, v + top * 0.01, f"{v:.{0 if v >= 100 else 1 if v >= 10 else 2}f}", ha="center",
                    va="bottom", fontsize=6)
        loc = m["cells"].get(("local", key), {}).get("s")
        if loc is not None and any(p.key == "hub-socket" for p in paths):
            goal = loc * 1.05 if op == "write-flash" else loc + 0.3
            ax.axhline(goal, color="#08519c", linestyle="--", linewidth=0.8)
        ax.set_title(f"write-flash @{baud}" if op == "write-flash" else op, fontsize=9)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([p.short for p in paths], rotation=90, fontsize=6.5)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylim(0, top * 1.15)
        ax.grid(axis="y", linewidth=0.3, alpha=0.6)
        ax.set_axisbelow(True)
    axes[0][0].set_ylabel("seconds (lower is better)", fontsize=8)
    import textwrap
    width = int(fig.get_figwidth() * 14)
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.splitlines()), fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def ensure_bench_python_packages() -> str | None:
    """esp_rfc2217_server (in esptool) and matplotlib, from PyPI into this venv if missing."""
    import importlib.util
    missing = [m for m in ("esp_rfc2217_server", "matplotlib") if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    req = REPO / "benches" / "requirements.txt"
    print(f"installing {', '.join(missing)} into {sys.prefix} (pip install -r {os.path.relpath(req, REPO)}) ...",
          flush=True)
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            "-r", str(req)], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot install {', '.join(missing)}: {e}"
    if r.returncode != 0:
        return f"cannot install {', '.join(missing)}: {r.stderr.strip()[-300:]}"
    importlib.invalidate_caches()
    return None


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


def size_label(kib: int) -> str:
    return f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB"


def build_table(hub: dict, ref: dict | None, matrix: dict | None, static: dict | None = None,
                hot: dict | None = None, core: bool = True) -> list[tuple[str, str, str, str]]:
    ref = ref or {}
    rows: list[tuple[str, str, str, str]] = []

    def verdict(ok):
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    def row(label, key, spec, target="", ok=None):
        rows.append((label, fmt(hub.get(key), spec), fmt(ref.get(key), spec), target + (f" ({verdict(ok)})" if target else "")))

    def both(key):
        return hub.get(key) is not None and ref.get(key) is not None

    if core:
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
                     f"≤ {RSS_GOAL_KIB} KiB, judged on the static build below (this build: "
                     + ("n/a" if hwm is None else ("under" if hwm <= RSS_GOAL_KIB else "over")) + ")"))
        rows.append(("  of which anonymous (heap, stacks) (KiB)", fmt(hub.get("rss_anon_kib"), "d"),
                     fmt(ref.get("rss_anon_kib"), "d"), ""))
        rows.append(("  PSS, shared libraries split (KiB)", fmt(hub.get("pss_kib"), "d"),
                     fmt(ref.get("pss_kib"), "d"), ""))
        rows.append(("RSS idle before the first client (KiB)", fmt(hub.get("idle_rss_kib"), "d"),
                     fmt(ref.get("idle_rss_kib"), "d"), ""))
    if static is not None:
        if static.get("hwm_kib") is None:
            rows.append(("static musl build: peak RSS, VmHWM (KiB)", "skipped", "—",
                         f"≤ {RSS_GOAL_KIB} KiB (n/a: " + static.get("why", "not measured") + ")"))
        else:
            shwm = static["hwm_kib"]
            rows.append(("static musl build: peak RSS, VmHWM (KiB)", fmt(shwm, "d"), "—",
                         f"≤ {RSS_GOAL_KIB} KiB with one device (" + verdict(shwm <= RSS_GOAL_KIB) + ")"))
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
    if matrix is not None and 921600 in matrix["bauds"]:
        key = op_key("write-flash", 921600)

        def cell(path):
            c = matrix["cells"].get((path, key))
            return "—" if c is None else ("failed" if c["s"] is None else f"{c['s']:.1f}")

        local = matrix["cells"].get(("local", key), {}).get("s")
        sock = matrix["cells"].get(("hub-socket", key))
        ok = None if local is None or sock is None else (sock["s"] is not None and sock["s"] <= local * 1.05)
        what = f"esptool write-flash {size_label(matrix['kib'])} @921600"
        rows.append((f"{what}, socket:// (s)", cell("hub-socket"), "—",
                     f"≤ local PTY + 5 % ({fmt(local, '.1f')} s) ({verdict(ok)}); all paths: esptool matrix below"))
        rows.append((f"{what}, rfc2217:// (s)", cell("hub-rfc2217"), cell("ser2net-rfc2217"), ""))
        link = matrix["cells"].get(("hub-pty", key))
        if link is not None:
            ok = None if local is None else (link["s"] is not None and link["s"] <= local * 1.10)
            rows.append((f"{what}, `serialhub pty` link (s)", cell("hub-pty"), "—",
                         f"≤ local PTY + 10 % ({fmt(local, '.1f')} s) ({verdict(ok)})"))
    return rows


def render_text(rows) -> str:
    head = ("measure", "serialhub", "ser2net", "target")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return "\n".join(lines)


def render_matrix_md(m: dict, chart: str | None, tools: dict) -> list[str]:
    paths = [p for p in MATRIX_PATHS if p.key in m["paths"]]
    ops = matrix_ops(m["bauds"], m["ids"])
    size = size_label(m["kib"])
    notes: dict[str, int] = {}

    def note(path: MatrixPath, err: str) -> int:
        text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", err)
        text = re.sub(r"/tmp/serialhub-bench-[^/\s]+/\S+", "TMP/…", text)
        text = re.sub(r"/dev/pts/\d+", "/dev/pts/N", text)
        text = f"{path.label}: {text}" + (f" (expected: {path.expect_fail})" if path.expect_fail else "")
        return notes.setdefault(text, len(notes) + 1)

    head = ["path", *[f"write-flash @{b}" if op == "write-flash" else op for op, b in ops]]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in paths:
        cells = [p.label]
        for op, b in ops:
            key = op_key(op, b)
            c = m["cells"].get((p.key, key))
            loc = m["cells"].get(("local", key), {}).get("s")
            if c is None:
                cells.append("—")
            elif c["s"] is None:
                cells.append(f"failed [{note(p, c['err'])}]")
            elif p.key == "local" or loc is None:
                cells.append(f"{c['s']:.2f} s")
            elif op == "write-flash":
                pct = (c['s'] - loc) / loc * 100
                cells.append(f"{c['s']:.2f} s ({pct:+.{0 if abs(pct) >= 100 else 1}f} %)")
            else:
                cells.append(f"{c['s']:.2f} s ({c['s'] - loc:+.2f} s)")
        table.append("| " + " | ".join(cells) + " |")

    g = matrix_goals(m)

    def verdict(ok, worst, unit):
        w = "" if worst is None else f", worst {worst:+.1f} %" if unit == "%" else f", worst {worst:+.2f} s"
        return ("not judged (a cell is missing)" if ok is None else "**met**" if ok else "**MISSED**") + w

    loads = m["loads"]
    reps = m["reps"]
    out = [
        "## esptool paths (issue 8)",
        "",
        f"The same esptool commands through every path to the same simulated chip, in one run: `write-flash "
        f"0x10000` of {size} of random bytes at each baud (default stub flasher; random data does not compress, "
        "so the whole image crosses the UART), and `chip-id` and `flash-id` at esptool's default 115200. "
        "Each cell is the wall time of one `python -m esptool …` process, start to exit (Python's start-up, "
        "connect, stub upload, the command, and for serialhub the resets)"
        + (f", median of {reps} runs" if reps > 1 else "") + "; in brackets the difference to the local PTY, "
        "the physical limit (the simulated chip throttles to the UART byte time at the current baud).",
        "",
    ]
    if chart:
        out += [f"![esptool times per path: write-flash at each baud, chip-id, flash-id]({chart})", ""]
    out += table + [""]
    goals = []
    if m["bauds"]:
        goals.append("write-flash within 5 % of local at every baud — "
                     + verdict(g["write_ok"], g["write_worst_pct"], "%"))
    if m["ids"]:
        goals.append("`chip-id`/`flash-id` within 0.3 s of local — " + verdict(g["ids_ok"], g["ids_worst_s"], "s"))
    if goals and any(p.key == "hub-socket" for p in paths):
        out += ["Goals for serialhub `socket://`: " + "; ".join(goals) + ".", ""]
        if g["ids_worst_s"] is not None:
            out += [f"Of the worst `chip-id`/`flash-id` difference ({g['ids_worst_s']:+.2f} s), 0.30 s is "
                    "pyserial's own sleep when it closes a `socket://` port (see below), which no server can "
                    f"remove; the server's share is {g['ids_worst_s'] - 0.3:+.2f} s.", ""]
    if notes:
        out += ["Failed cells (the last lines esptool printed, or why the run could not start):", ""]
        out += [f"{n}. {text}" for text, n in notes.items()] + [""]
    shim = tools.get("shim_note", "")
    out += [
        "How each path was run (every run on a fresh chip, and a fresh server in front of it; every "
        "write-flash is checked afterwards: the chip's flash file holds the image at 0x10000):",
        "",
        "- **local**: `serialhub sim --pty LINK --bootloader --flash FILE` (the simulated chip on a PTY, "
        "started in download mode), then `esptool --port LINK …` with its defaults, under the LD_PRELOAD "
        "modem-line shim described for ser2net below: a PTY has no DTR/RTS, so the lines reach no chip "
        "(it is in its loader already), but esptool spends its reset time (bootloader entry 150 ms, hard "
        "reset 100 ms) exactly as on a cable. **local, no reset** runs `--before no-reset --after "
        "no-reset` instead: the floor, which no tool that must reset the chip can reach. The chip is "
        "restarted for every run (the stub would still be running, at the last baud). The goals are "
        "judged against **local**: the same command line, on a cable.",
        "- On `socket://` pyserial itself sleeps 0.3 s when it closes the port (\"in case of quick "
        "reconnects\", `protocol_socket.close`), and esptool still sleeps through its hard reset: those "
        "0.4 s are the client's, whatever the server; the rest of the difference to local is the "
        "bootloader entry (150 ms of EN/IO0 timing) that serialhub plays when esptool first syncs.",
        "- **serialhub**: `serialhub serve --bind 127.0.0.1 --no-hotplug --state TMP --http 127.0.0.1:0 "
        "--device sim:FILE=0`, the built-in simulated chip, which has DTR/RTS and starts in its application. "
        "esptool runs with its defaults (`--before default-reset --after hard-reset`): **the serialhub rows "
        "include a real reset into the bootloader** (on `rfc2217://` serialhub recognises esptool's DTR/RTS "
        "sequence and plays it locally; on `socket://` serialhub resets the chip itself at esptool's first "
        "SYNC and back into its application when the session ends) and, on `rfc2217://`, the hard reset at "
        "the end, **while the esp_rfc2217_server and ser2net rows (on a PTY chip) use `--before no-reset "
        "--after no-reset`**. With `?ign_set_control` pyserial sleeps 100 ms after each of those DTR/RTS "
        "changes instead of waiting for the acknowledgement.",
        "- **serialhub `pty` link**: the same daemon and chip, and `serialhub pty rfc2217://127.0.0.1:PORT "
        "--link LINK` in front of it; esptool on LINK with `--before no-reset --after no-reset` (a pty "
        "carries no DTR/RTS): the server enters the bootloader at esptool's first SYNC, follows its baud "
        "change, and resets the chip into its application once esptool has closed the link.",
        "- **esp_rfc2217_server** (from the esptool package in the venv) on the same kind of PTY chip: "
        "`esp_rfc2217_server -p PORT LINK`, started through a small Python wrapper that makes the "
        "modem-line ioctls a PTY refuses with ENOTTY (TIOCMGET/TIOCMSET/TIOCMBIS/TIOCMBIC) succeed on line "
        "states kept in memory — as on a UART whose DTR/RTS are wired to nothing. Unwrapped, its "
        "`ser.rts = True` on every connect raises ENOTTY and it drops the client before esptool can say "
        "anything. Its reset emulation (the ESP reset sequences on DTR/RTS) runs but reaches no chip; esptool "
        "uses `--before no-reset --after no-reset`. It never acknowledges SET-CONTROL (by design), so "
        "without `?ign_set_control` pyserial gives up at open (\"timeout while waiting for option 'control'\").",
        "- **ser2net** (Debian's package, as in the table above: `telnet(rfc2217)` accepter, `serialdev,"
        "/dev/pts/N,115200n81,local`) on the same kind of PTY chip, with an LD_PRELOAD shim (a few lines of "
        "C compiled by the bench with `cc`) that does the same for its `ioctl` calls: unshimmed, ser2net "
        "does not answer SET-CONTROL on a PTY (its TIOCMBIS fails), so a URL without `?ign_set_control` times "
        "out at open; on a real UART it answers. esptool uses `--before no-reset --after no-reset`."
        + (f" This run: {shim}." if shim and shim != "ok" else ""),
        f"- Timeouts: every esptool run is bounded (write-flash: 120 s + 3× the bare UART time + 2 s per "
        "16 KiB block; chip-id/flash-id: 120 s); a run that hits it counts as failed.",
    ]
    if loads:
        out.append(f"- 1-minute load average at the start of the runs: {min(loads):.2f} … {max(loads):.2f} "
                   "(2 logical CPUs, shared machine: compare cells of one run, not across runs).")
    if len(m.get("bins", ())) > 1:
        out.append("- **The serialhub binary changed during the run** (it was rebuilt): the serialhub cells "
                   "do not all measure the same build.")
    out.append("")
    return out


def render_md(rows, notes, args, sections, matrix, chart, tools, errors, runtime, cpu_res=None) -> str:
    out = [
        "# serialhub benchmarks",
        "",
        f"Measured {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} at git {git_revision()} "
        f"by `benches/bench.py` in {runtime:.0f} s. Reproduce with:",
        "",
        "```",
        "packaging/build-pi.sh x86_64-unknown-linux-musl   # the static build (optional: its rows are skipped without it)",
        "make bench    # = cargo build --release && .venv/bin/pip install -r benches/requirements.txt &&",
        "              #   SERIALHUB_BIN=$PWD/target/release/serialhub .venv/bin/python benches/bench.py",
        "```",
        "",
    ]
    if sys.argv[1:]:
        out += [f"This run: `benches/bench.py {' '.join(sys.argv[1:])}`.", ""]
    out += ["## Setup", ""]
    if "core" in sections:
        out += [
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
        ]
    if "matrix" in sections:
        out.append("- esptool: the esptool matrix below; its 921600 write-flash figures for serialhub are "
                   "repeated in the table.")
    if "static" in sections:
        out.append(
            "- Static build: the memory target (peak RSS ≤ 1.5 MiB with one device, issue 21) is judged on the static musl "
            "binary, which is what ships to the Pi (no shared libc: everything it maps is its own). "
            "`packaging/build-pi.sh x86_64-unknown-linux-musl` builds the same static binary for this machine "
            "(`target/x86_64-unknown-linux-musl/release/serialhub`); it goes through the same run as the glibc "
            "build (same flags, one PTY device, portal on, the same round trips and bulk transfers) and its "
            "VmHWM/RssAnon/PSS are read at the same point. The glibc build's numbers include the pages of the "
            "shared libc it maps. Without the static binary its rows say `skipped` and the bench does not fail.")
    if "hotplug" in sections:
        out += [
            "- Hotplug: the release binary as `serialhub serve --config FILE --dev-dir TMP/dev --sysfs TMP/sys "
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
        ]
    out += [
        "",
        "## Machine",
        "",
        *[f"- {n}" for n in notes],
        "- Shared machine: other builds may have been running; latency percentiles are the noisiest numbers.",
        "",
    ]
    if rows:
        out += [
            "## Results",
            "",
            "| measure | serialhub | ser2net | target |",
            "|---|---|---|---|",
            *[f"| {' | '.join(str(c) for c in r)} |" for r in rows],
            "",
        ]
    if cpu_res is not None:
        import cpu
        out += [
            "## CPU per byte on every path, against the releases before (issue 21)",
            "",
            f"`benches/cpu.py` (`--only cpu`): {cpu_res['mib']} MiB of firmware-like data (~30 % 0xFF) per path, "
            f"median of {cpu_res['reps']} rounds, the builds interleaved, a fresh daemon per build and round, "
            "one PTY device each. *echo* is the client writing and reading at once through an echoing PTY "
            "(a flasher's stream, the path that regressed with sharing); *echo + observer* adds a second "
            "client that only watches. Baselines are built from their git revisions into "
            "`target/bench-baselines/`.",
            "",
            *cpu.render(cpu_res),
            "",
        ]
    if matrix is not None:
        out += render_matrix_md(matrix, chart, tools)
    if errors:
        out += ["## Problems during this run", "", *[f"- {e}" for e in errors], ""]
    return "\n".join(out)


SECTIONS = ("core", "cpu", "static", "hotplug", "matrix")


def csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip() and x.strip().lower() != "none"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help="comma-separated parts to run: core (round trips, bulk, CPU, RSS vs ser2net), "
                         "cpu (CPU per MB on every path vs the releases before, benches/cpu.py), "
                         "static (the musl build's memory), hotplug, matrix (the esptool matrix); default all")
    ap.add_argument("--samples", type=int, default=500, help="round trips per message size")
    ap.add_argument("--cpu-reps", type=int, default=3, help="cpu: rounds per build (median)")
    ap.add_argument("--baselines", default=None,
                    help="cpu: git revisions to compare with, comma-separated (default: benches/cpu.py BASELINES)")
    ap.add_argument("--mib", type=int, default=16, help="MiB per bulk direction")
    ap.add_argument("--no-esptool", action="store_true", help="skip the esptool matrix")
    ap.add_argument("--no-ser2net", action="store_true", help="skip the ser2net reference (and its matrix rows)")
    ap.add_argument("--no-static", action="store_true", help="skip the static (musl) build's memory")
    ap.add_argument("--hotplug-reps", type=int, default=20, help="plugs per hotplug case (0 = skip)")
    ap.add_argument("--matrix-kib", type=int, default=1024, help="esptool matrix: image size in KiB (default 1024)")
    ap.add_argument("--bauds", default=",".join(str(b) for b in MATRIX_BAUDS),
                    help="esptool matrix: write-flash bauds, comma-separated ('none' = no write-flash cells)")
    ap.add_argument("--no-ids", action="store_true", help="esptool matrix: skip the chip-id / flash-id cells")
    ap.add_argument("--paths", default=",".join(p.key for p in MATRIX_PATHS),
                    help="esptool matrix: paths, comma-separated (default all: "
                         + ", ".join(p.key for p in MATRIX_PATHS) + ")")
    ap.add_argument("--matrix-reps", type=int, default=1, help="esptool matrix: runs per cell (median)")
    ap.add_argument("--out", default=None,
                    help="markdown report ('-' = none). Default: docs/benchmarks.md for the full run; a partial "
                         "run (any option above that narrows it) writes no report unless given --out")
    ap.add_argument("--chart", default=None,
                    help="the esptool matrix chart (PNG); default esptool-paths.png beside the report")
    args = ap.parse_args()

    sections = csv_list(args.only)
    bad = [x for x in sections if x not in SECTIONS]
    path_keys = csv_list(args.paths)
    bad += [f"path {x}" for x in path_keys if x not in {p.key for p in MATRIX_PATHS}]
    try:
        bauds = [int(b) for b in csv_list(args.bauds)]
    except ValueError:
        bad.append(f"bauds {args.bauds}")
        bauds = []
    if bad or args.matrix_kib < 1 or args.matrix_reps < 1:
        ap.error(f"unknown or bad: {', '.join(bad) or 'matrix size/reps'}")
    if args.no_esptool and "matrix" in sections:
        sections.remove("matrix")
    if args.no_static and "static" in sections:
        sections.remove("static")
    if args.hotplug_reps <= 0 and "hotplug" in sections:
        sections.remove("hotplug")
    paths = [p for p in MATRIX_PATHS if p.key in path_keys and not (args.no_ser2net and p.server == "ser2net")]
    full = (sections == list(SECTIONS) and not args.no_ser2net and args.matrix_kib == 1024
            and bauds == list(MATRIX_BAUDS) and not args.no_ids and len(paths) == len(MATRIX_PATHS)
            and args.samples == 500 and args.mib == 16 and args.hotplug_reps == 20
            and args.cpu_reps == 3 and args.baselines is None)
    if args.out is None:
        args.out = str(REPO / "docs" / "benchmarks.md") if full else "-"
        if not full:
            print("bench: partial run, no report written (pass --out FILE for one)", flush=True)
    chart_path = Path(args.chart) if args.chart else (
        None if args.out == "-" else Path(args.out).parent / "esptool-paths.png")

    if not os.access(BIN, os.X_OK):
        print(f"bench: {BIN} is not an executable (build it: cargo build --release)", file=sys.stderr)
        return 2

    started = time.monotonic()
    git_revision()  # the revision as the run starts
    notes = machine_notes()
    errors: list[str] = []
    hub_res: dict = {}
    ref_res: dict | None = None
    static_res: dict | None = None
    hot_res: dict | None = None
    matrix_res: dict | None = None
    cpu_res: dict | None = None
    tools: dict = {}

    with tempfile.TemporaryDirectory(prefix="serialhub-bench-") as tmpdir:
        tmp = Path(tmpdir)

        if "core" in sections:
            bulk = ff_heavy(args.mib * MIB, seed=2217)
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

        if "cpu" in sections:
            import cpu
            baselines = csv_list(args.baselines) if args.baselines is not None else list(cpu.BASELINES)
            cpu_res = cpu.measure(tmp, args.mib, args.cpu_reps, baselines, not args.no_ser2net)
            print("\n".join(cpu.render(cpu_res)), flush=True)
            errors += [f"cpu: {g}" for g in cpu.goals(cpu_res) if "MISSED" in g]

        if "static" in sections:
            static_bin, note = static_binary()
            notes.append(note)
            static_res = {"why": "see Machine"}
            if static_bin is not None:
                try:
                    static_res = measure_static(tmp, static_bin, args.samples, ff_heavy(args.mib * MIB, seed=2217))
                except BenchError as e:
                    errors.append(f"static build: {e}")
                    static_res = {"why": "measurement failed"}
            else:
                print(note, flush=True)
                static_res = {"why": "binary missing" if "does not exist" in note else "binary unusable"}

        if "hotplug" in sections:
            print(f"hotplug: {args.hotplug_reps} plugs each: openable at once, unopenable first "
                  "(no event), unopenable first then IN_ATTRIB ...", flush=True)
            try:
                hot_res = measure_hotplug(tmp, args.hotplug_reps)
                if hot_res.get("exit"):
                    errors.append(f"hotplug daemon exited {hot_res['exit']} after SIGTERM")
            except (BenchError, OSError) as e:
                errors.append(f"hotplug: {e}")
                hot_res = {}

        if "matrix" in sections and paths:
            problem = ensure_bench_python_packages()
            if problem:
                errors.append(problem)
            if any(p.server == "ser2net" for p in paths):
                problem = ensure_ser2net()
                if problem:
                    errors.append(problem)
            if any(p.server == "ser2net" or p.key == "local" for p in paths):
                shim, why = build_pty_lines_shim(tmp)
                tools["shim"], tools["shim_note"] = shim, why
                if shim is None:
                    errors.append(f"no PTY modem-line shim for ser2net and local esptool: {why}")
            tools["esp_wrapper"] = tmp / "esp_rfc2217_server_pty.py"
            tools["esp_wrapper"].write_text(ESP_SERVER_WRAPPER)
            ops = matrix_ops(bauds, not args.no_ids)
            print(f"esptool matrix: {len(paths)} paths x {len(ops)} commands x {args.matrix_reps}, "
                  f"write-flash {size_label(args.matrix_kib)} at {', '.join(map(str, bauds)) or '-'} ...", flush=True)
            matrix_res = measure_matrix(tmp, paths, bauds, not args.no_ids, args.matrix_kib,
                                        args.matrix_reps, tools)
            expected = {p.key for p in paths if p.expect_fail}
            failed = [k for k, c in matrix_res["cells"].items() if c["s"] is None and k[0] not in expected]
            if failed:
                errors.append(f"esptool matrix: {len(failed)} of {len(matrix_res['cells'])} cells failed: "
                              + ", ".join(f"{p} {op}" for p, op in failed))
            if len(matrix_res["bins"]) > 1:
                errors.append("the serialhub binary changed during the esptool matrix (rebuilt)")
            try:
                notes.append("esp_rfc2217_server: from the esptool package in the venv; "
                             "matplotlib " + __import__("importlib.metadata").metadata.version("matplotlib"))
            except Exception:  # noqa: BLE001 - a note only
                pass

    runtime = time.monotonic() - started
    rows = build_table(hub_res, ref_res, matrix_res, static_res, hot_res, core="core" in sections)
    print()
    if rows:
        print(render_text(rows))
    if matrix_res is not None:
        print()
        md = render_matrix_md(matrix_res, None, tools)
        print("\n".join(ln for ln in md if ln.startswith(("|", "Goals")) or re.match(r"\d+\. ", ln)))
    chart_rel = None
    if matrix_res is not None and chart_path is not None:
        try:
            cmds = ([f"write-flash {size_label(matrix_res['kib'])} of random bytes"] if matrix_res["bauds"] else []) \
                + (list(MATRIX_IDS) if matrix_res["ids"] else [])
            title = (f"esptool through each path to the simulated ESP32: {', '.join(cmds)} "
                     f"(serialhub git {git_revision().split()[0]})\n"
                     "dashed line: the goal for serialhub socket:// (local + 5 %; local + 0.3 s)")
            draw_matrix_chart(matrix_res, chart_path, title)
            print(f"wrote {os.path.relpath(chart_path)}")
            chart_rel = (os.path.relpath(chart_path, Path(args.out).parent) if args.out != "-" else str(chart_path))
        except ImportError as e:
            errors.append(f"chart not drawn: {e} (pip install -r benches/requirements.txt)")
        except Exception as e:  # noqa: BLE001 - the figures matter more than the picture
            errors.append(f"chart not drawn: {type(e).__name__}: {e}")
    for e in errors:
        print(f"problem: {e}", file=sys.stderr)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(render_md(rows, notes, args, sections, matrix_res, chart_rel, tools, errors, runtime,
                                             cpu_res))
        print(f"\nwrote {os.path.relpath(args.out)} ({runtime:.0f} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
