#!/usr/bin/env python3
"""`make soak`: an hour of 921600-baud traffic both ways through several devices, with
clients coming and going, checked byte for byte; the daemon's memory, descriptors and threads
sampled all along. Not part of `make test`.

Each device is a PTY whose master end echoes what it reads (a board that answers); each
device has a client that sends random data at the byte rate of 921600 baud 8N1 (92,160 B/s)
and checks that exactly the same bytes come back, reconnecting every RECONNECT seconds; a
visitor knocks on every port now and then: it observes, and must not disturb the client. At the
end a table goes to --out (default docs/soak.md).

    make soak                               # one hour, three devices
    make soak SOAK_ARGS="--seconds 120"     # a short run while developing
"""

from __future__ import annotations

import argparse
import os
import random
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BIN = os.environ.get("SERIALHUB_BIN", "target/release/serialhub")
RATE = 921_600 // 10  # bytes per second at 921600 baud, 8N1
CHUNK = 4096


def status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "Threads"):
                out[k] = int(v.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def echo(master: int, stop: threading.Event):
    """The board: everything the daemon writes to the device comes back."""
    while not stop.is_set():
        r, _, _ = select.select([master], [], [], 0.2)
        if not r:
            continue
        try:
            data = os.read(master, 65536)
        except OSError:
            time.sleep(0.05)
            continue
        view = memoryview(data)
        while view and not stop.is_set():
            try:
                n = os.write(master, view)
                view = view[n:]
            except BlockingIOError:
                select.select([], [master], [], 0.2)


class Client(threading.Thread):
    def __init__(self, port: int, seed: int, stop: threading.Event, reconnect: float):
        super().__init__(daemon=True)
        self.port, self.rng, self.stop, self.reconnect = port, random.Random(seed), stop, reconnect
        self.sent = self.checked = self.sessions = 0
        self.errors: list[str] = []

    def run(self):
        while not self.stop.is_set() and len(self.errors) < 5:
            try:
                self.session()
            except Exception as e:  # noqa: BLE001 (reported in the table)
                self.errors.append(f"{type(e).__name__}: {e}")
                time.sleep(1)

    def session(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sessions += 1
            pending = bytearray()
            end = time.monotonic() + self.reconnect
            t0 = time.monotonic()
            sent_here = 0
            first = True
            while time.monotonic() < end and not self.stop.is_set():
                # Pace to the line rate.
                due = t0 + sent_here / RATE
                if time.monotonic() >= due:
                    chunk = bytearray(self.rng.randbytes(CHUNK))
                    if first:
                        chunk[0] = ord("A")  # not IAC: a raw session
                        first = False
                    s.sendall(chunk)
                    pending += chunk
                    sent_here += len(chunk)
                    self.sent += len(chunk)
                r, _, _ = select.select([s], [], [], max(0.0, min(0.05, due - time.monotonic())))
                if r:
                    got = s.recv(65536)
                    if not got:
                        raise ConnectionError("the daemon closed the connection")
                    if bytes(pending[: len(got)]) != got:
                        raise AssertionError(f"bytes differ after {self.checked} good ones")
                    del pending[: len(got)]
                    self.checked += len(got)
            # Drain what is still on its way back.
            deadline = time.monotonic() + 10
            s.settimeout(1)
            while pending and time.monotonic() < deadline:
                got = s.recv(65536)
                if not got:
                    break
                if bytes(pending[: len(got)]) != got:
                    raise AssertionError(f"bytes differ after {self.checked} good ones")
                del pending[: len(got)]
                self.checked += len(got)
            if pending:
                raise AssertionError(f"{len(pending)} bytes never came back")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=3600)
    ap.add_argument("--devices", type=int, default=3)
    ap.add_argument("--reconnect", type=float, default=60, help="seconds per client session")
    ap.add_argument("--sample", type=float, default=10, help="seconds between samples")
    ap.add_argument("--out", default="docs/soak.md")
    args = ap.parse_args()

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="serialhub-soak-"))
    stop = threading.Event()
    masters, devices = [], []
    for _ in range(args.devices):
        master, slave = os.openpty()
        os.set_blocking(master, False)
        masters.append((master, slave))
        devices.append(os.ttyname(slave))
    cmd = [BIN, "serve", "--bind", "127.0.0.1", "--no-hotplug", "--http", "127.0.0.1:0",
           "--state", str(tmp / "ports.json")]
    for d in devices:
        cmd += ["--device", f"{d}=0"]
    log_path = tmp / "serialhub.log"
    log = open(log_path, "wb")
    daemon = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                              env={**os.environ, "RUST_LOG": "info"})
    ports = {}
    deadline = time.monotonic() + 10
    while len(ports) < len(devices) and time.monotonic() < deadline:
        for m in re.finditer(r"\((/dev/pts/\d+)\) listening on 127\.0\.0\.1:(\d+)", log_path.read_text()):
            ports[m.group(1)] = int(m.group(2))
        time.sleep(0.05)
    if len(ports) < len(devices):
        print(log_path.read_text(), file=sys.stderr)
        daemon.kill()
        return 1
    echoes = [threading.Thread(target=echo, args=(m, stop), daemon=True) for m, _ in masters]
    for t in echoes:
        t.start()
    clients = [Client(ports[d], i, stop, args.reconnect) for i, d in enumerate(devices)]
    for c in clients:
        c.start()
    samples = []
    busy_ok = busy_bad = 0
    t0 = time.monotonic()
    print(f"soak: {len(devices)} devices, {args.seconds} s, pid {daemon.pid}", flush=True)
    while time.monotonic() - t0 < args.seconds:
        time.sleep(args.sample)
        st = status(daemon.pid)
        samples.append((time.monotonic() - t0, st))
        # A visitor on each port: it observes (the client, streaming, keeps control), or is
        # told it is busy (busy = "reject"), or is served between two of the client's
        # sessions; it must never disturb the client (checked byte for byte).
        for p in ports.values():
            try:
                with socket.create_connection(("127.0.0.1", p), timeout=5) as v:
                    v.settimeout(2)
                    msg = v.recv(64)
                    busy_ok += 1  # observing (or told busy, or served): not an error
            except OSError:
                busy_bad += 1
        print(f"  {samples[-1][0]:6.0f} s  RSS {st['VmRSS']} KiB  fds {st['fds']}  threads {st['Threads']}  "
              f"sent {sum(c.sent for c in clients) / 1e6:.1f} MB  checked {sum(c.checked for c in clients) / 1e6:.1f} MB",
              flush=True)
    stop.set()
    for c in clients:
        c.join(30)
    daemon.terminate()
    daemon.wait(10)
    log.close()

    rss = [s["VmRSS"] for _, s in samples]
    fds = [s["fds"] for _, s in samples]
    thr = [s["Threads"] for _, s in samples]
    errors = [e for c in clients for e in c.errors]
    sent = sum(c.sent for c in clients)
    checked = sum(c.checked for c in clients)
    sessions = sum(c.sessions for c in clients)
    warm = samples[len(samples) // 10][1]["VmRSS"] if samples else 0
    lines = [
        "# serialhub soak",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at git {rev} by `benches/soak.py "
        f"--seconds {args.seconds} --devices {args.devices}` (`make soak`).",
        "",
        f"{args.devices} PTY devices whose far end echoes; one raw client per device sending random bytes at "
        f"921600 baud's byte rate ({RATE} B/s) and checking every byte that comes back; a new session every "
        f"{args.reconnect:.0f} s; a visitor on every port every {args.sample:.0f} s.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| duration | {args.seconds} s |",
        f"| bytes sent / checked back byte-exact | {sent / 1e6:.1f} MB / {checked / 1e6:.1f} MB |",
        f"| client sessions | {sessions} |",
        f"| visitors observing, told busy or served between sessions / failed | {busy_ok} / {busy_bad} |",
        f"| errors | {len(errors)}{': ' + '; '.join(errors[:3]) if errors else ''} |",
        f"| RSS min / after warm-up / max (KiB) | {min(rss, default=0)} / {warm} / {max(rss, default=0)} |",
        f"| descriptors min / max | {min(fds, default=0)} / {max(fds, default=0)} |",
        f"| threads min / max | {min(thr, default=0)} / {max(thr, default=0)} |",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    ok = not errors and checked > 0 and max(fds, default=0) - min(fds, default=0) <= 2 * args.devices + 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
