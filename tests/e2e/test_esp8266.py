"""Issue 13, item 4: the simulated ESP8266 (`--device sim-esp8266`) against the esptool
releases of test_esptool_versions.py — 3.3, 4.5.1, 4.8.1 and 5.x.

The ESP8266 is the odd one out for esptool: its ROM prints its boot log at 74880 baud, answers
with 2 status bytes, has no GET_SECURITY_INFO (detection falls back to the magic word), cannot
change the baud rate, write compressed or compute an MD5 (esptool needs the stub for those),
and erases too much on FLASH_BEGIN (esptool asks for less). Each release, through the server:

- `socket://` at 921600 with `--before no-reset`: the server enters the bootloader on SYNC and
  follows the stub's CHANGE_BAUDRATE; chip-id, write-flash, then verify-flash;
- `rfc2217://` with esptool's own resets: write-flash, then verify-flash;
- `--no-stub` over `socket://`: flash-id through the ROM (SPI0 registers), then the ROM loader
  writes over an older image (at 115200: the ROM cannot change the rate, so esptool warns and
  stays), then verify-flash with the stub (the ROM has no MD5, so esptool cannot verify
  without it).

Each time the flash file holds the image and the application boots again afterwards.

Over `rfc2217://` every esptool run costs ~20 s whatever the image (pyserial's client spends
~0.2 s on each of the ~60 register accesses of connecting and attaching the flash), so the
releases run side by side, each against daemons of its own, from a module fixture; each test
waits for its own release and path.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from pathlib import Path

import pytest
import serial

from conftest import Daemon
from test_esptool import APP_LINE, assert_flash_holds
from test_esptool_versions import VERSIONS, esptool

SIM_MAC = "5c:cf:7f:a1:b2:c3"
SIM_CHIP_ID = "0x00a1b2c3"
IMAGE_SIZE = 64 * 1024
OFFSET = 0x20000
# Longest a release's three paths may take together (they take about a minute).
RUN_LIMIT = 600


def app_boot(port: int, timeout: float = 5) -> int:
    """The boot number the application reports, read as a monitor would (rfc2217://, 115200)."""
    with serial.serial_for_url(f"rfc2217://127.0.0.1:{port}", baudrate=115200, timeout=0.5) as ser:
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            buf += ser.read(ser.in_waiting or 1)
            m = APP_LINE.search(buf)
            if m:
                return int(m.group(1))
    raise AssertionError(f"no application line within {timeout} s; got {bytes(buf[-300:])!r}")


def image_file(where: Path, seed: int) -> tuple[bytes, Path]:
    # Half of it compresses, so that every release's stub writes it deflated (5.x sends
    # what does not compress as it is).
    image = random.Random(seed).randbytes(IMAGE_SIZE // 2) + bytes(range(256)) * (IMAGE_SIZE // 512)
    img = where / f"img{seed}.bin"
    img.write_bytes(image)
    return image, img


def spelled(version: str, dashed: str) -> str:
    """3.x and 4.x spell commands and reset modes with underscores, 5.x with dashes."""
    return dashed if version == "5" else dashed.replace("-", "_")


def assert_verified(out: str):
    assert "verification successful" in out.lower() or "digest matched" in out.lower(), out


class Sim:
    """One daemon serving one simulated ESP8266, its flash in a file."""

    def __init__(self, where: Path):
        self.flash = where / "flash.bin"
        # As conftest's `serialhub` fixture starts it: hermetic, a portal to wait on.
        state = os.path.join(tempfile.mkdtemp(prefix="serialhub-state-"), "ports.json")
        self.daemon = Daemon([
            "serve", "--bind", "127.0.0.1", "--no-hotplug", "--http", "127.0.0.1:0", "--state", state,
            "--device", f"sim-esp8266:{self.flash}=0",
        ])
        self.port = self.daemon.port("sim-esp8266")
        self.daemon.wait_opened("sim-esp8266")


def socket_at_921600_with_the_stub(version: str, sim: Sim, where: Path):
    before = app_boot(sim.port)
    image, img = image_file(where, 8266)
    url = f"socket://127.0.0.1:{sim.port}"
    common = ("--before", spelled(version, "no-reset"), "-b", "921600")
    out = esptool(version, url, *common, "chip-id")
    assert "ESP8266" in out and f"Chip ID: {SIM_CHIP_ID}" in out, out
    out = esptool(version, url, *common, "write-flash", hex(OFFSET), str(img))
    assert "ESP8266" in out and SIM_MAC in out.lower(), out
    assert "doesn't support changing baud rate" not in out, out  # the stub changed it
    assert "compressed)" in out, out  # FLASH_DEFL_*, which only the stub has
    assert_flash_holds(sim.flash, OFFSET, image)
    assert_verified(esptool(version, url, *common, "verify-flash", hex(OFFSET), str(img)))
    assert "entering the bootloader" in sim.daemon.log, sim.daemon.log  # the server's entry
    assert app_boot(sim.port) > before


def rfc2217_with_esptools_own_resets(version: str, sim: Sim, where: Path):
    before = app_boot(sim.port)
    image, img = image_file(where, 8267)
    url = f"rfc2217://127.0.0.1:{sim.port}"
    esptool(version, url, "write-flash", hex(OFFSET), str(img))
    assert_flash_holds(sim.flash, OFFSET, image)
    assert_verified(esptool(version, url, "verify-flash", hex(OFFSET), str(img)))
    # esptool's own reset was played each time, and the server did not add one of its own.
    assert "entering the bootloader" not in sim.daemon.log, sim.daemon.log
    assert app_boot(sim.port) > before


def rom_loader_without_the_stub(version: str, sim: Sim, where: Path):
    url = f"socket://127.0.0.1:{sim.port}"
    no_reset = ("--before", spelled(version, "no-reset"))
    out = esptool(version, url, *no_reset, "--no-stub", spelled(version, "flash-id"))
    assert "running stub" not in out.lower(), out
    assert "Manufacturer: ef" in out and "Device: 4016" in out and "flash size: 4MB" in out, out
    # An older image where the new one goes: the ROM's FLASH_BEGIN must erase all of it,
    # although esptool asks it for half (its workaround for the ROM's erase bug).
    old, img = image_file(where, 1)
    esptool(version, url, *no_reset, "-b", "921600", "write-flash", hex(OFFSET), str(img))
    assert_flash_holds(sim.flash, OFFSET, old)
    before = app_boot(sim.port)
    image, img = image_file(where, 8268)
    out = esptool(version, url, *no_reset, "--no-stub", "-b", "921600", "write-flash", hex(OFFSET), str(img))
    assert "running stub" not in out.lower(), out  # the ROM loader did the work
    assert "doesn't support changing baud rate" in out, out  # and stayed at 115200
    assert_flash_holds(sim.flash, OFFSET, image)
    assert_verified(esptool(version, url, *no_reset, "verify-flash", hex(OFFSET), str(img)))
    assert app_boot(sim.port) > before


PATHS = {
    "socket": socket_at_921600_with_the_stub,
    "rfc2217": rfc2217_with_esptools_own_resets,
    "rom": rom_loader_without_the_stub,
}


class Runs:
    """The selected paths of each release, run in a thread per release; `result` waits for
    one."""

    def __init__(self, root: Path, wanted: set[tuple[str, str]]):
        self.root = root
        self.sims: list[Sim] = []
        self.done = {key: threading.Event() for key in wanted}
        self.errors: dict[tuple[str, str], BaseException] = {}
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(v, [p for p in PATHS if (v, p) in wanted]), daemon=True)
            for v in VERSIONS
        ]
        for t in self.threads:
            t.start()

    def _run(self, version: str, paths: list[str]):
        for path in paths:
            run = PATHS[path]
            where = self.root / f"{version}-{path}"
            where.mkdir()
            try:
                sim = Sim(where)
                with self._lock:
                    self.sims.append(sim)
                run(version, sim, where)
            except BaseException as e:  # noqa: B036 (pytest.skip's outcome too)
                self.errors[(version, path)] = e
            finally:
                self.done[(version, path)].set()

    def result(self, version: str, path: str):
        assert self.done[(version, path)].wait(RUN_LIMIT), f"{version} {path}: still running"
        err = self.errors.get((version, path))
        if err is not None:
            raise err

    def close(self) -> list[str]:
        for t in self.threads:
            t.join(RUN_LIMIT)
        problems = []
        for sim in self.sims:
            d = sim.daemon
            was_alive = d.alive()
            rc = d.stop()
            if not was_alive:
                problems.append(f"serialhub exited by itself with {rc}")
            elif rc != 0:
                problems.append(f"serialhub exited with {rc} after SIGTERM")
            if "panicked" in d.log:
                problems.append(f"serialhub panicked; log:\n{d.log}")
        return problems


# Which path each test checks.
TESTS = {
    "test_socket_at_921600_with_the_stub": "socket",
    "test_rfc2217_with_esptools_own_resets": "rfc2217",
    "test_rom_loader_without_the_stub": "rom",
}


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    # Only what was selected (`-k`, node ids) runs.
    wanted = {
        (item.callspec.params["version"], TESTS[item.originalname])
        for item in request.session.items
        if item.module is request.module and item.originalname in TESTS
    }
    r = Runs(tmp_path_factory.mktemp("esp8266"), wanted)
    yield r
    problems = r.close()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.mark.parametrize("version", VERSIONS)
def test_socket_at_921600_with_the_stub(runs, version):
    runs.result(version, "socket")


@pytest.mark.parametrize("version", VERSIONS)
def test_rfc2217_with_esptools_own_resets(runs, version):
    runs.result(version, "rfc2217")


@pytest.mark.parametrize("version", VERSIONS)
def test_rom_loader_without_the_stub(runs, version):
    runs.result(version, "rom")
