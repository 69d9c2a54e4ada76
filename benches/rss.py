#!/usr/bin/env python3
"""Where a serialhub process's memory is: one PTY device, the portal on, N MiB each way through
RFC 2217 (IAC-heavy: every byte value), then VmHWM and the resident size of each mapping kind.

    python3 benches/rss.py target/x86_64-unknown-linux-musl/release/serialhub [--mib 4]

The static musl build is what ships to the Pi (packaging/build-pi.sh x86_64-unknown-linux-musl
builds it for this machine); its text is most of its RSS, because the kernel maps file pages
64 KiB around each fault (fault_around_bytes), so text RSS follows the text's size.
Prints one table; every wait has a deadline.
"""
import argparse
import json
import os
import pty
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty

DEADLINE = 60.0


def status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def mappings(pid: int) -> dict[str, int]:
    """Resident KiB per (file name or [anon]/[stack], permissions)."""
    agg: dict[str, int] = {}
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                path = parts[5] if len(parts) > 5 else "[anon]"
                cur = f"{os.path.basename(path)} {parts[1]}"
            elif parts[0] == "Rss:":
                agg[cur] = agg.get(cur, 0) + int(parts[1])
    return agg


def read_ready(fd: int) -> dict:
    line = b""
    end = time.monotonic() + DEADLINE
    while not line.endswith(b"\n"):
        if not select.select([fd], [], [], max(0.0, end - time.monotonic()))[0]:
            raise SystemExit("no ready line")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise SystemExit("the daemon closed its ready fd without a line")
        line += chunk
    return json.loads(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary")
    ap.add_argument("--mib", type=int, default=4)
    ap.add_argument("--observer", action="store_true", help="a second client that only watches")
    a = ap.parse_args()

    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    ready_r, ready_w = os.pipe()
    state = tempfile.mkdtemp(prefix="serialhub-rss-")
    proc = subprocess.Popen(
        [a.binary, "serve", "--no-hotplug", "--device", f"{os.ttyname(slave)}=0", "--bind", "127.0.0.1",
         "--http", "127.0.0.1:0", "--state", f"{state}/ports.json", "--ready-fd", str(ready_w)],
        pass_fds=(ready_w,), stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    os.close(ready_w)
    try:
        port = read_ready(ready_r)["devices"][0]["port"]
        idle = (status(proc.pid, "VmRSS"), status(proc.pid, "RssAnon"))
        data = bytes(range(256)) * 4096  # 1 MiB, every byte value (0xff is doubled on the wire)
        total = len(data) * a.mib
        c = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        watching = threading.Event()
        if a.observer:
            o = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)

            def watch() -> None:
                o.settimeout(1.0)
                end = time.monotonic() + 4 * DEADLINE
                while not watching.is_set() and time.monotonic() < end:
                    try:
                        if not o.recv(1 << 16):
                            return
                    except socket.timeout:
                        continue

            threading.Thread(target=watch, daemon=True).start()

        def drain(n: int) -> None:
            end = time.monotonic() + DEADLINE
            while n > 0 and time.monotonic() < end:
                if select.select([master], [], [], 1.0)[0]:
                    n -= len(os.read(master, 65536))

        up = threading.Thread(target=drain, args=(total,))
        up.start()
        wire = data.replace(b"\xff", b"\xff\xff")
        for _ in range(a.mib):
            c.sendall(wire)
        up.join(DEADLINE)

        def feed() -> None:
            for _ in range(a.mib):
                mv = memoryview(data)
                while mv:
                    mv = mv[os.write(master, mv[:4096]):]

        down = threading.Thread(target=feed)
        down.start()
        got = 0
        end = time.monotonic() + DEADLINE
        while got < total and time.monotonic() < end:  # counts wire bytes: an upper bound is enough
            chunk = c.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        down.join(DEADLINE)
        c.close()
        watching.set()

        who = "one client and an observer" if a.observer else "one client"
        print(f"binary: {a.binary} ({os.path.getsize(a.binary)} bytes); {a.mib} MiB each way, {who}")
        print("| what | KiB |\n|---|---|")
        print(f"| RSS idle before the first client | {idle[0]} (anonymous {idle[1]}) |")
        print(f"| peak RSS (VmHWM) | {status(proc.pid, 'VmHWM')} |")
        print(f"| RSS now: anonymous / file | {status(proc.pid, 'RssAnon')} / {status(proc.pid, 'RssFile')} |")
        for k, v in sorted(mappings(proc.pid).items(), key=lambda x: -x[1]):
            if v:
                print(f"| &nbsp; {k} | {v} |")
        print(f"| threads | {len(os.listdir(f'/proc/{proc.pid}/task'))} |")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
