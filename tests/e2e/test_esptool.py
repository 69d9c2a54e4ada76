"""esptool (and pyserial as a monitor) against serialhub's built-in simulated ESP32.

Over rfc2217:// esptool is slow by its client's design (~13 s for chip-id: pyserial re-sends
every setting whenever the read timeout changes and polls answers in 50 ms steps), so the cheap
commands run with both URL forms, each flash runs once per URL form, and verify-flash runs with
the plain URL (the flash file is compared with the image in every case).
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from conftest import wait_for

SIM_MAC = "24:0a:c4:5e:1a:70"
QUERIES = [pytest.param("", id="plain"), pytest.param("?ign_set_control", id="ign_set_control")]
APP_LINE = re.compile(rb"sim: app [^\r\n]*?boot #(\d+)")


@pytest.fixture
def sim(serialhub, tmp_path):
    """A daemon serving the simulated ESP32 with its flash in a file: (daemon, port, flash path)."""
    flash = tmp_path / "flash.bin"
    d = serialhub(f"sim:{flash}=0")
    port = d.port("sim")
    d.wait_opened("sim")
    return d, port, flash


def esptool(port: int, query: str, *args: str, timeout: float = 150) -> str:
    cmd = [sys.executable, "-m", "esptool", "--port", f"rfc2217://127.0.0.1:{port}{query}", *args]
    t0 = time.monotonic()
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(cmd[3:])} exited {r.returncode} after {took:.1f} s:\n{out}"
    return out


def flash_region(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def assert_flash_holds(path: Path, offset: int, image: bytes):
    # the simulator persists written ranges; allow it a moment to reach the file
    try:
        wait_for(
            lambda: path.exists() and flash_region(path, offset, len(image)) == image,
            10,
            what="the image in the flash file",
        )
    except TimeoutError:
        got = flash_region(path, offset, len(image)) if path.exists() else b""
        first = next((i for i, (a, b) in enumerate(zip(got, image)) if a != b), min(len(got), len(image)))
        raise AssertionError(
            f"flash file {path} at {offset:#x}: {len(got)} bytes read, first difference at +{first:#x}"
        )


@pytest.mark.parametrize("query", QUERIES)
def test_chip_id(sim, query):
    d, port, _ = sim
    out = esptool(port, query, "chip-id")
    assert "ESP32" in out
    assert SIM_MAC in out.lower(), out


@pytest.mark.parametrize("query", QUERIES)
def test_flash_id(sim, query):
    d, port, _ = sim
    out = esptool(port, query, "flash-id")
    assert re.search(r"flash size: 4MB", out, re.I), out


@pytest.mark.parametrize("query", QUERIES)
def test_write_flash_1mib_stub_921600(sim, tmp_path, query):
    d, port, flash = sim
    image = random.Random(1).randbytes(1024 * 1024)
    img = tmp_path / "img.bin"
    img.write_bytes(image)
    out = esptool(port, query, "-b", "921600", "write-flash", "0x10000", str(img), timeout=240)
    assert "running stub" in out.lower(), out  # the default path: esptool uploads and runs its stub
    assert_flash_holds(flash, 0x10000, image)
    if query:
        return  # verify-flash once per image kind (plain URL) keeps the suite in its time budget
    out = esptool(port, query, "-b", "921600", "verify-flash", "0x10000", str(img))
    assert "verification successful" in out.lower(), out


@pytest.mark.parametrize("query", QUERIES)
def test_write_flash_64k_rom_115200(sim, tmp_path, query):
    d, port, flash = sim
    image = random.Random(2).randbytes(64 * 1024)
    img = tmp_path / "img64k.bin"
    img.write_bytes(image)
    out = esptool(port, query, "--no-stub", "-b", "115200", "write-flash", "0x20000", str(img))
    assert "running stub" not in out.lower(), out  # the ROM loader did the work
    assert_flash_holds(flash, 0x20000, image)
    if query:
        return  # as above
    out = esptool(port, query, "--no-stub", "verify-flash", "0x20000", str(img))
    assert "verification successful" in out.lower(), out


def read_app_line(ser: serial.Serial, timeout: float) -> re.Match:
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        buf += ser.read(ser.in_waiting or 1)
        m = APP_LINE.search(buf)
        if m:
            return m
    raise AssertionError(f"no application line within {timeout} s; got {bytes(buf[-300:])!r}")


def test_monitor_open_does_not_reset(sim):
    """pyserial asserts DTR and RTS on open (as a monitor does): that must not reset the chip."""
    d, port, _ = sim
    url = f"rfc2217://127.0.0.1:{port}"
    with serial.serial_for_url(url, baudrate=115200, timeout=0.5) as ser:
        first = read_app_line(ser, 5)
    with serial.serial_for_url(url, baudrate=115200, timeout=0.5) as ser:
        again = read_app_line(ser, 5)
        ser.dtr = True
        ser.rts = True
        later = read_app_line(ser, 5)
    assert first.group(1) == again.group(1) == later.group(1), (first.group(0), again.group(0), later.group(0))


def test_esptool_reset_then_app_runs_again(sim):
    """After esptool's hard reset the application boots again (boot count goes up)."""
    d, port, _ = sim
    url = f"rfc2217://127.0.0.1:{port}"
    with serial.serial_for_url(url, baudrate=115200, timeout=0.5) as ser:
        before = int(read_app_line(ser, 5).group(1))
    esptool(port, "", "--after", "hard-reset", "read-mac")
    with serial.serial_for_url(url, baudrate=115200, timeout=0.5) as ser:
        after = int(read_app_line(ser, 5).group(1))
    assert after > before, (before, after)
