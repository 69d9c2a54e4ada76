"""A lease flood (issue 26, item 4): one address POSTs `/api/devices/{key}/lease` as fast as
it can for SECONDS; how many requests were answered, how many changes were made, and what they
cost — fsync/fdatasync calls (strace) and log lines. Linux, root or ptrace allowed, strace.

    python3 benches/lease_flood.py [--bin target/debug/serialhub] [--seconds 15]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/debug/serialhub")
    ap.add_argument("--seconds", type=float, default=15)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="lease-flood-")
    ready_r, ready_w = os.pipe()
    d = subprocess.Popen([a.bin, "serve", "--no-hotplug", "--bind", "127.0.0.1", "--http", "127.0.0.1:0",
                          "--state", f"{tmp}/ports.json", "--device", f"sim:{tmp}/flash.bin",
                          "--ready-fd", str(ready_w)],
                         pass_fds=(ready_w,), stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "RUST_LOG": "info"})
    os.close(ready_w)
    ready = json.loads(os.fdopen(ready_r).readline())
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(d.stderr), daemon=True).start()
    port = int(str(ready["portal"]).rsplit(":", 1)[1].strip("/"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/devices")
    key = json.loads(conn.getresponse().read())["devices"][0]["key"]
    trace = f"{tmp}/strace.txt"
    st = subprocess.Popen(["strace", "-f", "-qq", "-c", "-e", "trace=fsync,fdatasync", "-o", trace,
                           "-p", str(d.pid)], stderr=subprocess.DEVNULL)
    time.sleep(1)  # strace attaching: a measurement pause, not a synchronisation of the daemon
    statuses: collections.Counter = collections.Counter()
    body = json.dumps({"seconds": 600})
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        try:
            conn.request("POST", f"/api/devices/{key.replace(':', '%3A')}/lease", body,
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            statuses[r.status] += 1
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    st.terminate()
    st.wait(10)
    d.terminate()
    d.wait(10)
    syncs = sum(int(m.group(1)) for m in re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?f(?:data)?sync",
                                                         open(trace).read(), re.M))
    leased = sum(1 for ln in lines if ": leased to 127.0.0.1" in ln)
    total = sum(statuses.values())
    print(json.dumps({"seconds": a.seconds, "requests": total, "statuses": dict(statuses),
                      "fsyncs": syncs, "lease_log_lines": leased}))


if __name__ == "__main__":
    sys.exit(main())
