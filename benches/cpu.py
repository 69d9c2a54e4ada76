"""The CPU a byte costs, on every data path, for this build and the releases before it, in one run.

Each path is measured on a fresh daemon of each build in turn, against ser2net on the same kind of
device, and repeated (`reps`, the median is reported) with the builds interleaved, so that load on a
shared machine hits all of them alike:

- `up`: RFC 2217 bulk client -> device (a PTY whose master end only reads);
- `down`: device -> client (the master end only writes);
- `echo`: both ways at once through an echoing PTY — the client writes and reads at the same time,
  which is how a flasher's stream looks to the server and the path that regressed with sharing
  (issue 21);
- `echo + observer`: the same with a second client that only watches (`busy = "share"`): what one
  observer adds.

The payload is random with ~30 % 0xFF (firmware-like: every 0xFF is doubled on the wire). CPU is
utime+stime of the whole daemon from /proc/PID/stat around the transfer, per MB (10^6 bytes) of
payload moved in one direction (for `echo`, the payload crosses the server twice).

Baselines are git revisions, built once into target/bench-baselines/REV (glibc, and static musl when
`packaging/build-pi.sh` works on this machine) and kept there for the next run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import bench as B

# The releases compared with on every run: before sharing (its CPU was the reference the
# regression was found against) and the last release before this issue.
BASELINES = {
    "02264a6": "before sharing (issues 13-16)",
    "21e8e9b": "after sharing, leases and mDNS",
}
CASES = ("up", "down", "echo", "echo + observer")
SER2NET_CASES = ("up", "down", "echo")  # max-connections 1: no observer


def _run(cmd: list[str], cwd: Path, log: Path, env: dict | None = None, timeout: float = 1800) -> bool:
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        r = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=f, stdin=subprocess.DEVNULL, env=env, timeout=timeout)
    return r.returncode == 0


def build_baseline(rev: str, static: bool) -> tuple[dict[str, str], str]:
    """The baseline's binaries by kind ("glibc", "static"), building what is missing; a note on
    what could not be built."""
    root = B.REPO / "target" / "bench-baselines" / rev
    src = root / "src"
    log = root / "build.log"
    root.mkdir(parents=True, exist_ok=True)
    if not (src / "Cargo.toml").exists():
        shutil.rmtree(src, ignore_errors=True)
        subprocess.run(["git", "-C", str(B.REPO), "worktree", "prune"], capture_output=True, timeout=60)
        if not _run(["git", "-C", str(B.REPO), "worktree", "add", "--force", "--detach", str(src), rev], B.REPO, log):
            return {}, f"baseline {rev}: `git worktree add` failed (see {os.path.relpath(log, B.REPO)})"
    out: dict[str, str] = {}
    notes = []
    glibc = src / "target" / "release" / "serialhub"
    if not glibc.exists():
        print(f"cpu: building baseline {rev} (release) ...", flush=True)
        _run(["cargo", "build", "--release", "--locked"], src, log)
    if glibc.exists():
        out["glibc"] = str(glibc)
    else:
        notes.append(f"baseline {rev}: release build failed (see {os.path.relpath(log, B.REPO)})")
    if static:
        musl = src / "target" / "x86_64-unknown-linux-musl" / "release" / "serialhub"
        if not musl.exists() and (src / "packaging" / "build-pi.sh").exists():
            print(f"cpu: building baseline {rev} (static musl) ...", flush=True)
            venv = B.REPO / ".venv-pi"
            if venv.exists() and not (src / ".venv-pi").exists():
                (src / ".venv-pi").symlink_to(venv)
            _run(["sh", "packaging/build-pi.sh", "x86_64-unknown-linux-musl"], src, log)
        if musl.exists():
            out["static"] = str(musl)
        else:
            notes.append(f"baseline {rev}: no static build (see {os.path.relpath(log, B.REPO)})")
    return out, "; ".join(notes)


class Observer:
    """A second client that only reads (and throws away) what it is sent."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(B.TELNET_OPEN)
        self.received = 0
        self.stop = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                chunk = self.sock.recv(1 << 18)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.received += len(chunk)

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close()


def echo_both_ways(server: B.Server, dev: B.PtyDevice, payload: bytes, observer: bool) -> float:
    """ms of server CPU per MB with the client writing and reading at once; byte-exact."""
    pid = server.proc.pid
    client = B.Client(server.port)
    obs = None
    try:
        dev.echo()
        B.warm_up(client)
        if observer:
            obs = Observer(server.port)
            # The observer is in (the server answered its negotiation) before the clock starts.
            B.wait_for(lambda: obs.received > 0, 10, "the observer to be answered")
        wire = B.escape(payload)
        failure: list[BaseException] = []

        def send():
            try:
                view = memoryview(wire)
                for i in range(0, len(view), 1 << 16):
                    client.sock.sendall(view[i:i + (1 << 16)])
            except BaseException as e:  # noqa: BLE001 - reported by the reader's side
                failure.append(e)

        cpu0 = B.proc_cpu_seconds(pid)
        writer = threading.Thread(target=send, daemon=True)
        writer.start()
        back = client.recv_exactly(len(payload), time.monotonic() + 300)
        writer.join(30)
        cpu = B.proc_cpu_seconds(pid) - cpu0
        if failure:
            raise B.BenchError(f"echo: sending failed: {failure[0]}")
        if hashlib.md5(back).digest() != hashlib.md5(payload).digest():
            raise B.BenchError("echo: the data came back corrupted")
        return cpu * 1e3 / (len(payload) / 1e6)
    finally:
        if obs is not None:
            obs.close()
        client.close()
        dev.stop()


