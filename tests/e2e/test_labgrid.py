"""Issue 16 (first part): labgrid as the lab's engine. Two daemons ("two Pis") serve a
simulated board each; `serialhub labgrid` writes the exporter configuration; labgrid from PyPI
(coordinator, exporter, client; `.venv-labgrid`, made by `make labgrid`) lists every board, a
place acquires one, and labgrid's own SerialDriver reads the simulated application's output.
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import time

from pathlib import Path

import pytest

from conftest import SERIALHUB_BIN, wait_for

LG = Path(__file__).resolve().parents[2] / ".venv-labgrid" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.log = log
        self._f = open(log, "wb")
        self.p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._f, stderr=self._f,
                                  env={**os.environ, **(env or {})})

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._f.close()


def lg(*args: str, coord: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(LG / "labgrid-client"), "-x", coord, *args], capture_output=True,
                          text=True, timeout=timeout)


def test_two_pis_one_exporter_config_and_a_labgrid_serial_driver(serialhub, tmp_path):
    if not (LG / "labgrid-coordinator").exists():
        pytest.skip("labgrid is not installed: run `make labgrid`")
    pis = []
    for i in (1, 2):
        d = serialhub(f"sim:{tmp_path / f'flash{i}.bin'}=0", extra=("--http", "127.0.0.1:0"))
        d.wait_opened("sim")
        pis.append((d, d.portal))
    r = subprocess.run([SERIALHUB_BIN, "labgrid", pis[0][1], pis[1][1]], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    config = tmp_path / "exporter.yaml"
    config.write_text(r.stdout)
    groups = re.findall(r"^(\S+):$", r.stdout, re.M)
    assert groups == ["sim", "sim-2"], r.stdout
    assert r.stdout.count("NetworkSerialPort:") == 2 and "protocol: rfc2217" in r.stdout

    coord = f"127.0.0.1:{free_port()}"
    procs = [Proc([str(LG / "labgrid-coordinator"), "-l", coord], tmp_path / "coordinator.log")]
    try:
        wait_for(lambda: lg("places", coord=coord, timeout=10).returncode == 0, 30, what="the coordinator")
        procs.append(Proc([str(LG / "labgrid-exporter"), "-c", coord, "-n", "pis", str(config)],
                          tmp_path / "exporter.log"))

        def listed():
            out = lg("resources", coord=coord).stdout
            return all(f"pis/{g}/NetworkSerialPort" in out for g in groups) and out

        out = wait_for(listed, 30, what="both boards in `labgrid-client resources`")
        assert "pis/sim/NetworkSerialPort" in out
        for step in (["-p", "bench", "create"], ["-p", "bench", "add-match", "pis/sim-2/*"],
                     ["-p", "bench", "acquire"]):
            r = lg(*step, coord=coord)
            assert r.returncode == 0, (step, r.stdout, r.stderr)
        env = tmp_path / "env.yaml"
        env.write_text("targets:\n  main:\n    resources:\n      RemotePlace:\n        name: bench\n"
                       "    drivers:\n      SerialDriver: {}\n")
        script = (
            "from labgrid import Environment\n"
            f"t = Environment({str(env)!r}).get_target('main')\n"
            "s = t.get_driver('SerialDriver')\n"
            "t.activate(s)\n"
            "got = b''\n"
            "import time\n"
            "end = time.monotonic() + 10\n"
            "while b'sim: app tick' not in got and time.monotonic() < end:\n"
            "    try:\n"
            "        got += s.read(size=4096, timeout=1.0)\n"
            "    except Exception:\n"
            "        pass\n"
            "print(got[-200:])\n"
            "assert b'sim: app tick' in got\n"
        )
        r = subprocess.run([str(LG / "python"), "-c", script], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "LG_COORDINATOR": coord})
        assert r.returncode == 0, r.stdout + r.stderr
        # The read went to the second Pi's board (`sim-2` in the exporter config), not the first's.
        assert pis[1][0].device("sim")["connects"] >= 1, pis[1][0].log
        assert pis[0][0].device("sim")["connects"] == 0, pis[0][0].log
        # `labgrid-client console` (microcom, from Debian) on a pseudo-terminal, as a person
        # runs it: the simulated application's output appears.
        master, slave = os.openpty()
        con = subprocess.Popen([str(LG / "labgrid-client"), "-x", coord, "-p", "bench", "console"],
                               stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        seen = b""
        try:
            end = time.monotonic() + 30
            while b"sim: app tick" not in seen and time.monotonic() < end and con.poll() is None:
                r, _, _ = select.select([master], [], [], 0.5)
                if r:
                    try:
                        seen += os.read(master, 4096)
                    except OSError:
                        break
            assert b"sim: app tick" in seen, seen[-2000:]
        finally:
            con.terminate()
            try:
                con.wait(10)
            except subprocess.TimeoutExpired:
                con.kill()
                con.wait()
            os.close(master)
        lg("-p", "bench", "release", coord=coord)
    finally:
        for p in reversed(procs):
            p.stop()
