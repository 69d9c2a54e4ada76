"""Issue 13: the esptool releases people actually run — ESP-IDF 4.4's 3.3, PlatformIO's 4.5.1,
the last 4.x, and the newest 5.x — each through the server-side follower: `socket://` at
921600 with the recipe the README prints (`--before no_reset`: 4.5.1's default reset ioctls
the socket and crashes), and `rfc2217://` with esptool's own resets.

The older releases live in `.venv-esptool/VERSION` (`make esptools`, which `make e2e` runs).
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_esptool import assert_flash_holds, sim  # noqa: F401 (sim: a fixture)

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ["3.3", "4.5.1", "4.8.1", "5"]


def python_for(version: str) -> str:
    if version == "5":
        return sys.executable
    py = ROOT / ".venv-esptool" / version / "bin" / "python"
    if not py.exists():
        pytest.skip(f"esptool {version} is not installed: run `make esptools`")
    return str(py)


def esptool(version: str, url: str, *args: str, timeout: float = 180) -> str:
    # 3.x and 4.x name commands with underscores; 5.x with dashes (underscores deprecated).
    if version != "5":
        args = tuple(a.replace("-", "_") if a in ("write-flash", "verify-flash", "chip-id") else a for a in args)
    cmd = [python_for(version), "-m", "esptool", "--port", url, *args]
    t0 = time.monotonic()
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"esptool {version} {' '.join(args)} exited {r.returncode} after {time.monotonic() - t0:.1f} s:\n{out}"
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_socket_at_921600_with_the_printed_recipe(sim, tmp_path, version):
    d, port, flash = sim
    image = random.Random(21).randbytes(128 * 1024)
    img = tmp_path / "img.bin"
    img.write_bytes(image)
    before = "no-reset" if version == "5" else "no_reset"
    url = f"socket://127.0.0.1:{port}"
    esptool(version, url, "--before", before, "-b", "921600", "write-flash", "0x10000", str(img))
    assert_flash_holds(flash, 0x10000, image)
    out = esptool(version, url, "--before", before, "-b", "921600", "verify-flash", "0x10000", str(img))
    assert "verification successful" in out.lower() or "digest matched" in out.lower(), out


@pytest.mark.parametrize("version", VERSIONS)
def test_rfc2217_with_esptools_own_resets(sim, tmp_path, version):
    d, port, flash = sim
    image = random.Random(22).randbytes(16 * 1024)
    img = tmp_path / "img.bin"
    img.write_bytes(image)
    esptool(version, f"rfc2217://127.0.0.1:{port}", "write-flash", "0x10000", str(img))
    assert_flash_holds(flash, 0x10000, image)
    # esptool's own reset was played once, and the server did not add one of its own.
    assert "entering the bootloader" not in d.log, d.log