def one_round(kind: str, binary: str, tmp: Path, tag: str, payload: bytes, cases: tuple[str, ...]) -> dict:
    """Every case once on a fresh server of `kind` ("serialhub" or "ser2net")."""
    dev = B.PtyDevice()
    server = None
    res: dict = {}
    try:
        if kind == "ser2net":
            server = B.Ser2net(dev.path, tmp, tag=tag)
        else:
            server = B.Serialhub([f"{dev.path}=0"], tmp, tag=tag, binary=binary)
            server.wait_port(dev.path)
            server.wait_log(r"opened ")
        if "up" in cases or "down" in cases:
            bulk = B.measure_bulk(server, dev, payload)
            res["up"], res["down"] = bulk["up_cpu_ms_per_MB"], bulk["down_cpu_ms_per_MB"]
            res["hwm_kib"] = bulk["hwm_kib"]
        if "echo" in cases:
            res["echo"] = echo_both_ways(server, dev, payload, observer=False)
        if "echo + observer" in cases:
            res["echo + observer"] = echo_both_ways(server, dev, payload, observer=True)
        res["hwm_kib"] = B.proc_status_kib(server.proc.pid, "VmHWM")
        return res
    finally:
        if server is not None:
            server.stop()
        dev.close()


def measure(tmp: Path, mib: int, reps: int, baselines: list[str], ser2net: bool) -> dict:
    """Builds (label -> binary), the median per case and build, and notes."""
    static_now, note = B.static_binary()
    builds: list[tuple[str, str, str]] = [("this build", "serialhub", B.BIN)]
    notes = []
    if static_now:
        builds.append(("this build, static", "serialhub", static_now))
    else:
        notes.append(note)
    for rev in baselines:
        bins, why = build_baseline(rev, static=static_now is not None)
        if why:
            notes.append(why)
        for k in ("glibc", "static"):
            if k in bins:
                label = f"{rev}" + (", static" if k == "static" else "")
                builds.append((label, "serialhub", bins[k]))
    if ser2net:
        problem = B.ensure_ser2net()
        if problem:
            notes.append(problem)
        else:
            builds.append(("ser2net", "ser2net", ""))
    payload = B.ff_heavy(mib * B.MIB, seed=44)
    samples: dict = {label: {} for label, _, _ in builds}
    for r in range(reps):
        for i, (label, kind, binary) in enumerate(builds):
            print(f"cpu: round {r + 1}/{reps}: {label} ...", flush=True)
            cases = SER2NET_CASES if kind == "ser2net" else CASES
            try:
                got = one_round(kind, binary, tmp, f"cpu-{i}-{r}", payload, cases)
            except B.BenchError as e:
                notes.append(f"{label}, round {r + 1}: {e}")
                continue
            for k, v in got.items():
                samples[label].setdefault(k, []).append(v)
    medians = {label: {k: statistics.median(v) for k, v in cases.items()} for label, cases in samples.items()}
    return {"builds": [(label, binary) for label, _, binary in builds], "median": medians,
            "reps": reps, "mib": mib, "notes": notes}


def goals(m: dict) -> list[str]:
    """The issue's goals, judged: at most a quarter of ser2net on every path, and no worse than the
    oldest baseline on any."""
    med = m["median"]
    now = med.get("this build", {})
    lines = []
    ref = med.get("ser2net")
    if ref:
        worst = max((now[c] / ref[c], c) for c in SER2NET_CASES if c in now and c in ref and ref[c] > 0)
        lines.append(f"at most 1/4 of ser2net's CPU per MB on every path: "
                     f"{'met' if worst[0] <= 0.25 else 'MISSED'} (worst: {worst[1]}, {worst[0]:.2f} of ser2net)")
    for rev in BASELINES:
        base = med.get(rev)
        if base:
            worse = [c for c in CASES if c in now and c in base and now[c] > base[c] * 1.1 + 1]
            lines.append(f"no worse than {rev} on any path (10 % + 1 ms/MB of noise allowed): "
                         + ("met" if not worse else "MISSED on " + ", ".join(worse)))
    if "echo" in now and "echo + observer" in now:
        lines.append(f"one observer adds {now['echo + observer'] - now['echo']:.1f} ms/MB to the echo path")
    return lines


def render(m: dict) -> list[str]:
    labels = [label for label, _ in m["builds"]]
    head = "| path (ms of CPU per MB) | " + " | ".join(labels) + " |"
    out = [head, "|" + "---|" * (len(labels) + 1)]
    for case in CASES:
        cells = []
        for label in labels:
            v = m["median"].get(label, {}).get(case)
            cells.append("—" if v is None else f"{v:.1f}")
        out.append(f"| {case} | " + " | ".join(cells) + " |")
    cells = []
    for label in labels:
        v = m["median"].get(label, {}).get("hwm_kib")
        cells.append("—" if v is None else f"{v:.0f}")
    out.append("| peak RSS after the run, VmHWM (KiB) | " + " | ".join(cells) + " |")
    out.append("")
    out += [f"- {g}" for g in goals(m)]
    out += [f"- note: {n}" for n in m["notes"]]
    return out


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--baselines", default=",".join(BASELINES))
    ap.add_argument("--no-ser2net", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="serialhub-cpu-") as d:
        res = measure(Path(d), a.mib, a.reps, B.csv_list(a.baselines), not a.no_ser2net)
    print("\n".join(render(res)))
